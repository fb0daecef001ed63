"""The one language table (iwslt_mc.floor.languages): prompts, data codes and scorer settings read it."""

import pytest

from iwslt_mc.errors import UserError
from iwslt_mc.floor import languages
from iwslt_mc.families.qwen2_audio.prompt import instruction
from iwslt_mc.scoring import scoring


def test_the_table_and_its_views():
    assert list(languages.LANGUAGES) == ["en-de", "en-zh", "en-ar"]
    assert languages.TARGET_CODE == {"en-de": "de", "en-zh": "zh", "en-ar": "ar"}
    assert languages.TARGET_LANGUAGE == {"en-de": "German", "en-zh": "Chinese", "en-ar": "Arabic"}
    zh = languages.language("en-zh")
    assert (zh.bleu_tokenize, zh.chrf_word_order, zh.reseg_tokenizer) == ("zh", 0, "cj")
    assert instruction("en-zh") == "Translate the English speech into Chinese:"


def test_unknown_language_is_one_line_error_everywhere():
    msg = "unknown language pair 'en-fr' (expected one of: en-de, en-zh, en-ar)"
    for call in (lambda: languages.check_lang("en-fr"), lambda: instruction("en-fr"),
                 lambda: scoring.corpus_scores(["a"], ["a"], "en-fr")):
        with pytest.raises(UserError) as e:
            call()
        assert str(e.value) == msg
