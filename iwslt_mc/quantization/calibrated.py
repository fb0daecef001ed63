"""The calibrated method of the quantize stage: AutoRound (``auto-round``, Intel's signed-gradient rounding),
exported in its ``llm_compressor`` format: compressed-tensors ``pack-quantized`` symmetric integers, the
format method ``ct`` writes and the tool already sizes (:mod:`iwslt_mc.quantization.formats`).

Why AutoRound (issue 31 item 2, measured on the kit, docs/bench/quant_libraries.md "Calibrated methods"): of the
calibrated methods, it is a pure-Python wheel (GPTQ's ``gptqmodel`` is an sdist needing a compiler; AWQ's
smoothing can break a speech LLM's audio path), it runs on the CPU, and its ``llm_compressor`` export is a
checkpoint transformers loads packed (``dequantize: false``: torch.save counts packed bytes).

What it quantizes (:func:`quantized_parts`): the Linear layers of the family's LLM decoder blocks
(``to_quant_block_names``); with ``quantize_audio`` (the default under audio calibration) those of the audio
encoder's layers too, tuned block by block on the audio they receive, and the projector; with
``quantize_lm_head``, lm_head (AutoRound tunes Linear layers outside the block stacks one by one on their recorded
inputs, after the blocks); 2, 3 or 4 bits, symmetric groups of ``group_size`` input weights, scales in the model's
float dtype. Token embeddings (the organizers' load keeps packed embeddings float anyway) and the audio encoder's
convolutions and position table stay as stored. ``iters`` steps of signed gradient descent per block, on the
block inputs of the calibration samples of the stage's data (``--data``, its ``train`` split):

- ``calibration: audio``: the model's real inputs, ``nsamples`` utterances encoded as decoding and the
  teacher-forced training feed them (the family's chat prompt with the audio, run through the audio encoder and
  projector into the LLM's input embeddings, then the reference translation), right-padded to the longest;
- ``calibration: text``: source transcripts and reference translations joined into ``nsamples`` text-only
  samples of ``seqlen`` tokens (no audio: the blocks see only text embeddings).

Two fixes on top of the library, both measured (docs/bench/quant_libraries.md):

- AutoRound keeps every Linear layer whose output or input width is not a multiple of 32 at 16 bits (its own
  kernels' rule, ``apply_layer_config_special_cases``); compressed-tensors packs any width, so for this export
  that rule is lifted (:func:`_lift_width_rule`): the kit's MLP (176 wide) is quantized too.
- Its ``ignore`` list names modules by checkpoint names (``language_model.model.layers.0.mlp.gate_proj``),
  which transformers 5.25 does not match against the loaded names (``model.language_model.layers.0...``): it
  would pack the ignored float layers' slots and load random weights. The list is rewritten as patterns
  matched from any prefix (``re:(?:.*\\.)?NAME$``, ``language_model.model.`` -> ``language_model.``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
from pathlib import Path

from ..errors import UserError

AR_METHOD = "autoround"
AR_BITS = (2, 3, 4)
AR_CALIBRATION = ("audio", "text")
AR_VERSION = "0.16.1"
AR_PIP = f"pip install 'auto-round=={AR_VERSION}' py-cpuinfo (or pip install -e '.[calib]')"
_FLOAT_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def require_autoround() -> None:
    """One line naming the pip command when ``auto-round`` is missing."""
    try:
        import importlib.util

        found = importlib.util.find_spec("auto_round") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UserError(f"stage quantize: method autoround needs the auto-round library ({AR_PIP})")


def quantized_parts(parts: dict, linear: list[str], o, *, where) -> tuple[list[str], list[str]]:
    """What AutoRound quantizes, from the family's parts of the model (:meth:`Family.find_parts`) and the Linear
    module names ``linear``: the block stacks it tunes block by block (the LLM decoder layers; with
    ``quantize_audio`` the audio encoder's layers too) and every quantized Linear layer (those of the blocks;
    ``lm_head`` with ``quantize_lm_head``; with ``quantize_audio`` every Linear of the audio encoder and the
    projector, those outside its layer stack tuned one by one, as ``lm_head`` is)."""
    llm = parts.get("llm_layers")
    if not llm:
        raise UserError(f"stage quantize: method autoround: no LLM decoder layers found in {where}")
    blocks, under = [llm], [llm]
    if getattr(o, "quantize_audio", False):
        audio, audio_layers = parts.get("audio_encoder"), parts.get("audio_layers")
        if not audio or not audio_layers:
            raise UserError(f"stage quantize: method autoround: quantize_audio: no audio encoder layers found in {where}")
        blocks.append(audio_layers)
        under += [audio] + ([parts["projector"]] if parts.get("projector") else [])
    quantized = [n for n in linear if any(n == u or n.startswith(u + ".") for u in under)]
    if getattr(o, "quantize_lm_head", False):
        if parts.get("lm_head_tied"):
            raise UserError(f"stage quantize: method autoround: quantize_lm_head: lm_head is tied to the token "
                            f"embeddings in {where} (AutoRound quantizes untied lm_head only)")
        if parts.get("lm_head") in linear:
            quantized.append(parts["lm_head"])
    return blocks, quantized


def block_lists(model, blocks: list[str]) -> list[list[str]]:
    """AutoRound's ``to_quant_block_names`` as full block names, one list per stack (its own name matching finds
    the text stack only unless it is told to quantize non-text modules, which also forces batches of one)."""
    mods = dict(model.named_modules())
    return [[f"{b}.{i}" for i in range(len(mods[b]))] for b in blocks]


def ignore_pattern(name: str) -> str:
    """A compressed-tensors ``ignore`` entry for module ``name`` as transformers 5 names it when loading
    (``model.language_model.layers.0.mlp.gate_proj``, ``lm_head``), matched from any prefix."""
    return "re:" + r"(?:.*\.)?" + re.escape(name) + "$"


def rewrite_config(cfg: dict, kept_float: list[str], source: dict | None = None) -> dict:
    """``config.json`` of an AutoRound ``llm_compressor`` export made loadable packed: ``ignore`` = the Linear
    modules kept float, by their loaded names, as patterns; ``dequantize: false`` (symmetric, no quantized
    embeddings). AutoRound's own list names checkpoint modules (``language_model.model.layers.0...``,
    ``language_model.lm_head``) that transformers 5.25 does not match against the loaded names.

    With ``source`` (the input's config), the float dtype the config names is the input's: when it quantizes
    layers outside the blocks (lm_head, the projector) AutoRound runs the model in bfloat16 on a CPU and writes
    ``dtype: bfloat16`` although the tensors it writes keep the input's dtype, so ``from_pretrained(dtype="auto")``
    (the organizers' load) would cast every float tensor."""
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") != "compressed-tensors":
        raise UserError(f"AutoRound export: expected a compressed-tensors config, got {qc.get('quant_method')!r}")
    qc["ignore"] = [ignore_pattern(n) for n in kept_float]
    qc["dequantize"] = False
    if source is not None:
        for key in ("dtype", "torch_dtype"):
            if key in source:
                cfg[key] = source[key]
            else:
                cfg.pop(key, None)
    return cfg


@contextlib.contextmanager
def _lift_width_rule(quantized: set[str]):
    """AutoRound quantizes the Linear layers in ``quantized`` whose widths are not multiples of 32 (its resolver
    otherwise pins them at 16 bits, for kernels this export does not use); the others stay as it resolves them
    (a trimmed vocabulary's lm_head, 1,176 rows, stays float unless it is asked for)."""
    from auto_round.compressors import layer_config_resolver as lcr

    original = lcr.apply_layer_config_special_cases

    def wrapped(layer_config, model, default_dict, supported_types, inner_supported_types, *args, **kwargs):
        before = {n: copy.deepcopy(c) for n, c in layer_config.items()}
        out = original(layer_config, model, default_dict, supported_types, inner_supported_types, *args, **kwargs)
        resolved = out[0]
        for n, m in model.named_modules():
            if n not in resolved or n not in quantized:
                continue
            if not (type(m) in supported_types or m.__class__.__name__ in inner_supported_types):
                continue
            cfg = resolved[n]
            if cfg.get("bits") == 16 and (m.weight.shape[0] % 32 or m.weight.shape[1] % 32):
                if n in before:  # a layer the stage named (lm_head, the projector): as it was named
                    if before[n].get("bits", 16) < 16:
                        resolved[n] = before[n]
                    continue
                if default_dict.get("group_size") and m.weight.shape[1] % default_dict["group_size"]:
                    continue
                keep = {k: cfg[k] for k in ("in_blocks",) if k in cfg}
                resolved[n] = {**copy.deepcopy(default_dict), "fixed_by_user": False, **keep}
        return out

    lcr.apply_layer_config_special_cases = wrapped
    try:
        yield
    finally:
        lcr.apply_layer_config_special_cases = original


def calibration_texts(ctx) -> list[str]:
    """Source transcripts and reference translations of ``ctx.data`` (train split), in a seeded order."""
    import numpy as np

    from ..training.data import load_examples, target_text

    if not ctx.data:
        raise UserError("stage quantize: method autoround calibrates on text: give --data (e.g. the training corpus)")
    exs = load_examples(ctx.data, split="train", seed=ctx.seed, lang=ctx.lang)
    texts = []
    for ex in exs:
        for t in (ex.text_en, target_text(ex, ctx.lang)):
            if t and t.strip():
                texts.append(t.strip())
    if not texts:
        raise UserError(f"stage quantize: no calibration text in {ctx.data} (split train)")
    order = np.random.default_rng(ctx.seed).permutation(len(texts)).tolist()
    return [texts[i] for i in order]


def calibration_samples(texts: list[str], tokenizer, seqlen: int, n: int) -> list[str]:
    """``n`` samples of at least ``seqlen`` tokens (AutoRound stacks them into one batch, so shorter ones break
    it): the texts joined in order, wrapping around, each sample cut once it is long enough."""
    if not texts:
        return []
    out, cur, i = [], [], 0
    limit = n * (len(texts) + 1) * max(1, seqlen)  # texts of no tokens cannot loop forever
    while len(out) < n and i < limit:
        cur.append(texts[i % len(texts)])
        i += 1
        joined = " ".join(cur)
        if len(tokenizer(joined, add_special_tokens=False)["input_ids"]) >= seqlen + 8:
            out.append(joined)
            cur = []
    return out


def calibration_examples(ctx, n: int) -> list:
    """``n`` utterances of ``ctx.data`` (train split) with a target text, in a seeded order."""
    import numpy as np

    from ..training.data import load_examples, target_text

    if not ctx.data:
        raise UserError("stage quantize: method autoround calibrates on the data's utterances: give --data "
                        "(e.g. the training corpus)")
    exs = [ex for ex in load_examples(ctx.data, split="train", seed=ctx.seed, lang=ctx.lang)
           if (target_text(ex, ctx.lang) or "").strip()]
    if not exs:
        raise UserError(f"stage quantize: no calibration utterance with a {ctx.lang} target in {ctx.data} (split train)")
    order = np.random.default_rng(ctx.seed).permutation(len(exs)).tolist()
    return [exs[i] for i in order[:n]]


def calibration_batches(model_dir: Path, processor, examples: list, lang: str, batch_size: int) -> list[dict]:
    """The model's own inputs for AutoRound: each utterance encoded as training and the teacher-forced KL encode it
    (the family's prompt with the audio features, then the reference translation and the end of turn), every
    one right-padded to the longest (AutoRound stacks any of its cached samples into one batch, so they must have
    one length; padding is masked out of attention), in batches of ``batch_size`` (its calibration counts
    ``batch_size`` samples per batch). No labels: AutoRound only runs the model to record the blocks' inputs."""
    from ..families import max_audio_seconds
    from ..training.training import Collator, SpeechTranslationDataset, pad_token_id

    ds = SpeechTranslationDataset(examples, processor, lang, max_seconds=max_audio_seconds(model_dir), cache=False)
    allb = Collator(pad_token_id(processor))([ds[i] for i in range(len(ds))])
    allb.pop("labels", None)
    n = allb["input_ids"].shape[0]
    return [{k: v[s:s + batch_size] for k, v in allb.items()} for s in range(0, n, batch_size)]


def autoround_quantize(in_dir: Path, out_dir: Path, o, texts: list[str] | None = None, *, device: str = "cpu",
                       seed: int = 0, log=print, examples: list | None = None, lang: str = "en-de") -> dict:
    """Quantize ``in_dir`` with AutoRound as ``o`` says and write the packed checkpoint to ``out_dir``: calibrated
    on ``examples`` (utterances, ``o.calibration == "audio"``) or ``texts``. Returns ``{"quantized": n,
    "unquantized": m}`` (Linear layers)."""
    import torch

    from .. import modelio
    from ..families import family_for

    model = modelio.load_model(in_dir, dtype=None if o.dtype == "auto" else o.dtype, device="cpu")
    model.eval()
    processor = modelio.load_processor(in_dir)
    family = family_for(in_dir)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    blocks, quantized = quantized_parts(family.find_parts(model), linear, o, where=in_dir)
    kept_float = [n for n in linear if n not in quantized]
    scale_dtype = _FLOAT_NAMES.get(str(next(model.parameters()).dtype).replace("torch.", ""), "fp16")
    tmp = Path(str(out_dir) + ".autoround")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return _quantize_and_export(model, processor, family, out_dir, tmp, o, texts, blocks, quantized, kept_float,
                                    linear, scale_dtype, device, seed, log, in_dir=Path(in_dir), examples=examples,
                                    lang=lang)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quantize_and_export(model, processor, family, out_dir, tmp, o, texts, blocks, quantized, kept_float, linear,
                         scale_dtype, device, seed, log, *, in_dir: Path, examples: list | None, lang: str) -> dict:
    import torch
    from auto_round import AutoRound

    tok = getattr(processor, "tokenizer", processor)
    audio = getattr(o, "calibration", "text") == "audio"
    if audio:
        batch = min(len(examples), 8)
        samples = calibration_batches(in_dir, processor, examples, lang, batch)
        nsamples, seqlen = len(examples), int(samples[0]["input_ids"].shape[1])
        what = f"{nsamples} utterances (audio prompt + reference, {seqlen} tokens padded)"
    else:
        samples = calibration_samples(texts, tok, o.seqlen, o.nsamples)
        nsamples, seqlen, batch = len(samples), o.seqlen, min(len(samples), 8)
        what = f"{nsamples} text samples of {seqlen} tokens from {len(texts)} texts"
    # quantized Linear layers outside the block stacks (lm_head, the projector): AutoRound tunes each on its
    # recorded inputs after the blocks
    outside = {n: {"bits": o.bits, "group_size": o.group_size, "sym": True} for n in quantized
               if not any(n.startswith(b + ".") for b in blocks)}
    torch.manual_seed(seed)
    hook = model.register_forward_pre_hook(_cast_floats, with_kwargs=True) if audio else None
    try:
        with _lift_width_rule(set(quantized)), _quiet():
            ar = AutoRound(model, tok, processor=processor, bits=o.bits, group_size=o.group_size, sym=True,
                           iters=o.iters, nsamples=nsamples, seqlen=seqlen, batch_size=batch,
                           dataset=samples, to_quant_block_names=block_lists(model, blocks),
                           layer_config=outside or None, scale_dtype=scale_dtype,
                           device_map=device, seed=seed, low_gpu_mem_usage=False, enable_torch_compile=False)
            ar.quantize_and_save(str(tmp), format="llm_compressor")
    except SystemExit as e:  # AutoRound exits when no calibration forward succeeded
        raise UserError(f"stage quantize: AutoRound recorded no calibration input from {what} (exit {e.code})") from None
    finally:
        if hook is not None:
            hook.remove()
    src = _export_dir(tmp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            _copy_with_format_metadata(f, out / f.name)
        elif f.name in ("model.safetensors.index.json", "generation_config.json"):
            shutil.copyfile(f, out / f.name)
    cfg = rewrite_config(json.loads((src / "config.json").read_text(encoding="utf-8")), kept_float,
                         source=json.loads((in_dir / "config.json").read_text(encoding="utf-8")))
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    family.save_processor(processor, out)
    packed = _count_packed(out)
    if packed != len(quantized):  # AutoRound left some layer float: the config would lie
        shutil.rmtree(out, ignore_errors=True)
        raise UserError(f"stage quantize: AutoRound packed {packed} Linear layers, expected {len(quantized)} "
                        f"(every Linear of {', '.join(blocks)}{', ' + ', '.join(outside) if outside else ''})")
    log(f"quantize: AutoRound {o.bits}-bit groups of {o.group_size}, {o.iters} iterations on {what}: "
        f"{packed} of {len(linear)} Linear layers packed ({scope_text(o)})")
    return {"quantized": packed, "unquantized": len(kept_float)}


def scope_text(o) -> str:
    """What the options quantize, in words."""
    parts = ["LLM decoder blocks"]
    if getattr(o, "quantize_lm_head", False):
        parts.append("lm_head")
    if getattr(o, "quantize_audio", False):
        parts.append("audio encoder Linear layers and projector")
    return ", ".join(parts)


def _cast_floats(module, args, kwargs):
    """The calibration batches' float inputs (audio features) in the dtype the model runs in when AutoRound
    drives it (it may move the model to bfloat16 on a CPU), as decoding casts them."""
    import torch

    dt = next(module.parameters()).dtype
    kwargs = {k: v.to(dt) if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != dt else v
              for k, v in kwargs.items()}
    return args, kwargs


def _copy_with_format_metadata(src: Path, dst: Path) -> None:
    """Copy a safetensors file adding the ``{"format": "pt"}`` metadata transformers' own saves carry (AutoRound's
    writer leaves it out), so the file is the one the planner lays out: same tensors, same bytes."""
    import struct

    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None) or {}
        meta.setdefault("format", "pt")
        raw = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        with open(dst, "wb") as g:
            g.write(struct.pack("<Q", len(raw)))
            g.write(raw)
            shutil.copyfileobj(f, g, 16 << 20)


def _export_dir(tmp: Path) -> Path:
    """The folder AutoRound wrote (it adds a ``model-w4g16``-style subfolder)."""
    hits = sorted(p.parent for p in tmp.rglob("config.json"))
    if not hits:
        raise UserError(f"AutoRound wrote no checkpoint under {tmp}")
    return hits[0]


def _count_packed(out: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            n += sum(1 for k in s.keys() if k.endswith(".weight_packed"))
    return n


@contextlib.contextmanager
def _quiet():
    """AutoRound's progress bars and INFO lines off (its logger prints to stderr)."""
    import logging

    lg = logging.getLogger("autoround")
    old = lg.level
    lg.setLevel(logging.ERROR)
    old_tq = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        lg.setLevel(old)
        if old_tq is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_tq
