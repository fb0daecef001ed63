"""Base model families behind one seam (DESIGN.md: "Base models are families behind one seam").

The interface is :class:`iwslt_mc.families.base.Family`; each family lives in its own folder here
(``qwen2_audio/``, ``gemma4/``) and has one line in :data:`REGISTRY`. A model directory's family comes
from ``model_type`` in its ``config.json`` (:func:`family_for`); an unknown model type is a one-line
error naming the file. No torch or transformers import at module level.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from pathlib import Path

from .base import Family

# The registry: one line per family, ``module:Class`` inside this package. The first is the default
# family (a recipe without a ``family:`` line, the demo kit).
REGISTRY = (
    "qwen2_audio:Qwen2AudioFamily",
    "gemma4:Gemma4Family",
    "qwen2_5_omni:Qwen25OmniFamily",
)


@lru_cache(maxsize=None)
def _registry() -> dict[str, Family]:
    out = {}
    for entry in REGISTRY:
        mod, cls = entry.split(":")
        fam = getattr(importlib.import_module(f".{mod}", __package__), cls)()
        out[fam.name] = fam
    return out


def default_family() -> Family:
    """The first registered family: a recipe without ``family:`` is written for it; the demo kit is one."""
    return next(iter(_registry().values()))


def family_names() -> tuple[str, ...]:
    """The registered families' names, in registry order."""
    return tuple(_registry())


def families() -> list[Family]:
    return list(_registry().values())


def family_named(name: str) -> Family:
    from ..errors import UserError

    reg = _registry()
    if name not in reg:
        raise UserError(f"unknown model family {name!r} (supported: {', '.join(reg)})")
    return reg[name]


def supported_text() -> str:
    """``qwen2_audio [qwen2_audio], gemma4 [gemma4, gemma4_unified]``: the families and their model types."""
    return ", ".join(f"{f.name} [{', '.join(f.model_types)}]" for f in families())


def family_of_model_type(model_type: str | None) -> Family | None:
    for f in families():
        if model_type in f.model_types:
            return f
    return None


def family_for(model_dir: str | os.PathLike) -> Family:
    """The family of a model directory, from ``model_type`` in its config.json; a one-line error otherwise."""
    from ..errors import InputFileError
    from ..floor.modeldir import read_model_type

    p = Path(model_dir)
    if not (p / "config.json").is_file():
        raise InputFileError(p, "no config.json: not a model directory")
    mt = read_model_type(p)
    fam = family_of_model_type(mt)
    if fam is None:
        raise InputFileError(p, f"unsupported model family (model_type {mt!r} in config.json; "
                                f"supported families: {supported_text()})")
    return fam


def family_of_config(config) -> Family:
    """The family of a transformers config object (or a :class:`~iwslt_mc.floor.modeldir.PlainConfig`): the one
    whose :attr:`Family.model_types` has its ``model_type``; the default family when it names none (no
    config, no ``model_type``); a one-line UserError naming its config.json when no family knows it."""
    mt = getattr(config, "model_type", None)
    if not mt:
        return default_family()
    fam = family_of_model_type(mt)
    if fam is None:
        from ..errors import UserError

        where = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
        path = Path(str(where)) / "config.json" if where else Path("config.json")
        raise UserError(f"{path}: unsupported model family (model_type {mt!r}; supported families: "
                        f"{supported_text()})")
    return fam


def max_audio_seconds(model) -> float:
    """The longest audio ``model`` (a loaded model, or a model directory) is given at once, training and
    distillation included: its family's :meth:`Family.max_segment_seconds` for its config (30 s without one)."""
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model))
    else:
        config = getattr(model, "config", None)
    return 30.0 if config is None else family_of_config(config).max_segment_seconds(config)


def family_of_processor(processor) -> Family | None:
    """The family a loaded processor belongs to, from its class name (:attr:`Family.processor_prefixes`;
    None: unknown, use the defaults)."""
    name = type(processor).__name__
    for f in families():
        if name.startswith(f.processor_prefixes):
            return f
    return None


def prompt_text(processor, lang: str, instruction_text: str | None = None) -> str:
    """The generation prompt string (``add_generation_prompt=True``), audio placeholder included; the
    processor's family makes it (:meth:`Family.prompt_text`; Gemma 4: the organizers' prompt; an unknown
    processor: the default family's)."""
    fam = family_of_processor(processor) or default_family()
    return fam.prompt_text(processor, lang, instruction_text)


def key_mapping_for(weights_dir) -> tuple[tuple[str, ...], object]:
    """(components, key -> component) for the weights in ``weights_dir``: its family's when its config.json
    names a supported one, else the default family's rules (a bare safetensors file has no config)."""
    from ..floor.modeldir import read_model_type

    fam = None
    if (Path(weights_dir) / "config.json").is_file():
        try:
            fam = family_of_model_type(read_model_type(weights_dir))
        except Exception:  # an unreadable config is the sizer's concern elsewhere, not the key mapping's
            fam = None
    fam = fam or default_family()
    return tuple(fam.components), fam.component_for_key


# -- a loaded model's family, and what it offers the layout-based code paths

def family_of_model(model) -> Family:
    """The family of a loaded model (peft-wrapped too), from its config (:func:`family_of_config`)."""
    return family_of_config(getattr(model, "config", None))


def layout_of(model):
    """Handles to the parts of a loaded model: its family's :meth:`Family.layout`."""
    return family_of_model(model).layout(model)


def surgery_of(model):
    """The layout-based surgery module of a loaded model's family (:meth:`Family.surgery`)."""
    return family_of_model(model).surgery()


def llm_layers_removed(model, indices):
    """Context manager: ``model`` runs without LLM layers ``indices``, put back afterwards (its family's
    surgery)."""
    return surgery_of(model).llm_layers_removed(model, indices)


def audio_layers_removed(model, indices):
    """Context manager: ``model`` runs without audio-encoder layers ``indices``, put back afterwards."""
    return surgery_of(model).audio_layers_removed(model, indices)
