"""The chat prompt of the published recipes (seed paper's code), shared by decoding and training."""

from __future__ import annotations

from .errors import UserError

SYSTEM_PROMPT = "You are a professional translator."
TARGET_LANGUAGE = {"en-de": "German", "en-zh": "Chinese", "en-ar": "Arabic"}
TARGET_CODE = {"en-de": "de", "en-zh": "zh", "en-ar": "ar"}


def check_lang(lang: str) -> str:
    if lang not in TARGET_LANGUAGE:
        raise UserError(f"unknown language pair {lang!r} (expected one of: {', '.join(TARGET_LANGUAGE)})")
    return lang


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
