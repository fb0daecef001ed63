"""Where the parts of a loaded Gemma 4 model are (``gemma4`` and ``gemma4_unified``), for the layout-based
stage paths (:meth:`Gemma4Family.layout`): prune-ffn's unit importance, kd's hidden-state taps.

``Gemma4*ForConditionalGeneration.model`` holds ``language_model`` (the text decoder: ``embed_tokens``,
``layers``, ``norm``, and in ``gemma4`` the per-layer embeddings), ``audio_tower`` (``gemma4``: a conformer
whose ``layers`` are ``Gemma4AudioLayer``; ``gemma4_unified``: none, raw frames enter through
``embed_audio``), ``embed_audio`` (the audio projector) and the vision parts. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Gemma4Layout:
    """Handles to the parts of a loaded Gemma 4 model (the fields the generic stage paths read)."""

    model: Any
    language_model: Any  # Gemma4TextModel: embed_tokens, layers, norm
    decoder_layers: Any  # nn.ModuleList
    embed_tokens: Any
    lm_head: Any
    norm: Any
    audio_tower: Any  # None in gemma4_unified
    audio_layers: Any  # the conformer's nn.ModuleList, or an empty tuple
    projector: Any  # embed_audio
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
        """The residual widths hidden-state KD matches: ``llm`` (text hidden size), ``audio`` (the conformer's
        hidden size; None without an audio encoder)."""
        return {"llm": self.text_config.hidden_size,
                "audio": self.audio_config.hidden_size if self.audio_tower is not None else None}


def find_layout(model) -> Gemma4Layout:
    """The :class:`Gemma4Layout` of a loaded ``Gemma4ForConditionalGeneration`` / ``Gemma4UnifiedForConditionalGeneration``."""
    inner = getattr(model, "model", model)
    lm = inner.language_model
    audio = getattr(inner, "audio_tower", None)
    config = model.config
    return Gemma4Layout(
        model=model, language_model=lm, decoder_layers=lm.layers, embed_tokens=lm.embed_tokens,
        lm_head=model.get_output_embeddings(), norm=lm.norm, audio_tower=audio,
        audio_layers=audio.layers if audio is not None else (), projector=getattr(inner, "embed_audio", None),
        config=config, text_config=config.text_config, audio_config=getattr(config, "audio_config", None))
