"""bitsandbytes' CPU 4-bit dequantization is correct for every width once iwslt_mc.quantization.bnb_cpu is installed.

The native kernel (bitsandbytes 0.50.2) applies the wrong block scales when a row's width is not a
multiple of the block size; the kit's FFN width (176) is such a width. The reference here is
bitsandbytes' own pure-torch implementation of the same operation, on the same stored bytes."""

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402
from bitsandbytes.backends.utils import _get_4bit_code  # noqa: E402
from bitsandbytes.functional import dequantize_4bit, dequantize_blockwise, quantize_4bit  # noqa: E402

from iwslt_mc.quantization import bnb_cpu
from iwslt_mc import modelio  # noqa: E402

_dequantize_4bit_compute = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)


def reference(q, qs):
    absmax = qs.absmax
    if qs.nested:
        absmax = dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    return _dequantize_4bit_compute(q.view(torch.uint8).reshape(-1), absmax.float(), _get_4bit_code(qs.quant_type, q.device),
                                    qs.blocksize, qs.shape, qs.dtype)


@pytest.mark.parametrize("shape", [(64, 176), (48, 160), (32, 96), (64, 128)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [True, False])
def test_dequantize_equals_the_reference_for_every_width(shape, quant_type, nested):
    assert bnb_cpu.fix_cpu_dequantize()
    torch.manual_seed(0)
    w = torch.randn(*shape)
    q, qs = quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=nested)
    got = dequantize_4bit(q, qs)
    assert torch.equal(got, reference(q, qs))
    # and the round trip error is the format's, not a misplaced scale's (0.15-0.17 before the fix)
    assert float((got - w).abs().mean()) < 0.1


def test_generic_path_linear_matches_the_dequantized_weight():
    """A Linear4bit of width 176 on the generic (non-repacked) path, as fit_4bit_cpu_path leaves it."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(176, 64, bias=False)
    q4 = bnb.nn.Linear4bit(176, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    q4.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4")
    q4 = q4.to("cpu")  # quantizes on the CPU

    model = torch.nn.Sequential(q4).eval()
    assert modelio.fit_4bit_cpu_path(model) == 1  # 176 is not a multiple of the block: generic path
    assert bnb_cpu._installed
    x = torch.randn(3, 176)
    with torch.no_grad():
        out = model(x)
    w_dq = reference(q4.weight.data, q4.weight.quant_state)
    torch.testing.assert_close(out, x @ w_dq.t(), rtol=1e-4, atol=1e-4)
    assert float((w_dq - lin.weight.detach()).abs().mean()) < 0.1


def test_native_kernel_lookup_survives_dead_weak_proxies():
    """gc.get_objects() can hold weak proxies whose referent is gone (seen in `decode` of a long file)."""
    import weakref

    class T:
        pass

    t = T()
    p = weakref.proxy(t)
    holder = [p]  # a live list holding a proxy that is about to die
    del t
    assert bnb_cpu._native_kernel() is not None
    assert len(holder) == 1
