"""Gemma 4's prompt: the organizers' decoding (gemma_run.py, see track-rules.md): one user turn, text then
audio, prompt "Translate the following speech into {German|Chinese}. Output only the translation, with no
explanation or newlines.", ``enable_thinking=False``, greedy, ``max_new_tokens=256``."""

from __future__ import annotations

from ...floor.languages import TARGET_LANGUAGE, check_lang

PROMPT = "Translate the following speech into {language}. Output only the translation, with no explanation or newlines."
MAX_NEW_TOKENS = 256
CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}


def organizers_prompt(lang: str) -> str:
    return PROMPT.format(language=TARGET_LANGUAGE[check_lang(lang)])


def messages(lang: str, instruction_text: str | None = None, audio=None) -> list[dict]:
    """The organizers' messages: one user turn, the text, then the audio."""
    part = {"type": "audio", "audio": audio} if audio is not None else {"type": "audio"}
    return [{"role": "user", "content": [{"type": "text", "text": instruction_text or organizers_prompt(lang)}, part]}]


def prompt_text(processor, lang: str, instruction_text: str | None = None) -> str:
    """The generation prompt string of a Gemma 4 processor (what the family's ``prompt_text`` gives)."""
    return processor.apply_chat_template(messages(lang, instruction_text), add_generation_prompt=True,
                                         tokenize=False, **CHAT_TEMPLATE_KWARGS)
