"""Quantization formats: compressed-tensors pack-quantized checkpoints (:mod:`.formats`) and the CPU path of
bitsandbytes 4-bit (:mod:`.bnb_cpu`); the quantize stage (:mod:`iwslt_mc.stages.quantize`) applies them."""
