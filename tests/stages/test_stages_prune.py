"""prune-layers (explicit, middle/top, iterative search) and prune-ffn on the kit model."""

from __future__ import annotations

import json

import pytest
import torch

from iwslt_mc import modelio
from iwslt_mc.families.qwen2_audio import surgery
from iwslt_mc.families.qwen2_audio.layout import find_layout
from iwslt_mc.families import prompt_text
from iwslt_mc.stages import make_stage
from iwslt_mc.pruning import importance as imp
from iwslt_mc.training.calibration import heldout_segments
from iwslt_mc.stages.base import StageContext, run_stage

QUIET = dict(log=lambda *a: None)


def _inputs(processor, wave, lang="en-de"):
    return processor(text=prompt_text(processor, lang), audio=wave, sampling_rate=16000, return_tensors="pt")


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits


def _generate(model, inputs, n=6, **kw):
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def _fresh(kit):
    return modelio.load_model(kit / "model", device="cpu")


@pytest.fixture(scope="module")
def dev_inputs(kit_processor, kit_waves):
    return _inputs(kit_processor, kit_waves["dev"][0][1])


# --------------------------------------------------------------------------------------------- explicit lists


@pytest.fixture(scope="module")
def pruned_dir(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "out"
    rec = run_stage(make_stage("prune-layers", {"llm_layers": [2, 1], "audio_layers": [0]}), kit / "model", out,
                    StageContext(**QUIET))
    return out, rec


def test_pruned_model_reloads_with_in_memory_logits(kit, pruned_dir, dev_inputs):
    out, rec = pruned_dir
    mem = _fresh(kit)
    surgery.remove_llm_layers(mem, [1, 2])
    surgery.remove_audio_layers(mem, [0])
    reloaded = modelio.load_model(out, device="cpu")
    assert torch.equal(_logits(mem, dev_inputs), _logits(reloaded, dev_inputs))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 2
    assert len(cfg["text_config"]["layer_types"]) == 2
    assert cfg["audio_config"]["encoder_layers"] == 1
    layout = find_layout(reloaded)
    assert [l.self_attn.layer_idx for l in layout.decoder_layers] == [0, 1]
    assert rec["removed_llm_layers"] == [1, 2] and rec["removed_audio_layers"] == [0]
    assert rec["llm_layers_after"] == 2


def test_pruned_model_layers_are_the_kept_ones(kit, pruned_dir):
    out, _ = pruned_dir
    orig = find_layout(_fresh(kit))
    new = find_layout(modelio.load_model(out, device="cpu"))
    # kept LLM layers 0 and 3, audio layer 1, in order
    for got, want in zip(new.decoder_layers, [orig.decoder_layers[0], orig.decoder_layers[3]]):
        assert torch.equal(got.self_attn.q_proj.weight, want.self_attn.q_proj.weight)
    assert torch.equal(new.audio_layers[0].fc1.weight, orig.audio_layers[1].fc1.weight)


def test_pruned_model_param_count_and_kv_cache(kit, kit_model, pruned_dir, dev_inputs):
    from iwslt_mc.sizing import sizer

    out, rec = pruned_dir
    per_llm = surgery.llm_layer_params(kit_model)
    per_audio = surgery.audio_layer_params(kit_model)
    before = kit_model.num_parameters()
    reloaded = modelio.load_model(out, device="cpu")
    assert reloaded.num_parameters() == before - 2 * per_llm - per_audio
    assert sizer.measure(out).params == rec["params_after"] == before - 2 * per_llm - per_audio
    assert rec["params_before"] - rec["params_after"] == 2 * rec["params_per_llm_layer"] + rec["params_per_audio_layer"]
    # with a KV cache indexed by the renumbered layer_idx, generation equals cache-free generation
    cached = _generate(reloaded, dev_inputs, 8)
    uncached = _generate(reloaded, dev_inputs, 8, use_cache=False)
    assert len(cached) == 8 and cached == uncached


def test_temporary_removal_equals_permanent_and_restores(kit, dev_inputs):
    model = _fresh(kit)
    base = _logits(model, dev_inputs)
    with surgery.llm_layers_removed(model, [1]):
        inside = _logits(model, dev_inputs)
        gen_inside = _generate(model, dev_inputs, 6)
    after = _logits(model, dev_inputs)
    layout = find_layout(model)
    assert [l.self_attn.layer_idx for l in layout.decoder_layers] == [0, 1, 2, 3]
    assert layout.text_config.num_hidden_layers == 4 and len(layout.text_config.layer_types) == 4
    assert torch.equal(base, after)
    perm = _fresh(kit)
    surgery.remove_llm_layers(perm, [1])
    assert torch.equal(inside, _logits(perm, dev_inputs))
    assert gen_inside == _generate(perm, dev_inputs, 6)
    assert not torch.equal(base, inside)


def test_strategy_blocks():
    from iwslt_mc.floor.layers import middle_block, top_block

    assert middle_block(32, 8) == list(range(12, 20))  # the published "middle" baseline, 12..19
    assert middle_block(4, 2) == [1, 2]
    assert top_block(32, 3) == [29, 30, 31]


def _layer_state(layer) -> dict:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def _differ(a: dict, b: dict) -> list[str]:
    """Names of the tensors that differ between two state dicts (or are in only one)."""
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))


def test_middle_strategy_stage(kit, tmp_path, dev_inputs):
    """The stage removes the middle block (LLM 1-2 of 0-3, audio 0 of 0-1): every remaining layer is an
    original layer, unchanged and in order; the config says so and the directory reloads and decodes."""
    orig = find_layout(_fresh(kit))
    llm_before = [_layer_state(l) for l in orig.decoder_layers]
    audio_before = [_layer_state(l) for l in orig.audio_layers]
    assert len(llm_before) == 4 and len(audio_before) == 2
    assert _differ(llm_before[1], llm_before[3])  # the layers can be told apart
    out = tmp_path / "middle"
    rec = run_stage(make_stage("prune-layers", {"strategy": "middle", "remove": 2, "audio_remove": 1}), kit / "model",
                    out, StageContext(**QUIET))
    assert rec["removed_llm_layers"] == [1, 2] and rec["removed_audio_layers"] == [0]
    assert rec["techniques"][0] == "LLM layer pruning (removed the middle block 1-2 of 4 layers)"

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 2 and len(cfg["text_config"]["layer_types"]) == 2
    assert cfg["audio_config"]["encoder_layers"] == 1
    reloaded = modelio.load_model(out, device="cpu")
    new = find_layout(reloaded)
    assert len(new.decoder_layers) == 2 and len(new.audio_layers) == 1
    for got, want in zip(new.decoder_layers, [0, 3]):
        assert not _differ(_layer_state(got), llm_before[want]), f"kept LLM layer {want}"
    assert not _differ(_layer_state(new.audio_layers[0]), audio_before[1]), "kept audio layer 1"
    assert [l.self_attn.layer_idx for l in new.decoder_layers] == [0, 1]
    # the rest of the model (embeddings, norms, head, projector, audio convolutions) is the original's
    kept = {k: v for k, v in reloaded.state_dict().items() if ".layers." not in k}
    base = {k: v for k, v in _fresh(kit).state_dict().items() if ".layers." not in k}
    assert len(kept) > 10 and not _differ(kept, base)
    assert len(_generate(reloaded, dev_inputs, 4)) == 4


def test_top_strategy_stage(kit, tmp_path):
    rec = run_stage(make_stage("prune-layers", {"strategy": "top", "remove": 1, "audio_remove": 1}), kit / "model",
                    tmp_path / "o", StageContext(**QUIET))
    assert rec["removed_llm_layers"] == [3] and rec["removed_audio_layers"] == [1]
    assert "top 1 of 4" in rec["techniques"][0]
    prov = json.loads((tmp_path / "o" / "provenance.json").read_text())
    assert prov["stages"][-1]["stage"] == "prune-layers"


# --------------------------------------------------------------------------------------------- iterative search


def _segments(kit, n=4):
    from iwslt_mc.training.data import load_examples

    return heldout_segments(load_examples(str(kit / "data"), split="test", seed=0)[:n], "en-de")


def _search(engine, log_path, **kw):
    scorer = imp.CandidateScorer(engine, metric="auto")
    log = imp.SearchLog(log_path, {"k": 1}, log=lambda *a: None)
    llm = imp.iterative_search(scorer, kind="llm", n_layers=4, remove=2, protect_first_last=False, log=log,
                               progress=lambda *a: None)
    audio = imp.iterative_search(scorer, kind="audio", n_layers=2, remove=1, protect_first_last=False, log=log,
                                 fixed_llm=llm[:1], progress=lambda *a: None)
    scores = {(r["kind"], tuple(r["removed"]), r["candidate"]): r["score"] for r in log.lines if r["type"] == "candidate"}
    return llm, audio, scores


def test_search_cached_engine_selects_what_the_naive_loop_selects(kit, tmp_path):
    model = _fresh(kit)
    proc = modelio.load_processor(kit / "model")
    segs = _segments(kit, 2)
    kw = dict(max_new_tokens=5, max_length=1024)
    fast = _search(imp.CachedEngine(model, proc, segs, "en-de", batch_size=4, **kw), tmp_path / "fast.jsonl")
    naive = _search(imp.NaiveEngine(model, proc, segs, "en-de", **kw), tmp_path / "naive.jsonl")
    assert fast[0] == naive[0] and fast[1] == naive[1]
    assert len(fast[0]) == 2 and len(set(fast[0])) == 2 and len(fast[1]) == 1
    # every candidate's score, not only the winners, is the same
    assert fast[2].keys() == naive[2].keys() and len(fast[2]) == 4 + 3 + 2
    for k in fast[2]:
        assert fast[2][k] == pytest.approx(naive[2][k], abs=1e-9), k
    # the scores differ between candidates, so the order is not decided by ties alone
    assert len({round(v, 6) for v in fast[2].values()}) > 2


def test_cached_hypotheses_equal_reference_decoding(kit):
    from iwslt_mc.decoding.core import translate

    model = _fresh(kit)
    proc = modelio.load_processor(kit / "model")
    segs = _segments(kit, 3)
    eng = imp.CachedEngine(model, proc, segs, "en-de", max_new_tokens=7, batch_size=2)
    with surgery.llm_layers_removed(model, [2]):
        ref = [h.text for h in translate(model, proc, [s.wave for s in segs], "en-de", mode="reference",
                                         max_new_tokens=7)]
    assert eng.translate((2,)) == ref and all(ref)


def test_teacher_forced_logprob_equals_model_loss(kit, kit_processor):
    model = _fresh(kit)
    segs = _segments(kit, 2)
    eng = imp.CachedEngine(model, kit_processor, segs, "en-de", max_new_tokens=4)
    targets = eng.targets()
    end = kit_processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(t[-1] == end for t in targets)
    total, count = 0.0, 0
    for seg, tgt in zip(segs, targets):
        inp = _inputs(kit_processor, seg.wave)
        n = inp["input_ids"].shape[1]
        ids = torch.cat([inp["input_ids"], torch.tensor([tgt])], dim=1)
        labels = torch.full_like(ids, -100)
        labels[0, n:] = torch.tensor(tgt)
        with torch.inference_mode():
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=inp["input_features"],
                         feature_attention_mask=inp["feature_attention_mask"], labels=labels).loss
        total += -loss.item() * len(tgt)
        count += len(tgt)
    assert eng.logprob(()) == pytest.approx(total / count, abs=1e-5)


def test_iterative_stage_log_provenance_and_resume(kit, tmp_path, monkeypatch):
    opts = {"strategy": "iterative", "remove": 2, "protect_first_last": False, "heldout": 2, "max_new_tokens": 4}
    ctx = lambda: StageContext(lang="en-de", data=[str(kit / "data")], work_dir=tmp_path / "work", **QUIET)  # noqa: E731
    calls = {"n": 0}
    real_call = imp.CandidateScorer.__call__

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # baseline + 2 candidates done, then a crash
            raise KeyboardInterrupt
        return real_call(self, *a, **k)

    monkeypatch.setattr(imp.CandidateScorer, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_stage(make_stage("prune-layers", opts), kit / "model", tmp_path / "out", ctx())
    assert not (tmp_path / "out").exists()
    lines = [json.loads(l) for l in (tmp_path / "work" / "prune_search.jsonl").read_text().splitlines()]
    assert [l["type"] for l in lines] == ["header", "baseline", "candidate", "candidate"]

    calls["n"] = -10 ** 6  # no more interruptions; count the rest
    rec = run_stage(make_stage("prune-layers", opts), kit / "model", tmp_path / "out", ctx())
    assert calls["n"] == -10 ** 6 + (4 - 2) + 3  # round 1's last 2 candidates + round 2's 3, nothing twice
    search = rec["search"]
    assert search["resumed_candidates"] == 2 and search["candidates_scored"] == 4 + 3
    out_log = [json.loads(l) for l in (tmp_path / "out" / "prune_search.jsonl").read_text().splitlines()]
    rounds = [l for l in out_log if l["type"] == "round"]
    assert [r["chosen"] for r in rounds] == rec["removed_llm_layers"] == [r["chosen"] for r in search["rounds"]]
    for r in rounds:  # the chosen layer has the best score of its round
        cands = [l for l in out_log if l["type"] == "candidate" and l["round"] == r["round"]]
        assert r["score"] == max(c["score"] for c in cands)
    assert not (tmp_path / "work").exists()  # removed on success
    assert "by chrF++ on 2 held-out segments" in rec["techniques"][0]
    assert rec["data"] and rec["data"][0]["path"] == str(kit / "data")


def test_iterative_teacher_forced_stage(kit, tmp_path):
    rec = run_stage(make_stage("prune-layers", {"strategy": "iterative", "remove": 1, "heldout": 2,
                                                "scoring": "teacher-forced"}), kit / "model", tmp_path / "o",
                    StageContext(lang="en-zh", data=[str(kit / "data")], **QUIET))
    s = rec["search"]
    assert s["criterion"].startswith("mean reference log-prob") and s["baseline_score"] < 0
    assert rec["removed_llm_layers"][0] in (1, 2)  # first and last protected
    best = max(s["rounds"], key=lambda r: r["score"])
    assert best["chosen"] == rec["removed_llm_layers"][0]


# --------------------------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("name,sets,msg", [
    ("prune-layers", ["bogus=1"], "unknown option 'bogus'"),
    ("prune-layers", ["llm_layers=[9]"], "index 9 out of range"),
    ("prune-layers", ["audio_layers=[2]"], "index 2 out of range"),
    ("prune-layers", ["llm_layers=[0,1,2,3]"], "remove all 4 layers"),
    ("prune-layers", ["llm_layers=[-1]"], "start at 0"),
    ("prune-layers", ["strategy=top", "remove=4"], "at most 3 can go"),
    ("prune-layers", ["strategy=iterative", "remove=3"], "at most 2 can go"),
    ("prune-layers", ["strategy=iterative", "remove=1"], "needs held-out data"),
    ("prune-layers", ["strategy=middle"], "needs remove"),
    ("prune-layers", ["remove=2"], "need a 'strategy'"),
    ("prune-layers", ["strategy=sideways", "remove=1"], "must be one of"),
    ("prune-layers", ["strategy=iterative", "remove=1", "metric=meteor"], "unknown metric"),
    ("prune-ffn", ["llm_width=177"], "larger than the current width 176"),
    ("prune-ffn", ["audio_width=0"], "at least 1"),
    ("prune-ffn", [], "nothing to do"),
    ("prune-ffn", ["llm_width=100", "importance=activation"], "needs calibration data"),
])
def test_bad_options_fail_in_one_line_before_loading(kit, tmp_path, monkeypatch, capsys, name, sets, msg):
    from iwslt_mc import cli

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(modelio, "load_model", no_loading)
    argv = ["stage", name, "--in", str(kit / "model"), "--out", str(tmp_path / "o")]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err and err.startswith("iwslt-mc stage: error:")
    assert not (tmp_path / "o").exists()


def test_stage_list_and_help_options(capsys):
    from iwslt_mc import cli

    assert cli.main(["stage", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("prune-layers", "prune-ffn", "trim-vocab", "quantize"))
    assert cli.main(["stage", "prune-ffn", "--help-options"]) == 0
    out = capsys.readouterr().out
    assert "llm_width" in out and "importance (default: 'weight')" in out


# --------------------------------------------------------------------------------------------- prune-ffn


def test_prune_ffn_reload_params_and_generate(kit, kit_model, tmp_path, dev_inputs):
    out = tmp_path / "ffn"
    # multiple_of 1: an exact width that is no multiple of 64 (correctness must not depend on the rounding)
    rec = run_stage(make_stage("prune-ffn", {"llm_width": 128, "audio_width": 96, "multiple_of": 1}), kit / "model", out,
                    StageContext(**QUIET))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["intermediate_size"] == 128 and cfg["audio_config"]["encoder_ffn_dim"] == 96
    # gate, up (rows) and down (columns) lose 48 units x hidden 64 per LLM layer; fc1 rows (+bias) and fc2 columns
    expect = kit_model.num_parameters() - 4 * 3 * 64 * 48 - 2 * (64 * 32 + 32 + 64 * 32)
    reloaded = modelio.load_model(out, device="cpu")
    assert reloaded.num_parameters() == expect == rec["params_after"]
    mem = _fresh(kit)
    from iwslt_mc.stages.prune_ffn import top_units, weight_importance

    llm_imp, audio_imp = weight_importance(mem)
    surgery.prune_llm_mlp(mem, [top_units(s, 128) for s in llm_imp])
    surgery.prune_audio_ffn(mem, [top_units(s, 96) for s in audio_imp])
    assert torch.equal(_logits(mem, dev_inputs), _logits(reloaded, dev_inputs))
    assert len(_generate(reloaded, dev_inputs, 5)) == 5
    assert "176 -> 128" in rec["techniques"][0] and "128 -> 96" in rec["techniques"][1]


@pytest.mark.parametrize("importance", ["weight", "activation"])
def test_prune_ffn_removes_dead_units_exactly(kit, tmp_path, dev_inputs, importance):
    """Units whose output weights are zero contribute nothing: both measures rank them last, and removing
    them leaves the model's output unchanged."""
    model = _fresh(kit)
    layout = find_layout(model)
    g = torch.Generator().manual_seed(0)
    dead_llm, dead_audio = [], []
    with torch.no_grad():
        for layer in layout.decoder_layers:
            d = torch.randperm(176, generator=g)[:48]
            layer.mlp.down_proj.weight[:, d] = 0
            dead_llm.append(set(d.tolist()))
        for layer in layout.audio_layers:
            d = torch.randperm(128, generator=g)[:32]
            layer.fc2.weight[:, d] = 0
            dead_audio.append(set(d.tolist()))
    src = tmp_path / "dead"
    modelio.save_model(model, modelio.load_processor(kit / "model"), src)
    ref = _logits(model, dev_inputs)
    rec = run_stage(make_stage("prune-ffn", {"llm_width": 128, "audio_width": 96, "importance": importance,
                                             "calibration": 2, "multiple_of": 1}),
                    src, tmp_path / "o", StageContext(lang="en-de", data=[str(kit / "data")], **QUIET))
    pruned = modelio.load_model(tmp_path / "o", device="cpu")
    pl = find_layout(pruned)
    for layer, orig, dead in zip(pl.decoder_layers, layout.decoder_layers, dead_llm):
        kept = [j for j in range(176) if j not in dead]
        assert torch.equal(layer.mlp.up_proj.weight, orig.mlp.up_proj.weight[kept])
    for layer, orig, dead in zip(pl.audio_layers, layout.audio_layers, dead_audio):
        kept = [j for j in range(128) if j not in dead]
        assert torch.equal(layer.fc1.bias, orig.fc1.bias[kept])
    torch.testing.assert_close(_logits(pruned, dev_inputs), ref, rtol=1e-5, atol=1e-5)
    assert bool(rec["data"]) == (importance == "activation")


def test_prune_ffn_technique_line_counts_the_segments_it_used(kit, tmp_path):
    """Asked for more calibration segments than the kit's split has, the technique line and the data record
    both say how many were used (not the number asked for)."""
    import re

    rec = run_stage(make_stage("prune-ffn", {"llm_width": 128, "importance": "activation", "calibration": 500,
                                             "multiple_of": 1}),
                    kit / "model", tmp_path / "o", StageContext(lang="en-de", data=[str(kit / "data")], **QUIET))
    used = int(re.search(r"\((\d+) segments", rec["data"][0]["use"]).group(1))
    assert 0 < used < 500
    assert f"activation importance on {used} segments" in rec["techniques"][0]


def test_prune_ffn_rounds_target_widths_to_a_multiple_of_64_by_default(kit, tmp_path):
    """Default multiple_of 64: 150 -> 128 units (LLM), 100 -> 64 (audio); the build's prediction follows the
    same rounding; a target below one multiple stays as given."""
    from iwslt_mc.build import spec_for_stages
    from iwslt_mc.recipes import StageEntry
    from iwslt_mc.stages.prune_ffn import rounded_width

    assert rounded_width(150, 64) == 128 and rounded_width(100, 64) == 64 and rounded_width(40, 64) == 40
    assert rounded_width(150, 1) == 150 and rounded_width(None, 64) is None
    out = tmp_path / "ffn"
    rec = run_stage(make_stage("prune-ffn", {"llm_width": 150, "audio_width": 100}), kit / "model", out,
                    StageContext(**QUIET))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["intermediate_size"] == 128 and cfg["audio_config"]["encoder_ffn_dim"] == 64
    assert any("176 -> 128 units" in t for t in rec["techniques"])
    from iwslt_mc.planning.planner import load_base_config

    entry = StageEntry(id="ffn", stage="prune-ffn", options={"llm_width": 150, "audio_width": 100})
    spec, _ = spec_for_stages([entry], load_base_config(kit / "model"), base=str(kit / "model"), lang="en-de",
                              data={}, condition="constrained")
    assert spec.ffn_dim == 128 and spec.audio_ffn_dim == 64
