"""The catalogue's claims on the full-size architecture: a sparse Qwen2-Audio-7B-Instruct placeholder
(real config and safetensors header, no weights) and `build --dry-run` (planner only, nothing runs)."""

import json

import pytest

from iwslt_mc.cli import main


@pytest.fixture(scope="module")
def full_base(tmp_path_factory):
    from iwslt_mc.planning.planner import Spec, predict, write_placeholder

    d = tmp_path_factory.mktemp("full") / "Qwen2-Audio-7B-Instruct"
    write_placeholder(d, predict(Spec()))
    return d


@pytest.mark.parametrize("recipe,bytes_,params", [
    ("quantize-only", 6_242_336_155, 8_397_094_912),
    ("quantize-only-int8", 9_690_929_025, 8_397_094_912),
    ("recipe-a", 6_242_336_155, 8_397_094_912),
    ("recipe-b", 5_406_694_459, 6_777_929_728),
])
def test_published_recipes_land_in_no_bin(full_base, recipe, bytes_, params, capsys):
    data = ["--data", str(full_base.parent)]  # only checked to exist: a dry run reads no data for these recipes
    argv = ["build", recipe, "--lang", "en-de", "--base", str(full_base), *data, "--dry-run", "--edition", "2025"]
    assert main([*argv, "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["prediction"]
    assert (pred["bytes"], pred["params"], pred["bin"]) == (bytes_, params, None)
    assert main(argv) == 0
    assert "NOT ELIGIBLE" in capsys.readouterr().out


def _tree(d):
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*"))}


def _refused(args, out, full_base, capsys) -> str:
    """Runs ``build`` expecting a refusal: exit 2, one error line, no --out directory, the base untouched."""
    base_before = _tree(full_base.parent)
    capsys.readouterr()
    assert main(["build", *args, "--lang", "en-de", "--base", str(full_base), "--out", str(out)]) == 2
    assert not out.exists()
    assert _tree(full_base.parent) == base_before
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("iwslt-mc build: error: ")]
    assert len(errors) == 1, captured.err
    return errors[0].removeprefix("iwslt-mc build: error: ")


def test_recipe_c_without_data_is_refused_before_work(full_base, tmp_path, capsys):
    # a dry run and a real build on the full-size base: the first stage that needs data is named
    from iwslt_mc.recipes import recipe_path

    path = recipe_path("recipe-c")
    line = path.read_text("utf-8").splitlines().index("  - id: ft-full") + 1
    for extra in (["--dry-run"], []):
        msg = _refused(["recipe-c", *extra], tmp_path / "out", full_base, capsys)
        assert msg == f"{path}:{line}: stage ft-full needs data 'acl6060': give --data PATH"


def test_recipe_c_without_vocabulary_trimming_data_is_refused_before_work(full_base, tmp_path, capsys):
    # recipe-c with trim-vocab reading its own data set, which is not given: every stage before it has
    # its data, and the build still refuses before the first of them starts
    from iwslt_mc.recipes import recipe_path

    text = recipe_path("recipe-c").read_text("utf-8")
    lines = text.splitlines()
    line = lines.index("  - id: trim-vocab") + 1
    assert lines[line + 1] == "    data: [acl6060]"
    lines[line + 1] = "    data: [vocab]"
    recipe = tmp_path / "recipe-c-vocab.yaml"
    recipe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    msg = _refused([str(recipe), "--condition", "unconstrained", "--data", str(full_base.parent)],
                   tmp_path / "out", full_base, capsys)
    assert msg == f"{recipe}:{line}: stage trim-vocab needs data 'vocab': give --data vocab=PATH"
