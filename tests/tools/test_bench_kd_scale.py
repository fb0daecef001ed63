"""tools/bench_kd_scale.py: its quantization kinds, the targets per size measure and the steps table (no model run)."""

import json
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(TOOLS))
    try:
        import bench_kd_scale

        yield bench_kd_scale
    finally:
        sys.path.remove(str(TOOLS))


def test_quant_kinds(tool):
    assert tool.quant_kind("ct4e") == (4, "e", None)
    assert tool.quant_kind("ct3s") == (3, "s", None)
    assert tool.quant_kind("mix25") == (None, None, 25.0)
    assert tool.quant_options("ct4e", 128) == {"method": "ct", "bits": 4, "group_size": 128, "skip": [],
                                               "quantize_embeddings": True}
    assert tool.quant_options("ct3s", 64) == {"method": "ct", "bits": 3, "group_size": 64, "skip": [], "symmetric": True}
    assert tool.quant_kind("ct2s8") == (2, "s8", None)
    assert tool.quant_options("ct2s8", 16) == {"method": "ct", "bits": 2, "group_size": 16, "skip": [], "symmetric": True,
                                               "int8_embeddings": True}
    assert tool.quant_options("mix25", 128, Path("/x/a.json")) == {
        "method": "ct", "symmetric": True, "allocation": "/x/a.json", "group_size": 128}
    for bad in ("ct9s", "ct4", "mix", "nf4", "ct4e8", "ct3s4"):
        with pytest.raises(SystemExit, match="--quant"):
            tool.quant_kind(bad)


def _row(name, size, steps, chrf, dev, nbytes, ts, quant="ct4e", method="wordref"):
    return {"name": name, "method": method, "size": size, "steps": steps, "chrf": chrf, "dev_chrf": dev,
            "bytes": nbytes, "torch_save": ts, "quant": quant}


def test_targets_choose_on_dev_within_each_measure(tool):
    # a: under 25% in safetensors only; b: under 25% in both, lower dev; c: under 25% in both, best on test
    rows = [_row("a", "25", 768, 90.0, 80.0, 230, 700), _row("b", "25", 768, 85.0, 70.0, 240, 240),
            _row("c", "25", 768, 88.0, 60.0, 240, 245)]
    by_bytes = tool.targets(rows, 1000, 100.0)[0]
    assert "chosen on dev `a` keeps 90.0% at 23.0% -> met" in by_bytes
    by_ts = tool.targets(rows, 1000, 100.0, key="torch_save")[0]
    assert "chosen on dev `b` keeps 85.0% at 24.0% -> missed by 5.0 points" in by_ts
    assert "best on test: `c` 88.0%" in by_ts


def test_steps_table_lists_each_budget(tool):
    rows = [_row("s10-a", "10", 384, 30.0, 31.0, 1, 1), _row("s10-b", "10", 4608, 60.0, 61.5, 1, 1),
            _row("s10-c", "10", 1152, 45.0, None, 1, 1), _row("s5-a", "5", 384, 20.0, 21.0, 1, 1)]
    out = tool.steps_table(rows, 100.0)
    body = [line for line in out if line.startswith("| s") and "student" not in line]
    # s5 has one budget only: no curve; s10 in step order
    assert [line.split(" | ")[3] for line in body] == ["384", "1152", "4608"]
    assert "| s10 | wordref | ct4e | 4608 | 36,864 | 60.00 | 60.0 | 61.5 |" in body[2]
    assert tool.steps_table(rows[3:], 100.0) == []


def test_step_lever_joins_rows_with_and_without_the_used_bytes_key(tool):
    old = _row("s10-wordref-1152-ct4e", "10", 1152, 57.0, 48.0, 1, 1)  # an earlier run's row: no used_bytes key
    new = {**_row("s10-wordref-4608-ct4e", "10", 4608, 70.0, 69.0, 1, 1), "used_bytes": False}
    ub = {**_row("s10-wordref-4608-ub-ct4e", "10", 4608, 71.0, 70.0, 1, 1), "used_bytes": True}
    line = tool.step_lever([old, new, ub], new, 100.0)
    assert line.endswith("1152 -> 4608 steps keep 57.0% -> 70.0%")
    assert tool.step_lever([old, new, ub], ub, 100.0) == ""  # the trimmed-vocabulary row has one budget only


# ------------------------------------------------ the training part (train_method) on the toy teacher, 2-4 steps

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "toy"


@pytest.fixture(scope="module")
def toy_runs(tool, tmp_path_factory):
    """train_method's two callbacks on the committed toy teacher and its train slice: ``stage`` runs one stage
    into RUNS/NAME/model (reused when there), ``cut`` prunes LLM layers from the top (the bench's iterative
    search needs a dev split the fixture lacks; widths stay). Returns (runs, kwargs for train_method)."""
    import torch

    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("kdscale")
    data = FIXTURE / "data"

    def stage(name, kind, options, src, data_dir=None):
        model = runs / name / "model"
        if not model.exists():
            run_stage(make_stage(kind, options), src, model, StageContext(
                lang="en-de", data=[str(data_dir or data)], device="cpu", seed=0, log=lambda m: None,
                work_dir=runs / f"{name}.work"))
        return model, 1.0, 2.0

    def cut(name, src, depth, width):
        assert width == 1.0
        layers = json.loads((Path(src) / "config.json").read_text())["text_config"]["num_hidden_layers"]
        return stage(name, "prune-layers", {"strategy": "top", "remove": layers - round(depth * layers)}, src)[0], 3.0, 4.0

    teacher = FIXTURE / "teacher"
    pruned, _, _ = stage("s25-pruned", "prune-layers", {"strategy": "middle", "remove": 2}, teacher)
    kw = dict(stage=stage, cut=cut, teacher=teacher, pruned=pruned, teacher_trim=teacher,
              trim_opts={"use_data": True, "split": "train"}, speech=data, kd_data=data, layers=6, keep=4, width=1.0,
              lr=5e-4, limit=16)
    yield runs, kw
    torch.set_num_threads(n)


def _record(model: Path) -> dict:
    return json.loads((model / "provenance.json").read_text())["stages"][-1]


def _layers(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["text_config"]["num_hidden_layers"]


def test_wordhid_adds_the_hidden_state_term(tool, toy_runs):
    runs, kw = toy_runs
    model, s, c, extra = tool.train_method("wordhid", "s25-wordhid", steps=2, **kw)
    assert model == runs / "s25-wordhid" / "model" and (s, c, extra) == (1.0, 2.0, {})
    rec = _record(model)
    assert rec["stage"] == "kd" and rec["options"]["max_steps"] == 2
    assert rec["options"]["hidden_weight"] == 1.0 and rec["options"]["hidden"] == ["llm", "audio"]
    assert rec["options"]["alpha"] == 0.5 and rec["options"]["temperature"] == 2.0
    assert "hidden-state MSE" in rec["techniques"][0] and "audio layers" in rec["techniques"][0]
    assert _layers(model) == 4
    # wordref is the same stage without the hidden term
    assert tool.kd_options("/t", {"max_steps": 2})["hidden_weight"] == 0.0
    assert "hidden" not in tool.kd_options("/t", {"max_steps": 2})


def test_twostep_cuts_half_then_the_rest_and_splits_the_steps(tool, toy_runs):
    runs, kw = toy_runs
    model, s, c, extra = tool.train_method("twostep", "s25-twostep", steps=3, **kw)
    step1 = runs / "s25-twostep-step1" / "model"
    assert model == runs / "s25-twostep-step2" / "model"
    assert _layers(runs / "s25-twostep-step1-cut" / "model") == 5 and _layers(step1) == 5 and _layers(model) == 4
    r1, r2 = _record(step1), _record(model)
    assert (r1["stage"], r1["options"]["max_steps"], r1["options"]["teacher"]) == ("kd", 1, str(kw["teacher"]))
    # step 2 learns from the step-1 student, for the rest of the budget
    assert (r2["stage"], r2["options"]["max_steps"], r2["options"]["teacher"]) == ("kd", 2, str(step1))
    assert r1["options"]["hidden_weight"] == r2["options"]["hidden_weight"] == 0.0
    # the step-1 student was trimmed to the train split's vocabulary before its KD
    assert _record(runs / "s25-twostep-step1-trim" / "model")["stage"] == "trim-vocab"
    assert (s, c) == (2.0, 4.0)  # the two KD stages; the cuts and the trim apart
    assert extra == {"detail": "6 -> 5 LLM layers, 1 steps; -> 4 layers, 2 steps", "cut_cpu_seconds": 10.0,
                     "cut_seconds": 6.0, "parts_cpu_seconds": [2.0, 2.0]}


def test_mr_replaces_a_block_to_the_same_depth_then_distils(tool, toy_runs):
    runs, kw = toy_runs
    model, s, c, extra = tool.train_method("mr", "s25-mr", steps=4, **kw)
    replaced = runs / "s25-mr-replace" / "model"
    assert model == runs / "s25-mr-kd" / "model"
    rec = _record(replaced)
    assert rec["stage"] == "replace-layers" and rec["options"]["max_steps"] == 1  # a quarter of the 4 steps
    assert len(rec["replaced_llm_layers"]) == 3 and rec["layers_after"] == 4 == _layers(model)
    assert rec["options"]["position"] == "search" and rec["options"]["search_examples"] == 32
    kd = _record(model)
    assert (kd["stage"], kd["options"]["max_steps"], kd["options"]["hidden_weight"]) == ("kd", 3, 0.0)
    block = rec["replaced_llm_layers"]
    assert extra["detail"] == f"LLM layers {block} of 6 -> 1, 1 steps; then word-level KD, 3 steps"
    assert (s, c) == (2.0, 4.0)


def test_unknown_method_names_the_known_ones(tool, toy_runs):
    with pytest.raises(SystemExit, match="unknown method 'nope'.*wordhid, twostep, mr"):
        tool.train_method("nope", "x", steps=2, **toy_runs[1])


def test_dev_score_reads_the_slice_asked_for(tool):
    r = {"dev_chrf": 70.0, "dev_n": 300, "dev_by_n": {"50": 78.0, "300": 70.0}}
    assert tool.dev_score(r, 300) == 70.0 and tool.dev_score(r, 50) == 78.0
    assert tool.dev_score({"dev_chrf": 78.0, "dev_n": 50}, 50) == 78.0  # an earlier run's row: no dev_by_n
    assert tool.dev_score({"dev_chrf": 78.0, "dev_n": 50}, 300) is None
    assert tool.dev_score({"dev_chrf": 78.0}, None) is None


def test_targets_choose_on_the_whole_dev_split(tool):
    # the first 50 dev utterances rank a over b; the whole split (300) ranks b over a; c has no whole-dev score
    a = {**_row("a", "25", 768, 74.0, 70.0, 240, 240), "dev_n": 300, "dev_by_n": {"50": 78.0, "300": 70.0}}
    b = {**_row("b", "25", 768, 77.0, 72.0, 240, 240), "dev_n": 300, "dev_by_n": {"50": 76.0, "300": 72.0}}
    c = {**_row("c", "25", 768, 80.0, 90.0, 240, 240), "dev_n": 50}
    line = tool.targets([a, b, c], 1000, 84.0, dev_n=300)[0]
    assert line.startswith("- >= 90% at <= 25%: chosen on the whole dev split (300) `b` keeps 91.7% at 24.0% -> met")
    assert "the first 50 dev utterances would choose `c`, 95.2%" in line  # c's first-50 score is its dev_chrf
    assert "not candidates (no whole-dev score): `c`" in line
    assert "best on test: `c` 95.2%" in line
    # the same rows without c: the old rule's pick a is named, with what it keeps on test
    line = tool.targets([a, b], 1000, 84.0, dev_n=300)[0]
    assert "the first 50 dev utterances would choose `a`, 88.1%" in line and "not candidates" not in line
    # nothing scored on the whole split: said, not chosen
    assert tool.targets([c], 1000, 84.0, dev_n=300)[0] == "- >= 90% at <= 25%: no candidate has a score on the whole dev split (300)"


def test_steps_table_dev_column_is_the_whole_split(tool):
    rows = [{**_row("s5-a", "5", 384, 20.0, 25.0, 1, 1), "dev_n": 50},
            {**_row("s5-b", "5", 4608, 45.0, 40.0, 1, 1), "dev_n": 300, "dev_by_n": {"50": 44.0, "300": 40.0}}]
    body = [line for line in tool.steps_table(rows, 100.0, dev_n=300) if line.startswith("| s5")]
    assert [line.split(" | ")[7] for line in body] == ["-", "40.0"]


def test_targets_say_by_how_much_every_trained_row_is_over_the_cap(tool):
    rows = [_row("s5-ct4s", "5", 4608, 40.0, 41.0, 40, 62), _row("s5-ub-ct2s", "5", 4608, 30.0, 31.0, 39, 53)]
    line = tool.targets(rows, 1000, 80.0, key="torch_save", dev_n=300)[-1]
    assert line == ("- >= 50% at <= 5%: no trained row within 5% -> missed: the smallest, `s5-ub-ct2s`, is 5.30% "
                    "(0.30 points over), keeping 37.5%")
    assert tool.targets([], 1000, 80.0)[-1] == "- >= 50% at <= 5% with a trained student: not measured"


def test_rescore_dev_scores_the_first_50_from_a_whole_split_decode(tool, tmp_path):
    """Rows run on the whole dev split get the first-50 score from their decode's first lines; rows over every
    cap and untrained rows are left alone (no model is decoded here: every candidate already has the whole split)."""
    import argparse

    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    pq.write_table(pa.table({"id": list(range(60))}), corpus / "dev.parquet")
    refs = [f"Der Hund {i} schläft im Garten." for i in range(60)]
    hyps = refs[:50] + ["falsch"] * 10  # the first 50 exact, the last 10 wrong
    run = out / "runs" / "s5-wordref-9-ct4e" / "dev"
    run.mkdir(parents=True)
    (run / "hyp.de").write_text("".join(h + "\n" for h in hyps), "utf-8")
    (run / "ref.de").write_text("".join(r + "\n" for r in refs), "utf-8")
    results = {"teacher": {"name": "teacher", "method": "teacher", "chrf": 80.0, "bytes": 1000, "torch_save": 1000,
                           "dev_chrf": 79.0, "dev_n": 60},
               "s5-wordref-9-ct4e": {**_row("s5-wordref-9-ct4e", "5", 9, 40.0, 70.0, 40, 100), "dev_n": 60},
               "s25-wordref-9-ct4s": {**_row("s25-wordref-9-ct4s", "25", 9, 70.0, 71.0, 280, 290), "dev_n": 60}}
    (out / "results.json").write_text(json.dumps(results))
    args = argparse.Namespace(corpus=corpus, out=out, also=[], lang="en-de", threads=1)
    tool.rescore_dev(args)
    after = json.loads((out / "results.json").read_text())
    assert tool.dev_score(after["s5-wordref-9-ct4e"], 50) == 100.0  # the first 50 lines are exact
    assert tool.dev_score(after["s5-wordref-9-ct4e"], 60) == 70.0
    assert "dev_by_n" not in after["s25-wordref-9-ct4s"]  # 28% / 29%: over every cap, not a candidate


def test_every_method_has_a_plot_marker_and_a_data_pool(tool):
    assert set(tool.METHODS) <= set(tool.PLOT_MARKERS)
    assert len(set(tool.PLOT_MARKERS.values())) == len(tool.PLOT_MARKERS)  # one marker per kind
    assert set(tool.ON_TRANSLATIONS) < set(tool.METHODS)


def test_methods_table_puts_each_method_of_a_size_and_budget_side_by_side(tool):
    a = {**_row("s25-ft-768-ct4e", "25", 768, 70.0, 71.0, 1, 1), "method": "ft", "quant": "ct4e"}
    b = {**_row("s25-wordref-768-ct4e", "25", 768, 80.0, 79.0, 1, 1), "method": "wordref", "quant": "ct4e"}
    alone = {**_row("s10-wordref-4608-ct4e", "10", 4608, 60.0, 61.0, 1, 1), "method": "wordref", "quant": "ct4e"}
    other_q = {**_row("s25-ft-768-ct3s", "25", 768, 50.0, 51.0, 1, 1), "method": "ft", "quant": "ct3s"}
    lines = tool.methods_table([a, b, alone, other_q], 100.0)
    assert lines[3] == "| student | steps | utterances seen | ft | wordref |"
    assert lines[5:] == ["| s25 | 768 | 6,144 | 70.0 (71.0) | 80.0 (79.0) |"]  # s10 has one method only: no row
    assert tool.methods_table([alone], 100.0) == []
