"""Language pairs: the table of target languages and its check. The prompt itself is the family's
(:func:`iwslt_mc.families.prompt_text`, :meth:`iwslt_mc.families.base.Family.messages`)."""

from __future__ import annotations

from .errors import UserError

TARGET_LANGUAGE = {"en-de": "German", "en-zh": "Chinese", "en-ar": "Arabic"}
TARGET_CODE = {"en-de": "de", "en-zh": "zh", "en-ar": "ar"}


def check_lang(lang: str) -> str:
    if lang not in TARGET_LANGUAGE:
        raise UserError(f"unknown language pair {lang!r} (expected one of: {', '.join(TARGET_LANGUAGE)})")
    return lang

