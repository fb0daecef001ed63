"""The shared round engine of the iterative layer search: same choices as the published loop.

The published loop (:class:`NaiveEngine`) re-encodes the audio and decodes each held-out segment
alone for every candidate; the shared engine decodes a whole round in one batched loop with the
prompt prefill below each candidate's layer computed once. These tests hold it to the naive loop's
hypotheses and choices on the kit (random weights, 4 layers), a 32-layer kit-width model and the
trained toy teacher, and check that an interrupted search resumes to the same layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iwslt_mc import modelio
from iwslt_mc.stages import importance as imp
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage

TOY = Path(__file__).resolve().parent / "fixtures" / "toy"
QUIET = dict(log=lambda *a: None)


def _segments(data_dir, n, split="test"):
    from iwslt_mc.data import load_examples

    return imp.heldout_segments(load_examples(str(data_dir), split=split, seed=0)[:n], "en-de")


def _search(engine, log_path, *, n_layers, remove, protect=False):
    scorer = imp.CandidateScorer(engine, metric="auto")
    log = imp.SearchLog(log_path, {"k": 1}, log=lambda *a: None)
    chosen = imp.iterative_search(scorer, kind="llm", n_layers=n_layers, remove=remove, protect_first_last=protect,
                                  log=log, progress=lambda *a: None)
    scores = {(tuple(r["removed"]), r["candidate"]): r["score"] for r in log.lines if r["type"] == "candidate"}
    rounds = [r for r in log.lines if r["type"] == "round"]
    return chosen, scores, rounds


def _same_search(fast, naive, n_candidates):
    assert fast[0] == naive[0]
    assert fast[1].keys() == naive[1].keys() and len(fast[1]) == n_candidates
    for k in fast[1]:
        assert fast[1][k] == pytest.approx(naive[1][k], abs=1e-9), k
    # the rounds really were decoded together, not one candidate at a time
    assert all(r["decoded_together"] == len([k for k in fast[1] if list(k[0]) == sorted(r["removed"][:-1])])
               for r in fast[2])


def test_kit_search_chooses_what_the_naive_loop_chooses(kit, tmp_path):
    model = modelio.load_model(kit / "model", device="cpu")
    proc = modelio.load_processor(kit / "model")
    segs = _segments(kit / "data", 3)
    kw = dict(max_new_tokens=6, max_length=1024)
    fast = _search(imp.SharedEngine(model, proc, segs, "en-de", **kw), tmp_path / "f.jsonl", n_layers=4, remove=3)
    naive = _search(imp.NaiveEngine(model, proc, segs, "en-de", **kw), tmp_path / "n.jsonl", n_layers=4, remove=3)
    _same_search(fast, naive, 4 + 3 + 2)
    assert len({round(v, 6) for v in fast[1].values()}) > 2  # not decided by ties alone


@pytest.fixture(scope="module")
def deep(kit):
    """Kit widths, 32 LLM layers, random weights (as ``tools/bench_prune_search.py --arch deep``)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from bench_prune_search import build_model

    return build_model("deep", kit / "model", "cpu", 0), modelio.load_processor(kit / "model")


@pytest.mark.parametrize("max_rows", [256, 5])  # one batch of rows, and one segment per batch
def test_deep_round_hypotheses_equal_per_candidate_decoding(kit, deep, max_rows):
    model, proc = deep
    segs = _segments(kit / "data", 3)
    eng = imp.SharedEngine(model, proc, segs, "en-de", max_new_tokens=5, round_rows=max_rows)
    ref = imp.CachedEngine(model, proc, segs, "en-de", max_new_tokens=5)
    emb = eng.embeds(())
    assert len({e.shape[0] for e in emb}) > 1  # rows of different prompt lengths: left padding is exercised
    removed = [13, 3]
    cands = [1, 2, 12, 14, 29, 30, 31]  # below, between and above the removed layers, and the last one
    got = eng.translate_round(removed, cands)
    for c in cands:
        assert got[c] == ref.translate(tuple(removed + [c])), c
    assert len({tuple(v) for v in got.values()}) > 2


def test_deep_round_scores_and_choice_equal_the_naive_loop(kit, deep):
    model, proc = deep
    segs = _segments(kit / "data", 2)
    kw = dict(max_new_tokens=4, max_length=1024)
    fast = imp.CandidateScorer(imp.SharedEngine(model, proc, segs, "en-de", **kw))
    naive = imp.CandidateScorer(imp.NaiveEngine(model, proc, segs, "en-de", **kw))
    cands = list(range(1, 31))
    assert fast.prepare("llm", [], cands) == 30
    got = {c: fast(removed_llm=[c]) for c in cands}
    sample = [1, 7, 13, 22, 30, max(cands, key=lambda c: (got[c], -c))]
    for c in sample:
        assert got[c] == pytest.approx(naive(removed_llm=[c]), abs=1e-9), c


def test_unsupported_generation_config_falls_back_to_per_candidate(kit, tmp_path):
    model = modelio.load_model(kit / "model", device="cpu")
    proc = modelio.load_processor(kit / "model")
    model.generation_config.suppress_tokens = [5]
    assert imp.round_decoding_supported(model) == "generation config sets suppress_tokens"
    eng = imp.SharedEngine(model, proc, _segments(kit / "data", 2), "en-de", max_new_tokens=4)
    assert eng.translate_round([], [1, 2]) is None
    _, _, rounds = _search(eng, tmp_path / "l.jsonl", n_layers=4, remove=1)
    assert rounds[0]["decoded_together"] == 0  # scored one candidate at a time, still correct


# --------------------------------------------------------------------------------------------- toy teacher


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = modelio.load_model(TOY / "teacher", dtype=torch.float32, device="cpu")
    return model, modelio.load_processor(TOY / "teacher"), _segments(TOY / "data", 8)


def test_toy_teacher_four_rounds_choose_what_the_naive_loop_chooses(toy, tmp_path):
    model, proc, segs = toy
    kw = dict(max_new_tokens=40, max_length=1024)
    fast = _search(imp.SharedEngine(model, proc, segs, "en-de", **kw), tmp_path / "f.jsonl", n_layers=6, remove=4)
    naive = _search(imp.NaiveEngine(model, proc, segs, "en-de", **kw), tmp_path / "n.jsonl", n_layers=6, remove=4)
    _same_search(fast, naive, 6 + 5 + 4 + 3)
    # a trained model: the candidates are told apart and outputs end on their own (rows leave the batch)
    first = [v for k, v in fast[1].items() if not k[0]]
    assert len({round(v, 4) for v in first}) == 6
    hyps = imp.SharedEngine(model, proc, segs, "en-de", **kw).translate_round([], [2])[2]
    assert all(0 < len(h.split()) < 30 for h in hyps)


def test_interrupted_search_resumes_to_the_same_layers(tmp_path, monkeypatch):
    opts = {"strategy": "iterative", "remove": 3, "protect_first_last": False, "heldout": 4, "max_new_tokens": 40}
    data = [str(TOY / "data")]

    def ctx(work):
        return StageContext(lang="en-de", data=data, work_dir=tmp_path / work, **QUIET)

    whole = run_stage(make_stage("prune-layers", opts), TOY / "teacher", tmp_path / "whole", ctx("w1"))
    calls = {"n": 0}
    real_call = imp.CandidateScorer.__call__

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1 + 6 + 3:  # baseline, round 1, 2 of round 2's 5 candidates, then a crash
            raise KeyboardInterrupt
        return real_call(self, *a, **k)

    monkeypatch.setattr(imp.CandidateScorer, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_stage(make_stage("prune-layers", opts), TOY / "teacher", tmp_path / "out", ctx("w2"))
    lines = [json.loads(l) for l in (tmp_path / "w2" / "prune_search.jsonl").read_text().splitlines()]
    assert [l["type"] for l in lines].count("candidate") == 6 + 2
    calls["n"] = -10 ** 6
    resumed = run_stage(make_stage("prune-layers", opts), TOY / "teacher", tmp_path / "out", ctx("w2"))
    assert calls["n"] == -10 ** 6 + 3 + 4  # round 2's last 3 candidates, round 3's 4; nothing twice
    assert resumed["removed_llm_layers"] == whole["removed_llm_layers"] and len(whole["removed_llm_layers"]) == 3
    assert resumed["search"]["rounds"] == whole["search"]["rounds"]
    assert resumed["search"]["resumed_candidates"] == 8 and resumed["search"]["engine"] == "shared"


def test_eager_attention_gives_the_same_hypotheses(kit):
    model = modelio.load_model(kit / "model", device="cpu")
    model.set_attn_implementation("eager")
    assert model.model.language_model.config._attn_implementation == "eager"
    proc = modelio.load_processor(kit / "model")
    segs = _segments(kit / "data", 3)
    got = imp.SharedEngine(model, proc, segs, "en-de", max_new_tokens=6).translate_round([], [1, 2, 3])
    ref = imp.CachedEngine(model, proc, segs, "en-de", max_new_tokens=6)
    assert all(got[c] == ref.translate((c,)) for c in (1, 2, 3))
