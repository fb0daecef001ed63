"""quantize: bitsandbytes NF4/FP4 (4-bit, optional double quantization) or LLM.int8 weights, or
compressed-tensors 2-8-bit integers with the token embeddings (method ct); modules in skip stay unquantized.

The input is loaded with a ``BitsAndBytesConfig`` through :func:`iwslt_mc.modelio.load_model` and
saved as safetensors with the ``quantization_config`` in ``config.json``, so the output reloads
with ``from_pretrained`` alone (the family's class: Gemma 4 through ``AutoModelForMultimodalLM``).
``skip`` names modules that stay unquantized (``lm_head``, ``audio_tower``, ``multi_modal_projector``;
Gemma 4: ``vision_tower``, ``embed_audio``, ``embed_vision``; or any dotted suffix of a module name;
``re:REGEX`` for a raw pattern). Embedding tables are never bitsandbytes-quantized: Gemma 4's token
and per-layer embeddings, and its ``lm_head`` tied to the former, stay as stored. transformers 5 matches skip patterns from the start of the full module name, so plain
names are turned into ``(?:.*\\.)?NAME`` (``["audio_tower"]`` alone would match nothing).

Saving after inference: on CPUs with AVX512-BF16, the first no-grad forward of a 4-bit layer
repacks its weights in place into a CPU layout (double quantization folded into bf16 absmax), and
saving afterwards writes a different (lossy) checkpoint; on every CPU the first forward also casts
4-bit layers' biases to the compute dtype. :func:`save_quantized` detects both and then saves a
fresh quantization of the same input instead, so the saved files are
byte-identical whether or not the model ran before saving. Layers whose shape the repack cannot take
(output width not a multiple of 32, input width not a multiple of 64) never repack: see
:func:`iwslt_mc.modelio.fit_4bit_cpu_path`, applied by ``load_model``.

``method: ct`` (2-8 bits, token embeddings too) is compressed-tensors' pack-quantized format, made by
:mod:`iwslt_mc.quantization.formats` (why that library, the measured alternatives, and which ct checkpoints
stay packed after ``from_pretrained``, are there).

``method: autoround`` (2-4 bits) is the calibrated method: AutoRound tunes the rounding of the LLM decoder blocks'
Linear layers on utterances of the stage's ``--data`` (``calibration: audio``, the default: the audio prompt and the
reference as decoding feeds them; or ``text``) and writes the same packed symmetric compressed-tensors format
(:mod:`iwslt_mc.quantization.calibrated`; optional dependency, ``pip install -e '.[calib]'``); ``lm_head`` too with
``quantize_lm_head``, the audio encoder's Linear layers and the projector with ``quantize_audio``. Embeddings stay
as stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..floor.modeldir import read_config
from ..quantization.formats import skip_pattern
from ..training.common import bitsandbytes_config, repacked_layers
from .base import Stage, StageContext, StageOptions

_SOURCE_ATTR = "_iwslt_mc_quantized_from"
_BIAS_DTYPES_ATTR = "_iwslt_mc_4bit_bias_dtypes"


@dataclass
class QuantizeOptions(StageOptions):
    method: Literal["nf4", "fp4", "int8", "ct", "autoround"] = field(default="nf4", metadata={
        "help": "nf4 or fp4 (bitsandbytes 4-bit) or int8 (LLM.int8); ct: compressed-tensors pack-quantized integers "
                "of 2-8 bits (bits, group_size, symmetric, scales, quantize_embeddings, int8_embeddings), packed in safetensors, "
                "embeddings too, reloads with from_pretrained alone; vLLM's format (compressed-tensors). How each loads "
                "and what the torch.save measure (2026/2027) counts: nf4/fp4/int8 stay packed after from_pretrained "
                "(embeddings always float; lm_head packed unless in skip); ct symmetric with float embeddings stays "
                "packed (saved with dequantize: false; lm_head packed unless in skip); ct asymmetric or with "
                "quantize_embeddings is unpacked to floats at load (dequantize: true) and counts at float size; ct symmetric "
                "with int8_embeddings stays packed, its embeddings int8; autoround: the "
                "calibrated method (AutoRound, optional: pip install -e '.[calib]'), 2-4-bit symmetric groups tuned on "
                "the stage's --data (calibration, iters, nsamples): the Linear layers of the LLM decoder blocks, lm_head "
                "with quantize_lm_head, the audio encoder's Linear layers and the projector with quantize_audio (token "
                "embeddings stay as stored), saved as ct symmetric packed (dequantize: false: stays packed after "
                "from_pretrained)"})
    double_quant: bool = field(default=True, metadata={
        "help": "4-bit: also quantize the quantization constants (double quantization, ~0.4 bit/param saved)"})
    compute_dtype: Literal["bf16", "fp16", "fp32"] = field(default="bf16", metadata={
        "help": "4-bit: dtype of the matrix multiplications"})
    skip: list[str] = field(default_factory=lambda: ["lm_head"], metadata={
        "help": "modules kept unquantized: names or dotted suffixes (lm_head, audio_tower, multi_modal_projector), "
                "or re:REGEX"})
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(default="auto", metadata={
        "help": "dtype of the weights that stay unquantized (auto = as in the input); ct: also of the scales"})
    bits: int | None = field(default=None, metadata={
        "help": "bits per weight: ct 2-8 (default 4), autoround 2-4 (default 4); nf4/fp4 are 4-bit and int8 8-bit only"})
    group_size: int = field(default=128, metadata={
        "help": "ct, autoround: weights per scale (and zero point), along the input width; must divide the input "
                "width of every quantized layer"})
    symmetric: bool = field(default=False, metadata={
        "help": "ct: symmetric ranges without zero points (less accurate below 4 bits) instead of asymmetric (autoround is "
                "always symmetric); "
                "symmetric without quantize_embeddings is the ct checkpoint transformers loads packed (torch.save "
                "counts packed bytes); asymmetric zero points fail its packed load, so those load as floats"})
    scales: Literal["auto", "mse", "minmax"] = field(default="auto", metadata={
        "help": "ct: each group's range: mse = the clipping (100% down to 50% of min/max) with the least squared "
                "weight error; minmax = plain round-to-nearest over min/max; auto = mse at 4+ bits, minmax below "
                "(measured on the toy teacher: clipping lowers the KL to the teacher at 4 bits, raises it at 2-3)"})
    allocation: str | None = field(default=None, metadata={
        "help": "ct: a bit allocation file (iwslt-mc plan --allocate: a width per Linear module chosen by measured "
                "sensitivity within a byte budget): 2/3/4/8-bit symmetric packed groups, one config group per width, "
                "16 = kept float, modules it does not name stay float; needs symmetric: true, takes its group_size "
                "from the file, and replaces bits and skip (lm_head is quantized if the file says so)"})
    quantize_embeddings: bool = field(default=False, metadata={
        "help": "ct: also quantize the token embeddings (embed_tokens); lm_head is quantized unless in skip. A tied "
                "lm_head (one matrix with the embeddings, e.g. Gemma 4) follows this option whatever skip says, and "
                "is stored once (the checkpoint stays tied)"})
    int8_embeddings: bool = field(default=False, metadata={
        "help": "ct, symmetric: the token embeddings as compressed-tensors int-quantized 8-bit (one int8 per weight, "
                "a float scale per row, symmetric) next to the packed Linear layers (a mixed-precision config); they "
                "stay int8 after from_pretrained, so the torch.save measure counts a quarter of a float32 table "
                "(toy teacher, ct3 symmetric of a trimmed model: 26.0% of its torch.save bytes instead of 29.3%, "
                "chrF++ 97.6% of it; docs/bench/quant_floor.md). Needs symmetric: true (asymmetric ct saves "
                "dequantize: true, which transformers cannot load for such a checkpoint); not with "
                "quantize_embeddings (packed embeddings), an allocation, nor a tied lm_head"})

    calibration: Literal["audio", "text"] = field(default="audio", metadata={
        "help": "autoround: what the blocks are tuned on: audio = the model's real inputs (nsamples utterances of "
                "--data's train split, the family's prompt with the audio through the audio encoder, then the "
                "reference translation, as decoding and training feed them; measured 2-3x closer to the toy "
                "teacher than text on dev, docs/bench/quant_calibrated.md); text = the source transcripts and "
                "reference translations joined into text-only samples of seqlen tokens"})
    iters: int = field(default=50, metadata={
        "help": "autoround: signed-gradient steps per decoder block (AutoRound's default 200; 0 = its round-to-nearest)"})
    nsamples: int = field(default=32, metadata={
        "help": "autoround: calibration samples: utterances (calibration: audio) or text samples of seqlen tokens "
                "made of the source transcripts and reference translations of --data (train split, seeded order), "
                "joined (calibration: text)"})
    seqlen: int = field(default=128, metadata={
        "help": "autoround, calibration text: tokens per calibration sample (audio samples are whole utterances)"})
    quantize_lm_head: bool = field(default=False, metadata={
        "help": "autoround: also quantize lm_head (tuned on its recorded inputs after the blocks; packed after "
                "from_pretrained); an lm_head tied to the embeddings is refused (method ct: lm_head is quantized "
                "unless in skip). Default off, by measurement (toy teacher, trimmed vocabulary, 3 bits, dev: it "
                "adds 4x more KL per byte saved than taking the blocks from 4 to 3 bits; docs/bench/quant_calibrated.md)"})
    quantize_audio: bool | None = field(default=None, metadata={
        "help": "autoround: also quantize the audio encoder's Linear layers (its layers tuned block by block like the "
                "LLM's; its convolutions and position table stay float: they are no Linear layers) and the projector; "
                "needs calibration audio (method ct: quantized unless in skip). Default: on with calibration audio, "
                "by measurement (toy teacher, trimmed vocabulary, 3 bits, dev: 29% fewer torch.save bytes for +0.0008 "
                "KL; docs/bench/quant_calibrated.md), off with calibration text"})

    def validate(self) -> None:
        if self.allocation is not None:
            self._validate_allocation()
        if self.method == "autoround":
            self._validate_autoround()
        elif self.method == "ct":
            if self.bits is None and self.allocation is None:
                self.bits = 4
            from ..floor.sizes import CT_BITS

            if self.allocation is None and self.bits not in CT_BITS:
                raise UserError(f"stage quantize: method ct has {CT_BITS[0]}-{CT_BITS[-1]} bits, not bits={self.bits}")
            if self.group_size < 1:
                raise UserError(f"stage quantize: group_size must be a positive integer, not {self.group_size}")
            if self.int8_embeddings and self.quantize_embeddings:
                raise UserError("stage quantize: int8_embeddings and quantize_embeddings both quantize the token "
                                "embeddings: choose one (int8_embeddings stays int8 after from_pretrained; "
                                "quantize_embeddings packs them and loads as floats)")
            if self.int8_embeddings and not self.symmetric:
                raise UserError("stage quantize: int8_embeddings needs symmetric: true (asymmetric ct is saved with "
                                "dequantize: true, and transformers cannot unpack a checkpoint with int8 embeddings)")
        else:
            own = 8 if self.method == "int8" else 4
            if self.bits is not None and self.bits != own:
                raise UserError(f"stage quantize: method {self.method} is {own}-bit only, not bits={self.bits} "
                                "(method ct has 2-8 bits)")
            ct_only = [k for k, v in (("group_size", self.group_size != 128), ("symmetric", self.symmetric),
                                      ("scales", self.scales != "auto"), ("quantize_embeddings", self.quantize_embeddings),
                                      ("int8_embeddings", self.int8_embeddings)) if v]
            if ct_only:
                raise UserError(f"stage quantize: option {ct_only[0]} is for method ct only "
                                f"(bitsandbytes {self.method} {'cannot quantize embeddings' if ct_only[0].endswith('_embeddings') else 'has no such setting'})")
        if self.method != "autoround":
            ar_only = [k for k, v in (("calibration", self.calibration != "audio"), ("iters", self.iters != 50),
                                      ("nsamples", self.nsamples != 32), ("seqlen", self.seqlen != 128),
                                      ("quantize_lm_head", self.quantize_lm_head),
                                      ("quantize_audio", self.quantize_audio)) if v]
            if ar_only:
                where = {"quantize_lm_head": " (method ct: lm_head is quantized unless in skip)",
                         "quantize_audio": " (method ct: the audio encoder is quantized unless in skip)"}
                raise UserError(f"stage quantize: option {ar_only[0]} is for method autoround only"
                                f"{where.get(ar_only[0], '') if self.method == 'ct' else ''}")
            self.quantize_audio = False
        for s in self.skip:
            if not s.strip():
                raise UserError("stage quantize: empty name in skip")
            if s.startswith("re:"):
                try:
                    re.compile(s[3:])
                except re.error as e:
                    raise UserError(f"stage quantize: skip {s!r}: invalid regex ({e})") from None


    def _validate_autoround(self) -> None:
        from ..quantization.calibrated import AR_BITS

        if self.bits is None:
            self.bits = 4
        if self.bits not in AR_BITS:
            raise UserError(f"stage quantize: method autoround has {AR_BITS[0]}-{AR_BITS[-1]} bits, not bits={self.bits}")
        for name in ("group_size", "iters", "nsamples", "seqlen"):
            v = getattr(self, name)
            if v < (0 if name == "iters" else 1):
                raise UserError(f"stage quantize: {name} must be a {'non-negative' if name == 'iters' else 'positive'} "
                                f"integer, not {v}")
        if self.quantize_audio is None:  # the measured default: on where the audio encoder gets calibration input
            self.quantize_audio = self.calibration == "audio"
        if self.quantize_audio and self.calibration != "audio":
            raise UserError("stage quantize: quantize_audio needs calibration: audio (text samples never reach the "
                            "audio encoder, so its layers would have no calibration input)")
        if self.calibration == "audio" and self.seqlen != 128:
            raise UserError("stage quantize: option seqlen is for calibration text (calibration audio takes whole "
                            "utterances)")
        other = [k for k, v in (("scales", self.scales != "auto"), ("quantize_embeddings", self.quantize_embeddings),
                                ("int8_embeddings", self.int8_embeddings),
                                ("allocation", self.allocation is not None),
                                ("skip", self.skip not in (["lm_head"], []))) if v]
        if other:
            raise UserError(f"stage quantize: option {other[0]} does not go with method autoround (it quantizes the "
                            "LLM decoder blocks' Linear layers, lm_head with quantize_lm_head, the audio encoder and "
                            "projector with quantize_audio; the embeddings stay as stored)")

    def _validate_allocation(self) -> None:
        """An allocation file: method ct, symmetric, its own group size and widths (the file's module names are
        checked against the model by the stage's plan and check)."""
        from ..quantization.allocation import read_allocation

        if self.method != "ct":
            raise UserError(f"stage quantize: allocation is for method ct (packed symmetric integers), not {self.method}")
        if not self.symmetric:
            raise UserError("stage quantize: allocation needs symmetric: true (symmetric ct stays packed after "
                            "from_pretrained; zero points load as floats)")
        given = [k for k, v in (("bits", self.bits is not None), ("quantize_embeddings", self.quantize_embeddings),
                                ("skip", self.skip not in (["lm_head"], []))) if v]
        if given:
            raise UserError(f"stage quantize: option {given[0]} does not go with allocation (the file gives every "
                            "module's width; 16 = kept float)")
        if self.int8_embeddings:
            raise UserError("stage quantize: option int8_embeddings does not go with allocation (the allocation's "
                            "budget and predicted bytes count the token embeddings as stored)")
        alloc = read_allocation(self.allocation)
        if self.group_size not in (128, alloc.group_size):
            raise UserError(f"stage quantize: group_size {self.group_size} differs from the allocation's "
                            f"{alloc.group_size} ({self.allocation})")
        self.group_size = alloc.group_size


def bnb_config(o: QuantizeOptions):
    return bitsandbytes_config(o.method, double_quant=o.double_quant, compute_dtype=o.compute_dtype, skip=o.skip)


def quantize_model(in_dir, options: QuantizeOptions | dict | None = None, *, device: str = "cpu"):
    """Load ``in_dir`` quantized as ``options`` say (no forward is run). Remembers its source for saving."""
    from .. import modelio

    o = options if isinstance(options, QuantizeOptions) else QuantizeOptions.from_dict(options, stage="quantize")
    model = modelio.load_model(in_dir, dtype=None if o.dtype == "auto" else o.dtype, device=device,
                               quantization_config=bnb_config(o))
    setattr(model, _SOURCE_ATTR, (str(in_dir), o, device))
    setattr(model, _BIAS_DTYPES_ATTR, {name: mod.bias.dtype for name, mod in _linear4bit(model) if mod.bias is not None})
    return model


def _linear4bit(model):
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "weight") and hasattr(m.weight, "quant_state")
            and type(m.weight).__name__ == "Params4bit"]


def changed_by_inference(model) -> list[str]:
    """4-bit layers that a forward changed in place, so that saving them would not write what was quantized.

    bitsandbytes 0.50 ``Linear4bit.forward`` repacks the weight for its CPU kernel (see
    :func:`repacked_layers`) and, on every device, casts the layer's bias in place to the compute dtype
    (``bias.data = bias.data.to(x.dtype)``: an fp32 bias becomes bf16). Bias dtypes are compared with
    those :func:`quantize_model` recorded.
    """
    changed = set(repacked_layers(model))
    before = getattr(model, _BIAS_DTYPES_ATTR, None) or {}
    for name, mod in _linear4bit(model):
        if name in before and mod.bias is not None and mod.bias.dtype != before[name]:
            changed.add(name)
    return sorted(changed)


def save_quantized(model, processor, out_dir, *, log=print) -> Path:
    """Save a quantized model; if inference changed its 4-bit layers, save a fresh quantization instead.

    The saved files are byte-identical whether or not the model ran before saving."""
    import gc

    from .. import modelio

    changed = changed_by_inference(model)
    if changed:
        source = getattr(model, _SOURCE_ATTR, None)
        if source is None:
            raise UserError(f"{len(changed)} 4-bit layers were changed by inference (e.g. {changed[0]}); "
                            "saving them would corrupt the checkpoint: quantize again and save before running it")
        log(f"quantize: {len(changed)} 4-bit layers were changed by inference (CPU repack, bias cast); "
            "saving a fresh quantization instead")
        in_dir, o, device = source
        fresh = quantize_model(in_dir, o, device=device)
        try:
            return modelio.save_model(fresh, processor, out_dir)
        finally:
            del fresh
            gc.collect()
    return modelio.save_model(model, processor, out_dir)


def _module_names(in_dir: Path) -> list[str]:
    """Module names of the input model, from its config only (built on the meta device: no weights read)."""
    from ..modelio import meta_model

    return [n for n, _ in meta_model(in_dir).named_modules()]


class Quantize(Stage):
    name = "quantize"
    Options = QuantizeOptions
    techniques = ["bitsandbytes quantization"]

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        cfg = read_config(in_dir)
        if cfg.get("quantization_config"):
            qm = cfg["quantization_config"].get("quant_method", "?")
            raise UserError(f"stage quantize: {in_dir} is already quantized ({qm}); quantize the unquantized model")
        if self.options.method == "autoround":
            self._check_autoround(in_dir, cfg, ctx)
            return
        if self.options.method == "ct":
            self._check_skip(in_dir)
            from ..quantization.formats import check_ct

            if self.options.allocation:
                self._check_allocation(in_dir)
                from ..quantization.formats import require_compressed_tensors

                require_compressed_tensors()
                return
            check_ct(in_dir, self.options)
            return
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("stage quantize: bitsandbytes is not installed (pip install bitsandbytes)") from None
        self._check_skip(in_dir)

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> dict:
        import copy
        import json
        import tempfile

        if cfg.get("quantization_config"):
            qm = cfg["quantization_config"].get("quant_method", "?")
            raise UserError(f"stage quantize: {where} is already quantized ({qm}); quantize the unquantized model")
        if self.options.method == "autoround":  # before any work: the optional library and the family
            self._check_autoround_family(cfg, where)
        with tempfile.TemporaryDirectory(prefix="iwslt-mc-plan-") as tmp:  # the module names of that config
            (Path(tmp) / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
            try:
                self._check_skip(Path(tmp), where=where)
                if self.options.allocation:
                    self._check_allocation(Path(tmp), where=where)
            except UserError:
                raise
            except Exception:  # a planned config transformers cannot build: the stage's own check runs at its turn
                pass
        out = copy.deepcopy(cfg)
        out["quantization_config"] = {"quant_method": "planned", "method": self.options.method}
        return out

    def _check_autoround_family(self, cfg: dict, where) -> None:
        from ..families import default_family, family_of_model_type
        from ..quantization.calibrated import require_autoround

        fam = family_of_model_type(cfg.get("model_type")) or default_family()
        if not fam.supports(self.name, "autoround"):
            raise UserError(f"stage quantize: method autoround is not available for {fam.label} ({where}); "
                            f"use method ct (symmetric: true loads packed)")
        require_autoround()

    def _check_autoround(self, in_dir: Path, cfg: dict, ctx: StageContext) -> None:
        """The library, the family, calibration data and the group size, before any weight is read."""
        from ..families import family_for
        from ..modelio import meta_model

        self._check_autoround_family(cfg, in_dir)
        if not ctx.data:
            raise UserError(f"stage quantize: method autoround calibrates on {self.options.calibration}: give --data "
                            "(e.g. the training corpus)")
        import torch.nn as nn

        from ..quantization.calibrated import quantized_parts

        model = meta_model(in_dir)
        shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        _, quantized = quantized_parts(family_for(in_dir).find_parts(model), list(shapes), self.options, where=in_dir)
        bad = [(n, shapes[n]) for n in quantized if shapes[n][1] % self.options.group_size]
        if bad:
            n, s = bad[0]
            raise UserError(f"stage quantize: group_size {self.options.group_size} does not divide the input width "
                            f"{s[1]} of {n} ({len(bad)} such layers in {in_dir}; choose a divisor)")

    def _check_allocation(self, in_dir: Path, *, where: str | None = None) -> None:
        from ..quantization.allocation import allocatable_modules, check_allocation, read_allocation

        check_allocation(read_allocation(self.options.allocation), allocatable_modules(in_dir), where or in_dir,
                         self.options.allocation)

    def _check_skip(self, in_dir: Path, *, where: str | None = None) -> None:
        names = _module_names(in_dir)
        from transformers.quantizers.quantizers_utils import should_convert_module

        for s in self.options.skip:
            if all(should_convert_module(n, [skip_pattern(s)]) for n in names if n):
                raise UserError(f"stage quantize: skip {s!r} matches no module of {where or in_dir} "
                                f"(e.g. lm_head, audio_tower, multi_modal_projector, language_model.layers.0.mlp)")

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from .. import modelio

        o = self.options
        device = ctx.resolved_device()
        if o.method == "ct":
            return self._run_ct(in_dir, out_dir, ctx, device)
        if o.method == "autoround":
            return self._run_autoround(in_dir, out_dir, ctx, device)
        ctx.log(f"quantize: loading {in_dir} as {o.method} on {device}")
        model = quantize_model(in_dir, o, device=device)
        processor = modelio.load_processor(in_dir)
        counts = quantized_counts(model)
        save_quantized(model, processor, out_dir, log=ctx.log)
        if o.method == "int8":
            what = "bitsandbytes LLM.int8 8-bit weight quantization"
        else:
            what = (f"bitsandbytes {o.method.upper()} 4-bit weight quantization"
                    + (" with double quantization" if o.double_quant else "") + f" ({o.compute_dtype} compute)")
        kept = f"; kept unquantized: {', '.join(o.skip)}" if o.skip else ""
        return {"techniques": [f"{what}{kept}"], "quantized_linear_layers": counts["quantized"],
                "unquantized_linear_layers": counts["unquantized"]}


    def _run_ct(self, in_dir: Path, out_dir: Path, ctx: StageContext, device: str) -> dict:
        from .. import modelio
        from ..quantization import formats as quant_formats

        o = self.options
        ctx.log(f"quantize: {in_dir} to compressed-tensors "
                f"{'bits per module (' + o.allocation + ')' if o.allocation else f'{o.bits}-bit'} on {device}")
        alloc = None
        if o.allocation:
            from ..quantization.allocation import read_allocation

            alloc = read_allocation(o.allocation)
        model, _ = quant_formats.ct_quantize(in_dir, o, device=device, log=ctx.log,
                                             module_bits=alloc.modules if alloc else None)
        counts = quant_formats.ct_counts(model)
        quant_formats.ct_save(model, modelio.load_processor(in_dir), out_dir)
        ctx.log(f"quantize: {quant_formats.loading_note(o)}")
        kept = f"; kept unquantized: {', '.join(o.skip)}" if o.skip and not alloc else ""
        what = quant_formats.describe(o) if alloc is None else (
            "compressed-tensors pack-quantized symmetric integer weights, bits per module by measured sensitivity "
            f"({alloc.summary()}; groups of {alloc.group_size}; allocation {o.allocation}: budget {alloc.budget} "
            f"bytes, {alloc.measure}, edition {alloc.edition}); loads packed (dequantize: false)")
        return {"techniques": [f"{what}{kept}"], "quantized_linear_layers": counts["quantized"],
                "unquantized_linear_layers": counts["unquantized"]}

    def _run_autoround(self, in_dir: Path, out_dir: Path, ctx: StageContext, device: str) -> dict:
        from ..quantization.calibrated import (AR_VERSION, autoround_quantize, calibration_examples,
                                               calibration_texts, scope_text)

        o = self.options
        if o.calibration == "audio":
            exs = calibration_examples(ctx, o.nsamples)
            ctx.log(f"quantize: {in_dir} with AutoRound {o.bits}-bit on {device} ({o.iters} iterations, "
                    f"{len(exs)} utterances)")
            counts = autoround_quantize(in_dir, out_dir, o, device=device, seed=ctx.seed, log=ctx.log, examples=exs,
                                        lang=ctx.lang)
            on = f"{len(exs)} utterances of the data: audio prompt and reference translation, as decoding feeds them"
        else:
            texts = calibration_texts(ctx)
            ctx.log(f"quantize: {in_dir} with AutoRound {o.bits}-bit on {device} ({o.iters} iterations, "
                    f"{len(texts)} texts)")
            counts = autoround_quantize(in_dir, out_dir, o, texts, device=device, seed=ctx.seed, log=ctx.log)
            on = f"{o.nsamples} samples of {o.seqlen} tokens from {len(texts)} texts of the data"
        kept = ", ".join(["embeddings"] + ([] if o.quantize_lm_head else ["lm_head"])
                         + (["audio convolutions and position table"] if o.quantize_audio
                            else ["audio encoder", "projector"]))
        what = (f"AutoRound {AR_VERSION} calibrated {o.bits}-bit symmetric integer weights, groups of {o.group_size} "
                f"({o.iters} iterations on {on}): {scope_text(o)}; "
                f"compressed-tensors pack-quantized, loads packed (dequantize: false); {kept} as stored")
        return {"techniques": [what], "quantized_linear_layers": counts["quantized"],
                "unquantized_linear_layers": counts["unquantized"]}


def quantized_counts(model) -> dict:
    import torch.nn as nn

    q = u = 0
    for mod in model.modules():
        cls = type(mod).__name__
        if cls in ("Linear4bit", "Linear8bitLt", "LinearNF4", "LinearFP4"):
            q += 1
        elif isinstance(mod, nn.Linear):
            u += 1
    return {"quantized": q, "unquantized": u}
