"""`iwslt-mc plan --frontier`: a depth x width family of a recipe with predicted sizes; written variants
build to the predicted size; built and scored runs are marked Pareto-optimal by the report's code."""

from __future__ import annotations

import json

import pytest

from iwslt_mc.planning import frontier
from iwslt_mc.sizing import sizer
from iwslt_mc.cli import main

# Option values are the 7B's, scaled to the kit as `build --smoke` scales them; no training, so fast.
TEMPLATE = """\
# frontier test template
# Run:   iwslt-mc build t.yaml --lang en-de --base KIT
name: tmpl
stages:
  - id: prune-llm
    stage: prune-layers
    options: {strategy: top, remove: 16}
  - id: prune-width
    stage: prune-hidden
    options: {llm_ratio: 0.5, audio_ratio: 0.5}
  - id: prune-ffn
    stage: prune-ffn
    options: {llm_width: 5504, audio_width: 2560}
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    p = tmp_path_factory.mktemp("tmpl") / "tmpl.yaml"
    p.write_text(TEMPLATE)
    return p


def test_family_kinds_sizes_and_written_recipes(kit, template, tmp_path, capsys):
    fam = frontier.plan_family(str(template), str(kit / "model"), depths=(1, 0.5), widths=(1, 0.5, 0.25))
    assert len(fam) == 6
    by = {(v.depth, v.width): v for v in fam}
    assert by[(1, 1)].kind == "base" and by[(0.5, 1)].kind == "depth" and by[(1, 0.5)].kind == "width"
    assert by[(0.5, 0.25)].kind == "both"
    sizes = [v.prediction["bytes"] for v in fam]
    assert sizes == sorted(sizes)
    for d in (1, 0.5):  # narrower is smaller at every depth, shallower at every width
        assert by[(d, 1)].prediction["bytes"] > by[(d, 0.5)].prediction["bytes"] > by[(d, 0.25)].prediction["bytes"]
    for w in (1, 0.5, 0.25):
        assert by[(1, w)].prediction["bytes"] > by[(0.5, w)].prediction["bytes"]
    dims = by[(0.5, 0.5)].prediction["dims"]
    assert (dims["llm_layers"], dims["hidden"], dims["heads"], dims["audio_hidden"], dims["ffn_dim"]) == (2, 32, 2, 32, 64)  # 88 rounded down to a multiple of 64 (prune-ffn multiple_of)
    assert [e.stage for e in by[(1, 1)].recipe.stages] == []  # nothing varied is left: the base itself
    paths = frontier.write_variants(fam, tmp_path / "v", template="tmpl", base=str(kit / "model"))
    with pytest.raises(Exception, match="already exists"):
        frontier.write_variants(fam, tmp_path / "v", template="tmpl", base=str(kit / "model"))
    p = tmp_path / "v" / "tmpl-d50-w25.yaml"
    assert p in paths
    assert main(["build", str(p), "--lang", "en-de", "--base", str(kit / "model"), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"]["bytes"] == by[(0.5, 0.25)].prediction["bytes"]


def _scores(path, chrf):
    metrics = {"bleu": {"name": "BLEU", "score": chrf / 2, "signature": "tok:13a"},
               "chrf": {"name": "chrF2++", "score": chrf, "signature": "nw:2"}}
    path.write_text(json.dumps({"format": 1, "lang": "en-de", "testset": "tst", "metrics": metrics}), encoding="utf-8")


def test_built_and_scored_variants_are_marked_on_the_frontier(kit, template, tmp_path, capsys):
    base = str(kit / "model")
    common = ["plan", "--frontier", "--base", base, "--recipe", str(template), "--depths", "1,0.5", "--widths", "0.5,0.25"]
    assert main([*common, "--write", str(tmp_path / "v"), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["variants"]
    assert [v["name"] for v in planned] == ["tmpl-d50-w25", "tmpl-d100-w25", "tmpl-d50-w50", "tmpl-d100-w50"]
    runs = []
    # quality by size rank: the third smallest is beaten by the second (smaller and better)
    for v, chrf in zip(planned, (30.0, 50.0, 40.0, 60.0)):
        out = tmp_path / "runs" / v["name"]
        assert main(["build", str(tmp_path / "v" / f"{v['name']}.yaml"), "--lang", "en-de", "--base", base,
                     "--out", str(out)]) == 0
        _scores(out / "scores-tst.json", chrf)
        runs.append(str(out))
    capsys.readouterr()
    assert main([*common, "--runs", *runs, "--metric", "chrf", "--json"]) == 0
    got = {v["name"]: v for v in json.loads(capsys.readouterr().out)["variants"]}
    marks = {n: v["measured"][0]["pareto"] for n, v in got.items()}
    assert marks == {"tmpl-d50-w25": True, "tmpl-d100-w25": True, "tmpl-d50-w50": False, "tmpl-d100-w50": True}
    for v in got.values():  # unquantized: the measured size is the predicted one, exactly, in the edition's measure
        m = v["measured"][0]
        rep = sizer.measure(f"{tmp_path}/runs/{v['name']}/model")
        assert v["prediction"]["size_measure"] == "torch_save_bytes"  # the default edition, 2027
        assert m["bytes"] == v["prediction"]["bytes"] == rep.torch_save.bytes
        assert v["prediction"]["safetensors_bytes"] == rep.bytes
    assert main([*common, "--runs", *runs, "--metric", "chrf"]) == 0
    text = capsys.readouterr().out
    assert "60.00 *" in text and "40.00 *" not in text and "40.00" in text


def test_frontier_errors(kit, tmp_path, capsys):
    assert main(["plan", "--frontier"]) == 2
    assert "--frontier needs --base" in capsys.readouterr().err
    assert main(["plan", "--frontier", "--base", str(kit / "model"), "--depths", "0.5,2"]) == 2
    assert "every fraction must be in (0, 1]" in capsys.readouterr().err
    t = tmp_path / "t.yaml"
    t.write_text("name: t\n# Run: iwslt-mc build t\nstages:\n  - id: q\n    stage: quantize\n")
    assert main(["plan", "--frontier", "--base", str(kit / "model"), "--recipe", str(t), "--widths", "0.5"]) == 2
    assert "no prune-hidden stage" in capsys.readouterr().err
