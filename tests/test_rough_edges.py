"""Issue 29's last rough edges of the CLI: one line for an unclosed --set list, demo options checked before any
work, build's edition default (2027, what it means), `ls`/`stage --list` text from one source, and a full-width
check that reports PASS only when every step ran."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from iwslt_mc.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


# ---------------------------------------------------------------- --set with an unclosed list

@pytest.mark.parametrize("argv,prefix", [
    (["build", "quantize-only", "--lang", "en-de", "--dry-run", "--set", "quantize.skip=[lm_head"],
     "iwslt-mc build: error: --set 'quantize.skip=[lm_head': stage quantize: "),
    (["stage", "quantize", "--in", "x", "--out", "y", "--set", "skip=[lm_head"],
     "iwslt-mc stage: error: stage quantize: "),
])
def test_unclosed_list_in_set_is_one_line(capsys, argv, prefix):
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.strip() == (prefix + "option 'skip': '[lm_head' is not valid YAML (expected ',' or ']', but got "
                           "'<stream end>'); write a list, e.g. [lm_head, audio_tower]")


# ---------------------------------------------------------------- demo checks its options first

@pytest.mark.parametrize("extra,msg", [
    (["--edition", "1999"], "iwslt-mc demo: error: unknown edition '1999' (known: 2025, 2026, 2027)"),
    (["--recipe", "nope"], "iwslt-mc demo: error: unknown recipe 'nope' (shipped: recipe-a, "),
    (["--recipe", "gemma4-large"], "iwslt-mc demo: error: demo --recipe gemma4-large: the recipe is for Gemma 4 "
                                   "models, the demo kit is a Qwen2-Audio model; pick one of its recipes (iwslt-mc ls)"),
])
def test_demo_checks_its_options_before_any_work(tmp_path, capsys, monkeypatch, extra, msg):
    def no_kit(*a, **k):
        raise AssertionError("the kit was built before the options were checked")

    monkeypatch.setattr("iwslt_mc.kit.build_kit", no_kit)
    rc, out, err = cli(capsys, "demo", "--out", tmp_path / "demo", *extra)
    assert rc == 2 and err.startswith(msg) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()  # nothing written


# ---------------------------------------------------------------- build's edition

def test_build_edition_default_is_the_newest_and_says_what_it_means(kit, tmp_path, capsys):
    base = ["build", "quantize-only", "--lang", "en-de", "--base", kit / "model", "--smoke"]
    rc, out, _ = cli(capsys, *base, "--dry-run")
    assert rc == 0
    assert out.splitlines()[-1] == ("predicted: 1,580,194 bytes, 594,304 parameters, edition 2027: no size bins, "
                                    "ranked on the Pareto frontier of quality and size; predicted torch.save 0.002 GiB "
                                    "(1,650,469 bytes)")
    rc, out, _ = cli(capsys, *base, "--dry-run", "--edition", "2025")
    assert rc == 0 and out.splitlines()[-1] == "predicted: 1,580,194 bytes, 594,304 parameters, Bin5"
    rc, out, _ = cli(capsys, *base, "--dry-run", "--edition", "2026")
    assert rc == 0 and out.splitlines()[-1].endswith("edition 2026: no size bins, ranked on the Pareto frontier of "
                                                     "quality and size; size measure: the safetensors bytes")
    rc, _, err = cli(capsys, *base, "--dry-run", "--edition", "1999")
    assert rc == 2 and err.strip() == "iwslt-mc build: error: unknown edition '1999' (known: 2025, 2026, 2027)"
    rc, out, _ = cli(capsys, *base, "--out", tmp_path / "q")
    assert rc == 0
    size = next(ln for ln in out.splitlines() if ln.startswith("size: "))
    assert size == ("size: 1,580,245 bytes, 594,304 parameters, edition 2027: no size bins, ranked on the Pareto "
                    "frontier of quality and size; torch.save 0.002 GiB (1,650,469 bytes)")
    assert "NO BIN" not in out and "4 GB" not in out
    state = json.loads((tmp_path / "q" / "build.json").read_text())
    assert state["edition"] == "2027" and state["final"]["torch_save"]["bytes"] == 1_650_469


# ---------------------------------------------------------------- one source for ls and stage --list

def test_ls_descriptions_are_the_recipe_files_own(capsys):
    import yaml

    from iwslt_mc.recipes import RECIPES, RECIPES_DIR

    rc, out, _ = cli(capsys, "ls", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [n for n, _ in RECIPES]
    for r in rows:
        doc = yaml.safe_load((RECIPES_DIR / Path(r["file"]).name).read_text(encoding="utf-8"))
        assert r["description"] == doc["description"] and r["description"], r["name"]
        assert r["family"] == doc.get("family", "qwen2_audio")
    by = {r["name"]: r["description"] for r in rows}
    # the two the hand-written list contradicted: recipe-bin2 keeps 12 LLM layers, recipe-b-bin1's embeddings stay bf16
    assert "12 LLM layers" in by["recipe-bin2"] and "embeddings" not in by["recipe-b-bin1"]


def test_stage_list_takes_each_stages_docstring(capsys):
    import importlib

    from iwslt_mc.stages import REGISTRY

    rc, out, _ = cli(capsys, "stage", "--list", "--json")
    assert rc == 0
    rows = {r["name"]: r["help"] for r in json.loads(out)}
    assert list(rows) == list(REGISTRY)
    for name, spec in REGISTRY.items():
        doc = importlib.import_module(f"iwslt_mc.stages.{spec.split(':')[0]}").__doc__
        first = " ".join(doc.split("\n\n")[0].split())
        assert rows[name] and first == f"{name}: {rows[name]}", name
    assert rows["drop-vision"] == "remove the vision encoder (and its projector) of a Gemma 4 model."
    rc, out, _ = cli(capsys, "stage", "kd", "--help-options")
    assert out.splitlines()[0] == f"kd: {rows['kd']}"


def test_ls_and_stage_list_import_no_torch():
    code = ("import sys; from iwslt_mc.cli import main\n"
            "assert main(['ls']) == 0 and main(['stage', '--list']) == 0\n"
            "print('HEAVY=' + ','.join(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY=", out


# ---------------------------------------------------------------- tools/check_fullwidth.py

def _check_fullwidth():
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location("check_fullwidth_t", ROOT / "tools" / "check_fullwidth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("case", ["crash-before-any-step", "crash-after-a-step", "no-step", "a-step-failed", "all-ok"])
def test_check_fullwidth_passes_only_when_every_step_ran_and_passed(tmp_path, monkeypatch, capsys, case):
    mod = _check_fullwidth()
    from fullwidth import Step

    def steps(run, work, a):
        if case == "crash-before-any-step":
            raise FileNotFoundError("no such file: base/config.json")
        if case != "no-step":
            run.steps.append(Step("size base"))
        if case == "a-step-failed":
            run.steps.append(Step("decode", ok=False))
        if case == "crash-after-a-step":
            raise RuntimeError("driver bug")

    monkeypatch.setattr(mod, "_steps", steps)
    report = tmp_path / "r.md"
    rc = mod.main(["--out", str(report)])
    meta = json.loads(report.with_suffix(".json").read_text())["meta"]
    want = {"crash-before-any-step": "FAIL: the driver stopped after 0 step(s) (FileNotFoundError: no such file: "
                                     "base/config.json)",
            "crash-after-a-step": "FAIL: the driver stopped after 1 step(s) (RuntimeError: driver bug)",
            "no-step": "FAIL: no step ran",
            "a-step-failed": "FAIL: 1 of 2 steps failed (decode, ...)",
            "all-ok": "PASS"}[case]
    assert meta["result"] == want and f"- result: {want}\n" in report.read_text()
    assert rc == (0 if case == "all-ok" else 1)
