"""The shared round engine of the iterative layer search: same choices as the published loop.

The published loop (:class:`NaiveEngine`) re-encodes the audio and decodes each held-out segment
alone for every candidate; the shared engine decodes a whole round in one batched loop with the
prompt prefill below each candidate's layer computed once. These tests hold it to the naive loop's
hypotheses and choices on the kit (random weights, 4 layers), a 32-layer kit-width model and the
trained toy teacher, and check that an interrupted search resumes to the same layers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from iwslt_mc import modelio
from iwslt_mc.decoding import rounds as round_decoding
from iwslt_mc.scoring import metrics
from iwslt_mc.pruning import importance as imp
from iwslt_mc.training.calibration import heldout_segments
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "toy"
QUIET = dict(log=lambda *a: None)


def _segments(data_dir, n, split="test"):
    from iwslt_mc.training.data import load_examples

    return heldout_segments(load_examples(str(data_dir), split=split, seed=0)[:n], "en-de")


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
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
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
    st: dict = {}
    got = eng.translate_round(removed, cands, stats=st)
    assert st["prefix_positions"] == round_decoding.common_prefix(emb) > 20  # the chat template's start, prefilled once
    for c in cands:
        assert got[c] == ref.translate(tuple(removed + [c])), c
    assert len({tuple(v) for v in got.values()}) > 2


def test_common_prefix_counts_equal_leading_positions_and_leaves_each_prompt_its_last():
    a = torch.arange(12.0).view(6, 2)
    b = a.clone()
    b[4] += 1
    assert round_decoding.common_prefix([a, b]) == 4
    assert round_decoding.common_prefix([a, a.clone()]) == 5  # identical prompts: every one keeps its last position
    assert round_decoding.common_prefix([a, a[:3].clone()]) == 2
    c = a.clone()
    c[0, 1] = -1
    assert round_decoding.common_prefix([a, b, c]) == 0


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
    assert round_decoding.round_decoding_supported(model) == "generation config sets suppress_tokens"
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


TOY_KW = dict(max_new_tokens=40, max_length=1024)


@pytest.fixture(scope="module")
def toy_naive(toy, tmp_path_factory):
    """The published loop's four rounds on the toy teacher (computed once for the tests below)."""
    model, proc, segs = toy
    return _search(imp.NaiveEngine(model, proc, segs, "en-de", **TOY_KW), tmp_path_factory.mktemp("naive") / "n.jsonl",
                   n_layers=6, remove=4)


def test_toy_teacher_four_rounds_choose_what_the_naive_loop_chooses(toy, toy_naive, tmp_path):
    model, proc, segs = toy
    kw = TOY_KW
    fast = _search(imp.SharedEngine(model, proc, segs, "en-de", **kw), tmp_path / "f.jsonl", n_layers=6, remove=4)
    naive = toy_naive
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


# --------------------------------------------------------------------------------------------- the screen
# (``screen: segments``: every candidate decoded on a few segments, the close ones on all; see ScreenPlan)


def test_segment_statistics_sum_to_the_corpus_metric():
    hyps = ["Der Hund schläft.", "Die Katze", "ein Haus ist groß", ""]
    refs = ["Der Hund schläft.", "Die Katze trinkt.", "Das Haus ist groß.", "Hallo"]
    for name in ("auto", "chrf", "chrf++", "bleu"):
        for lang in ("en-de", "en-zh"):
            stats, score = metrics.segment_statistics(name, lang)
            st = stats(hyps, refs)
            assert st.shape[0] == 4
            assert score(st.sum(0)) == pytest.approx(metrics.get_metric(name)(hyps, refs, [], lang), abs=1e-9), (name, lang)
            assert score(st[:2].sum(0)) == pytest.approx(metrics.get_metric(name)(hyps[:2], refs[:2], [], lang), abs=1e-9)
    assert metrics.segment_statistics("comet:x", "en-de") is None


def test_screen_stage_drops_only_candidates_behind_by_more_than_z_standard_errors():
    import numpy as np

    _, score = metrics.segment_statistics("chrf", "en-de")
    stats_fn, _ = metrics.segment_statistics("chrf", "en-de")
    refs = ["der kleine hund schläft", "die katze trinkt milch", "das haus ist groß", "ein vogel singt laut",
            "wir essen brot", "sie lesen ein buch"]
    good = list(refs)
    close = refs[:5] + ["sie lesen ein heft"]  # one segment slightly worse
    bad = ["xyz"] * 6  # worse on every segment
    st = {1: stats_fn(good, refs), 2: stats_fn(close, refs), 3: stats_fn(bad, refs)}
    got = imp.screen_stage(st, score, n_total=60, z=3.0)
    assert got["leader"] == 1 and got["scores"][1] == pytest.approx(100.0)
    assert got["kept"] == [1, 2]  # the close one's gap is within its (large, one-segment) standard error
    assert got["gap"][3] > 3.0 * got["se"][3]
    # the same numbers with every segment decoded (n == N): nothing left to predict, only the leader survives
    assert imp.screen_stage(st, score, n_total=6, z=3.0)["kept"] == [1]
    # tied candidates (identical outputs): a zero gap is never dropped
    tied = imp.screen_stage({4: st[2], 5: st[2].copy(), 6: st[2].copy()}, score, n_total=60, z=3.0)
    assert tied["kept"] == [4, 5, 6] and tied["se"][5] == 0.0
    assert np.isfinite(list(got["se"].values())).all()


def test_screen_looks_every_few_segments_or_at_given_counts():
    assert imp.ScreenPlan().looks(100) == [8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96]
    assert imp.ScreenPlan().looks(8) == [] and imp.ScreenPlan().looks(9) == [8]
    assert imp.ScreenPlan(every=3).looks(10) == [3, 6, 9]
    assert imp.ScreenPlan(stages=(24, 8, 200)).looks(100) == [8, 24]  # sorted, only counts below the set


def _screened_search(engine, log_path, *, n_layers, remove, plan, protect=False):
    scorer = imp.CandidateScorer(engine, metric="auto")
    log = imp.SearchLog(log_path, {"k": 1}, log=lambda *a: None)
    chosen = imp.iterative_search(scorer, kind="llm", n_layers=n_layers, remove=remove, protect_first_last=protect,
                                  log=log, progress=lambda *a: None, screen=plan)
    return chosen, log.lines


def _check_screen_log(lines, exact_scores):
    """Every round logs the proxy ranking of all candidates next to the exact scores of those decoded in full."""
    screens = [r for r in lines if r["type"] == "screen"]
    rounds = [r for r in lines if r["type"] == "round"]
    assert len(screens) == len(rounds) and rounds
    for sc, r in zip(screens, rounds):
        s = r["screen"]
        assert sorted(c for c, _ in s["proxy_ranking"]) == sorted(row[0] for row in sc["stages"][0]["candidates"])
        assert len(s["proxy_ranking"]) == s["candidates"]
        proxy = [v for _, v in s["proxy_ranking"]]
        assert proxy == sorted(proxy, reverse=True)
        decoded = {c for c, _ in s["exact_scores"]}
        assert decoded == set(sc["finalists"]) and s["decoded_in_full"] == len(decoded)
        assert s["fallback"] == sc["fallback"] and (not s["fallback"] or len(decoded) == s["candidates"])
        for c, v in s["exact_scores"]:  # the exact scores are the candidates' logged full-set scores
            assert v == exact_scores[(tuple(sc["removed"]), c)]
        assert r["chosen"] == max(decoded, key=lambda c: (dict(s["exact_scores"])[c], -c))
    return screens, rounds


def test_kit_screened_search_chooses_what_the_naive_loop_chooses(kit, tmp_path):
    model = modelio.load_model(kit / "model", device="cpu")
    proc = modelio.load_processor(kit / "model")
    segs = _segments(kit / "data", 4)
    kw = dict(max_new_tokens=6, max_length=1024)
    plan = imp.ScreenPlan(stages=(2,))
    chosen, lines = _screened_search(imp.SharedEngine(model, proc, segs, "en-de", **kw), tmp_path / "s.jsonl",
                                     n_layers=4, remove=3, plan=plan)
    naive = _search(imp.NaiveEngine(model, proc, segs, "en-de", **kw), tmp_path / "n.jsonl", n_layers=4, remove=3)
    assert chosen == naive[0]
    screens, _ = _check_screen_log(lines, naive[1])
    assert [sc["stages"][0]["segments"] for sc in screens] == [2, 2, 2]


def test_deep_screened_round_drops_candidates_and_keeps_the_exact_choice(kit, deep):
    """30 candidates on the 32-layer kit, 30 segments (the kit's 16 and 14 of the toy fixture's audio): the
    race decodes most candidates on 8-24 segments only (finalists: several row chunks), and its choice is the
    exact round's (whose scores equal the naive loop's: the tests above)."""
    from iwslt_mc.training.data import load_examples

    model, proc = deep
    segs = heldout_segments(load_examples([str(kit / "data"), str(TOY / "data")], seed=0)[:30], "en-de")
    kw = dict(max_new_tokens=4, max_length=1024)
    exact = imp.CandidateScorer(imp.SharedEngine(model, proc, segs, "en-de", **kw))
    cands = list(range(1, 31))
    exact.prepare("llm", [], cands)
    full = {c: exact(removed_llm=[c]) for c in cands}
    scr = imp.CandidateScorer(imp.SharedEngine(model, proc, segs, "en-de", **kw))
    info = scr.screen_round([], cands, imp.ScreenPlan())  # looks after 8, 16 and 24 segments
    assert [st["segments"] for st in info["stages"]] == [8, 16, 24]
    assert [st["critical"] for st in info["stages"]] == [pytest.approx(v, abs=0.01) for v in (4.53, 3.59, 3.36)]
    kept = [len(st["kept"]) for st in info["stages"]]
    assert kept == sorted(kept, reverse=True) and kept[-1] == len(info["finalists"])
    assert all(k > 1 for k in kept[:-1])  # a lone survivor ends the race
    assert not info["fallback"] and len(info["finalists"]) < 15 and sorted(info["proxy_ranking"]) == cands
    got = {c: scr(removed_llm=[c]) for c in info["finalists"]}
    assert all(got[c] == full[c] for c in got)  # finalists' hypotheses pieced from two stages: still exact
    assert max(got, key=lambda c: (got[c], -c)) == max(cands, key=lambda c: (full[c], -c))


def test_tied_margins_make_the_screen_fall_back_to_every_candidate(kit, tmp_path):
    """Layers 1 and 2 of the kit made identities (their output projections zeroed): removing either gives the
    same outputs, so their screen scores tie, neither can be dropped, and more than half the candidates
    survive: the round decodes every candidate in full, as the exact search does."""
    model = modelio.load_model(kit / "model", device="cpu")
    with torch.no_grad():
        for l in (1, 2):
            layer = model.model.language_model.layers[l]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    proc = modelio.load_processor(kit / "model")
    segs = _segments(kit / "data", 4)
    kw = dict(max_new_tokens=6, max_length=1024)
    chosen, lines = _screened_search(imp.SharedEngine(model, proc, segs, "en-de", **kw), tmp_path / "s.jsonl",
                                     n_layers=4, remove=1, plan=imp.ScreenPlan(stages=(2,)), protect=True)
    exact = _search(imp.SharedEngine(model, proc, segs, "en-de", **kw), tmp_path / "e.jsonl", n_layers=4, remove=1,
                    protect=True)
    screens, rounds = _check_screen_log(lines, exact[1])
    st = screens[0]["stages"][0]["candidates"]
    assert st[0][1] == st[1][1]  # tied proxy scores
    assert screens[0]["fallback"] and rounds[0]["screen"]["decoded_in_full"] == 2
    assert chosen == exact[0] == [1]  # ties go to the lower layer


def test_toy_teacher_screened_search_chooses_what_the_naive_loop_chooses(toy, toy_naive, tmp_path):
    """Four rounds on the trained toy teacher (8 test utterances, the screen's first stage on 4 of them; its z and
    fallback share are the defaults, fixed before any toy outcome was looked at)."""
    model, proc, segs = toy
    naive = toy_naive
    chosen, lines = _screened_search(imp.SharedEngine(model, proc, segs, "en-de", **TOY_KW), tmp_path / "s.jsonl",
                                     n_layers=6, remove=4, plan=imp.ScreenPlan(stages=(4,)))
    assert chosen == naive[0]
    _check_screen_log(lines, naive[1])


def test_interrupted_screened_search_resumes_to_the_same_layers(tmp_path, monkeypatch):
    opts = {"strategy": "iterative", "remove": 3, "protect_first_last": False, "heldout": 6, "max_new_tokens": 40,
            "screen": "segments", "screen_segments": [3]}
    data = [str(TOY / "data")]

    def ctx(work):
        return StageContext(lang="en-de", data=data, work_dir=tmp_path / work, **QUIET)

    whole = run_stage(make_stage("prune-layers", opts), TOY / "teacher", tmp_path / "whole", ctx("w1"))
    assert whole["search"]["screen"] == {"stages": [3], "every": 8, "z": 3.0, "fallback_share": 0.5, "seed": 0}
    assert all("screen" in r for r in whole["search"]["rounds"])
    lines = [json.loads(l) for l in (tmp_path / "whole" / "prune_search.jsonl").read_text().splitlines()]
    finalists = [r["screen"]["decoded_in_full"] for r in lines if r["type"] == "round"]
    assert finalists[1] >= 2, finalists  # round 2 has a finalist left to score after the crash
    calls = {"n": 0}
    real_call = imp.CandidateScorer.__call__

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1 + finalists[0] + 2:  # baseline, round 1, round 2's first finalist, then a crash
            raise KeyboardInterrupt
        return real_call(self, *a, **k)

    monkeypatch.setattr(imp.CandidateScorer, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_stage(make_stage("prune-layers", opts), TOY / "teacher", tmp_path / "out", ctx("w2"))
    calls["n"] = -10 ** 6
    screens = {"n": 0}
    real_screen = imp.CandidateScorer.screen_round

    def counted(self, *a, **k):
        screens["n"] += 1
        return real_screen(self, *a, **k)

    monkeypatch.setattr(imp.CandidateScorer, "screen_round", counted)
    resumed = run_stage(make_stage("prune-layers", opts), TOY / "teacher", tmp_path / "out", ctx("w2"))
    # round 2's remaining finalists, round 3's; round 2 is not screened again (its screen record is reused)
    assert calls["n"] == -10 ** 6 + finalists[1] - 1 + finalists[2] and screens["n"] == 1
    assert resumed["removed_llm_layers"] == whole["removed_llm_layers"]
    assert resumed["search"]["rounds"] == whole["search"]["rounds"]


def test_screen_options_are_checked_before_work():
    from iwslt_mc.errors import UserError

    base = {"strategy": "iterative", "remove": 1, "screen": "segments"}
    make_stage("prune-layers", base)
    for extra, msg in (({"metric": "comet:/x/model.ckpt"}, "per-segment statistics"),
                       ({"engine": "cached"}, "engine shared"), ({"scoring": "teacher-forced"}, "engine shared"),
                       ({"screen_segments": [24, 8]}, "increasing"), ({"screen_segments": [0]}, "increasing"),
                       ({"screen_z": 0}, "above 0"), ({"screen_every": 0}, "screen_every")):
        with pytest.raises(UserError, match=msg):
            make_stage("prune-layers", {**base, **extra})


def test_replay_tool_runs_the_real_race_on_exact_hypotheses(toy, toy_naive):
    """tools/replay_screen.py: the race replayed through screen_round on one exact decode of the round; the exact
    winner is the naive loop's first choice and the race decodes no more rows than the exact round."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from replay_screen import replay_round

    model, proc, segs = toy
    eng = imp.SharedEngine(model, proc, segs, "en-de", **TOY_KW)
    got, winner = replay_round(eng, [], list(range(6)), [0, 1], {"every": 2, "z": 3.0})
    assert winner == toy_naive[0][0]
    assert [g["order_seed"] for g in got] == [0, 1]
    for g in got:
        assert g["exact_winner"] == winner and 0 < g["rows_share"] <= 1.0
        assert g["same"] == (g["race_choice"] == winner) and g["kept"][0] <= 6
        assert g["fallback"] or g["rows_share"] < 1.0
