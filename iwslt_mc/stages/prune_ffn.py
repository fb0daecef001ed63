"""prune-ffn: structured pruning of MLP intermediate units to a target width.

LLM layers: unit j of a Qwen2 MLP is row j of ``gate_proj`` and ``up_proj`` and column j of
``down_proj``; audio-encoder layers: row j of ``fc1`` (and its bias) and column j of ``fc2``. Each
layer keeps its ``width`` most important units (the same width in every layer, because the config
has one ``intermediate_size`` / ``encoder_ffn_dim``, which are updated). The family's surgery narrows them
(:meth:`~iwslt_mc.families.base.Family.surgery`: ``ffn_widths``, ``llm_mlp_widths``, ``prune_llm_mlp``,
``prune_audio_ffn``) and its :meth:`~iwslt_mc.families.base.Family.check_ffn_pruning` refuses, from the
config, a width its architecture has no setting for (Gemma 4: its MLPs are gate/up/down as Qwen2's, with
double-wide KV-sharing layers keeping twice the units; its audio encoder's FFN width is fixed).

Importance of a unit (``importance`` option):

- ``weight`` (default, needs no data): the product of the L2 norms of the unit's weights, i.e.
  ``|gate_j| * |up_j| * |down_:,j|`` in the LLM and ``|fc1_j| * |fc2_:,j|`` in the audio encoder. It
  bounds how much the unit can add to the layer's output for an input of a given size.
- ``activation`` (needs ``--data``): ``E|a_j| * |down_:,j|`` (audio: ``E|a_j| * |fc2_:,j|``), where
  ``a_j`` is the unit's activation (the input of ``down_proj`` / ``fc2``) averaged over every token of
  ``calibration`` segments (prompt with audio, then the reference translation, teacher-forced): the
  expected size of the unit's contribution on real inputs, as in activation-aware pruning (Wanda).
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
class PruneFFNOptions(StageOptions):
    llm_width: int | None = field(default=None, metadata={
        "help": "target LLM MLP width (intermediate_size; 11008 in Qwen2-Audio-7B); any width works, a multiple "
                "of 64 is hardware-friendly (GPU tiles; bitsandbytes' fast CPU 4-bit kernel takes only such layers)"})
    audio_width: int | None = field(default=None, metadata={
        "help": "target audio-encoder FFN width (encoder_ffn_dim; 5120 in Qwen2-Audio-7B); any width works, "
                "a multiple of 64 is hardware-friendly"})
    importance: Literal["weight", "activation"] = field(default="weight", metadata={
        "help": "unit ranking: weight (product of the unit's weight L2 norms) or activation "
                "(mean |activation| on calibration data x output-weight norm; needs --data)"})
    multiple_of: int = field(default=64, metadata={
        "help": "round each target width down to a multiple of this (default 64: hardware-friendly GPU tiles, and "
                "bitsandbytes' fast CPU 4-bit path takes only such widths); correctness does not depend on it: "
                "1 keeps the exact width; a target below one multiple is kept as given"})
    calibration: int = field(default=32, metadata={"help": "activation: calibration segments (seeded sample)"})
    split: str | None = field(default="train", metadata={
        "help": "activation: split of the data used for calibration ('train' of the published split; none = all)"})

    def validate(self) -> None:
        if self.llm_width is None and self.audio_width is None:
            raise UserError("stage prune-ffn: nothing to do (give llm_width and/or audio_width)")
        for k in ("llm_width", "audio_width"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise UserError(f"stage prune-ffn: option {k!r} must be at least 1")
        if self.calibration < 1:
            raise UserError("stage prune-ffn: option 'calibration' must be at least 1")
        if self.multiple_of < 1:
            raise UserError("stage prune-ffn: option 'multiple_of' must be at least 1")

    def widths(self) -> tuple[int | None, int | None]:
        """The LLM and audio target widths after rounding (what the stage builds and the planner predicts)."""
        return rounded_width(self.llm_width, self.multiple_of), rounded_width(self.audio_width, self.multiple_of)

    def smoke(self) -> "PruneFFNOptions":
        return dataclasses.replace(self, calibration=min(self.calibration, 4))


def rounded_width(width: int | None, multiple_of: int) -> int | None:
    """``width`` rounded down to a multiple of ``multiple_of``; a width below one multiple stays as given."""
    if width is None or width < multiple_of:
        return width
    return width // multiple_of * multiple_of


def weight_importance(model, audio: bool = True) -> tuple[list, list]:
    """Per layer, the weight-norm importance of each LLM MLP unit and (``audio``) each audio FFN unit."""
    from ..families import layout_of as find_layout

    layout = find_layout(model)
    llm = []
    for layer in layout.decoder_layers:
        m = layer.mlp
        llm.append((m.gate_proj.weight.float().norm(dim=1) * m.up_proj.weight.float().norm(dim=1)
                    * m.down_proj.weight.float().norm(dim=0)).cpu())
    out_audio = []
    for layer in (layout.audio_layers if audio else ()):
        out_audio.append((layer.fc1.weight.float().norm(dim=1) * layer.fc2.weight.float().norm(dim=0)).cpu())
    return llm, out_audio


def activation_importance(model, processor, segments, lang: str, audio: bool = True) -> tuple[list, list]:
    """Per layer, ``E|activation| x output-weight norm`` of each unit over the tokens of ``segments`` (audio
    FFN units only with ``audio``)."""
    from ..families import family_of_model, layout_of as find_layout
    from ..training.calibration import calibration_forward, calibration_pass

    layout = find_layout(model)
    audio_layers = list(layout.audio_layers) if audio else []
    llm_sum = [None] * layout.num_llm_layers
    audio_sum = [None] * len(audio_layers)
    real = {}  # the encoder always sees its whole window (30 s, padded): count only frames of real audio

    def add(store, i, kind):
        def hook(mod, args):
            a = args[0].detach().float().abs()
            if kind == "audio":
                a = a[:, :real["positions"]]
            s = a.reshape(-1, a.shape[-1]).sum(0)
            store[i] = s if store[i] is None else store[i] + s
        return hook

    hooks = [layer.mlp.down_proj.register_forward_pre_hook(add(llm_sum, i, "llm"))
             for i, layer in enumerate(layout.decoder_layers)]
    hooks += [layer.fc2.register_forward_pre_hook(add(audio_sum, i, "audio"))
              for i, layer in enumerate(audio_layers)]
    if family_of_model(model).llm_on_captured_embeds:
        counts = calibration_pass(model, processor, layout, segments, lang, hooks, real)
    else:  # the whole model on each teacher-forced example (its LLM needs more than the prompt embeddings)
        counts = calibration_forward(model, processor, segments, lang, hooks)
    llm = [(s / max(counts["llm"], 1)).cpu() * layer.mlp.down_proj.weight.float().norm(dim=0).cpu()
           for s, layer in zip(llm_sum, layout.decoder_layers)]
    audio_out = [(s / max(counts["audio"], 1)).cpu() * layer.fc2.weight.float().norm(dim=0).cpu()
             for s, layer in zip(audio_sum, audio_layers)]
    return llm, audio_out


def top_units(scores, width: int):
    """Indices (ascending) of the ``width`` highest scores; ties go to the lower index."""
    import torch

    order = torch.sort(torch.as_tensor(scores).float(), descending=True, stable=True).indices[:width]
    return order.sort().values


class PruneFFN(Stage):
    name = "prune-ffn"
    Options = PruneFFNOptions
    techniques = ["structured FFN pruning"]

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        o = self.options
        self._check_config(read_config(in_dir), str(in_dir))
        if o.importance == "activation":
            from ..floor.languages import check_lang

            check_lang(ctx.lang)
            if not ctx.data:
                raise UserError("stage prune-ffn: importance activation needs calibration data (--data SPEC)")

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> dict:
        import copy

        o = self.options
        self._check_config(cfg, where)
        out = copy.deepcopy(cfg)
        for k, section, key in (("llm_width", "text_config", "intermediate_size"),
                                ("audio_width", "audio_config", "encoder_ffn_dim")):
            width = rounded_width(getattr(o, k), o.multiple_of)
            if width is not None and key in (out.get(section) or {}):
                out[section][key] = width
        return out

    def _check_config(self, cfg: dict, in_dir: str) -> None:
        from ..families import family_of_model_type

        o = self.options
        fam = family_of_model_type(cfg.get("model_type"))
        if fam is not None:  # what the architecture cannot narrow (Family.check_ffn_pruning)
            fam.check_ffn_pruning(cfg, llm=o.llm_width is not None, audio=o.audio_width is not None)
        cur = {"llm_width": cfg.get("text_config", {}).get("intermediate_size"),
               "audio_width": cfg.get("audio_config", {}).get("encoder_ffn_dim")}
        for k in ("llm_width", "audio_width"):
            v = getattr(o, k)
            if v is not None and cur[k] is not None and v > int(cur[k]):
                raise UserError(f"stage prune-ffn: {k}={v} is larger than the current width {cur[k]} of {in_dir}")

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from .. import modelio
        from ..families import surgery_of
        from ..training.common import checkpoint_dtype

        o = self.options
        # float16/bf16 weights run in float32 on a CPU (the search/calibration passes); saved as stored
        run_dtype = modelio.runtime_dtype(in_dir, ctx.resolved_device())
        model = modelio.load_model(in_dir, dtype=run_dtype, device=ctx.resolved_device())
        processor = modelio.load_processor(in_dir)
        surgery = surgery_of(model)
        before = dict(zip(("llm", "audio"), surgery.ffn_widths(model)))
        data = []
        if o.importance == "activation":
            from ..training.calibration import calibration_segments

            segs, data = calibration_segments(ctx, o.split, o.calibration, stage="prune-ffn",
                                              use="calibration of FFN unit importance")
            llm_imp, audio_imp = activation_importance(model, processor, segs, ctx.lang, audio=o.audio_width is not None)
        else:
            llm_imp, audio_imp = weight_importance(model, audio=o.audio_width is not None)
        techniques = []
        how = "weight-norm importance" if o.importance == "weight" else f"activation importance on {len(segs)} segments"
        llm_width, audio_width = o.widths()
        if llm_width != o.llm_width or audio_width != o.audio_width:
            ctx.log(f"prune-ffn: target widths rounded down to a multiple of {o.multiple_of}: "
                    f"LLM {o.llm_width} -> {llm_width}, audio {o.audio_width} -> {audio_width} (multiple_of=1 keeps them)")
        if llm_width is not None and llm_width < before["llm"]:
            surgery.prune_llm_mlp(model, [top_units(s, w) for s, w in zip(llm_imp, surgery.llm_mlp_widths(model, llm_width))])
            techniques.append(f"structured LLM MLP pruning ({before['llm']} -> {llm_width} units per layer, {how})")
        if audio_width is not None and audio_width < before["audio"]:
            surgery.prune_audio_ffn(model, [top_units(s, audio_width) for s in audio_imp])
            techniques.append(f"structured audio-encoder FFN pruning ({before['audio']} -> {audio_width} units per layer, {how})")
        if not techniques:
            ctx.log("prune-ffn: target widths equal the current ones; weights copied unchanged")
        # back to the stored dtype: exact, the float16/bf16 values went through float32
        modelio.save_model(model, processor, out_dir, dtype=checkpoint_dtype(in_dir) if run_dtype else None)
        after = dict(zip(("llm", "audio"), surgery.ffn_widths(model)))
        return {"techniques": techniques or ["FFN pruning (no change)"], "data": data,
                "llm_width_before": before["llm"], "llm_width_after": after["llm"],
                "audio_width_before": before["audio"], "audio_width_after": after["audio"]}
