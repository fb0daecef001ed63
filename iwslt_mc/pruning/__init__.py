"""The layer-importance search shared by the pruning stages (``prune-layers``' ``iterative`` strategy): candidates
scored on held-out data with the one greedy core and the one metric registry. Not a stage itself."""
