"""Quantization beyond one format per model: per-module bit allocation by measured sensitivity
(:mod:`.allocation`: the file, the byte accounting and the choice; :mod:`.sensitivity`: the dev-split loss of
each module at each width). The formats themselves are :mod:`iwslt_mc.quant_formats` (compressed-tensors) and
:mod:`iwslt_mc.bnb_cpu` (bitsandbytes on the CPU)."""
