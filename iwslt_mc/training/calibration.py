"""Held-out and calibration segments, and the calibration pass: what the layer search (prune-layers) and the
activation statistics of prune-ffn and prune-hidden share."""

from __future__ import annotations

from dataclasses import dataclass

from ..decoding.embeds import encode_prompts
from ..errors import UserError


@dataclass
class HeldoutSegment:
    id: str
    wave: object  # 16 kHz float32 array
    reference: str
    source: str = ""


def calibration_segments(ctx, split: str | None, n: int, *, stage: str, use: str) -> tuple[list, list[dict]]:
    """A seeded sample of ``n`` segments of ``ctx.data`` (split ``split``) for activation statistics, and the
    data records for provenance (``use`` + the count and seed). One line naming the stage if there are none."""
    import numpy as np

    from .data import describe_data, load_examples

    exs = load_examples(ctx.data, split=split, seed=ctx.seed, lang=ctx.lang)
    if not exs:
        raise UserError(f"stage {stage}: no calibration examples in {ctx.data} (split {split})")
    if len(exs) > n:
        pick = sorted(np.random.default_rng(ctx.seed).permutation(len(exs))[:n].tolist())
        exs = [exs[i] for i in pick]
    ctx.log(f"{stage}: activation statistics on {len(exs)} segments")
    data = describe_data(ctx.data, split)
    for d in data:
        d["use"] = f"{use} ({len(exs)} segments, seed {ctx.seed})"
    return heldout_segments(exs, ctx.lang), data


def heldout_segments(examples, lang: str) -> list[HeldoutSegment]:
    """Held-out segments (audio decoded once) with the ``lang`` reference; examples without one are an error."""
    from .data import target_text

    out = []
    for ex in examples:
        ref = target_text(ex, lang)
        if ref is None:
            raise UserError(f"{ex.source or ex.id}: no {lang} reference text for the held-out set")
        out.append(HeldoutSegment(ex.id, ex.waveform(), ref, ex.text_en or ""))
    return out


def calibration_pass(model, processor, layout, segments, lang: str, hooks: list, real: dict) -> dict:
    """Run each calibration segment (its prompt and its reference) through the LLM, with ``hooks`` (forward
    hooks the caller registered; removed afterwards, also on error) accumulating activations. Before each
    segment ``real`` gets the encoder positions that hold real audio ("positions", after the stride-2
    convolution; the encoder always sees its whole padded window) and those left after the average pooling
    ("pooled"). Returns the counts the sums are divided by: LLM positions, audio positions, pooled positions."""
    import torch

    counts = {"llm": 0, "audio": 0, "audio_pooled": 0}
    fe = processor.feature_extractor
    max_frames = fe.n_samples // fe.hop_length  # mel frames in the window (3,000 for 30 s)
    tok = processor.tokenizer
    try:
        with torch.inference_mode():
            for seg in segments:
                frames = min(len(seg.wave) // fe.hop_length, max_frames)
                real["positions"] = (frames - 1) // 2 + 1  # after the stride-2 convolution
                real["pooled"] = (real["positions"] - 2) // 2 + 1  # after the average pooling
                counts["audio"] += real["positions"]
                counts["audio_pooled"] += real["pooled"]
                embeds = encode_prompts(model, processor, [seg], lang, batch_size=1)[0]
                ref = tok(seg.reference, add_special_tokens=False)["input_ids"]
                ids = torch.as_tensor(ref, dtype=torch.long, device=embeds.device)
                x = torch.cat([embeds, layout.embed_tokens(ids).to(embeds.dtype)])[None]
                layout.language_model(inputs_embeds=x, use_cache=False)
                counts["llm"] += x.shape[1]
    finally:
        for h in hooks:
            h.remove()
    return counts


def calibration_forward(model, processor, segments, lang: str, hooks: list) -> dict:
    """As :func:`calibration_pass`, for a family whose LLM needs more than its captured prompt embeddings
    (:attr:`~iwslt_mc.families.base.Family.llm_on_captured_embeds` False): each segment, encoded as a training
    example (prompt with its audio, the reference, the end of the turn), runs through the whole model one at a
    time. Returns the counts: LLM positions (the audio counts stay 0: no audio-encoder statistics here)."""
    import torch

    from .training import Collator, encode_example, pad_token_id

    counts = {"llm": 0, "audio": 0, "audio_pooled": 0}
    collate = Collator(pad_token_id(processor, model))
    device = next(model.parameters()).device
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    try:
        with torch.inference_mode():
            for seg in segments:
                batch = collate([encode_example(processor, seg.wave, seg.reference, lang)])
                batch.pop("labels")
                batch = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}
                model(**batch, use_cache=False)
                counts["llm"] += batch["input_ids"].shape[1]
    finally:
        for h in hooks:
            h.remove()
    return counts
