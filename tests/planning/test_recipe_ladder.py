"""The Bin4/Bin5 ladder: listed, built with --smoke on the kit and reloaded, predicted in their bin on the
full-size placeholder; the catalogue table equals the planner's; `plan --target Bin4|Bin5` specs are
buildable by the stages."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from iwslt_mc.cli import main
from iwslt_mc.families.qwen2_audio.plan import qwen2_audio_7b_config

LADDER = [("recipe-bin4", "Bin4"), ("recipe-bin5", "Bin5")]
ROOT = Path(__file__).resolve().parents[2]


def test_ls_lists_the_ladder(capsys):
    assert main(["ls", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert {"recipe-bin4", "recipe-bin5"} <= set(names)


@pytest.mark.parametrize("name,_bin", LADDER)
def test_smoke_build_on_the_kit_reloads(kit, tmp_path, name, _bin):
    from iwslt_mc import modelio
    from iwslt_mc.sizing import sizer
    from iwslt_mc.build import build
    from iwslt_mc.recipes import load_recipe

    res = build(load_recipe(name), lang="en-de", base=str(kit / "model"), data={"acl6060": str(kit / "data")},
                condition="constrained", out=tmp_path / "b", smoke=True, log=lambda *a: None)
    ids = [s["id"] for s in res.stages]
    assert ids == ["ft-full", "distill", "prune-llm", "prune-audio", "ft-depth", "prune-width", "prune-ffn",
                   "trim-vocab", "ft-pruned", "quantize"]
    cfg = json.loads((res.model_dir / "config.json").read_text())
    ratio = {"recipe-bin4": 0.5, "recipe-bin5": 0.3125}[name]
    assert cfg["text_config"]["hidden_size"] == round(64 * ratio)
    assert cfg["audio_config"]["d_model"] == int(64 * ratio) // 16 * 16
    assert cfg["text_config"]["num_hidden_layers"] == 2 and cfg["audio_config"]["encoder_layers"] == 1
    # compressed-tensors 4-bit of every linear layer, lm_head and the embeddings, in groups that divide the
    # kit's scaled widths (bin4: 32, 64 and 32 -> 32; bin5: 20, 32, 16, 55 and 40 -> 1)
    q = cfg["quantization_config"]
    assert q["quant_method"] == "compressed-tensors"
    groups = q["config_groups"].values()
    assert {(g["weights"]["num_bits"], g["weights"]["group_size"]) for g in groups} == {
        (4, {"recipe-bin4": 32, "recipe-bin5": 1}[name])}
    targets = [t for g in groups for t in g["targets"]]
    assert "Linear" in targets and any("embed_tokens" in t for t in targets) and q["ignore"] == []  # lm_head too
    assert res.size["bytes"] == res.prediction["bytes"]  # the planner is exact for ct
    model = modelio.load_model(res.model_dir, device="cpu")
    assert model.num_parameters() == sizer.measure(res.model_dir).params == res.size["params"]
    prov = json.loads((res.model_dir / "provenance.json").read_text())
    assert "prune-hidden" in [s["stage"] for s in prov["stages"]]


@pytest.fixture(scope="module")
def full_base(tmp_path_factory, kit):
    """A sparse full-size placeholder with the kit's tokenizer and processor (trim-vocab counts its tokens)."""
    from iwslt_mc.planning.planner import Spec, predict, write_placeholder

    d = tmp_path_factory.mktemp("full") / "Qwen2-Audio-7B-Instruct"
    write_placeholder(d, predict(Spec()))
    for f in (kit / "model").iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "provenance.json"):
            shutil.copy2(f, d / f.name)
    return d


@pytest.mark.parametrize("name,bin_", LADDER)
def test_full_size_dry_run_predicts_the_bin(full_base, kit, name, bin_, capsys):
    argv = ["build", name, "--lang", "en-de", "--base", str(full_base), "--data", str(kit / "data"), "--dry-run",
            "--edition", "2025"]
    assert main([*argv, "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["prediction"]
    assert pred["bin"] == bin_
    d = pred["dims"]
    want = {"recipe-bin4": (14, 8, 2048, 16, 640, 5504, 2560), "recipe-bin5": (12, 8, 1280, 10, 384, 3456, 1600)}[name]
    assert (d["llm_layers"], d["audio_layers"], d["hidden"], d["heads"], d["audio_hidden"], d["ffn_dim"],
            d["audio_ffn_dim"]) == want
    assert d["vocab"] < 2000  # the kit's tokenizer and data: the catalogue covers 16k and 32k


def test_frontier_of_the_ct_template_fits_its_group_size(full_base):
    # recipe-bin4 quantizes with ct in groups of 128; the frontier's narrower variants get the largest
    # power of two that divides their widths (3/8: audio 448 -> 64; 3/4: audio 960, FFN 8256 -> 64)
    from iwslt_mc.planning import frontier

    fam = frontier.plan_family("recipe-bin4", str(full_base), depths=(0.5,), widths=(0.75, 0.5, 0.375))
    groups = {v.width: [e.options["group_size"] for e in v.recipe.stages if e.stage == "quantize"] for v in fam}
    assert groups == {0.75: [64], 0.5: [128], 0.375: [64]}
    for v in fam:
        assert v.prediction["bin"] is not None and v.prediction["bytes"] > 0


def _catalogue_module():
    spec = importlib.util.spec_from_file_location("recipe_catalogue", ROOT / "tools" / "recipe_catalogue.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_catalogue_table_is_the_planners():
    cat = _catalogue_module()
    preds = cat.predictions()
    text = (ROOT / "recipes" / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- catalogue:begin -->\n", 1)[1].split("\n<!-- catalogue:end -->", 1)[0]
    assert block.splitlines() == cat.rows(preds)
    gemma = cat.predictions(family="gemma4")
    block = text.split("<!-- gemma4-catalogue:begin -->\n", 1)[1].split("\n<!-- gemma4-catalogue:end -->", 1)[0]
    assert block.splitlines() == cat.gemma4_rows(gemma)
    omni = cat.predictions(family="qwen2_5_omni")
    block = text.split("<!-- qwen2_5_omni-catalogue:begin -->\n", 1)[1].split("\n<!-- qwen2_5_omni-catalogue:end -->", 1)[0]
    assert block.splitlines() == cat.gemma4_rows(omni)
    by = {p["recipe"]: p for p in preds}
    from iwslt_mc.recipes import RECIPES

    # every recipe is in a table
    assert set(by) | {p["recipe"] for p in gemma} | {p["recipe"] for p in omni} == {n for n, _ in RECIPES}
    for name, bin_ in LADDER:  # in the bin at 16k and at 32k tokens
        assert by[name]["bin"] == [bin_, bin_]


def _stages_for(pred, base):
    """A recipe's stages that produce ``pred``'s dims from the 7B (what `--target` promises)."""
    from iwslt_mc.recipes import StageEntry

    d = pred.dims
    return [
        StageEntry("layers", "prune-layers", {"llm_layers": list(range(1, base["llm_layers"] - d["llm_layers"] + 1)),
                                              "audio_layers": list(range(base["audio_layers"] - d["audio_layers"]))}),
        StageEntry("width", "prune-hidden", {"llm_hidden": d["hidden"], "llm_heads": d["heads"], "audio_hidden": d["audio_hidden"]}),
        StageEntry("ffn", "prune-ffn", {"llm_width": d["ffn_dim"], "audio_width": d["audio_ffn_dim"]}),
        StageEntry("quantize", "quantize", {"method": "nf4", "double_quant": True, "skip": []}),
    ]


@pytest.mark.parametrize("bin_", ["Bin4", "Bin5"])
def test_target_small_bins_lists_buildable_narrow_specs(bin_, capsys):
    import dataclasses

    from iwslt_mc.planning import planner
    from iwslt_mc.build import spec_for_stages
    from iwslt_mc.stages import make_stage

    assert main(["plan", "--target", bin_, "--json"]) == 0
    specs = json.loads(capsys.readouterr().out)["specs"]
    narrow = [s for s in specs if s["dims"]["hidden"] < 4096]
    assert narrow and all(s["bin"] == bin_ for s in specs)
    cfg = qwen2_audio_7b_config()
    base = planner.base_dims(cfg)
    for s in narrow:
        assert s["dims"]["llm_layers"] >= 4 and s["spec"]["component_precision"]["embed_tokens"] == "bf16"
        pred = planner.predict(planner.Spec(**s["spec"]), cfg)
        stages = _stages_for(pred, base)
        for e in stages:
            make_stage(e.stage, e.options)  # valid options
        built, _ = spec_for_stages(stages, cfg, base="", lang="en-de", data={}, condition="constrained")
        built = dataclasses.replace(built, vocab=pred.dims["vocab"])  # trim-vocab's count depends on the data
        assert planner.predict(built, cfg).bytes == pred.bytes == s["bytes"]
