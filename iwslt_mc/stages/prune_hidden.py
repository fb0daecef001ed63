"""prune-hidden: shrink the residual (hidden) width of the LLM and, separately, of the audio encoder.

papers/001 reaches its largest compression by "reducing layer depth, feed-forward hidden size, and
intermediate layer embedding size"; this stage is the last of the three. A residual dimension is
one column of ``embed_tokens``, of every projection reading the residual stream (q/k/v, gate/up,
lm_head) and one row of every projection writing it (o_proj, down_proj, the projector), one entry of
every norm; in the audio encoder the same for conv1/conv2 outputs, position embeddings, q/k/v/out,
fc1/fc2, both LayerNorms per layer, the final LayerNorm and the projector's input
(the family's surgery: :meth:`iwslt_mc.families.base.Family.surgery`, ``prune_llm_hidden``, ``prune_audio_hidden``,
and ``hidden_readers`` for the importance below). Gemma 4 narrows the LLM's width keeping every head unless
``llm_heads`` is given (:attr:`~iwslt_mc.families.base.Family.prune_hidden_heads`), with the run-time factors it
computes from hidden_size compensated in the weights; its layers differ in key/value heads and head size, so its
surgery scores heads per layer (``attention_heads``) and chooses them per layer (``kept_heads``: KV-sharing layers
keep their source layer's) (iwslt_mc/families/gemma4/surgery.py).

Attention: whole heads of the original size are kept (the softmax scaling and Qwen2's rotary
embedding act per head and stay as they were; ``text_config.head_dim`` is written explicitly). In
the LLM, whole grouped-query groups (a key/value head with its query heads) are kept, so the group
size, and hence GQA, stays valid: ``llm_heads`` must be a multiple of it. By default the LLM keeps
``heads x new/old width`` query heads (rounded down to whole groups, at least one group), so a
ratio narrows the model uniformly; ``llm_heads`` sets it. The audio encoder's attention width equals
its d_model, so it keeps ``audio_hidden / head size`` heads (a ratio is rounded down to whole heads).

Importance (``importance`` option), chosen to match prune-ffn's two measures:

- ``activation`` (needs ``--data``): a residual dimension ``d`` scores ``sum over norms of
  E|n_d| x ||W_read[:, d]||``: ``n`` is a norm's output (what the next projections read, so the
  norm's weight and the few massive-activation dimensions of the residual stream are included), and
  ``W_read`` the weights reading it (q/k/v after the attention norm, gate/up after the MLP norm,
  lm_head after the final norm; in the audio encoder q/k/v, fc1 and the projector). It is the
  expected size of what the dimension feeds into the model on real inputs, the criterion prune-ffn
  uses for MLP units (Wanda-style activation x weight) applied to the norm outputs that Minitron
  ranks embedding channels by. A head scores ``E||a_h W_o[:, h]^T||``, the mean size of its
  contribution to the attention output; a group sums its query heads. Averages run over every
  token of ``calibration`` segments (prompt with audio, then the reference, teacher-forced) and, in
  the audio encoder, over the positions of real audio only.
- ``weight`` (no data): ``|g_d| x ||W_read[:, d]||`` with ``g`` the norm's weight, and
  ``||W_o[:, h]|| x ||W_v[h]||`` for a head.

RMSNorm and LayerNorm over a subset are not the original norms (the mean of squares, and the mean,
change), so a narrowed model is not exact: with every dimension kept it is (tested); with fewer,
fine-tuning recovers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..floor.modeldir import read_config
from .base import Stage, StageContext, StageOptions


@dataclass
class PruneHiddenOptions(StageOptions):
    llm_hidden: int | None = field(default=None, metadata={
        "help": "target LLM residual width (hidden_size; 4096 in Qwen2-Audio-7B)"})
    llm_ratio: float | None = field(default=None, metadata={
        "help": "or: LLM width as a fraction of the current one (0 < r <= 1), rounded to an integer"})
    llm_heads: int | None = field(default=None, metadata={
        "help": "LLM query heads kept (head size unchanged; a multiple of the GQA group size); default: the "
                "heads scaled with the width, in whole groups"})
    audio_hidden: int | None = field(default=None, metadata={
        "help": "target audio-encoder width (d_model; 1280 in Qwen2-Audio-7B; a multiple of the head size, 64)"})
    audio_ratio: float | None = field(default=None, metadata={
        "help": "or: audio width as a fraction of the current one, rounded down to whole heads"})
    importance: Literal["weight", "activation"] = field(default="weight", metadata={
        "help": "ranking: weight (norm weight x reading-weight norms) or activation (mean |norm output| x "
                "reading-weight norms on calibration data; needs --data)"})
    calibration: int = field(default=32, metadata={"help": "activation: calibration segments (seeded sample)"})
    split: str | None = field(default="train", metadata={
        "help": "activation: split of the data used for calibration ('train' of the published split; none = all)"})

    def validate(self) -> None:
        st = "stage prune-hidden"
        if all(getattr(self, k) is None for k in ("llm_hidden", "llm_ratio", "llm_heads", "audio_hidden", "audio_ratio")):
            raise UserError(f"{st}: nothing to do (give llm_hidden/llm_ratio and/or audio_hidden/audio_ratio)")
        for a, b in (("llm_hidden", "llm_ratio"), ("audio_hidden", "audio_ratio")):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise UserError(f"{st}: give {a} or {b}, not both")
        for k in ("llm_hidden", "llm_heads", "audio_hidden"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise UserError(f"{st}: option {k!r} must be at least 1")
        for k in ("llm_ratio", "audio_ratio"):
            v = getattr(self, k)
            if v is not None and not 0 < v <= 1:
                raise UserError(f"{st}: option {k!r} must be in (0, 1], not {v}")
        if self.calibration < 1:
            raise UserError(f"{st}: option 'calibration' must be at least 1")

    def smoke(self) -> "PruneHiddenOptions":
        return dataclasses.replace(self, calibration=min(self.calibration, 4))


# ----------------------------------------------------------------------------- target shapes (pure)

def current_shape(cfg: dict) -> dict:
    """Widths and heads of a model from its ``config.json`` (a dict)."""
    t, a = cfg.get("text_config") or {}, cfg.get("audio_config") or {}
    hidden, heads = int(t["hidden_size"]), int(t["num_attention_heads"])
    kv = int(t.get("num_key_value_heads") or heads)
    head_dim = int(t.get("head_dim") or hidden // heads)
    d_model = int(a.get("d_model", 0)) or None
    a_heads = int(a.get("encoder_attention_heads", 0)) or None
    return {"hidden": hidden, "heads": heads, "kv_heads": kv, "head_dim": head_dim, "audio_hidden": d_model,
            "audio_heads": a_heads, "audio_head_dim": d_model // a_heads if d_model and a_heads else None}


def target_shape(cfg: dict, o: PruneHiddenOptions, *, where: str = "") -> dict:
    """The shape after the stage (same keys as :func:`current_shape`); UserError when the options do not fit.

    Shared by the stage, ``build --dry-run`` and the planner, so what is predicted is what is built."""
    from ..families import default_family, family_of_model_type

    st = f"stage prune-hidden{' (' + where + ')' if where else ''}"
    cur = current_shape(cfg)
    fam = family_of_model_type(cfg.get("model_type")) or default_family()
    asked = o.llm_heads if o.llm_heads is not None and o.llm_heads != cur["heads"] else None
    fam.check_hidden_pruning(cfg, heads=asked,
                             audio=o.audio_hidden is not None or (o.audio_ratio is not None and o.audio_ratio < 1))
    out = dict(cur)
    group = cur["heads"] // cur["kv_heads"]
    hidden = o.llm_hidden if o.llm_hidden is not None else (
        max(1, round(cur["hidden"] * o.llm_ratio)) if o.llm_ratio is not None else cur["hidden"])
    if hidden > cur["hidden"]:
        raise UserError(f"{st}: llm_hidden={hidden} is larger than the current width {cur['hidden']}")
    if o.llm_heads is not None:
        heads = o.llm_heads
    elif not fam.prune_hidden_heads:  # the family keeps every head (its attention width is not tied to hidden_size)
        heads = cur["heads"]
    else:
        heads = max(group, (cur["heads"] * hidden // cur["hidden"]) // group * group)
    if heads > cur["heads"] or heads % group:
        raise UserError(f"{st}: llm_heads={heads} must be a multiple of the GQA group size {group} "
                        f"({cur['heads']} query / {cur['kv_heads']} key-value heads) and at most {cur['heads']}")
    out.update(hidden=hidden, heads=heads, kv_heads=heads // group)
    if cur["audio_hidden"] is not None:
        hd = cur["audio_head_dim"]
        if o.audio_hidden is not None:
            ah = o.audio_hidden
            if ah % hd:
                raise UserError(f"{st}: audio_hidden={ah} must be a multiple of the audio head size {hd} "
                                "(the encoder's attention width equals its d_model; whole heads are kept)")
        elif o.audio_ratio is not None:
            ah = max(hd, int(cur["audio_hidden"] * o.audio_ratio) // hd * hd)
        else:
            ah = cur["audio_hidden"]
        if ah > cur["audio_hidden"]:
            raise UserError(f"{st}: audio_hidden={ah} is larger than the current width {cur['audio_hidden']}")
        out.update(audio_hidden=ah, audio_heads=ah // hd)
    return out


# ----------------------------------------------------------------------------- importance

def _read_norm(*linears):
    """Column norms of the stacked weights of ``linears`` (what reads one residual dimension)."""
    import torch

    return torch.sqrt(sum(l.weight.float().pow(2).sum(0) for l in linears)).cpu()


def _head_contrib_weight(o_w, heads, head_dim, v_w=None, group=1):
    """||W_o[:, h]|| x ||W_v[kv(h)]|| per query head h."""
    o = o_w.float().reshape(o_w.shape[0], heads, head_dim).pow(2).sum((0, 2)).sqrt()
    if v_w is None:
        return o.cpu()
    v = v_w.float().reshape(-1, head_dim, v_w.shape[1]).pow(2).sum((1, 2)).sqrt()
    return (o * v.repeat_interleave(group)).cpu()


def _attention_heads(surgery, layout) -> list[tuple]:
    """Per LLM decoder layer: (o_proj, query heads, head size, the value weight, query heads per key/value head):
    the family surgery's ``attention_heads`` where its layers differ, else every layer's from ``llm_attention_shape``."""
    if hasattr(surgery, "attention_heads"):
        return surgery.attention_heads(layout)
    n_heads, kv, hd = surgery.llm_attention_shape(layout)
    return [(l.self_attn.o_proj, n_heads, hd, l.self_attn.v_proj.weight, n_heads // kv) for l in layout.decoder_layers]


def weight_importance(model, heads: bool = True) -> dict:
    """Data-free scores: ``llm_dims``, ``llm_heads`` (per query head; None without ``heads``), ``audio_dims``,
    ``audio_heads`` (None where the family's surgery names no audio readers)."""
    import torch

    from ..families import layout_of as find_layout, surgery_of

    layout = find_layout(model)
    surgery = surgery_of(model)
    llm_r, audio_r, _ = surgery.hidden_readers(layout)
    out = {"llm_dims": sum(n.weight.float().abs().cpu() * _read_norm(*ls) for n, ls in llm_r),
           "llm_heads": None, "audio_dims": None, "audio_heads": None}
    if heads:
        layers = [_head_contrib_weight(o.weight, n, hd, v, g) for o, n, hd, v, g in _attention_heads(surgery, layout)]
        out["llm_heads"], out["llm_head_layers"] = sum(layers), layers
    if audio_r:
        a_heads, a_hd = surgery.audio_attention_shape(layout)
        out["audio_dims"] = sum(n.weight.float().abs().cpu() * _read_norm(*ls) for n, ls in audio_r)
        out["audio_heads"] = sum(_head_contrib_weight(l.self_attn.out_proj.weight, a_heads, a_hd,
                                                      l.self_attn.v_proj.weight) for l in layout.audio_layers) \
            if layout.audio_layers else torch.zeros(a_heads)
    return out


def activation_importance(model, processor, segments, lang: str, heads: bool = True) -> dict:
    """Scores measured on ``segments`` (see the module docstring); same keys as :func:`weight_importance`."""
    import torch

    from ..families import family_of_model, layout_of as find_layout, surgery_of
    from ..training.calibration import calibration_forward, calibration_pass

    layout = find_layout(model)
    surgery = surgery_of(model)
    llm_r, audio_r, final_audio_norm = surgery.hidden_readers(layout)
    sums = {"llm_norm": [None] * len(llm_r), "audio_norm": [None] * len(audio_r)}
    real = {}

    def norm_hook(store, i, kind):
        def hook(mod, args, out):
            a = out.detach().float().abs()
            if kind == "audio":
                a = a[:, :real["pooled"] if mod is final_audio_norm else real["positions"]]
            s = a.reshape(-1, a.shape[-1]).sum(0).cpu()
            store[i] = s if store[i] is None else store[i] + s
        return hook

    def head_hook(key, n_heads, head_dim, kind):
        def hook(mod, args):
            a = args[0].detach().float()
            if kind == "audio":
                a = a[:, :real["positions"]]
            a = a.reshape(-1, n_heads, head_dim)
            w = mod.weight.float().reshape(mod.weight.shape[0], n_heads, head_dim)
            store = sums[key[0]][key[1]] if isinstance(key, tuple) else sums[key]
            for h in range(n_heads):
                store[h] += (a[:, h] @ w[:, h].T).norm(dim=-1).sum().cpu()
        return hook

    hooks = [n.register_forward_hook(norm_hook(sums["llm_norm"], i, "llm")) for i, (n, _) in enumerate(llm_r)]
    hooks += [n.register_forward_hook(norm_hook(sums["audio_norm"], i, "audio")) for i, (n, _) in enumerate(audio_r)]
    if heads:
        attn = _attention_heads(surgery, layout)
        sums["llm_head_layers"] = [torch.zeros(n) for _o, n, _hd, _v, _g in attn]
        hooks += [o.register_forward_pre_hook(head_hook(("llm_head_layers", i), n, hd, "llm"))
                  for i, (o, n, hd, _v, _g) in enumerate(attn)]
    if audio_r:
        a_heads, a_hd = surgery.audio_attention_shape(layout)
        sums["audio_heads"] = torch.zeros(a_heads)
        hooks += [l.self_attn.out_proj.register_forward_pre_hook(head_hook("audio_heads", a_heads, a_hd, "audio"))
                  for l in layout.audio_layers]
    if family_of_model(model).llm_on_captured_embeds:
        counts = calibration_pass(model, processor, layout, segments, lang, hooks, real)
    else:  # the whole model on each teacher-forced example (its LLM needs more than the prompt embeddings)
        counts = calibration_forward(model, processor, segments, lang, hooks)
    n_llm, n_audio = max(counts["llm"], 1), max(counts["audio"], 1)
    out = {"llm_dims": sum(s / n_llm * _read_norm(*ls) for s, (_, ls) in zip(sums["llm_norm"], llm_r)),
           "llm_heads": sum(sums["llm_head_layers"]) / n_llm if heads else None, "audio_dims": None, "audio_heads": None}
    if heads:
        out["llm_head_layers"] = [s / n_llm for s in sums["llm_head_layers"]]
    if audio_r:
        out["audio_dims"] = sum(s / (max(counts["audio_pooled"], 1) if n is final_audio_norm else n_audio) * _read_norm(*ls)
                                for s, (n, ls) in zip(sums["audio_norm"], audio_r))
        out["audio_heads"] = sums["audio_heads"] / n_audio
    return out


def top_indices(scores, k: int):
    """Indices (ascending) of the ``k`` highest scores; ties go to the lower index."""
    import torch

    order = torch.sort(torch.as_tensor(scores).float(), descending=True, stable=True).indices[:k]
    return order.sort().values


def group_scores(head_scores, group: int):
    """Per key/value head, the sum of its query heads' scores."""
    return head_scores.reshape(-1, group).sum(1)


# ----------------------------------------------------------------------------- the stage

class PruneHidden(Stage):
    name = "prune-hidden"
    Options = PruneHiddenOptions
    techniques = ["hidden-size (residual width) pruning"]

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> dict:
        import copy

        if cfg.get("quantization_config"):
            raise UserError(f"stage prune-hidden: {where} is quantized; narrow the model before quantizing it")
        from ..families import default_family, family_of_model_type

        shape = target_shape(cfg, self.options, where=where)
        fam = family_of_model_type(cfg.get("model_type")) or default_family()
        heads_changed = shape["heads"] != current_shape(cfg)["heads"]
        heads_cfg = fam.config_after_head_pruning(cfg, shape["heads"]) if heads_changed else None
        out = heads_cfg or copy.deepcopy(cfg)
        t = out["text_config"]
        head_dim = current_shape(cfg)["head_dim"]
        t.update(hidden_size=shape["hidden"])
        if heads_cfg is None:
            t.update(num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"], head_dim=head_dim)
        if shape["audio_hidden"] is not None:
            out["audio_config"].update(d_model=shape["audio_hidden"], encoder_attention_heads=shape["audio_heads"])
        return out

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        cfg = read_config(in_dir)
        if cfg.get("quantization_config"):
            raise UserError(f"stage prune-hidden: {in_dir} is quantized; narrow the model before quantizing it")
        target_shape(cfg, self.options)
        if self.options.importance == "activation":
            from ..floor.languages import check_lang

            check_lang(ctx.lang)
            if not ctx.data:
                raise UserError("stage prune-hidden: importance activation needs calibration data (--data SPEC)")

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from .. import modelio
        from ..families import family_of_model, surgery_of
        from ..training.common import checkpoint_dtype

        o = self.options
        cfg = read_config(in_dir)
        before, after = current_shape(cfg), target_shape(cfg, o)
        run_dtype = modelio.runtime_dtype(in_dir, ctx.resolved_device())
        model = modelio.load_model(in_dir, dtype=run_dtype, device=ctx.resolved_device())
        processor = modelio.load_processor(in_dir)
        data = []
        heads_changed = after["heads"] != before["heads"]
        if o.importance == "activation":
            from ..training.calibration import calibration_segments

            segs, data = calibration_segments(ctx, o.split, o.calibration, stage="prune-hidden",
                                              use="calibration of hidden-dimension and head importance")
            scores = activation_importance(model, processor, segs, ctx.lang, heads=heads_changed)
            how = f"activation importance on {len(segs)} segments"
        else:
            scores = weight_importance(model, heads=heads_changed)
            how = "weight-norm importance"
        techniques = []
        llm_changed = (after["hidden"], after["heads"]) != (before["hidden"], before["heads"])
        if llm_changed:
            group = before["heads"] // before["kv_heads"]
            surgery = surgery_of(model)
            if not heads_changed:
                kv = None
            elif hasattr(surgery, "kept_heads"):  # per layer (the family's layers differ in their key/value heads)
                kv = surgery.kept_heads(model, scores["llm_head_layers"], after["heads"])
            else:
                kv = top_indices(group_scores(scores["llm_heads"], group), after["kv_heads"])
            model = surgery.prune_llm_hidden(model, top_indices(scores["llm_dims"], after["hidden"]), kv)
            heads = (f"{before['heads']} -> {after['heads']} attention heads of {before['head_dim']}"
                     if family_of_model(model).prune_hidden_heads or heads_changed else "every attention head kept")
            techniques.append(f"LLM hidden-size pruning ({before['hidden']} -> {after['hidden']} dimensions, "
                              f"{heads}, {how})")
        if after["audio_hidden"] != before["audio_hidden"]:
            heads = top_indices(scores["audio_heads"], after["audio_heads"])
            surgery_of(model).prune_audio_hidden(model, top_indices(scores["audio_dims"], after["audio_hidden"]), heads)
            techniques.append(f"audio-encoder hidden-size pruning ({before['audio_hidden']} -> {after['audio_hidden']} "
                              f"dimensions, {before['audio_heads']} -> {after['audio_heads']} heads, {how})")
        if not techniques:
            ctx.log("prune-hidden: target widths equal the current ones; weights copied unchanged")
        modelio.save_model(model, processor, out_dir, dtype=checkpoint_dtype(in_dir) if run_dtype else None)
        return {"techniques": techniques or ["hidden-size pruning (no change)"], "data": data,
                "shape_before": before, "shape_after": after}
