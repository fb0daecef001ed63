"""Report: rows measured by the sizer, scores from score --out-json, frontier, bins, PNG, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from iwslt_mc import cli
from iwslt_mc.submission import description as sub_desc
from iwslt_mc.submission import report
from iwslt_mc.sizing.sizer import measure

TENSOR = "model.language_model.layers.0.mlp.down_proj.weight"


def sparse_model(model_dir, nbytes):
    """A one-tensor safetensors file of exactly ``nbytes`` (sparse on disk, so GB cost nothing)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    n = nbytes
    for _ in range(3):  # the header length depends on the number written in it
        header = json.dumps({TENSOR: {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        n = nbytes - 8 - len(header)
    header = json.dumps({TENSOR: {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    assert 8 + len(header) + n == nbytes
    with open(model_dir / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(nbytes)
    return model_dir


def scores_json(path, lang, bleu, chrf, comet=None, testset="tst"):
    metrics = {"bleu": {"name": "BLEU", "score": bleu, "signature": "nrefs:1|case:mixed|eff:no|tok:13a"},
               "chrf": {"name": "chrF2++", "score": chrf, "signature": "nrefs:1|nc:6|nw:2"}}
    if comet is not None:
        metrics["comet"] = {"name": "COMET", "score": comet, "signature": "model:tiny|comet:2.2.7"}
    path.write_text(json.dumps({"format": 1, "lang": lang, "testset": testset, "metrics": metrics,
                                "resegmentation": {"applied": False}}), encoding="utf-8")


# name, bytes, BLEU, chrF, COMET: recipe-b-nf4 is beaten by recipe-b (larger, same bin) and by recipe-c
# (smaller, other bin): off the frontier; base is on the frontier but fits no bin.
RUNS = [("tiny", 150_000_000, 10.0, 30.0, 0.55), ("recipe-c", 450_000_000, 25.0, 53.0, 0.72),
        ("recipe-b-nf4", 1_200_000_000, 24.0, 52.0, 0.70), ("recipe-b", 1_500_000_000, 28.0, 56.0, 0.78),
        ("recipe-a", 3_200_000_000, 30.1, 58.0, 0.80), ("base", 16_790_000_000, 33.0, 60.0, 0.83)]


@pytest.fixture
def runs(tmp_path):
    dirs = []
    for name, nbytes, bleu, chrf, comet in RUNS:
        d = tmp_path / "runs" / name
        sparse_model(d / "model", nbytes)
        scores_json(d / "scores-en-de.json", "en-de", bleu, chrf, comet)
        (d / "build.json").write_text(json.dumps({"recipe": f"{name}-recipe"}), encoding="utf-8")
        dirs.append(d)
    prov = {"format": 1, "base": {}, "stages": [
        {"stage": "prune_layers", "techniques": ["layer pruning (8 of 32 LLM layers)"]},
        {"stage": "quantize", "techniques": ["bitsandbytes nf4"]}]}
    (dirs[2] / "model" / "provenance.json").write_text(json.dumps(prov), encoding="utf-8")
    return dirs


def colour_pixels(png_path, rgb, tol=0.04) -> int:
    from matplotlib.image import imread

    img = imread(str(png_path))[..., :3]
    return int((np.abs(img - np.array(rgb)).max(axis=-1) < tol).sum())


def test_report_rows_frontier_bins_and_files(runs, tmp_path):
    out = tmp_path / "report"
    rec = report.write_report(runs, out, edition="2025")
    assert rec["metric"] == "comet" and rec["ranking"] == "bins"
    rows = {r["run"]: r for r in rec["rows"]}
    for name, nbytes, bleu, chrf, comet in RUNS:
        r = rows[name]
        assert r["bytes"] == nbytes == measure(r["model_dir"]).bytes
        assert r["scores"] == {"bleu": bleu, "chrf": chrf, "comet": comet}
        assert r["recipe"] == f"{name}-recipe" and r["lang"] == "en-de" and r["testset"] == "tst"
    assert [rows[n]["bin"] for n, *_ in RUNS] == ["Bin5", "Bin4", "Bin2", "Bin2", "Bin1", None]
    assert {n for n, r in rows.items() if r["pareto"]} == {"tiny", "recipe-c", "recipe-b", "recipe-a", "base"}
    assert {n for n, r in rows.items() if r["best_in_bin"]} == {"tiny", "recipe-c", "recipe-b", "recipe-a"}
    assert rows["recipe-b-nf4"]["techniques"] == ["layer pruning (8 of 32 LLM layers)", "bitsandbytes nf4"]
    with open(runs[2] / "model" / "model.safetensors", "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
    assert rows["recipe-b-nf4"]["params"] == 1_200_000_000 - 8 - header_len  # one U8 element per byte

    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == json.loads(json.dumps(rec))
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| model | lang | test set | size | params | bin |" in md
    assert "| recipe-b | en-de | tst | 1.500 GB |" in md and "| yes | Bin2 |" in md
    assert "| base | en-de | tst | 16.790 GB |" in md and "| none |" in md
    assert "![quality against size](quality-vs-size.png)" in md and "edition:2025" in md

    png = out / report.PLOT_NAME
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The points and frontier (tab:red), the dominated point (tab:blue), best-in-bin rings (goldenrod).
    assert colour_pixels(png, (0.839, 0.153, 0.157)) > 500
    assert colour_pixels(png, (0.122, 0.467, 0.706)) > 20
    assert colour_pixels(png, (0.855, 0.647, 0.125)) > 200


def test_report_reads_score_output_and_falls_back_to_bleu(tmp_path):
    # A bare model directory as RUN_DIR, scored by the real score command, no COMET.
    run = sparse_model(tmp_path / "small", 3_000_000)
    (tmp_path / "ref.de").write_text("Das ist ein Test.\nNoch ein Satz.\nUnd der dritte.\n", encoding="utf-8")
    (tmp_path / "hyp.de").write_text("Das ist ein Test. Noch ein\nSatz. Und der dritte.\n", encoding="utf-8")
    assert cli.main(["score", "--hyp", str(tmp_path / "hyp.de"), "--ref", str(tmp_path / "ref.de"), "--lang", "en-de",
                     "--out-json", str(run / "scores-en-de.json"), "--testset", "dev"]) == 0
    other = tmp_path / "other"
    sparse_model(other / "model", 600_000_000)
    scores_json(other / "scores-en-de.json", "en-de", 20.0, 40.0, comet=0.7, testset="dev")
    unscored = tmp_path / "unscored"
    sparse_model(unscored / "model", 900_000_000)
    rec = report.write_report([run, other, unscored], tmp_path / "rep", edition="2025")
    assert rec["metric"] == "bleu"  # not every model has COMET
    rows = {r["run"]: r for r in rec["rows"]}
    scored = json.loads((run / "scores-en-de.json").read_text(encoding="utf-8"))
    assert rows["small"]["scores"]["bleu"] == scored["metrics"]["bleu"]["score"] == pytest.approx(100.0)
    assert rows["small"]["as_wer"] == 0.0 and rows["small"]["model_dir"] == str(run)
    assert rows["small"]["pareto"] and not rows["other"]["pareto"]  # smaller and better
    assert rows["unscored"]["lang"] is None and rows["unscored"]["scores"] == {}
    assert rows["unscored"]["bin"] == "Bin3" and not rows["unscored"]["pareto"]
    assert (tmp_path / "rep" / report.PLOT_NAME).is_file()


def test_pareto_front():
    pts = [(100, 0.5), (200, 0.5), (200, 0.7), (300, 0.6), (400, 0.9), (400, 0.9)]
    # (200, 0.5) is beaten by the smaller (100, 0.5); (300, 0.6) by (200, 0.7); equal points both stay.
    assert report.pareto_front(pts) == [0, 2, 4, 5]
    assert report.pareto_front([]) == []


def test_report_command(runs, tmp_path, capsys):
    assert cli.main(["report", *map(str, runs), "--out", str(tmp_path / "r"), "--metric", "bleu",
                     "--edition", "2025"]) == 0
    out = capsys.readouterr().out
    assert "quality (BLEU) against size" in out and "recipe-a" in out and "Bin1" in out
    rec = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert rec["metric"] == "bleu"


def _error(capsys, argv):
    rc = cli.main(["report", *argv])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and err.startswith("iwslt-mc report: error: ")
    return err


def test_report_errors(runs, tmp_path, capsys):
    out = ["--out", str(tmp_path / "r"), "--edition", "2025"]
    assert "nowhere: run directory not found" in _error(capsys, [str(tmp_path / "nowhere"), *out])
    (tmp_path / "empty").mkdir()
    assert "empty: no model" in _error(capsys, [str(tmp_path / "empty"), *out])
    (runs[0] / "scores-bad.json").write_text("{not json", encoding="utf-8")
    assert "scores-bad.json: not a readable JSON scores file" in _error(capsys, [str(runs[0]), *out])
    (runs[0] / "scores-bad.json").write_text('{"hello": 1}', encoding="utf-8")
    assert "not an iwslt-mc scores file" in _error(capsys, [str(runs[0]), *out])
    (runs[0] / "scores-bad.json").unlink()
    scores_json(runs[1] / "scores-en-de.json", "en-de", 1.0, 2.0)  # no COMET any more
    assert "--metric comet: no COMET score for recipe-c" in _error(capsys, [*map(str, runs), "--metric", "comet", *out])
    assert not (tmp_path / "r").exists()  # nothing written before the inputs were checked


# ---------------------------------------------------------------------------------------------- Pareto editions


TEST_SETS = ("tvseries", "acl", "callcenter", "youtube", "businessnews", "accent")
# name, bytes, COMET per test set (6): "mid" beats "big" on average but not on every test set.
PARETO_RUNS = [("small", 400_000_000, [0.60, 0.70, 0.50, 0.55, 0.65, 0.58]),
               ("mid", 900_000_000, [0.72, 0.80, 0.62, 0.66, 0.75, 0.70]),
               ("big", 2_500_000_000, [0.70, 0.82, 0.61, 0.65, 0.74, 0.69]),
               ("partial", 300_000_000, [0.90, None, None, None, None, None])]


@pytest.fixture
def pareto_runs(tmp_path):
    dirs = []
    for name, nbytes, comets in PARETO_RUNS:
        d = tmp_path / "runs" / name
        sparse_model(d / "model", nbytes)
        (d / "scores").mkdir()
        for t, c in zip(TEST_SETS, comets):
            if c is not None:
                scores_json(d / "scores" / f"{t}.json", "en-de", 20 * c, 50 * c, comet=c, testset=t)
        dirs.append(d)
    return dirs


def test_report_2026_frontier_per_test_set_and_averaged_without_bins(pareto_runs, tmp_path, monkeypatch):
    out = tmp_path / "r26"
    # the sparse placeholders cannot be loaded: their torch.save size (2026's measure) is stated through a stub
    sizes = {d.name: n for d, (_, n, _) in zip(pareto_runs, PARETO_RUNS)}
    monkeypatch.setattr(sub_desc, "torch_save_bytes", lambda d, report=None: (sizes[Path(d).parent.name], "stub"))
    rec = report.write_report(pareto_runs, out, edition="2026")
    assert rec["ranking"] == "pareto" and rec["size_measure"] == "torch_save_bytes" and rec["metric"] == "comet"
    rows = rec["rows"]
    assert all(r["bin"] is None and not r["best_in_bin"] for r in rows)
    avg = {r["run"]: r for r in rows if r["testset"] == "average"}
    assert set(avg) == {"small", "mid", "big"}  # "partial" has 1 of 6 test sets: not averaged
    for name, _, comets in PARETO_RUNS[:3]:
        assert avg[name]["scores"]["comet"] == pytest.approx(sum(comets) / 6)
        assert avg[name]["average_of"] == sorted(TEST_SETS)
    assert {n for n, r in avg.items() if r["pareto"]} == {"small", "mid"}  # big: larger and worse on average
    acl = {r["run"]: r for r in rows if r["testset"] == "acl"}
    assert {n for n, r in acl.items() if r["pareto"]} == {"small", "mid", "big"}  # big is best on acl
    tv = {r["run"]: r for r in rows if r["testset"] == "tvseries"}
    assert {n for n, r in tv.items() if r["pareto"]} == {"partial"}  # smaller and better than all on tvseries
    assert any("partial (en-de) is not in the average: scored on 1 of 6 test sets" in n for n in rec["notes"])
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| bin |" not in md and "best in bin" not in md and "Bins (" not in md
    assert "| mid | en-de | average of 6 | 900.0 MB |" in md and "the 2026 ranking" in md
    png = out / report.PLOT_NAME
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert colour_pixels(png, (0.839, 0.153, 0.157)) > 500  # frontier
    assert colour_pixels(png, (0.855, 0.647, 0.125)) == 0  # no best-in-bin rings
    from matplotlib.image import imread

    h, w = imread(str(png)).shape[:2]
    assert w > h * 1.2 and h > 1000  # 7 panels (6 test sets + average) in a 3-column grid


def bf16_copy(src, dst):
    """The kit model stored in bfloat16: a second real model, half the weight bytes."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    st = dst / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(st)).items()},
              str(st), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    for c in (cfg, cfg.get("text_config") or {}, cfg.get("audio_config") or {}):
        for key in ("torch_dtype", "dtype"):
            if key in c:
                c[key] = "bfloat16"
    cfg["dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_report_2027_uses_the_torch_save_measure(kit, tmp_path, capsys):

    import torch

    from iwslt_mc.modelio import load_model

    fp32 = tmp_path / "fp32"
    (fp32 / "model").parent.mkdir(parents=True)
    import shutil

    shutil.copytree(kit / "model", fp32 / "model")
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    bf16_copy(kit / "model", bf16 / "model")
    for d, q in ((fp32, 0.8), (bf16, 0.79)):
        scores_json(d / "scores-acl.json", "en-de", 30.0, 55.0, comet=q, testset="acl")
        scores_json(d / "scores-tv.json", "en-de", 20.0, 45.0, comet=q - 0.1, testset="tvseries")
    assert cli.main(["report", str(fp32), str(bf16), "--out", str(tmp_path / "r27")]) == 0  # default edition: 2027
    out = capsys.readouterr().out
    assert "bin" not in out.split("\n", 3)[2].lower()
    rec = json.loads((tmp_path / "r27" / "report.json").read_text(encoding="utf-8"))
    assert rec["edition"] == "2027" and rec["size_measure"] == "torch_save_bytes"
    sizes = {r["run"]: r["bytes"] for r in rec["rows"]}
    from iwslt_mc.sizing import sizer, torchsave

    for name, d in (("fp32", fp32), ("bf16", bf16)):
        # the organizers' measure (their one-GPU load; computed from metadata, proven in test_sizer), and on
        # a CPU a real torch.save to a file named like their temporary file gives its CPU figure exactly
        ts = sizer.measure(d / "model", None).torch_save
        path = tmp_path / f"{torchsave.ORGANIZERS_ARCHIVE}.pt"
        torch.save(load_model(d / "model", device="cpu").state_dict(), path)
        assert sizes[name] == ts.bytes and ts.bytes_cpu == path.stat().st_size
    assert sizes["bf16"] < sizes["fp32"]
    avg = {r["run"]: r for r in rec["rows"] if r["testset"] == "average"}
    assert set(avg) == {"fp32", "bf16"} and all(r["pareto"] for r in avg.values())  # smaller vs better
    assert "GiB" in (tmp_path / "r27" / "report.md").read_text() or "MiB" in (tmp_path / "r27" / "report.md").read_text()
    assert (tmp_path / "r27" / report.PLOT_NAME).stat().st_size > 10_000
