"""``plan --target``: the specs whose predicted size lands in a bin, least to most aggressive, each with the
stages that build it (:mod:`.recipe_spec`); predictions come from :mod:`.planner`."""

from __future__ import annotations

import json

from ..errors import UserError
from ..floor.sizes import FLOAT_PRECISIONS, disk_tensors, is_quant_precision, parse_ct_precision, precision_bits
from ..sizing.track import get_edition
from .planner import (Prediction, Spec, _inventory_for, _round_width, apply_hidden_dims, base_dims,
                      hidden_dims_for_ratio, predict, reference_config, resolve_dims, with_torch_save)
from .recipe_spec import _config_float, build_plan

# compressed-tensors precisions `plan --target` searches (groups of 128, asymmetric: quantize method ct's defaults)
TARGET_CT_PRECISIONS = ("ct4", "ct3", "ct2")


def _digits_sum(n: int) -> int:
    """Total number of decimal digits of 0, 1, ..., n-1."""
    total, lo, d = 0, 0, 1
    while lo < n:
        hi = min(n, 10**d)
        total += (hi - lo) * d
        lo, d = hi, d + 1
    return total


def estimate_bytes(spec: Spec, base_config) -> int:
    """An upper bound of :func:`predict`'s bytes, exact for the data and within a few kB for the header.

    Costs one pass over the per-layer templates instead of every tensor, for searching many specs.
    """
    dims = resolve_dims(spec, base_config)
    templates = _inventory_for(apply_hidden_dims(base_config, dims), spec.ffn_dim, spec.audio_ffn_dim, spec.vocab)
    fdt = spec.storage_float
    data = text = entries = 0
    for t in templates:
        count = dims["llm_layers"] if t.llm_layer is not None else (dims["audio_layers"] or 0) if t.audio_layer is not None else 1
        if count == 0:
            continue
        extra_digits = _digits_sum(count) - count if (t.llm_layer is not None or t.audio_layer is not None) else 0
        prec = spec.precision_of(t.component)
        if is_quant_precision(prec) and not (t.linear or (t.embedding and t.component == "embed_tokens")):
            prec = fdt
        for name, dt, shape, nb, _ in disk_tensors(t.key, t.shape, prec, fdt)[0]:
            data += nb * count
            # '"name":{"dtype":"DT","shape":[S],"data_offsets":[A,B]},' has 44 fixed characters
            entry = len(json.dumps(name)) + len(dt) + len(",".join(map(str, shape))) + 44
            text += entry * count + extra_digits
            entries += count
    text += entries * 2 * len(str(data)) + 40
    return 8 + text + 8 + data


def specs_for_bin(target: str, base_config=None, edition: str = "2025", *, llm_layers: int | None = None,
                  audio_layers: int | None = None, vocab: int | None = None, precision: str | None = None,
                  quantize_embeddings: bool | None = None, ffn_dim: int | None = None,
                  audio_ffn_dim: int | None = None, component_precision: dict | None = None,
                  limit: int = 8) -> list[Prediction]:
    """Specs whose predicted size lands in bin ``target``, least to most aggressive.

    Only specs the stages can build are returned (see :func:`build_plan`; each row's ``plan``).
    Arguments left ``None`` are varied over a small grid (precision: the base's float, int8, nf4-dq and
    compressed-tensors ct4/ct3/ct2 (``TARGET_CT_PRECISIONS``); bitsandbytes with lm_head quantized or not,
    ct with the token embeddings and lm_head quantized or not; vocabulary full/64k/32k/16k, audio layers
    100/75/50/25/12.5%); for each combination the most LLM layers that fit are kept (all of them when
    ``llm_layers`` is given, which then must fit). ``quantize_embeddings``: False (neither), True or
    ``"lm_head"`` (lm_head only), ``"all"`` (embed_tokens and lm_head: ct precisions only). Aggressiveness:
    fractions of LLM and audio layers removed, plus a quarter of the fraction of vocabulary removed, plus
    the precision's step away from 16 bits; at equal aggressiveness a bitsandbytes spec comes before a ct
    one (the shipped recipes use it, and it stays 4-bit in memory where ct unpacks to floats at load).
    """
    ed = get_edition(edition)
    names = {b.name: b for b in ed.bins}
    if not names:
        raise UserError(f"edition {ed.key} has no size bins: --target needs an edition with bins (e.g. 2025)")
    key = target if target in names else target.capitalize()
    if key not in names:
        raise UserError(f"unknown bin {target!r} for edition {ed.key} (use one of {', '.join(names)})")
    b = names[key]
    if base_config is None:
        base_config = reference_config()
    from ..families import families, family_of_config

    fam = family_of_config(base_config)
    if not fam.target_search:
        searched = " or ".join(f.label for f in families() if f.target_search)
        raise UserError(f"--target searches {searched} bases only for now; plan a {fam.label} spec by hand")
    base = base_dims(base_config)
    if quantize_embeddings is True:
        quantize_embeddings = "lm_head"
    if quantize_embeddings not in (None, False, "lm_head", "all"):
        raise UserError(f"quantize_embeddings {quantize_embeddings!r}: False, 'lm_head' or 'all'")
    if quantize_embeddings == "all" and precision and parse_ct_precision(precision) is None:
        raise UserError(f"quantized token embeddings need a ct precision (compressed-tensors); {precision} "
                        "(bitsandbytes) leaves nn.Embedding in float: quantize lm_head only")
    precisions = ([precision] if precision else
                  [_config_float(base_config), "int8", "nf4-dq", *TARGET_CT_PRECISIONS])
    if quantize_embeddings == "all":
        precisions = [p for p in precisions if parse_ct_precision(p) is not None]
    vocabs = [vocab] if vocab else _grid(base["vocab"], (65536, 32768, 16384))
    na = base["audio_layers"]
    audios = [audio_layers] if audio_layers else (sorted({max(1, na * k // 8) for k in (8, 6, 4, 2, 1)}, reverse=True) if na else [None])
    top = llm_layers or base["llm_layers"]
    bottom = llm_layers or 1
    # Narrower MLPs only when nothing else fits (width pruning needs the most retraining).
    widths = [(ffn_dim, audio_ffn_dim)]
    if ffn_dim is None and audio_ffn_dim is None and base.get("audio_ffn_dim"):
        widths += [(base["ffn_dim"] // k, base["audio_ffn_dim"] // k) for k in (2, 4)]
    found: dict[tuple, Prediction] = {}
    skipped: dict[str, str] = {}
    for ffn, affn in widths:
        if len(found) >= limit:
            break
        _search(found, b, base_config, edition, precisions, vocabs, audios, quantize_embeddings, ffn, affn,
                component_precision, bottom, top, skipped)
    if precision and not found and precision in skipped:
        raise UserError(f"--target {target} with precision {precision}: {skipped[precision]}")
    if len(found) < limit or (b.high is not None and b.high <= HIDDEN_SEARCH_BELOW):
        found.update(_search_hidden(b, base_config, edition, vocab=vocab, audio_layers=audio_layers, limit=limit,
                                    precision=precision, embeddings=quantize_embeddings == "all"))
    ranked = sorted(found.values(), key=lambda p: (aggressiveness(p, base), parse_ct_precision(p.spec.precision) is not None,
                                                   -p.bytes))
    seen, out = set(), []
    for p in ranked:
        dims = tuple(p.dims.get(k) for k in ("llm_layers", "audio_layers", "vocab", "ffn_dim", "audio_ffn_dim", "hidden", "audio_hidden"))
        if dims not in seen:  # the same shape at a smaller precision adds nothing to the table
            seen.add(dims)
            out.append(p)
    out = _keep_hidden_rows(out, base, limit)
    for p in out:
        p.plan = build_plan(p.spec, base_config)
        with_torch_save(p)
    return out


def _search(found, b, base_config, edition, precisions, vocabs, audios, quantize_embeddings, ffn_dim, audio_ffn_dim,
            component_precision, bottom, top, skipped: dict):
    """Add the specs of the grid that land in bin ``b`` to ``found``; ``skipped``: precision -> why none could be built."""
    fdt = _config_float(base_config)
    for prec in precisions:
        if quantize_embeddings is not None:
            embs = [quantize_embeddings]
        elif not is_quant_precision(prec):
            embs = [False]
        else:  # bitsandbytes quantizes Linear layers only (lm_head); compressed-tensors the embeddings too
            embs = [False, "all"] if parse_ct_precision(prec) is not None else [False, "lm_head"]
        for emb in embs:
            for v in vocabs:
                for al in audios:
                    def make(n, prec=prec, emb=emb, v=v, al=al):
                        # emb "lm_head": lm_head quantized too, embed_tokens stays float; "all": both quantized
                        per = dict(component_precision or {})
                        if emb == "lm_head":
                            per.setdefault("embed_tokens", fdt)
                        return Spec(llm_layers=n, audio_layers=al, ffn_dim=ffn_dim, audio_ffn_dim=audio_ffn_dim, vocab=v,
                                    precision=prec, component_precision=per, quantize_embeddings=bool(emb),
                                    float_dtype=None if prec in FLOAT_PRECISIONS else fdt)
                    try:  # only what the stages can build (and a ct group size that divides every width)
                        build_plan(make(top), base_config, match_recipe=False)
                        estimate_bytes(make(top), base_config)
                    except UserError as e:
                        skipped.setdefault(prec, str(e))
                        continue
                    n = _most_layers_below(lambda n: estimate_bytes(make(n), base_config), b.high, bottom, top)
                    if n is None:
                        continue
                    pred = predict(make(n), base_config, edition, torch_save=False)
                    # the estimate is an upper bound: one more layer may still fit
                    if n < top and b.high is not None:
                        nxt = predict(make(n + 1), base_config, edition, torch_save=False)
                        if nxt.bytes < b.high:
                            pred = nxt
                    if pred.bytes >= b.low and (b.high is None or pred.bytes < b.high):
                        found[tuple(pred.dims.values()) + (prec, emb)] = pred


def aggressiveness(p: Prediction, base: dict) -> float:
    """A rough, documented ordering of how much a spec takes away (0 = nothing)."""
    def removed(k):
        return 1.0 - p.dims[k] / base[k] if base.get(k) else 0.0
    # Quantization costs far less quality than removing layers (the published 4-bit models lose about
    # a point where removing a quarter of the layers loses several), hence the small weights.
    # 2 bits (ct2, round-to-nearest without calibration) weighs like removing most of the layers: on the
    # toy teacher its KL to the teacher is 0.09-0.17 against ct3's 0.014-0.02 and ct4's 0.007
    # (docs/bench/quantization.md), and calibration-free 2-bit weights are known to break 7B LLMs.
    quant = {32: 0.0, 16: 0.0, 8: 0.05, 7: 0.07, 6: 0.1, 5: 0.12, 4: 0.15, 3: 0.25, 2: 0.8}[precision_bits(p.spec.precision)]
    if p.spec.quantize_embeddings and is_quant_precision(p.spec.precision):
        quant += 0.05  # lm_head quantized too
    if is_quant_precision(p.spec.precision_of("embed_tokens")):
        quant += 0.05  # and the token embeddings (ct4+emb: KL to the toy teacher 0.014, between ct4's 0.007 and ct3's 0.02)
    widths = sum(removed(k) for k in ("ffn_dim", "audio_ffn_dim", "hidden", "audio_hidden"))
    return removed("llm_layers") + removed("audio_layers") + 0.25 * removed("vocab") + widths + quant


def _grid(base: int, options) -> list[int]:
    return [base] + [v for v in options if v < base]


def _most_layers_below(size_of, high: int | None, lo: int, hi: int) -> int | None:
    """Largest layer count in [lo, hi] whose size is below ``high`` (size grows with layers), or None."""
    if high is None:
        return hi
    if size_of(lo) >= high:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size_of(mid) < high:
            lo = mid
        else:
            hi = mid - 1
    return lo


# Bins whose upper edge is at most this (Bin4, Bin5) are searched with narrower widths too: there,
# removing layers alone leaves one LLM layer or none.
HIDDEN_SEARCH_BELOW = 500 * 10**6


HIDDEN_RATIOS = (0.75, 0.5, 0.375, 0.25)


def _keep_hidden_rows(ranked: list, base: dict, limit: int) -> list:
    """The first ``limit`` of ``ranked``, with up to half of them narrow (prune-hidden) specs when there are
    any: the aggressiveness order counts every narrowed width as a whole removed component, so without
    this a one-layer full-width spec would always push them off the table."""
    narrow = [p for p in ranked if p.dims.get("hidden") != base.get("hidden")]
    if not narrow:
        return ranked[:limit]
    keep = narrow[: max(1, limit // 2)]
    rest = [p for p in ranked if p not in keep][: limit - len(keep)]
    return [p for p in ranked if p in keep or p in rest]


def _search_hidden(b, base_config, edition, *, vocab=None, audio_layers=None, limit=8, precision=None,
                   embeddings=False) -> dict:
    """Buildable narrow specs in bin ``b``: widths (LLM, audio, both FFNs) scaled by each of HIDDEN_RATIOS,
    NF4 with double quantization (or ``precision`` when it is a quantized one) of every linear layer
    including lm_head (embed_tokens stays in the float dtype, as bitsandbytes leaves nn.Embedding, unless
    ``embeddings`` with a ct precision), trimmed vocabularies, fewer audio layers; the most LLM layers
    that fit. Widths a ct group size does not divide are left out."""
    prec = precision if precision and is_quant_precision(precision) else "nf4-dq"
    if precision and not is_quant_precision(precision):
        return {}
    base = base_dims(base_config)
    stored = str(getattr(base_config, "dtype", None) or "bfloat16")
    fdt = {"float16": "fp16", "float32": "fp32"}.get(stored.replace("torch.", ""), "bf16")  # as saved: the base's dtype
    found = {}
    vocabs = [vocab] if vocab else _grid(base["vocab"], (32768, 16384))
    na = base["audio_layers"]
    audios = [audio_layers] if audio_layers else (sorted({max(1, na * k // 8) for k in (8, 4, 2)}, reverse=True) if na else [None])
    for r in HIDDEN_RATIOS:
        widths = hidden_dims_for_ratio(base_config, r)
        ffn = _round_width(base["ffn_dim"] * r)
        affn = _round_width(base["audio_ffn_dim"] * r) if base.get("audio_ffn_dim") else None
        for v in vocabs:
            for al in audios:
                def make(n, v=v, al=al):
                    return Spec(llm_layers=n, audio_layers=al, ffn_dim=ffn, audio_ffn_dim=affn, vocab=v, precision=prec,
                                component_precision={} if embeddings else {"embed_tokens": fdt}, quantize_embeddings=True,
                                float_dtype=fdt, **widths)
                try:
                    build_plan(make(1), base_config, match_recipe=False)
                    estimate_bytes(make(1), base_config)
                except UserError:
                    continue
                n = _most_layers_below(lambda n: estimate_bytes(make(n), base_config), b.high, 1, base["llm_layers"])
                if n is None:
                    continue
                pred = predict(make(n), base_config, edition, torch_save=False)
                if n < base["llm_layers"] and b.high is not None:
                    nxt = predict(make(n + 1), base_config, edition, torch_save=False)
                    if nxt.bytes < b.high:
                        pred = nxt
                # a narrow model with one or two layers is not worth listing: wider and shallower is not the point
                if pred.dims["llm_layers"] >= 4 and pred.bytes >= b.low and (b.high is None or pred.bytes < b.high):
                    found[tuple(pred.dims.values()) + (prec, "hidden")] = pred
    return found
