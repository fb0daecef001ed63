"""bitsandbytes' CPU 4-bit dequantization, made correct for every weight shape.

bitsandbytes 0.50.2's native CPU kernel for ``bitsandbytes::dequantize_4bit`` (used by
``Linear4bit.forward`` on the generic dequantize-and-matmul path, by ``gemm_4bit``, by QLoRA's
backward and by ``model.dequantize()``) indexes the quantization blocks per row. NF4/FP4 blocks run
over the flattened weight, so when a row's width (the layer's ``in_features``) is not a multiple of
the block size the kernel applies the wrong scales: a 64x176 NF4 weight comes back with a mean
absolute error of 0.17 against 0.07 from bitsandbytes' own pure-torch implementation (the same
stored bytes; measured 2026-11-28). The kit's FFN width (176), FFN-pruned and width-pruned models
have such layers, and :func:`iwslt_mc.modelio.fit_4bit_cpu_path` sends exactly those layers down the
generic path (the AVX512-BF16 repack refuses them), so without this fix CPU decoding of those NF4
models was silently wrong (a quarter-width toy model kept 61% of its chrF++ instead of 106%).

:func:`fix_cpu_dequantize` re-registers the CPU kernel: shapes the native kernel handles keep it
(it is 1.4-4x faster), the others take bitsandbytes' own ``default`` implementation. The stored
checkpoint is not affected (quantization is correct); only CPU inference/training of such layers is.
Remove when bitsandbytes fixes its kernel: the test ``tests/quantization/test_bnb_cpu.py`` then passes without it.
"""

from __future__ import annotations

import gc
import types
import warnings

_installed = False


def _native_kernel():
    """bitsandbytes' own CPU kernel for dequantize_4bit (a module-level function named ``_``, not reachable
    by name), or None: then every shape takes the reference implementation (correct, slower)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for obj in gc.get_objects():
                # type(), not isinstance(): a dead weak proxy raises ReferenceError on isinstance
                if type(obj) is not types.FunctionType or obj.__module__ != "bitsandbytes.backends.cpu.ops":
                    continue
                if "cdequantize_blockwise_cpu_nf4_fp32" in obj.__code__.co_names:
                    return obj
    except Exception:  # noqa: BLE001  (a library change must not stop decoding: fall back to the reference)
        return None
    return None


def fix_cpu_dequantize() -> bool:
    """Install the shape-safe CPU kernel once; False when bitsandbytes is not installed."""
    global _installed
    if _installed:
        return True
    try:
        import bitsandbytes  # noqa: F401  (registers its kernels)
        import torch
        from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
        from bitsandbytes.backends.utils import _get_4bit_code
    except ImportError:
        return False
    native = _native_kernel()
    # bitsandbytes wraps the reference in torch.compile(dynamic=False): one inductor compilation per layer
    # shape (seconds each, a C++ compiler needed, a recompile limit of 8 shapes): run it eagerly
    reference = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)

    def dequantize_4bit_cpu(A, absmax, blocksize, quant_type, shape, dtype):
        if native is not None and len(shape) > 0 and shape[-1] % blocksize == 0:
            return native(A, absmax, blocksize, quant_type, shape, dtype)
        if A.dtype != torch.uint8:
            A = A.view(torch.uint8)
        if absmax.dtype != torch.float32:
            absmax = absmax.float()
        code = _get_4bit_code(quant_type, A.device)
        return reference(A.reshape(-1), absmax, code, blocksize, shape, dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", dequantize_4bit_cpu)
    _installed = True
    return True
