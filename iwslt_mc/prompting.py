"""The chat prompt of the published recipes (seed paper's code), shared by decoding and training."""

from __future__ import annotations

from .floor.languages import TARGET_LANGUAGE, check_lang

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


def prompt_text(processor, lang: str, instruction_text: str | None = None) -> str:
    """The generation prompt string (``add_generation_prompt=True``), audio placeholder included;
    the processor's model family decides the messages (Gemma 4: the organizers' prompt)."""
    from .families import family_of_processor

    fam = family_of_processor(processor)
    if fam is not None and fam.name != "qwen2_audio":
        return fam.prompt_text(processor, lang, instruction_text)
    return _qwen2_audio_prompt_text(processor, lang, instruction_text)


def _qwen2_audio_prompt_text(processor, lang: str, instruction_text: str | None = None) -> str:
    return processor.apply_chat_template(messages(lang, instruction_text), add_generation_prompt=True, tokenize=False)
