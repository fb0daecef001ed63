"""What the stages share: load and checkpoint dtypes, freezing components, parameter counts, merging LoRA
adapters, 4-bit repack detection, a teacher's identity, training data and layer counts. Stages import
these from here, never from one another."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..modelio import config_dtype, drop_irreversible_conversions

LOAD_DTYPES = {"auto": None, "float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
               "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# components of either family (Gemma 4 adds vision_encoder and per_layer_embeddings); check() refuses
# one the input model's family does not have
FREEZABLE = ("audio_encoder", "projector", "llm_layers", "embed_tokens", "lm_head", "vision_encoder",
             "per_layer_embeddings")


def load_dtype(name: str):
    import torch

    v = LOAD_DTYPES[name]
    return None if v is None else getattr(torch, v)


def checkpoint_dtype(model_dir: Path):
    """The dtype of the unquantized weights as saved (config ``dtype``/``torch_dtype``), or None."""
    from ..floor.modeldir import read_config

    return config_dtype(read_config(model_dir))


def freeze_components(model, components: list[str]) -> int:
    """Stop gradients for parameters of the named components (the model family's component_for_key);
    returns how many. A tied lm_head (Gemma 4) is the token embeddings' tensor: freezing either freezes both."""
    from ..families import family_of_config

    component_for_key = family_of_config(model.config).component_for_key
    components = set(components)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight and components & {"lm_head", "embed_tokens"}:
        components |= {"lm_head", "embed_tokens"}
    n = 0
    for name, p in model.named_parameters():
        if component_for_key(name) in components:
            p.requires_grad_(False)
            n += p.numel()
    return n


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters of ``model``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def merge_adapters(peft_model, dtype=None):
    """``peft_model`` with its LoRA adapters added into the weights: a plain model.

    A 4-bit (bitsandbytes) base is dequantized first, so the result holds exactly the weights the
    adapters were trained against (dequantized NF4 + s*B*A) rather than a second rounding to NF4;
    quantize it again with the quantize stage. ``dtype`` casts the result (e.g. back to bf16).
    """
    if not getattr(peft_model.get_base_model(), "is_quantized", False):
        merged = peft_model.merge_and_unload()
        return merged.to(dtype) if dtype is not None else merged
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    name = peft_model.active_adapter
    config = peft_model.peft_config[name]
    weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model, adapter_name=name).items()}
    base = peft_model.unload().dequantize()
    if dtype is not None:
        base = base.to(dtype)
    plain = get_peft_model(base, config)
    set_peft_model_state_dict(plain, weights)
    merged = plain.merge_and_unload()
    drop_irreversible_conversions(merged)
    return merged


def repacked_layers(model) -> list[str]:
    """Names of 4-bit layers whose weights a CPU forward has repacked in place (saving them would be lossy)."""
    out = []
    for name, mod in model.named_modules():
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        if qs is not None and getattr(qs, "packing_format_for_cpu", False):
            out.append(name)
    return out


def teacher_fingerprint(teacher: Path) -> str:
    """Identity of the teacher's weights: names, sizes and mtimes of its safetensors files."""
    items = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in Path(teacher).glob("*.safetensors"))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def layer_counts(cfg: dict) -> dict:
    """Decoder layers of the LLM and of the audio encoder in a config.json dict (``encoder_layers``, or
    ``num_hidden_layers`` where the audio config names its layers so; 0 without an audio encoder)."""
    a = cfg.get("audio_config") or {}
    return {"llm": int((cfg.get("text_config") or {}).get("num_hidden_layers", 0)),
            "audio": int(a.get("encoder_layers", a.get("num_hidden_layers", 0)) or 0)}


def load_training_data(ctx, split, limit, stage: str):
    """Training examples (texts and audio checked before any model loads), as finetune reads them."""
    from .data import load_examples, validate_examples

    exs = load_examples(ctx.data, split, limit=limit, seed=ctx.seed, lang=ctx.lang)
    rep = validate_examples(exs, ctx.lang)
    ctx.log(f"{stage}: {rep.examples} examples, {rep.seconds / 60:.1f} min of audio")
    return exs


# ---------------------------------------------------------------------------------------------
# bitsandbytes loading (the quantize stage, and the 4-bit bases of QLoRA and an nf4 teacher)

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def bitsandbytes_config(method: str, *, double_quant: bool, compute_dtype: str, skip: list[str]):
    """The ``BitsAndBytesConfig`` loading a model as ``method`` (nf4, fp4: 4-bit; int8: LLM.int8), modules in
    ``skip`` left unquantized."""
    import torch
    from transformers import BitsAndBytesConfig

    from ..quantization.formats import skip_pattern

    skip = [skip_pattern(s) for s in skip]
    if method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method, bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, DTYPES[compute_dtype]),
                              llm_int8_skip_modules=skip)
