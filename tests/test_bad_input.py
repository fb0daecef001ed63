"""Bad input (issue 15, part 4): one line naming the file and the problem, a non-zero exit, nothing lost.

Each case asserts the exit code and the first line of the message. The CLI runs in-process
(``iwslt_mc.cli.main`` with capsys) except where a process must be killed.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from iwslt_mc.cli import main
from iwslt_mc.recipes import load_recipe


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def first_line(err: str, prefix: str = "iwslt-mc ") -> str:
    """The message's first line (library noise printed before ours, e.g. bitsandbytes' kernel notice, skipped)."""
    lines = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert lines, err
    return lines[0]


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ---------------------------------------------------------------- another architecture

@pytest.fixture
def bert_dir(tmp_path):
    d = tmp_path / "bert-base"
    d.mkdir()
    write(d / "config.json", json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768,
                                         "num_hidden_layers": 12, "vocab_size": 30522}))
    header = b'{"__metadata__":{"format":"pt"}}'
    write(d / "model.safetensors", len(header).to_bytes(8, "little") + header)
    return d


@pytest.mark.parametrize("extra", [[], ["--dry-run"], ["--dry-run", "--smoke", "--json"]])
def test_build_refuses_another_architecture(kit, bert_dir, tmp_path, capsys, extra):
    out = tmp_path / "run"
    rc, stdout, err = cli(capsys, "build", "recipe-b", "--lang", "en-de", "--base", bert_dir, "--data", kit / "data",
                          "--out", out, *extra)
    assert rc == 2 and stdout == ""
    assert first_line(err).startswith(f"iwslt-mc build: error: {bert_dir}: not a Qwen2-Audio model (model_type 'bert'")
    assert not out.exists()


# ---------------------------------------------------------------- unreadable recipes

def test_recipe_not_utf8(kit, tmp_path, capsys):
    recipe = write(tmp_path / "latin1.yaml", b"# r\xe9sum\xe9\nname: x\nstages:\n  - stage: quantize\n")
    rc, _, err = cli(capsys, "build", recipe, "--lang", "en-de", "--base", kit / "model", "--dry-run")
    assert rc == 2
    assert first_line(err) == (f"iwslt-mc build: error: {recipe}: not UTF-8 text (invalid continuation byte at "
                               "byte 3); save the recipe as UTF-8")


@pytest.mark.parametrize("name", ["recipes", "mine.yaml"])
def test_recipe_path_is_a_directory(kit, tmp_path, capsys, name):
    d = tmp_path / name
    d.mkdir()
    rc, _, err = cli(capsys, "build", d, "--lang", "en-de", "--base", kit / "model", "--dry-run")
    assert rc == 2
    assert first_line(err) == (f"iwslt-mc build: error: {d}: is a directory, not a recipe file "
                               "(give a recipe .yaml or a name from iwslt-mc ls)")


# ---------------------------------------------------------------- one schema, one reading

QUANTIZE = "name: q\nstages:\n  - stage: quantize\n    options: {{method: nf4, skip: {skip}}}\n"


def test_list_option_written_as_a_string_reads_as_the_stage_reads_it(kit, tmp_path, capsys):
    """``skip: lm_head`` was a list of 7 characters to the planner (-18% size error) and ``[lm_head]`` to the stage."""
    as_string = write(tmp_path / "string.yaml", QUANTIZE.format(skip="lm_head"))
    as_list = write(tmp_path / "list.yaml", QUANTIZE.format(skip="[lm_head]"))
    assert load_recipe(str(as_string)).stages[0].options["skip"] == ["lm_head"]
    preds = []
    for recipe in (as_string, as_list):
        rc, out, _ = cli(capsys, "build", recipe, "--lang", "en-de", "--base", kit / "model", "--dry-run", "--json")
        assert rc == 0
        plan = json.loads(out)
        assert plan["stages"][0]["options"]["skip"] == ["lm_head"]
        preds.append(plan["prediction"]["bytes"])
    assert preds[0] == preds[1]
    # the real build of the string form lands where the planner said
    rc, out, _ = cli(capsys, "build", as_string, "--lang", "en-de", "--base", kit / "model", "--out", tmp_path / "b",
                     "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["size"]["predicted_bytes"] == preds[0]
    assert abs(res["size"]["prediction_error"]) < 0.005, res["size"]


def test_list_option_of_the_wrong_shape_is_an_error(kit, tmp_path, capsys):
    recipe = write(tmp_path / "r.yaml", QUANTIZE.format(skip="{lm_head: 1}"))
    rc, _, err = cli(capsys, "build", recipe, "--lang", "en-de", "--base", kit / "model", "--dry-run")
    assert rc == 2
    assert first_line(err) == (f"iwslt-mc build: error: {recipe}:3: stage quantize: option 'skip': expected a string, "
                               "got {'lm_head': 1}")


# ---------------------------------------------------------------- stage: killed runs, existing outputs

def test_killed_stage_leaves_nothing_the_next_run_does_not_clean(kit, tmp_path, capsys, kill9):
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "iwslt_mc", "stage", "quantize", "--in", str(kit / "model"), "--out", str(out)]
    kill9(cmd, lambda: list(tmp_path.glob(".q.*.partial")), 120, 0.01, "stage finished before it could be killed")
    assert list(tmp_path.glob(".q.*.partial")) and not out.exists()  # what a kill -9 leaves

    rc, stdout, _ = cli(capsys, "stage", "quantize", "--in", kit / "model", "--out", out)
    assert rc == 0 and stdout.splitlines()[-1].startswith(f"written:    {out} ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]

    rc, _, err = cli(capsys, "stage", "quantize", "--in", kit / "model", "--out", out)
    assert rc == 2
    assert first_line(err) == (f"iwslt-mc stage: error: {out}: already exists (rerun with --overwrite to replace it, "
                               "or choose another --out)")
    rc, _, _ = cli(capsys, "stage", "quantize", "--in", kit / "model", "--out", out, "--overwrite")
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


# ---------------------------------------------------------------- data without ACL 60/60's eval split

def test_data_without_eval_split_warns_in_the_log_and_provenance(kit, tmp_path, capsys):
    """A user who points --data at ACL 60/60's dev split alone (a partial download, or eval kept back on purpose)
    gets a warning, not an error: it may be meant, but never silent. The published split merges dev and eval."""
    data = tmp_path / "dev-only"
    data.mkdir()
    shutil.copy(kit / "data" / "dev.parquet", data / "dev.parquet")
    out = tmp_path / "t"
    rc, _, err = cli(capsys, "stage", "trim-vocab", "--in", kit / "model", "--out", out, "--data", data,
                     "--set", "split=train")
    assert rc == 0
    expected = (f"warning: {data}: no 'eval' split: training and held-out examples come from 'dev' alone "
                "(8 examples; ACL 60/60's published split merges dev and eval)")
    assert first_line(err, "warning:") == expected
    assert err.count(expected) == 1
    record = json.loads((out / "provenance.json").read_text())["stages"][-1]
    assert record["warnings"] == [expected.removeprefix("warning: ")]

    # the full data (dev and eval) gives no warning
    rc, _, err = cli(capsys, "stage", "trim-vocab", "--in", kit / "model", "--out", tmp_path / "t2",
                     "--data", kit / "data", "--set", "split=train")
    assert rc == 0 and "warning:" not in err
    assert "warnings" not in json.loads((tmp_path / "t2" / "provenance.json").read_text())["stages"][-1]


# ---------------------------------------------------------------- build --dry-run --smoke

def test_dry_run_smoke_shows_what_the_smoke_run_runs(kit, capsys):
    from iwslt_mc import build as b
    from iwslt_mc.recipes import _strip_refs
    from iwslt_mc.stages import make_stage

    argv = ["build", "recipe-b", "--lang", "en-de", "--base", kit / "model", "--data", kit / "data", "--dry-run", "--smoke"]
    rc, out, _ = cli(capsys, *argv)
    assert rc == 0
    assert out.splitlines()[0] == "--smoke: options below are those that will run (steps, segments and layer counts scaled down)"
    rc, out, _ = cli(capsys, *argv, "--json")
    assert rc == 0
    plan = json.loads(out)
    shown = {s["id"]: s["options"] for s in plan["stages"]}
    assert shown["ft-full"]["max_steps"] == 2 and shown["ft-full"]["limit"] == 4
    assert shown["prune"]["heldout"] == 4 and shown["prune"]["remove"] == 1  # 8 of 32 layers -> 1 of the kit's 4
    # every value shown is the one the smoke build gives the stage
    for entry in b.scaled_stages(load_recipe("recipe-b"), str(kit / "model"), smoke=True):
        if entry.when not in (None, "constrained"):
            continue
        ran = make_stage(entry.stage, _strip_refs(entry.options)).with_smoke().options
        for k, v in shown[entry.id].items():
            if not str(v).startswith("@"):
                assert getattr(ran, k) == v, (entry.id, k)
