"""The catalogue's claims on the full-size architecture: a sparse Qwen2-Audio-7B-Instruct placeholder
(real config and safetensors header, no weights) and `build --dry-run` (planner only, nothing runs)."""

import json

import pytest

from iwslt_mc.cli import main


@pytest.fixture(scope="module")
def full_base(tmp_path_factory):
    from iwslt_mc.planner import Spec, predict, write_placeholder

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
    assert main(["build", recipe, "--lang", "en-de", "--base", str(full_base), *data, "--dry-run", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["prediction"]
    assert (pred["bytes"], pred["params"], pred["bin"]) == (bytes_, params, None)
    assert main(["build", recipe, "--lang", "en-de", "--base", str(full_base), *data, "--dry-run"]) == 0
    assert "NOT ELIGIBLE" in capsys.readouterr().out


def test_recipe_c_without_vocabulary_trimming_data_is_refused_before_work(full_base):
    # recipe-c trims the vocabulary to the data's tokens: without --data the build refuses at once
    assert main(["build", "recipe-c", "--lang", "en-de", "--base", str(full_base), "--dry-run"]) == 2
