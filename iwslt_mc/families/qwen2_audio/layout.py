"""Where things are in a Qwen2-Audio model, found by structure, not by hard-coded attribute paths.

transformers >= 5.10: ``Qwen2AudioForConditionalGeneration.model`` (``Qwen2AudioModel``) holds
``audio_tower``, ``multi_modal_projector`` and ``language_model`` (a ``Qwen2Model``); ``lm_head`` is at
the top. Before 5.10 (and in 4.x) ``language_model`` was a ``Qwen2ForCausalLM`` holding ``model``
(layers, embed_tokens, norm) and ``lm_head``. Both are handled here: the decoder stack is the module
that owns ``layers`` + ``embed_tokens`` + ``norm``; the audio encoder is the module that owns
``layers`` + ``conv1`` + ``conv2``; the projector is the module whose class name ends in
``MultiModalProjector`` (or that is referenced as ``multi_modal_projector``); ``lm_head`` is the
model's output embedding. All surgery goes through :func:`find_layout`.

This module imports torch only inside functions; :func:`component_for_key` is pure string logic
used by the sizer on safetensors keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Components, in the order reports show them.
COMPONENTS = ("audio_encoder", "projector", "llm_layers", "embed_tokens", "lm_head", "other")

_KEY_RULES = [
    # (regex on a checkpoint key, component); first match wins. Covers the on-disk names written by
    # transformers 4.x/5.x (``language_model.model.layers...``; 5.17 writes ``language_model.model.model.layers...``),
    # the 5.10+ in-memory names (``model.language_model.layers...``) and peft-wrapped names (``base_model.model....``).
    (re.compile(r"(^|\.)audio_tower\."), "audio_encoder"),
    (re.compile(r"(^|\.)multi_modal_projector\."), "projector"),
    (re.compile(r"(^|\.)language_model\.(model\.){0,2}layers\.\d+\."), "llm_layers"),
    (re.compile(r"(^|\.)embed_tokens\."), "embed_tokens"),
    (re.compile(r"(^|\.)lm_head\."), "lm_head"),
]

_LAYER_INDEX = re.compile(r"(^|\.)language_model\.(?:model\.){0,2}layers\.(\d+)\.")
_AUDIO_LAYER_INDEX = re.compile(r"(^|\.)audio_tower\.layers\.(\d+)\.")


def component_for_key(key: str) -> str:
    """Component of a state-dict / safetensors key (``other`` when it belongs to none)."""
    for rx, comp in _KEY_RULES:
        if rx.search(key):
            return comp
    return "other"


def llm_layer_index(key: str) -> int | None:
    m = _LAYER_INDEX.search(key)
    return int(m.group(2)) if m else None


def audio_layer_index(key: str) -> int | None:
    m = _AUDIO_LAYER_INDEX.search(key)
    return int(m.group(2)) if m else None


@dataclass
class ModelLayout:
    """Handles to the parts of a loaded Qwen2-Audio model, and their qualified names."""

    model: Any
    audio_tower: Any
    audio_tower_name: str
    audio_layers: Any  # nn.ModuleList
    audio_layers_name: str
    projector: Any
    projector_name: str
    language_model: Any  # the decoder stack (Qwen2Model): layers, embed_tokens, norm
    language_model_name: str
    decoder_layers: Any  # nn.ModuleList
    decoder_layers_name: str
    embed_tokens: Any
    embed_tokens_name: str
    lm_head: Any
    lm_head_name: str
    norm: Any
    config: Any
    text_config: Any
    audio_config: Any

    @property
    def num_llm_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def num_audio_layers(self) -> int:
        return len(self.audio_layers)

    @property
    def widths(self) -> dict:
        """The residual widths hidden-state KD matches: ``llm`` (hidden_size), ``audio`` (the encoder's d_model)."""
        return {"llm": self.text_config.hidden_size, "audio": self.audio_config.d_model}

    def describe(self) -> dict:
        return {
            "audio_layers": f"{self.audio_layers_name} ({self.num_audio_layers})",
            "projector": self.projector_name,
            "decoder_layers": f"{self.decoder_layers_name} ({self.num_llm_layers})",
            "embed_tokens": self.embed_tokens_name,
            "lm_head": self.lm_head_name,
        }


class LayoutError(RuntimeError):
    pass


def _has(mod, *names) -> bool:
    return all(hasattr(mod, n) for n in names)


def find_layout(model) -> ModelLayout:
    """Locate audio encoder, projector, LLM decoder stack, embeddings and lm_head of ``model``.

    Works on ``Qwen2AudioForConditionalGeneration`` in either transformers layout and on models
    wrapped by peft (names then carry the wrapper's prefix).
    """
    import torch.nn as nn

    names = {id(m): n for n, m in model.named_modules()}
    audio = llm = projector = None
    for name, mod in model.named_modules():
        if audio is None and _has(mod, "layers", "conv1", "conv2") and isinstance(getattr(mod, "layers"), nn.ModuleList):
            audio = (name, mod)
        elif llm is None and _has(mod, "layers", "embed_tokens", "norm") and isinstance(getattr(mod, "layers"), nn.ModuleList):
            llm = (name, mod)
        elif projector is None and (type(mod).__name__.endswith("MultiModalProjector") or name.endswith("multi_modal_projector")):
            projector = (name, mod)
    missing = [what for what, v in (("audio encoder", audio), ("LLM decoder", llm), ("multi-modal projector", projector)) if v is None]
    if missing:
        raise LayoutError(f"not a Qwen2-Audio model: could not find {', '.join(missing)} in {type(model).__name__}")
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is None:
        raise LayoutError(f"could not find lm_head (output embeddings) in {type(model).__name__}")
    config = getattr(model, "config", None)
    # peft wraps the config-owning model; find the Qwen2-Audio config wherever it is
    text_config = getattr(config, "text_config", None)
    audio_config = getattr(config, "audio_config", None)
    qual = lambda prefix, child: f"{prefix}.{child}" if prefix else child  # noqa: E731
    return ModelLayout(
        model=model,
        audio_tower=audio[1], audio_tower_name=audio[0],
        audio_layers=audio[1].layers, audio_layers_name=qual(audio[0], "layers"),
        projector=projector[1], projector_name=projector[0],
        language_model=llm[1], language_model_name=llm[0],
        decoder_layers=llm[1].layers, decoder_layers_name=qual(llm[0], "layers"),
        embed_tokens=llm[1].embed_tokens, embed_tokens_name=qual(llm[0], "embed_tokens"),
        lm_head=lm_head, lm_head_name=names.get(id(lm_head), "lm_head"),
        norm=llm[1].norm,
        config=config, text_config=text_config, audio_config=audio_config,
    )
