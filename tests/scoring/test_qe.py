"""Quality estimation in the loop: the QE scorer, score_many, QE filtering of distillation data,
and the acceptability view (papers/000, papers/003).

The tests marked by the ``qe_ckpt`` fixture run the COMET environment (created once by the code of
``iwslt-mc setup-comet``; skipped only when pip cannot reach an index) with a tiny random
COMET-Kiwi-style checkpoint built offline; the others need no COMET.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu

from iwslt_mc import cli
from iwslt_mc.training import data
from iwslt_mc.decoding import core as decoding
from iwslt_mc.scoring import comet_env, metrics, scoring
from iwslt_mc.errors import UserError
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage
from iwslt_mc.training.calibration import heldout_segments
from iwslt_mc.stages.distill import DATA_DIR


SRC = ["Today we talk about compressing large models.",
       "The model has to fit into less than five hundred megabytes.",
       "We removed three layers.",
       "Does it work?",
       "Yes, but the translation gets a little worse."]
MT = ["Heute sprechen wir über die Kompression großer Modelle.",
      "Das Modell muss in weniger als fünfhundert Megabyte passen.",
      "Wir haben drei Schichten entfernt.",
      "Funktioniert es?",
      "Ja, aber die Übersetzung wird etwas schlechter."]


# ---------------------------------------------------------------------------------------------
# Acceptability: hand computation


def test_acceptability_equals_hand_computation():
    system = [0.95, 0.72, 0.50, 0.81, 0.69, 0.30, 0.88, 0.70]
    teacher = [0.97, 0.80, 0.75, 0.60, 0.71, 0.20, 0.90, 0.69]
    levels = scoring.acceptability(system, [0.51, 0.70, 0.90], teacher)
    # >= 0.51: system ok at 0,1,3,4,6,7 (6 of 8); teacher ok at 0,1,2,3,4,6,7 (7)
    #          tp = 6, fp = 0, fn = 1 (segment 2), tn = 1  ->  P 1, R 6/7, F1 12/13
    # >= 0.70: system ok at 0,1,3,6,7 (5); teacher ok at 0,1,2,4,6 (5)
    #          tp = 3 (0,1,6), fp = 2 (3,7), fn = 2 (2,4), tn = 1  ->  P 3/5, R 3/5, F1 3/5
    # >= 0.90: system ok at 0 (1); teacher ok at 0,6 (2): tp 1, fp 0, fn 1, tn 6 -> P 1, R 1/2, F1 2/3
    expected = [(0.51, 6, 7, 6, 0, 1, 1, 1.0, 6 / 7, 12 / 13),
                (0.70, 5, 5, 3, 2, 2, 1, 3 / 5, 3 / 5, 3 / 5),
                (0.90, 1, 2, 1, 0, 1, 6, 1.0, 1 / 2, 2 / 3)]
    for lv, (t, acc, tacc, tp, fp, fn, tn, p, r, f1) in zip(levels, expected):
        assert (lv["threshold"], lv["segments"], lv["acceptable"], lv["teacher_acceptable"]) == (t, 8, acc, tacc)
        assert (lv["tp"], lv["fp"], lv["fn"], lv["tn"]) == (tp, fp, fn, tn)
        assert lv["share"] == pytest.approx(acc / 8) and lv["teacher_share"] == pytest.approx(tacc / 8)
        assert (lv["precision"], lv["recall"], lv["f1"]) == pytest.approx((p, r, f1))


def test_acceptability_edge_cases():
    # nothing predicted acceptable: precision undefined; no teacher positive: recall undefined
    lv = scoring.acceptability([0.1, 0.2], [0.5], [0.9, 0.1])[0]
    assert (lv["acceptable"], lv["precision"], lv["recall"], lv["f1"]) == (0, None, 0.0, None)
    lv = scoring.acceptability([0.9, 0.2], [0.5], [0.1, 0.1])[0]
    assert (lv["precision"], lv["recall"], lv["f1"]) == (0.0, None, None)
    lv = scoring.acceptability([0.9, 0.6], [0.5])[0]  # no teacher: shares only
    assert lv == {"threshold": 0.5, "segments": 2, "acceptable": 2, "share": 1.0}
    # a score equal to the threshold is acceptable ("at or above")
    assert scoring.acceptability([0.7], [0.7], [0.7])[0]["tp"] == 1


def test_thresholds_checked():
    assert scoring.check_thresholds("0.9, 0.5,0.5", "comet") == [0.5, 0.9]
    assert scoring.check_thresholds([40, 70], "chrf") == [40.0, 70.0]
    for bad, metric, msg in (("1.5", "comet", "out of range"), ("70", "comet", "threshold 70 out of range"),
                             ("-1", "chrf", "out of range"), ("101", "chrf", "out of range"),
                             ("a,b", "chrf", "not a comma-separated list"), ("nan", "comet", "out of range"),
                             (",", "comet", "no threshold given")):
        with pytest.raises(UserError, match=msg):
            scoring.check_thresholds(bad, metric)


def _write(path: Path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _chrf_files(tmp_path):
    ref = ["Das ist ein kleiner Test.", "Hallo Welt, wie geht es dir heute?", "Guten Morgen, liebe Freunde.",
           "Wir haben drei Schichten entfernt."]
    # sentence chrF: an exact copy scores 100, an unrelated line near 0
    hyp = [ref[0], ref[1], "xyz qqq", "Katze Hund Maus"]
    teacher = [ref[0], "ganz anders", ref[2], "völlig falsch hier"]
    return (_write(tmp_path / "ref.de", ref), _write(tmp_path / "hyp.de", hyp), _write(tmp_path / "teacher.de", teacher),
            ref, hyp, teacher)


def test_score_command_acceptability_with_teacher_chrf(tmp_path, capsys):
    ref_f, hyp_f, t_f, ref, hyp, teacher = _chrf_files(tmp_path)
    chrf = [sacrebleu.sentence_chrf(h, [r], word_order=2).score for h, r in zip(hyp, ref)]
    assert chrf[:2] == [100.0, 100.0] and max(chrf[2:]) < 20  # the premise of the hand computation
    rc = cli.main(["score", "--hyp", str(hyp_f), "--ref", str(ref_f), "--teacher-hyp", str(t_f), "--lang", "en-de",
                   "--accept-chrf", "51,95", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    acc = res["acceptability"]
    assert acc["metric"] == "chrf" and acc["teacher"] and acc["teacher_file"] == str(t_f)
    # system ok: 0,1; teacher ok: 0,2 -> tp 1 (0), fp 1 (1), fn 1 (2), tn 1 (3): P = R = F1 = 0.5, at both thresholds
    for lv, t in zip(acc["levels"], (51.0, 95.0)):
        assert lv["threshold"] == t and (lv["acceptable"], lv["teacher_acceptable"]) == (2, 2)
        assert (lv["tp"], lv["fp"], lv["fn"], lv["tn"]) == (1, 1, 1, 1)
        assert (lv["precision"], lv["recall"], lv["f1"]) == (0.5, 0.5, 0.5) and lv["share"] == 0.5
    assert [s["teacher_hyp"] for s in res["segments"]] == teacher
    assert [s["teacher_chrf"] for s in res["segments"]] == pytest.approx(
        [sacrebleu.sentence_chrf(h, [r], word_order=2).score for h, r in zip(teacher, ref)])
    # plain output: one line per threshold
    assert cli.main(["score", "--hyp", str(hyp_f), "--ref", str(ref_f), "--teacher-hyp", str(t_f), "--lang", "en-de"]) == 0
    out = capsys.readouterr().out
    assert ">= 51: 2/4 (50.0%)  teacher 2/4  precision 0.50 recall 0.50 F1 0.50" in out
    assert ">= 90: 2/4 (50.0%)" in out  # default thresholds 51, 70, 90


def test_score_command_bad_threshold_and_teacher_file_one_line(tmp_path, capsys):
    ref_f, hyp_f, t_f, *_ = _chrf_files(tmp_path)
    rc = cli.main(["score", "--hyp", str(hyp_f), "--ref", str(ref_f), "--lang", "en-de", "--accept-comet", "0.5,80"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.count("\n") == 0 and "--accept-comet: threshold 80 out of range" in err
    rc = cli.main(["score", "--hyp", str(hyp_f), "--ref", str(ref_f), "--lang", "en-de",
                   "--teacher-hyp", str(tmp_path / "missing.de")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.count("\n") == 0 and "missing.de: teacher hypothesis not found" in err


def _run_dir(root: Path, name: str, kit, scores: dict) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "model").symlink_to(kit / "model", target_is_directory=True)
    (d / "scores-en-de.json").write_text(json.dumps(scores), encoding="utf-8")
    return d


def test_report_acceptability_against_a_teacher_run(tmp_path, kit):
    from iwslt_mc.submission import report

    ref_f, hyp_f, t_f, *_ = _chrf_files(tmp_path)
    sys_scores = scoring.score_files(hyp_f, ref_f, "en-de", testset="tst")
    teacher_scores = scoring.score_files(t_f, ref_f, "en-de", testset="tst")
    small = _run_dir(tmp_path / "runs", "small", kit, sys_scores)
    big = _run_dir(tmp_path / "runs", "teacher", kit, teacher_scores)
    rec = report.write_report([small, big], tmp_path / "rep", edition="2026", teacher=big,
                              accept={"comet": [0.5], "chrf": [51.0]})
    rows = {r["run"]: r for r in rec["rows"]}
    a = rows["small"]["acceptability"]
    assert a["metric"] == "chrf" and a["teacher_run"] == str(big) and a["thresholds"] == [51.0]
    lv = a["levels"][0]
    assert (lv["acceptable"], lv["teacher_acceptable"], lv["tp"], lv["fp"], lv["fn"], lv["tn"]) == (2, 2, 1, 1, 1, 1)
    assert (lv["precision"], lv["recall"], lv["f1"]) == (0.5, 0.5, 0.5)
    t = rows["teacher"]["acceptability"]["levels"][0]
    assert (t["precision"], t["recall"], t["f1"]) == (1.0, 1.0, 1.0)
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "## Acceptability" in md
    assert "| small | en-de | tst | sentence chrF | 51 | 2/4 | 50.0% | 2/4 | 0.50 | 0.50 | 0.50 |" in md
    # without a teacher: shares only, from the segments in the scores files, default thresholds
    rec = report.write_report([small], tmp_path / "rep2", edition="2026")
    levels = rec["rows"][0]["acceptability"]["levels"]
    assert [(lv["threshold"], lv["acceptable"]) for lv in levels] == [(51.0, 2), (70.0, 2), (90.0, 2)]
    assert "precision" not in levels[0]


def test_report_teacher_without_scores_is_one_line(tmp_path, kit):
    from iwslt_mc.submission import report

    ref_f, hyp_f, *_ = _chrf_files(tmp_path)
    small = _run_dir(tmp_path / "runs", "small", kit, scoring.score_files(hyp_f, ref_f, "en-de"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no scores files for the teacher"):
        report.write_report([small], tmp_path / "rep", edition="2026", teacher=tmp_path / "empty")
    assert not (tmp_path / "rep").exists()


# ---------------------------------------------------------------------------------------------
# QE options: bad input before any work (no COMET needed)


def _fake_ckpt(root: Path, hparams: str) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "model.ckpt").write_bytes(b"not loaded by these checks")
    (root / "hparams.yaml").write_text(hparams, encoding="utf-8")
    return root / "checkpoints" / "model.ckpt"


def test_checkpoint_kind_from_hparams(tmp_path):
    assert comet_env.checkpoint_kind(str(_fake_ckpt(tmp_path / "a", "class_identifier: regression_metric\n"))) == "reference"
    assert comet_env.checkpoint_kind(str(_fake_ckpt(tmp_path / "b", "class_identifier: referenceless_regression_metric\n"))) == "qe"
    kiwi = _fake_ckpt(tmp_path / "c", "class_identifier: unified_metric\ninput_segments: [mt, src]\n")
    assert comet_env.checkpoint_kind(str(kiwi)) == "qe"
    assert comet_env.checkpoint_kind(str(_fake_ckpt(tmp_path / "d", "class_identifier: unified_metric\n"))) == "both"
    assert comet_env.checkpoint_kind(str(_fake_ckpt(tmp_path / "e", "class_identifier: unified_metric\n"
                                                                      "input_segments: [mt, ref]\n"))) == "reference"
    with pytest.raises(UserError, match="class_identifier 'bert' is not a COMET model class"):
        comet_env.checkpoint_kind(str(_fake_ckpt(tmp_path / "f", "class_identifier: bert\n")))
    assert comet_env.checkpoint_name(str(kiwi)) == "c"
    assert comet_env.checkpoint_name("Unbabel/wmt22-cometkiwi-da") == "wmt22-cometkiwi-da"


def test_distill_qe_options_refused_before_any_work(tmp_path, monkeypatch):
    ref_model = _fake_ckpt(tmp_path / "comet-da", "class_identifier: regression_metric\n")
    kiwi = _fake_ckpt(tmp_path / "kiwi", "class_identifier: unified_metric\ninput_segments: [mt, src]\n")
    cases = [({"qe": str(kiwi), "qe_min": 70}, "'qe_min' must lie in \\[-1, 1\\]"),
             ({"qe": str(kiwi), "qe_top": 0}, "'qe_top' is a share: 0 < qe_top <= 1, not 0"),
             ({"qe": str(kiwi), "qe_top": 1.5}, "'qe_top' is a share"),
             ({"qe": str(kiwi), "qe_min": 0.5, "qe_top": 0.5}, "exclude each other"),
             ({"qe_min": 0.5}, "need 'qe'"),
             ({"qe": str(ref_model), "qe_min": 0.5}, "not a quality-estimation \\(reference-free\\) COMET model"),
             ({"qe": str(tmp_path / "none.ckpt")}, "none.ckpt: COMET checkpoint not found")]
    for opts, msg in cases:
        with pytest.raises(UserError, match=msg) as e:
            make_stage("distill", opts)
        assert "\n" not in str(e.value)
    # a good QE checkpoint but no COMET environment
    monkeypatch.setenv("IWSLT_MC_COMET_ENV", str(tmp_path / "no-env"))
    with pytest.raises(UserError, match="option 'qe': the COMET environment .*no-env is not set up"):
        make_stage("distill", {"qe": str(kiwi), "qe_min": 0.5})


# ---------------------------------------------------------------------------------------------
# With the COMET environment and a tiny QE checkpoint


@pytest.fixture(scope="session")
def qe_env(comet_env_dir):
    """The COMET environment (tests/conftest.py): under IWSLT_MC_REQUIRE_COMET=1 a failure to build it fails."""
    return comet_env_dir


@pytest.fixture(scope="session")
def qe_ckpt(qe_env, tmp_path_factory):
    return str(comet_env.make_tiny_checkpoint(tmp_path_factory.mktemp("qe") / "tiny-kiwi", env_dir=qe_env, qe=True))


@pytest.fixture(scope="session")
def kit_teacher(kit):
    """A controlled teacher for the kit's training split: per utterance a distinct German text."""
    train = data.load_examples(kit / "data", "train")
    words = "Haus Baum Licht Wasser Stadt Fluss Berg Wolke Stein Feld Weg Tür".split()
    texts = [f"{words[i % len(words)]} und {words[(3 * i + 1) % len(words)]} {i}" for i in range(len(train))]
    return train, texts


@pytest.fixture(scope="session")
def teacher_qe(kit_teacher, qe_ckpt):
    """The tiny QE model's scores of the controlled teacher's texts (one worker call)."""
    train, texts = kit_teacher
    return comet_env.run_qe(qe_ckpt, [e.text_en for e in train], texts, batch_size=4)


def test_tiny_qe_checkpoint_scores_without_references(qe_ckpt, teacher_qe, kit_teacher):
    assert comet_env.checkpoint_kind(qe_ckpt) == "qe"
    root = Path(qe_ckpt).parent.parent
    assert "class_identifier: unified_metric" in (root / "hparams.yaml").read_text(encoding="utf-8")
    scores = teacher_qe["scores"]
    assert teacher_qe["kind"] == "qe" and len(scores) == len(kit_teacher[0])
    assert all(0.0 < s < 1.0 for s in scores)  # sigmoid output, COMET-Kiwi's range
    gaps = sorted(scores)
    assert min(b - a for a, b in zip(gaps, gaps[1:])) > 1e-3  # spread: thresholds can sit between them
    assert teacher_qe["system_score"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)


def test_score_many_one_call_equals_separate_calls(qe_ckpt, qe_env):
    other = [MT[1], MT[0], "Wir haben drei Schichten gelöscht.", MT[3], "Nein."]
    details: dict = {}
    many = comet_env.score_many(qe_ckpt, SRC, {"a": MT, "b": other, "a-again": list(MT)}, qe=True, details=details)
    # the triples a and a-again share, and the one b shares with a (segment 3), are scored once
    assert details["unique"] == 9 and details["total"] == 15 and details["kind"] == "qe"
    separate = {k: comet_env.run_qe(qe_ckpt, SRC, mt) for k, mt in (("a", MT), ("b", other))}
    for k in ("a", "b"):
        assert many[k] == pytest.approx(separate[k]["system_score"], abs=1e-4)
        assert details["scores"][k] == pytest.approx(separate[k]["scores"], abs=1e-4)
    assert many["a-again"] == many["a"]
    assert details["scores"]["b"][3] == details["scores"]["a"][3]


def test_worker_refuses_a_model_that_needs_references(qe_ckpt, qe_env, tmp_path):
    import torch

    # the tiny QE model relabelled as trained on [mt, ref]: loads, but needs references
    root = tmp_path / "mt-ref"
    (root / "checkpoints").mkdir(parents=True)
    ck = torch.load(qe_ckpt, map_location="cpu", weights_only=True)
    ck["hyper_parameters"]["input_segments"] = ["mt", "ref"]
    torch.save(ck, root / "checkpoints" / "model.ckpt")
    hp = (Path(qe_ckpt).parent.parent / "hparams.yaml").read_text(encoding="utf-8")
    (root / "hparams.yaml").write_text(hp.replace("- mt\n- src\n", "- mt\n- ref\n"), encoding="utf-8")
    assert comet_env.checkpoint_kind(str(root / "checkpoints" / "model.ckpt")) == "reference"
    with pytest.raises(UserError, match="not a quality-estimation model: UnifiedMetric needs references") as e:
        comet_env.run_comet(str(root / "checkpoints" / "model.ckpt"), SRC[:1], MT[:1], None, qe=True)
    assert "\n" not in str(e.value)


def _distill_with_teacher(kit, out, options, texts, monkeypatch):
    train = data.load_examples(kit / "data", "train")
    order = {e.id: i for i, e in enumerate(train)}

    def fake_translate(model, processor, waves, lang, **kw):
        return [decoding.Hyp(texts[order[w.func.__self__.id]], 5, 0.0) for w in waves]  # waveform, cut bound

    monkeypatch.setattr(decoding, "translate", fake_translate)
    ctx = StageContext(lang="en-de", data=[str(kit / "data")], device="cpu", log=lambda m: None)
    return run_stage(make_stage("distill", options), kit / "model", out, ctx), order


def test_distill_qe_min_drops_the_expected_rows(kit, tmp_path, monkeypatch, qe_ckpt, kit_teacher, teacher_qe):
    train, texts = kit_teacher
    scores = teacher_qe["scores"]
    ranked = sorted(scores)
    threshold = round((ranked[4] + ranked[5]) / 2, 6)  # between the 5th and 6th lowest: drops 5
    rec, order = _distill_with_teacher(kit, tmp_path / "kd", {"qe": qe_ckpt, "qe_min": threshold, "qe_batch_size": 4},
                                       texts, monkeypatch)
    kept = [i for i in range(len(train)) if scores[i] >= threshold]
    c = rec["distill"]
    assert len(kept) == len(train) - 5
    assert (c["teacher_pairs"], c["qe_dropped"], c["reference_pairs"]) == (len(kept), 5, len(train))
    kd = sorted((e for e in data.load_examples(tmp_path / "kd" / DATA_DIR) if e.meta["origin"] == "teacher"),
                key=lambda e: order[e.meta["source_id"]])
    assert [e.text_de for e in kd] == [texts[i] for i in kept]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "kd" / DATA_DIR / "train.parquet", columns=["origin", "source_id", "qe"]).to_pylist()
    qe_col = {r["source_id"]: r["qe"] for r in table if r["origin"] == "teacher"}
    assert [qe_col[e.meta["source_id"]] for e in kd] == pytest.approx([scores[i] for i in kept], abs=1e-4)
    assert all(r["qe"] is None for r in table if r["origin"] == "reference")
    prov = json.loads((tmp_path / "kd" / DATA_DIR / "provenance.json").read_text())
    q = prov["filter"]["qe"]
    assert (q["min"], q["top"], q["scored"], q["candidates"], q["dropped"]) == (threshold, None, 12, 12, 5)
    assert q["name"] == "tiny-kiwi" and "kind:qe" in q["signature"] and prov["counts"]["qe_dropped"] == 5
    tech = json.loads((tmp_path / "kd" / "provenance.json").read_text())["stages"][-1]["techniques"][0]
    assert tech.endswith(f", 5 teacher pairs with QE (tiny-kiwi) below {threshold:g} dropped")


def test_distill_qe_top_keeps_the_best_share(kit, tmp_path, monkeypatch, qe_ckpt, kit_teacher, teacher_qe):
    train, texts = kit_teacher
    scores = teacher_qe["scores"]
    rec, order = _distill_with_teacher(kit, tmp_path / "kd", {"qe": qe_ckpt, "qe_top": 0.25}, texts, monkeypatch)
    best = sorted(range(len(train)), key=lambda i: -scores[i])[:3]  # ceil(0.25 * 12) = 3
    c = rec["distill"]
    assert (c["teacher_pairs"], c["qe_dropped"]) == (3, 9)
    kd = [e for e in data.load_examples(tmp_path / "kd" / DATA_DIR) if e.meta["origin"] == "teacher"]
    assert sorted(order[e.meta["source_id"]] for e in kd) == sorted(best)
    prov = json.loads((tmp_path / "kd" / DATA_DIR / "provenance.json").read_text())
    assert prov["filter"]["qe"]["cutoff"] == pytest.approx(min(scores[i] for i in best), abs=1e-4)
    tech = json.loads((tmp_path / "kd" / "provenance.json").read_text())["stages"][-1]["techniques"][0]
    assert tech.endswith(", 9 teacher pairs outside the top 25% by QE (tiny-kiwi) dropped")


def test_score_command_with_qe_model_and_teacher_in_one_call(tmp_path, qe_ckpt, qe_env, capsys):
    # a reference-free model given to --comet scores without the references; system and teacher in one call
    teacher = list(MT)
    teacher[2] = "Wir haben drei Schichten gelöscht."
    hyp_f, t_f = _write(tmp_path / "hyp.de", MT), _write(tmp_path / "t.de", teacher)
    ref_f, src_f = _write(tmp_path / "ref.de", MT), _write(tmp_path / "src.en", SRC)
    direct = comet_env.run_qe(qe_ckpt, SRC, MT)["scores"]
    direct_t = comet_env.run_qe(qe_ckpt, SRC, teacher)["scores"]
    assert cli.main(["score", "--hyp", str(hyp_f), "--ref", str(ref_f), "--src", str(src_f), "--lang", "en-de",
                     "--comet", qe_ckpt, "--teacher-hyp", str(t_f), "--accept-comet", "0.01,0.5,0.99", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    segs = res["segments"]
    assert [s["comet"] for s in segs] == pytest.approx(direct, abs=1e-4)
    assert [s["teacher_comet"] for s in segs] == pytest.approx(direct_t, abs=1e-4)
    assert "|reference-free|" in res["metrics"]["comet"]["signature"]
    acc = res["acceptability"]
    assert acc["metric"] == "comet" and acc["thresholds"] == [0.01, 0.5, 0.99]
    expected = scoring.acceptability(direct, [0.01, 0.5, 0.99], direct_t)
    assert [(lv["acceptable"], lv["tp"], lv["fp"], lv["fn"]) for lv in acc["levels"]] == [
        (lv["acceptable"], lv["tp"], lv["fp"], lv["fn"]) for lv in expected]


# ---------------------------------------------------------------------------------------------
# COMET/QE-guided layer search: one COMET process per round, the same choice as per-candidate scoring


def test_qe_guided_search_scores_a_round_in_one_call_and_chooses_as_per_candidate_scoring(
        kit, qe_ckpt, tmp_path, monkeypatch):
    """One round of the kit's search (4 candidates, first/last not protected) with ``qe:CKPT``: the round's
    candidates are scored in ONE COMET process (counted), and every candidate's score and the choice equal
    scoring each candidate's hypotheses in its own process, as the per-candidate loop did."""
    from iwslt_mc import modelio
    from iwslt_mc.training.data import load_examples
    from iwslt_mc.pruning import importance as imp

    metric = f"qe:{qe_ckpt}"
    metrics.check_metric(metric)
    calls = {"workers": 0}
    real_worker = comet_env._run_worker

    def worker(*a, **k):  # every COMET process the search starts
        calls["workers"] += 1
        return real_worker(*a, **k)

    monkeypatch.setattr(comet_env, "_run_worker", worker)
    model = modelio.load_model(kit / "model", device="cpu")
    proc = modelio.load_processor(kit / "model")
    segs = heldout_segments(load_examples(str(kit / "data"), split="test", seed=0)[:3], "en-de")
    kw = dict(max_new_tokens=6, max_length=1024)
    engine = imp.SharedEngine(model, proc, segs, "en-de", **kw)
    log = imp.SearchLog(tmp_path / "s.jsonl", {"k": 1}, log=lambda *a: None)
    chosen = imp.iterative_search(imp.CandidateScorer(engine, metric=metric), kind="llm", n_layers=4, remove=1,
                                  protect_first_last=False, log=log, progress=lambda *a: None)
    scores = {r["candidate"]: r["score"] for r in log.lines if r["type"] == "candidate"}
    assert calls == {"workers": 1} and sorted(scores) == [0, 1, 2, 3]
    # per-candidate: the same hypotheses (decoded alone), each scored in its own worker process
    one_by_one = {c: comet_env.run_qe(qe_ckpt, [s.source for s in segs], engine.translate((c,), ()))["system_score"]
                  for c in range(4)}
    assert calls["workers"] == 1 + 4
    for c in range(4):  # batching several candidates' segments together moves COMET's floats slightly
        assert scores[c] == pytest.approx(one_by_one[c], abs=1e-4), c
    ranked = sorted(range(4), key=lambda c: (-one_by_one[c], c))
    if one_by_one[ranked[0]] - one_by_one[ranked[1]] > 2e-4:  # a margin the float noise cannot flip
        assert chosen == [ranked[0]]
    assert chosen == [max(range(4), key=lambda c: (scores[c], -c))]
    assert metrics.metric_label(metric, "en-de").startswith("COMET QE")


def test_qe_search_metric_with_a_reference_model_is_refused_before_work(qe_env, tmp_path):
    ref_ckpt = str(comet_env.make_tiny_checkpoint(tmp_path / "tiny-comet", env_dir=qe_env))
    with pytest.raises(UserError, match="reference"):
        metrics.check_metric(f"qe:{ref_ckpt}")
