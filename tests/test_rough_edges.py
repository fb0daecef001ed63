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

    monkeypatch.setattr("iwslt_mc.families.qwen2_audio.kit.build_kit", no_kit)
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
                                                     "quality and size; predicted torch.save 0.002 GB (1,650,469 bytes)")
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
    assert rows["drop-vision"] == "remove the vision encoder (and its projector) of a model whose family has one (Gemma 4)."
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


# ---------------------------------------------------------------- --dry-run checks what the run would refuse

def _recipe(tmp_path, stages: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text("name: r\nstages:\n" + stages, encoding="utf-8")
    return p


@pytest.mark.parametrize("stages,line", [
    ("  - id: prune\n    stage: prune-layers\n    options: {llm_layers: [7]}\n",
     "{r}:3: stage prune-layers: llm_layers index 7 out of range (the input of stage prune ({m}) has 4 layers: 0..3)"),
    # the second stage sees the layers the first one left
    ("  - id: p1\n    stage: prune-layers\n    options: {llm_layers: [3]}\n"
     "  - id: p2\n    stage: prune-layers\n    options: {llm_layers: [3]}\n",
     "{r}:6: stage prune-layers: llm_layers index 3 out of range (the input of stage p2 ({m} after 1 earlier stage) "
     "has 3 layers: 0..2)"),
    ("  - id: p1\n    stage: prune-layers\n    options: {strategy: middle, remove: 2}\n"
     "  - id: p2\n    stage: prune-layers\n    options: {strategy: top, remove: 2}\n",
     "{r}:6: stage prune-layers: remove=2 but the input of stage p2 ({m} after 1 earlier stage) has 2 layers: "
     "at most 1 can go (at least one must stay)"),
    ("  - id: ffn\n    stage: prune-ffn\n    options: {llm_width: 64}\n"
     "  - id: ffn2\n    stage: prune-ffn\n    options: {llm_width: 128}\n",
     "{r}:6: stage prune-ffn: llm_width=128 is larger than the current width 64 of the input of stage ffn2 ({m} "
     "after 1 earlier stage)"),
    ("  - id: q\n    stage: quantize\n  - id: ft\n    stage: finetune\n    data: [acl6060]\n    options: {mode: full}\n",
     "{r}:5: stage finetune: the input of stage ft ({m} after 1 earlier stage) is quantized; full fine-tuning needs "
     "an unquantized model (use mode lora or qlora)"),
    ("  - id: q\n    stage: quantize\n    options: {skip: [lm_haed]}\n",
     "{r}:3: stage quantize: skip 'lm_haed' matches no module of the input of stage q ({m}) (e.g. lm_head, "
     "audio_tower, multi_modal_projector, language_model.layers.0.mlp)"),
])
def test_dry_run_runs_every_config_check_of_every_stage(kit, tmp_path, capsys, stages, line):
    r = _recipe(tmp_path, stages)
    m = kit / "model"
    want = "iwslt-mc build: error: " + line.format(r=r, m=m)
    for extra in (["--dry-run"], ["--out", tmp_path / "out"]):  # a real build refuses it before any work too
        rc, out, err = cli(capsys, "build", r, "--lang", "en-de", "--base", m, "--data", kit / "data", *extra)
        assert rc == 2 and err.strip() == want
    assert not (tmp_path / "out").exists()


def test_dry_run_refuses_a_misspelt_skip_of_a_shipped_recipe(kit, capsys):
    rc, _, err = cli(capsys, "build", "recipe-b", "--lang", "en-de", "--base", kit / "model", "--data", kit / "data",
                     "--smoke", "--dry-run", "--set", "quantize.skip=[lm_haed]")
    from iwslt_mc.recipes import RECIPES_DIR

    assert rc == 2 and err.strip() == (
        f"iwslt-mc build: error: {RECIPES_DIR / 'recipe-b.yaml'}:43: stage quantize: skip 'lm_haed' matches no module "
        f"of the input of stage quantize ({kit / 'model'} after 5 earlier stages) (e.g. lm_head, audio_tower, "
        "multi_modal_projector, language_model.layers.0.mlp)")


# ---------------------------------------------------------------- every recipe's header command builds

# recipes whose --smoke build on their kit another test runs (with more assertions about the result)
BUILT_ELSEWHERE = {"recipe-bin4": "test_recipe_ladder.py", "recipe-bin5": "test_recipe_ladder.py",
                   "quantize-only": "test_build.py", "gemma4-medium": "test_gemma4_recipes.py",
                   "gemma4-small": "test_gemma4_recipes.py", "gemma4-tiny": "test_gemma4_recipes.py",
                   **{f"recipe-2027-{r}": "test_quant_packed.py" for r in ("4gib", "2gib", "1gib", "05gib")},
                   "qwen2_5_omni-medium": "test_family_qwen2_5_omni.py", "qwen2_5_omni-int8": "test_family_qwen2_5_omni.py"}
# ordered so that each shares the longest run of finished stages with one built before it (see _seed)
BUILT_HERE = ["recipe-b", "recipe-b-bin1", "recipe-a", "recipe-bin2", "recipe-d-replace", "recipe-c", "recipe-c-kd",
              "recipe-c-2step", "quantize-only-int8", "gemma4-large"]


def _header_command(name: str) -> list[str]:
    """The `iwslt-mc build ...` of the recipe file's `# Try:` line, as arguments."""
    import shlex

    from iwslt_mc.recipes import recipe_path

    try_line = next(ln for ln in recipe_path(name).read_text(encoding="utf-8").splitlines() if ln.startswith("# Try:"))
    cmd = try_line[len("# Try:"):].split("&&")[-1].split()
    assert cmd[:2] == ["iwslt-mc", "build"] and cmd[2] == name and "--smoke" in cmd, try_line
    return shlex.split(" ".join(cmd[1:]))


def test_every_listed_recipe_has_a_smoke_build_test():
    from iwslt_mc.recipes import list_recipes

    assert sorted(r["name"] for r in list_recipes()) == sorted([*BUILT_HERE, *BUILT_ELSEWHERE])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Build directories of this module's recipes: a later recipe starts from the stages an earlier one finished
    with the same stages before them (all Qwen2-Audio recipes but two start with the same fine-tuning and
    distillation), continued with --resume, which reruns any stage whose fingerprint differs."""
    return {"dir": tmp_path_factory.mktemp("recipes"), "built": {}}


def _active_keys(name: str, base: Path) -> list[str]:
    from iwslt_mc.build import scaled_stages
    from iwslt_mc.recipes import load_recipe

    return [json.dumps([e.id, e.stage, e.options, e.data], sort_keys=True, default=str)
            for e in scaled_stages(load_recipe(name), str(base), smoke=True) if e.when in (None, "constrained")]


def _seed(pool: dict, keys: list[str], out: Path) -> int:
    import shutil

    best, src = 0, None
    for other_keys, other_out in pool["built"].values():
        n = next((i for i, (a, b) in enumerate(zip(keys, other_keys)) if a != b), min(len(keys), len(other_keys)))
        if n > best:
            best, src = n, other_out
    if src is None:
        return 0
    out.mkdir(parents=True)
    shutil.copy2(src / "build.json", out / "build.json")
    for d in sorted((src / "stages").iterdir())[:best]:
        shutil.copytree(d, out / "stages" / d.name)
    return best


@pytest.mark.parametrize("name", BUILT_HERE)
def test_recipe_header_command_builds_with_smoke_on_its_kit(kit, gemma_kit, pool, capsys, name):
    args = _header_command(name)
    kits = {"/tmp/kit/": f"{kit}/", "/tmp/gkit/": f"{gemma_kit[0]}/"}
    for k, v in kits.items():
        args = [a.replace(k, v) for a in args]
    base = Path(args[args.index("--base") + 1])
    assert base.is_dir(), args
    keys = _active_keys(name, base)
    out = pool["dir"] / name
    reused = _seed(pool, keys, out)
    rc, stdout, _ = cli(capsys, *args, "--out", out, *(["--resume"] if reused else []))
    assert rc == 0
    state = json.loads((out / "build.json").read_text())
    assert state["status"] == "done" and len(state["stages"]) == len(keys)
    assert (out / "model" / "config.json").is_file()
    assert next(ln for ln in stdout.splitlines() if ln.startswith("size: ")).endswith(")")
    pool["built"][name] = (keys, out)
