"""The floor under the family seam: pure modules (no torch, no transformers, nothing above them) that
read a model directory and do the size arithmetic every layer above uses."""
