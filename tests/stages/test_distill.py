"""Sequence-level distillation: teacher pairs added, deduplicated, filtered, saved with provenance, resumable."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from iwslt_mc.training import data
from iwslt_mc.decoding import core as decoding
from iwslt_mc.errors import UserError
from iwslt_mc.fsutil import sha256_file
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage
from iwslt_mc.stages.distill import DATA_DIR, normalize_text


pytestmark = pytest.mark.usefixtures("one_thread")


def _distill(kit, out, options, specs=None, lang="en-de"):
    ctx = StageContext(lang=lang, data=[str(s) for s in (specs or [kit / "data"])], device="cpu", log=lambda m: None)
    return run_stage(make_stage("distill", options), kit / "model", out, ctx)


def test_kit_teacher_pairs_deduplicated_with_provenance(kit, tmp_path):
    out = tmp_path / "kd"
    # the training split twice: every reference and every teacher output appears twice
    rec = _distill(kit, out, {"max_new_tokens": 6, "batch_size": 4}, specs=[kit / "data", kit / "data"])
    exs = data.load_examples(out / DATA_DIR, "train", lang="en-de")
    refs = [e for e in exs if e.meta["origin"] == "reference"]
    kd = [e for e in exs if e.meta["origin"] == "teacher"]
    train = data.load_examples(kit / "data", "train")
    assert sorted(e.text_de for e in refs) == sorted(e.text_de for e in train)  # 12 unique references
    keys = [(data.audio_key(e), normalize_text(e.text_de)) for e in exs]
    assert len(keys) == len(set(keys))  # no duplicate pairs left
    assert 1 <= len(kd) <= len(train) and all(e.text_de.strip() for e in kd)
    assert all(isinstance(e.meta["score"], float) for e in kd)  # chrF++ against the reference
    c = rec["distill"]
    assert (c["utterances"], c["reference_pairs"], c["teacher_pairs"], c["pairs"]) == (24, 12, len(kd), len(exs))
    assert c["duplicates"] == 12 + (24 - c["empty"] - len(kd))
    prov = json.loads((out / DATA_DIR / "provenance.json").read_text())
    assert prov["teacher"]["path"] == str((kit / "model").resolve()) and prov["teacher"]["stages"] == ["kit"]
    assert prov["counts"] == {k: v for k, v in c.items() if k not in ("dataset", "teacher")} and prov["lang"] == "en-de" and prov["target_column"] == "text_de"
    assert prov["data"] == [{"path": str(kit / "data"), "split": "train"}] * 2
    assert prov["decoding"]["max_new_tokens"] == 6 and prov["filter"]["dedup"] is True
    # the model passes through unchanged, with this stage appended to its provenance
    assert sha256_file(out / "model.safetensors") == sha256_file(kit / "model" / "model.safetensors")
    stages = json.loads((out / "provenance.json").read_text())["stages"]
    assert stages[-1]["stage"] == "distill" and stages[-1]["techniques"][0].startswith(
        f"sequence-level knowledge distillation: {len(kd)} teacher translations of 24 utterances")
    assert not (tmp_path / "kd.work").exists()
    data.validate_examples(exs, "en-de")  # ready for a finetune stage


def test_normalized_dedup_score_filter_and_resume(kit, tmp_path, monkeypatch):
    train = data.load_examples(kit / "data", "train")
    refs = {e.text_en: e.text_de for e in train}
    # a controlled teacher: even utterances get the reference with other case and spacing (duplicates
    # after normalization), odd ones a word-dropped variant (a real distinct translation)
    texts = [f"  {refs[e.text_en].upper()}  " if i % 2 == 0 else " ".join(refs[e.text_en].split()[1:])
             for i, e in enumerate(train)]
    order = {e.id: i for i, e in enumerate(train)}
    calls = []

    def fake_translate(model, processor, waves, lang, **kw):
        # waves are the examples' waveform methods, with the family's cut (30 s for Qwen2-Audio) bound
        assert all(w.args == (30.0,) for w in waves)
        ids = [order[w.func.__self__.id] for w in waves]
        calls.append(ids)
        if len(calls) == 2 and fail["now"]:
            raise KeyboardInterrupt
        return [decoding.Hyp(texts[i], 5, 0.0) for i in ids]

    fail = {"now": True}
    monkeypatch.setattr(decoding, "translate", fake_translate)
    scores = [sacrebleu.sentence_chrf(texts[i], [train[i].text_de], word_order=2).score for i in range(len(train))]
    odd = [i for i in range(len(train)) if i % 2]
    threshold = sorted(scores[i] for i in odd)[len(odd) // 2]  # keeps the better half of the odd ones
    opts = {"chunk": 5, "min_score": threshold}
    with pytest.raises(KeyboardInterrupt):
        _distill(kit, tmp_path / "kd", opts)
    assert calls == [list(range(5)), list(range(5, 10))]
    fail["now"] = False
    calls.clear()
    rec = _distill(kit, tmp_path / "kd", opts)
    assert calls == [list(range(5, 10)), list(range(10, 12))]  # the first chunk was not translated again
    kept = sorted(i for i in odd if scores[i] >= threshold)
    c = rec["distill"]
    assert c["teacher_pairs"] == len(kept) and c["below_min_score"] == len(odd) - len(kept)
    assert c["duplicates"] == len(train) - len(odd) and c["reference_pairs"] == len(train)
    kd = [e for e in data.load_examples(tmp_path / "kd" / DATA_DIR) if e.meta["origin"] == "teacher"]
    assert sorted(e.text_de for e in kd) == sorted(texts[i] for i in kept)
    assert [round(e.meta["score"], 3) for e in sorted(kd, key=lambda e: order[e.meta["source_id"]])] == [
        round(scores[i], 3) for i in kept]


def test_options_and_checks(kit, tmp_path):
    with pytest.raises(UserError, match="unknown metric 'comet'"):
        make_stage("distill", {"metric": "comet"})
    with pytest.raises(UserError, match="no data to translate"):
        run_stage(make_stage("distill", {}), kit / "model", tmp_path / "o", StageContext(data=[]))
    with pytest.raises(UserError, match="model directory not found"):
        run_stage(make_stage("distill", {"teacher": str(tmp_path / "none")}), kit / "model", tmp_path / "o",
                  StageContext(data=[str(kit / "data")]))
    s = make_stage("distill", {}).with_smoke().options
    assert (s.limit, s.max_new_tokens) == (4, 8)
    assert normalize_text(" Guten\u00a0 MORGEN\t") == "guten morgen"
