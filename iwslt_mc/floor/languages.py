"""The one language table: every language pair the tool knows, with what the prompt, the data, the
scorer and the resegmenter need to know about its target language. Pure (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Language:
    """One target language: its name in prompts, its data code, and its sacrebleu/resegmentation settings."""

    name: str  # in prompts: "Translate the English speech into German:"
    code: str  # data columns (text_de) and output file suffixes (talk.de)
    bleu_tokenize: str
    chrf_word_order: int  # 2 = chrF++; 0 = chrF (advised for Chinese by the metric's author)
    reseg_tokenizer: str  # "whitespace" or "cj" (one token per Han character, Latin runs kept whole)


LANGUAGES: dict[str, Language] = {
    "en-de": Language("German", "de", "13a", 2, "whitespace"),
    "en-zh": Language("Chinese", "zh", "zh", 0, "cj"),
    "en-ar": Language("Arabic", "ar", "13a", 2, "whitespace"),
}

# views of the table
TARGET_LANGUAGE = {k: v.name for k, v in LANGUAGES.items()}
TARGET_CODE = {k: v.code for k, v in LANGUAGES.items()}


def check_lang(lang: str) -> str:
    """``lang`` if it is a known language pair; otherwise a one-line error naming the known ones."""
    if lang not in LANGUAGES:
        raise UserError(f"unknown language pair {lang!r} (expected one of: {', '.join(LANGUAGES)})")
    return lang


def language(lang: str) -> Language:
    """The table's entry for ``lang`` (checked)."""
    return LANGUAGES[check_lang(lang)]
