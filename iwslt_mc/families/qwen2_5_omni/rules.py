"""What the Qwen2.5-Omni family's modules share, without importing each other: its components and which
checkpoint key belongs to which, the config after removing layers, and the prompt."""

from __future__ import annotations

import copy
import re

LABEL = "Qwen2.5-Omni"
COMPONENTS = ("audio_encoder", "vision_encoder", "projector", "llm_layers", "embed_tokens", "lm_head", "other")
# first match wins; on-disk and in-memory names both (and the full checkpoint's ``thinker.`` prefix)
_KEY_RULES = [
    (re.compile(r"(^|\.)audio_tower\.proj\."), "projector"),
    (re.compile(r"(^|\.)audio_tower\."), "audio_encoder"),
    (re.compile(r"(^|\.)visual\."), "vision_encoder"),
    (re.compile(r"(^|\.)layers\.\d+\."), "llm_layers"),
    (re.compile(r"(^|\.)embed_tokens\."), "embed_tokens"),
    (re.compile(r"(^|\.)lm_head\."), "lm_head"),
]
# The prompt: the chat template's default system turn, one user turn with the audio, then the instruction
# (the order of the model card's audio examples).
INSTRUCTION = "Translate the English speech into {language}. Output only the translation."


def component_for_key(key: str) -> str:
    for rx, comp in _KEY_RULES:
        if rx.search(key):
            return comp
    return "other"


def config_after_layer_removal(config, kept: list[int]):
    """``config`` (a copy; transformers' or a PlainConfig) keeping decoder layers ``kept``."""
    cfg = copy.deepcopy(config)
    t = cfg.text_config
    if getattr(t, "layer_types", None):
        t.layer_types = [t.layer_types[i] for i in kept]
    t.num_hidden_layers = len(kept)
    return cfg


def config_after_audio_layer_removal(config, kept: list[int]):
    """``config`` (a copy) keeping audio-encoder layers ``kept``."""
    cfg = copy.deepcopy(config)
    cfg.audio_config.encoder_layers = len(kept)
    return cfg


def instruction(lang: str) -> str:
    from ...floor.languages import TARGET_LANGUAGE, check_lang

    return INSTRUCTION.format(language=TARGET_LANGUAGE[check_lang(lang)])


def messages(lang: str, instruction_text: str | None = None, audio=None) -> list[dict]:
    part = {"type": "audio", "audio": audio} if audio is not None else {"type": "audio"}
    return [{"role": "user", "content": [part, {"type": "text", "text": instruction_text or instruction(lang)}]}]


def prompt_text(processor, lang: str, instruction_text: str | None = None) -> str:
    """The generation prompt string, audio placeholder included."""
    return processor.apply_chat_template(messages(lang, instruction_text), add_generation_prompt=True, tokenize=False)
