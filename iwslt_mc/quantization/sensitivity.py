"""The sensitivity of each Linear module to quantization, measured on dev utterances.

For every module and width: that module alone is quantized (compressed-tensors symmetric groups, the ranges
:func:`iwslt_mc.quantization.formats.choose_qparams` picks, scales rounded to the stored dtype: what method ct with
an allocation writes), the model is run teacher-forced on the dev utterances (the family's prompt, audio and
the reference translation, as training encodes them), and the loss is the mean KL divergence (nats per
reference token) of its next-token distributions from the unquantized model's. Float32 compute.
"""

from __future__ import annotations

from types import SimpleNamespace

from ..floor.sizes import FLOAT_BITS


def _batches(model_dir, examples, lang: str, batch_size: int):
    from .. import modelio
    from ..families import max_audio_seconds
    from ..training.training import Collator, SpeechTranslationDataset, pad_token_id

    processor = modelio.load_processor(model_dir)
    ds = SpeechTranslationDataset(examples, processor, lang, max_seconds=max_audio_seconds(model_dir))
    coll = Collator(pad_token_id(processor))
    return [coll([ds[i] for i in range(s, min(s + batch_size, len(ds)))]) for s in range(0, len(ds), batch_size)]


def _logprobs(model, batches):
    import torch

    out = []
    with torch.inference_mode():
        for b in batches:
            labels = b["labels"]
            inputs = {k: v for k, v in b.items() if k != "labels"}
            logits = model(**inputs).logits[:, :-1].float()
            mask = labels[:, 1:] != -100
            out.append(torch.log_softmax(logits[mask], -1))
    return out


def kl(reference: list, other: list) -> float:
    """Mean KL(reference || other) per reference token, in nats."""
    tot = sum(float((r.exp() * (r - o)).sum()) for r, o in zip(reference, other))
    return tot / max(1, sum(r.shape[0] for r in reference))


def fake_quantized(weight, bits: int, group_size: int, scale_dtype):
    """``weight`` after symmetric group quantization at ``bits`` and back (what the packed checkpoint holds)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    from ..quantization.formats import choose_qparams, resolved_scales

    args = QuantizationArgs(num_bits=bits, type="int", strategy="group", group_size=group_size, symmetric=True)
    w = weight.detach().float()
    scale, zp = choose_qparams(w, args, scale_dtype, resolved_scales(SimpleNamespace(scales="auto", bits=bits)))
    return fake_quantize(w, scale.float(), zp, args).to(weight.dtype)


def measure(model_dir, examples, lang: str, modules, widths, group_size: int, *, batch_size: int = 8,
            device: str = "cpu", log=print) -> dict[str, dict[int, float]]:
    """module -> {bits: KL to the unquantized model with that module alone at ``bits``} (16 bits: 0)."""
    import torch

    from .. import modelio
    from ..quantization.formats import require_compressed_tensors

    require_compressed_tensors()
    stored = modelio.load_model(model_dir, device="cpu")  # the stored dtype: the scales' dtype
    scale_dtype = next(p.dtype for p in stored.parameters() if p.is_floating_point())
    del stored
    model = modelio.load_model(model_dir, dtype=torch.float32, device=device)
    model.eval()
    batches = [{k: v.to(device) for k, v in b.items()} for b in _batches(model_dir, examples, lang, batch_size)]
    reference = _logprobs(model, batches)
    out: dict[str, dict[int, float]] = {}
    quant = [b for b in sorted(widths) if b != FLOAT_BITS]
    for i, name in enumerate(modules, 1):
        mod = model.get_submodule(name)
        w0 = mod.weight.data.clone()
        out[name] = {}
        with torch.no_grad():
            for b in quant:
                mod.weight.data.copy_(fake_quantized(w0, b, group_size, scale_dtype))
                out[name][b] = round(kl(reference, _logprobs(model, batches)), 7)
            mod.weight.data.copy_(w0)
        out[name][FLOAT_BITS] = 0.0
        log(f"sensitivity {i}/{len(modules)} {name}: " + ", ".join(f"{b}-bit {out[name][b]:.5f}" for b in quant))
    return out
