"""Quantization: compressed-tensors pack-quantized checkpoints (:mod:`.formats`), the CPU path of bitsandbytes
4-bit (:mod:`.bnb_cpu`), and per-module bit allocation by measured sensitivity (:mod:`.allocation`: the file, the
byte accounting and the choice; :mod:`.sensitivity`: the dev-split loss of each module at each width). The
quantize stage (:mod:`iwslt_mc.stages.quantize`) applies them."""
