"""trim-vocab on the kit: tokenizer rewritten consistently, ids remapped, logits over kept tokens unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from iwslt_mc import modelio
from iwslt_mc.floor.languages import TARGET_LANGUAGE
from iwslt_mc.families import prompt_text
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage
from iwslt_mc.stages.trim_vocab import byte_alphabet, merge_closure, trim_tokenizer_json

QUIET = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def trimmed(kit, tmp_path_factory):
    """Trimmed to the kit's English + German text plus one extra text file."""
    root = tmp_path_factory.mktemp("trim")
    extra = root / "extra.txt"
    extra.write_text("Quantisierung\nZebra-Streifen\n", encoding="utf-8")
    out = root / "out"
    rec = run_stage(make_stage("trim-vocab", {"corpora": [str(extra)], "keep_tokens": ["<|im_start|>"]}),
                    kit / "model", out, StageContext(lang="en-de", data=[str(kit / "data")], **QUIET))
    return out, rec, extra


@pytest.fixture(scope="module")
def id_map(kit, trimmed):
    """old id -> new id, recovered from the two tokenizer.json files."""
    out, _, _ = trimmed
    old = json.loads((kit / "model" / "tokenizer.json").read_text())
    new = json.loads((out / "tokenizer.json").read_text())
    m = {old["model"]["vocab"][t]: i for t, i in new["model"]["vocab"].items()}
    for t in new["added_tokens"]:
        m[next(a["id"] for a in old["added_tokens"] if a["content"] == t["content"])] = t["id"]
    return m


def _kit_texts(kit, codes=("en", "de")):
    from iwslt_mc.training.data import load_examples

    return [ex.text(c) for ex in load_examples(str(kit / "data")) for c in codes]


def test_sizes_and_bytes_saved(kit, kit_model, trimmed, id_map):
    out, rec, _ = trimmed
    cfg = json.loads((out / "config.json").read_text())
    new_rows = cfg["text_config"]["vocab_size"]
    assert rec["vocab_before"] == 1600 and rec["vocab_after"] == new_rows == len(id_map) < 1600
    proc = modelio.load_processor(out)
    assert len(proc.tokenizer) == new_rows
    model = modelio.load_model(out, device="cpu")
    assert model.get_input_embeddings().weight.shape == (new_rows, 64)
    assert model.get_output_embeddings().weight.shape == (new_rows, 64)
    removed = 1600 - new_rows
    assert rec["params_before"] - rec["params_after"] == 2 * removed * 64 == kit_model.num_parameters() - model.num_parameters()
    assert rec["bytes_saved"] == rec["bytes_before"] - rec["bytes_after"]
    # float32 rows of embed_tokens and lm_head; the safetensors header changes by a few bytes only
    assert abs(rec["bytes_saved"] - removed * 64 * 4 * 2) < 64
    assert "bytes saved" in rec["techniques"][0] and "1,600 ->" in rec["techniques"][0]


def test_config_ids_point_to_the_same_tokens(kit, trimmed):
    out, _, _ = trimmed
    old_tok = modelio.load_processor(kit / "model").tokenizer
    new_tok = modelio.load_processor(out).tokenizer
    old_cfg = json.loads((kit / "model" / "config.json").read_text())
    new_cfg = json.loads((out / "config.json").read_text())
    conv = lambda tok, i: tok.convert_ids_to_tokens(i)  # noqa: E731
    assert conv(new_tok, new_cfg["audio_token_index"]) == conv(old_tok, old_cfg["audio_token_index"]) == "<|AUDIO|>"
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert conv(new_tok, new_cfg["text_config"][k]) == conv(old_tok, old_cfg["text_config"][k])
    old_gc = json.loads((kit / "model" / "generation_config.json").read_text())
    new_gc = json.loads((out / "generation_config.json").read_text())
    assert [conv(new_tok, i) for i in new_gc["eos_token_id"]] == [conv(old_tok, i) for i in old_gc["eos_token_id"]]
    assert conv(new_tok, new_gc["pad_token_id"]) == "<|endoftext|>"
    assert new_tok.eos_token == "<|im_end|>" and new_tok.pad_token == "<|endoftext|>"


def test_tokenizer_encodes_kept_text_identically(kit, trimmed, id_map):
    out, _, extra = trimmed
    old_proc = modelio.load_processor(kit / "model")
    new_proc = modelio.load_processor(out)
    texts = _kit_texts(kit) + extra.read_text().splitlines()
    texts += [prompt_text(old_proc, lang) for lang in TARGET_LANGUAGE]
    for t in texts:
        old = old_proc.tokenizer(t, add_special_tokens=False)["input_ids"]
        new = new_proc.tokenizer(t, add_special_tokens=False)["input_ids"]
        assert new == [id_map[i] for i in old], t
    # the chat template renders the same prompt and the processor expands the audio token the same way
    assert prompt_text(new_proc, "en-zh") == prompt_text(old_proc, "en-zh")


def test_any_text_still_encodes_and_round_trips(kit, trimmed):
    out, _, _ = trimmed
    new = json.loads((out / "tokenizer.json").read_text())
    vocab = new["model"]["vocab"]
    assert all(c in vocab for c in byte_alphabet())  # all 256 byte-level base tokens
    for m in new["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        assert a in vocab and b in vocab and a + b in vocab
    tok = modelio.load_processor(out).tokenizer
    old_tok = modelio.load_processor(kit / "model").tokenizer
    text = "Chinesisch 翻译模型 ☃ naïve Zürich 12345 xyzzy"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) >= len(old_tok(text, add_special_tokens=False)["input_ids"])
    assert max(ids) < len(tok)


def test_tokens_of_extra_corpus_and_explicit_keep(kit, trimmed):
    out, rec, extra = trimmed
    old_tok = modelio.load_processor(kit / "model").tokenizer
    new_vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    for line in extra.read_text().splitlines():
        for t in old_tok.tokenize(line):
            assert t in new_vocab
    # a Chinese-only token of the kit (not in en/de text) is gone
    zh_only = set(old_tok.tokenize("".join(_kit_texts(kit, ("zh",))))) - set(
        t for s in _kit_texts(kit) for t in old_tok.tokenize(s))
    zh_only -= set(byte_alphabet())
    assert zh_only and not (zh_only & set(new_vocab))
    kinds = {d.get("kind") for d in rec["data"]}
    assert kinds == {"text", "texts"} and rec["languages"] == ["en", "de"]


def _inputs(processor, wave, lang="en-de"):
    return processor(text=prompt_text(processor, lang), audio=wave, sampling_rate=16000, return_tensors="pt")


def test_logits_over_kept_tokens_and_forced_greedy_path(kit, kit_model, kit_waves, trimmed, id_map):
    from transformers import LogitsProcessor, LogitsProcessorList

    out, _, _ = trimmed
    keep = sorted(id_map)  # old ids in new-id order
    old_proc = modelio.load_processor(kit / "model")
    new_proc = modelio.load_processor(out)
    trimmed_model = modelio.load_model(out, device="cpu")
    wave = kit_waves["eval"][1][1]
    old_in, new_in = _inputs(old_proc, wave), _inputs(new_proc, wave)
    assert new_in["input_ids"].tolist() == [[id_map[i] for i in old_in["input_ids"][0].tolist()]]
    with torch.inference_mode():
        old_logits = kit_model(**old_in).logits
        new_logits = trimmed_model(**new_in).logits
    assert torch.equal(new_logits, old_logits[..., keep])

    class OnlyKept(LogitsProcessor):  # the original model, restricted to kept tokens: the forced greedy path
        def __call__(self, input_ids, scores):
            mask = torch.full_like(scores, float("-inf"))
            mask[:, keep] = 0
            return scores + mask

    n = 12
    with torch.inference_mode():
        old_out = kit_model.generate(**old_in, max_new_tokens=n, do_sample=False,
                                     logits_processor=LogitsProcessorList([OnlyKept()]))[0, old_in["input_ids"].shape[1]:]
        new_out = trimmed_model.generate(**new_in, max_new_tokens=n, do_sample=False)[0, new_in["input_ids"].shape[1]:]
    assert new_out.tolist() == [id_map[i] for i in old_out.tolist()]
    old_text = old_proc.batch_decode([old_out], skip_special_tokens=True)[0]
    new_text = new_proc.batch_decode([new_out], skip_special_tokens=True)[0]
    assert old_text == new_text and old_text.strip()


# the stage's in-memory model equals its reload: tests/stages/test_family_stages.py (every family)


def test_merge_closure_keeps_the_merges_that_build_kept_tokens():
    # a toy byte-level BPE: h e l l o -> he, ll, hell, hello ; and an unrelated "lo"
    vocab = {c: i for i, c in enumerate(["h", "e", "l", "o", "x"])}
    merges = [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], ["l", "o"]]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tj = {"model": {"type": "BPE", "vocab": vocab, "merges": merges},
          "added_tokens": [{"id": len(vocab), "content": "<|x|>", "special": True}]}
    keep = merge_closure(tj, {vocab["hello"], len(vocab)})
    names = {t for t, i in vocab.items() if i in keep}
    assert names == {"hello", "hell", "he", "ll", "h", "e", "l", "o"}
    new, old2new = trim_tokenizer_json(tj, sorted(keep))
    # "lo" was not kept, so its merge goes; every merge that builds "hello" stays, in rank order
    assert [tuple(m) for m in new["model"]["merges"]] == [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")]
    # a merge whose result or one of whose parts is dropped is removed
    new2, _ = trim_tokenizer_json(tj, sorted((keep | {vocab["lo"]}) - {vocab["hell"]}))
    assert [tuple(m) for m in new2["model"]["merges"]] == [("h", "e"), ("l", "l"), ("l", "o")]
    assert new["added_tokens"][0]["id"] == old2new[len(vocab)] == len(keep) - 1
    assert sorted(new["model"]["vocab"].values()) == list(range(len(keep) - 1))


@pytest.mark.parametrize("sets,data,msg", [
    (["keep_tokens=[nonexistent_tok]"], True, "is not in the vocabulary"),
    (["keep_ids=[5000]"], True, "out of range"),
    (["languages=[fr]"], True, "unknown language code 'fr'"),
    (["corpora=[missing.txt]"], True, "corpus file not found"),
    ([], False, "no text to keep tokens of"),
])
def test_bad_options(kit, tmp_path, monkeypatch, stage_refuses, sets, data, msg):
    monkeypatch.chdir(tmp_path)
    stage_refuses("trim-vocab", kit / "model", tmp_path / "o", sets, msg, *(["--data", str(kit / "data")] if data else []))


def test_byte_alphabet_off_keeps_only_the_bytes_of_kept_tokens(kit, trimmed, id_map, tmp_path):
    """byte_alphabet: false drops the byte tokens no kept token is built of; the kept text encodes as before and
    the planner's count (kept_token_ids) is the stage's."""
    from iwslt_mc.stages.trim_vocab import kept_token_ids

    out_all, rec_all, extra = trimmed
    opts = {"corpora": [str(extra)], "keep_tokens": ["<|im_start|>"], "byte_alphabet": False}
    out = tmp_path / "nobytes"
    rec = run_stage(make_stage("trim-vocab", opts), kit / "model", out,
                    StageContext(lang="en-de", data=[str(kit / "data")], **QUIET))
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    old_tok = modelio.load_processor(kit / "model").tokenizer
    texts = _kit_texts(kit) + extra.read_text().splitlines()
    used = {ch for s in texts for t in old_tok.tokenize(s) for ch in t}
    gone = [c for c in byte_alphabet() if c not in vocab]
    assert gone and not set(gone) & used  # only bytes no kept text uses went
    assert "☃" not in vocab and all(c in vocab for c in used & set(byte_alphabet()))
    assert rec["vocab_after"] == rec_all["vocab_after"] - len(gone)
    assert rec["bytes_saved"] > rec_all["bytes_saved"]
    assert "byte_alphabet: false" in rec["techniques"][0]
    assert len(kept_token_ids(kit / "model", opts, lang="en-de", data=[str(kit / "data")])) == rec["vocab_after"]
    # a kit sentence encodes to the same tokens as in the default trim (both renumber the old ids in order)
    new_tok, all_tok = modelio.load_processor(out).tokenizer, modelio.load_processor(out_all).tokenizer
    s = _kit_texts(kit)[0]
    assert new_tok.convert_ids_to_tokens(new_tok(s, add_special_tokens=False)["input_ids"]) == \
        all_tok.convert_ids_to_tokens(all_tok(s, add_special_tokens=False)["input_ids"])
