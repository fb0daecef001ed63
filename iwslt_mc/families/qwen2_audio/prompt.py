"""Qwen2-Audio's chat prompt of the published recipes (seed paper's code): a system turn, then the user
turn with the audio and the instruction; shared by decoding and training through the family."""

from __future__ import annotations

from ...floor.languages import TARGET_LANGUAGE, check_lang

SYSTEM_PROMPT = "You are a professional translator."


def instruction(lang: str) -> str:
    return f"Translate the English speech into {TARGET_LANGUAGE[check_lang(lang)]}:"


def messages(lang: str, instruction_text: str | None = None, audio_url: str = "audio.wav") -> list[dict]:
    """Chat messages: system, then user = audio + instruction."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [
            {"type": "audio", "audio_url": audio_url},
            {"type": "text", "text": instruction_text or instruction(lang)},
        ]},
    ]
