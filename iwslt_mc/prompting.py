"""Language pairs and the generation prompt, shared by decoding and training; each family's own messages
(:meth:`iwslt_mc.families.base.Family.messages`) make the prompt."""

from __future__ import annotations

from .errors import UserError

TARGET_LANGUAGE = {"en-de": "German", "en-zh": "Chinese", "en-ar": "Arabic"}
TARGET_CODE = {"en-de": "de", "en-zh": "zh", "en-ar": "ar"}


def check_lang(lang: str) -> str:
    if lang not in TARGET_LANGUAGE:
        raise UserError(f"unknown language pair {lang!r} (expected one of: {', '.join(TARGET_LANGUAGE)})")
    return lang


def prompt_text(processor, lang: str, instruction_text: str | None = None) -> str:
    """The generation prompt string (``add_generation_prompt=True``), audio placeholder included;
    the processor's model family decides the messages (Gemma 4: the organizers' prompt; an unknown
    processor: the default family's)."""
    from .families import default_family, family_of_processor

    fam = family_of_processor(processor) or default_family()
    return fam.prompt_text(processor, lang, instruction_text)
