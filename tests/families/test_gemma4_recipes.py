"""Gemma 4 recipes and what they rest on: recipe families (ls, refusal across families), `plan RECIPE` on
the 12B layout, the planner's title and component names, the organizers' torch.save measure, audio-layer
removal, and the gemma4_unified kit through plan/size/decode/prune."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from iwslt_mc.cli import main

GEMMA_RECIPES = ("gemma4-large", "gemma4-medium", "gemma4-small", "gemma4-tiny")
# the 2027 ladder at 12B (torch.save GiB, 16k-token vocabulary): recipe -> (rung, LLM layers kept)
LADDER = {"gemma4-medium": (4, 36), "gemma4-small": (2, 17), "gemma4-tiny": (1, 8)}


@pytest.fixture(scope="module")
def g12(tmp_path_factory):
    """A config-only directory of the gemma-4-12B-it layout (tools/gemma4_12b_config.py)."""
    from iwslt_mc.families.gemma4 import gemma4_12b_config

    d = tmp_path_factory.mktemp("g12") / "gemma-4-12B-it"
    d.mkdir()
    (d / "config.json").write_text(gemma4_12b_config().to_json_string(use_diff=False))
    return d


def _real_torch_save_bytes(model_dir) -> int:
    """Bytes of torch.save(model.state_dict()) of the model loaded as the organizers load it (on the CPU)."""
    import tempfile

    import torch
    from transformers import AutoModelForMultimodalLM

    model = AutoModelForMultimodalLM.from_pretrained(str(model_dir), dtype="auto")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tmpXXXXXXXX.pt")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path)


# ------------------------------------------------------------------ recipes and families

def test_ls_shows_each_recipes_family(capsys):
    assert main(["ls", "--json"]) == 0
    fams = {r["name"]: r["family"] for r in json.loads(capsys.readouterr().out)}
    assert {n: fams[n] for n in GEMMA_RECIPES} == dict.fromkeys(GEMMA_RECIPES, "gemma4")
    assert fams["recipe-b"] == fams["quantize-only"] == "qwen2_audio"
    assert main(["ls"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("gemma4-small "))
    assert line.split()[1] == "gemma4"


# a recipe of another family refused in one line (build, dry run, plan): tests/test_family_recipes.py


def test_recipe_family_field_is_validated(tmp_path):
    from iwslt_mc.errors import UserError
    from iwslt_mc.recipes import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("name: x\nfamily: llama\nstages:\n  - stage: quantize\n")
    with pytest.raises(UserError, match=r"r.yaml:2: unknown family 'llama' \(known: qwen2_audio, gemma4, qwen2_5_omni\)"):
        load_recipe(str(p))
    assert load_recipe("gemma4-medium").family == "gemma4" and load_recipe("recipe-b").family == "qwen2_audio"


def test_plan_recipes_on_the_12b_layout_exactly(g12, capsys):
    """`plan RECIPE --base DIR` on the config-only 12B layout: dims as the recipe says, and every parameter of
    the predicted model equals the parameters of the model transformers builds from the predicted config."""
    import torch

    from iwslt_mc.families.gemma4.plan import meta_model

    preds = {}
    for name in GEMMA_RECIPES:
        assert main(["plan", name, "--base", str(g12), "--json"]) == 0
        preds[name] = json.loads(capsys.readouterr().out)
    d = {n: p["dims"] for n, p in preds.items()}
    assert [d[n]["llm_layers"] for n in GEMMA_RECIPES] == [48, 36, 17, 8]
    assert all(not d[n]["vision"] and d[n]["vocab"] == 16000 and p["family"] == "gemma4" for n, p in preds.items())
    assert all(p["components"]["vision_encoder"]["params"] == 0 for p in preds.values())
    sizes = [preds[n]["bytes"] for n in GEMMA_RECIPES]
    assert sizes == sorted(sizes, reverse=True)
    # the torch.save measure is predicted too, and a little larger than the safetensors bytes
    for p in preds.values():
        assert p["torch_save"]["bytes"] > p["bytes"] and "layout:gemma4_unified/meta-model" in p["torch_save"]["signature"]
    from iwslt_mc.planning import planner

    spec = planner.Spec(llm_layers=17, vocab=16000, drop_vision=True, precision="bf16")
    pred = planner.predict(spec, planner.load_base_config(g12), "2027")
    model = meta_model(pred.config)
    n = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for k, b in model.state_dict().items() if k.endswith("layer_scalar"))
    assert pred.params == n == preds["gemma4-small"]["params"]
    assert model.config.text_config.layer_types[-1] == "full_attention" and getattr(model.model, "vision_embedder", None) is None
    assert pred.bytes == pred.header_bytes + 2 * n
    del torch


def test_plan_title_and_component_names(g12, kit, capsys):
    from iwslt_mc.planning import planner
    from iwslt_mc.errors import UserError

    assert main(["plan", "--base", str(g12)]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "None" not in out and "48 LLM layers, vision encoder, vocab 262,144, FFN 15360" in flat
    assert "audio layers" not in out  # gemma4_unified has no audio encoder
    base = planner.load_base_config(g12)
    spec = planner.Spec(precision="nf4", component_precision={"vision": "fp32", "ple": "bf16"})
    assert spec.component_precision == {"vision_encoder": "fp32", "per_layer_embeddings": "bf16"}
    pred = planner.predict(spec, base, "2027")
    v = pred.components["vision_encoder"]
    assert v["bytes"] == 4 * v["params"] == 4 * 49_922_304
    with pytest.raises(UserError, match="a Qwen2-Audio model has no vision_encoder"):
        planner.predict(planner.Spec(component_precision={"vision_encoder": "fp32"}))
    with pytest.raises(UserError, match="a Qwen2-Audio model has no vision encoder to remove"):
        planner.predict(planner.Spec(drop_vision=True))
    assert main(["plan", "--base", str(g12), "--precision", "vision=int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["component_precision"] == {"vision_encoder": "int8"}


# ------------------------------------------------------------------ the organizers' torch.save measure
# of the kits, fp32 and bf16, against a real torch.save: test_family_stages (every kit)


# ------------------------------------------------------------------ audio-layer removal

def test_prune_audio_layers_gemma4(gemma_kit, tmp_path):
    import torch
    from transformers import AutoModelForMultimodalLM

    from iwslt_mc.sizing import sizer
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    model_dir = gemma_kit[0] / "model"
    ctx = StageContext(device="cpu", log=lambda s: None)
    out = tmp_path / "a"
    run_stage(make_stage("prune-layers", {"audio_layers": [0]}), model_dir, out, ctx)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["audio_config"]["num_hidden_layers"] == 1 and cfg["text_config"]["num_hidden_layers"] == 4
    old = AutoModelForMultimodalLM.from_pretrained(str(model_dir))
    new = AutoModelForMultimodalLM.from_pretrained(str(out))  # from_pretrained alone, nothing missing
    assert len(new.model.audio_tower.layers) == 1
    o, n = old.model.audio_tower.layers[1].state_dict(), new.model.audio_tower.layers[0].state_dict()
    assert o.keys() == n.keys() and all(torch.equal(o[k], n[k]) for k in o)
    rep = sizer.measure(out)
    assert rep.params == sizer.measure(model_dir).params - sum(t.numel() for t in o.values())  # its buffers too
    prov = json.loads((out / "provenance.json").read_text())["stages"][-1]
    assert "1 of 2 conformer layers removed" in " ".join(prov["techniques"])
    # the plan and torch.save measure of the output, and gemma4_unified's refusal (no audio encoder):
    # test_family_stages.test_prune_one_audio_layer_or_refuse_where_there_is_no_audio_encoder


# ------------------------------------------------------------------ recipes built on the kits

def test_ladder_headers_and_sizes_on_the_12b_layout(g12):
    """The 2027 ladder: gemma4-medium / -small / -tiny land just at or under ~4 / ~2 / ~1 GiB torch.save on the
    12B layout (16k tokens), with as many layers as the rung allows, and each header states the planner's
    figure to the byte and to the GiB's third decimal."""
    import re

    from iwslt_mc.planning import planner
    from iwslt_mc.build import spec_for_stages
    from iwslt_mc.recipes import load_recipe

    base = planner.load_base_config(g12)
    for name, (rung, layers) in LADDER.items():
        recipe = load_recipe(name)
        stages = [e for e in recipe.active_stages("constrained") if e.stage != "trim-vocab"]
        spec, _ = spec_for_stages(stages, base, base=str(g12), lang="en-de", data={}, condition="constrained")
        spec = dataclasses.replace(spec, vocab=16000)
        ts = planner.predict(spec, base, "2027").torch_save.bytes
        assert spec.llm_layers == layers and abs(ts / 2**30 - rung) < 0.05 * rung
        if rung < 4:  # as many layers as stay under the rung
            more = planner.predict(dataclasses.replace(spec, llm_layers=layers + 1, llm_kept=None), base,
                                   "2027").torch_save.bytes
            assert ts < rung * 2**30 < more
        header = Path(recipe.path).read_text().split("\nname:")[0]
        assert f"torch.save {ts / 2**30:.3f} GiB" in header and (rung == 4 or f"{ts:,} bytes" in header)
        assert re.search(rf"~{rung} GiB rung", header)
        assert recipe.description.startswith(f"Gemma 4, ~{rung} GiB:")


# (recipe, kit) pairs: every rung on both kits; the first of each recipe's pairs is checked in depth
SMOKE_BUILDS = [("gemma4-medium", "gemma4"), ("gemma4-small", "unified"), ("gemma4-tiny", "gemma4"),
                ("gemma4-medium", "unified"), ("gemma4-small", "gemma4"), ("gemma4-tiny", "unified")]


@pytest.mark.parametrize("name,which", SMOKE_BUILDS)
def test_smoke_build_planner_equals_real_bytes(gemma_kit, gemma_unified_kit, tmp_path, name, which):
    """The whole recipe (drop-vision, distillation data from the unpruned model, prune, recovery: LoRA on the
    LLM projections merged (gemma4-medium) or full fine-tuning of the trimmed model (-small, -tiny), trim-vocab,
    NF4 + double quantization) with --smoke on each kit: the planner's tensors are the built model's; only the
    digits of each 4-bit quant_state JSON (the nested offset) differ, as for Qwen2-Audio; the torch.save
    measure is the planner's. In depth on one kit per recipe: what the recovery trained, and a real torch.save."""
    import re

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForMultimodalLM

    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.build import build, scaled_stages, spec_for_stages
    from iwslt_mc.recipes import load_recipe

    deep = next(p for p in SMOKE_BUILDS if p[0] == name) == (name, which)
    kit = gemma_kit[0] if which == "gemma4" else gemma_unified_kit
    recipe = load_recipe(name)
    res = build(recipe, lang="en-de", base=str(kit / "model"), data={"acl6060": str(kit / "data")},
                condition="constrained", out=tmp_path / "b", smoke=True, log=lambda *a: None)
    order = [s["stage"] for s in res.stages]
    assert order == [e.stage for e in recipe.stages] and order[:3] == ["drop-vision", "distill", "prune-layers"]
    assert order[-1] == "quantize" and {"finetune", "trim-vocab"} <= set(order)
    prov = {s["stage"]: s for s in json.loads((res.model_dir / "provenance.json").read_text())["stages"]}
    # the teacher is the unpruned model (vision removed): it translated the 4 smoke utterances (a translation
    # equal to its reference, or empty, is dropped) and its pairs are next to the 4 references
    d = prov["distill"]["distill"]
    assert d["teacher"] == res.stages[0]["dir"] and (d["utterances"], d["reference_pairs"]) == (4, 4)
    assert d["teacher_pairs"] >= 1 and d["teacher_pairs"] + d["duplicates"] + d["empty"] == 4
    assert d["pairs"] == d["teacher_pairs"] + 4
    ft = next(e for e in recipe.stages if e.stage == "finetune").options
    i = order.index("finetune")
    before, after = (load_file(str(Path(res.stages[j]["dir"]) / "model.safetensors")) for j in (i - 1, i))
    assert before.keys() == after.keys()
    if deep and ft["mode"] == "lora":
        # LoRA on exactly the LLM projections of the pruned model (not the tied lm_head, the audio path or the
        # PLE projections), merged; every other tensor is the input's (rounded to the bf16 it trained in)
        projections = sorted(k for k in before if re.fullmatch(ft["target_modules"] + r"\.weight", k))
        assert len(projections) >= 7
        assert prov["finetune"]["train"]["trainable_params"] == sum(8 * sum(before[k].shape) for k in projections)
        assert prov["finetune"]["techniques"][1] == "LoRA adapters merged into the base model"
        assert sorted(k for k in before if not torch.equal(after[k], before[k].bfloat16().to(before[k].dtype))) == projections
    elif deep:
        # full fine-tuning of the pruned model after trim-vocab: every parameter trains (the tied embedding
        # counted once), on the trimmed vocabulary (16k-wide logits at 12B)
        assert order.index("trim-vocab") == i - 1
        model = AutoModelForMultimodalLM.from_pretrained(str(Path(res.stages[i - 1]["dir"])))
        assert prov["finetune"]["train"]["trainable_params"] == sum(p.numel() for p in model.parameters())
        # every LLM projection moved (norm weights near 1.0 may not, by a bf16 step, in the smoke's 2 steps)
        changed = {k for k in before if not torch.equal(after[k], before[k].bfloat16().to(before[k].dtype))}
        projections = [k for k in before if re.search(
            r"language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$", k)]
        assert len(projections) >= 13 and set(projections) <= changed
    cfg = json.loads((res.model_dir / "config.json").read_text())
    t = cfg["text_config"]
    assert cfg["vision_config"] is None and t["layer_types"][-1] == "full_attention"
    # smoke: 12 of 48 layers -> 1 of 4 (the valid block nearest the middle); 31 or 40 of 48 -> 2 of 4 (the first
    # and last layers stay)
    assert t["num_hidden_layers"] == {"gemma4-medium": 3, "gemma4-small": 2, "gemma4-tiny": 2}[name]
    assert t["vocab_size"] < 1856 and cfg["quantization_config"]["bnb_4bit_use_double_quant"]
    rep = sizer.measure(res.model_dir, "2027")
    base = planner.load_base_config(kit / "model")
    stages = scaled_stages(recipe, str(kit / "model"), smoke=True)
    spec, _ = spec_for_stages(stages, base, base=str(kit / "model"), lang="en-de",
                              data={"acl6060": str(kit / "data")}, condition="constrained")
    pred = planner.predict(spec, base, "2027")
    assert pred.bytes == res.prediction["bytes"] and pred.params == res.size["params"] == rep.params
    real = {t.name: (t.dtype, list(t.shape)) for t in sizer._tensors_of(res.model_dir / "model.safetensors",
                                                                          "model.safetensors")[0]}
    planned = {e[0]: (e[1], list(e[2])) for e in pred.entries}
    assert real.keys() == planned.keys()
    assert {k: v for k, v in real.items() if ".quant_state." not in k} == {
        k: v for k, v in planned.items() if ".quant_state." not in k}
    assert 0 <= res.size["bytes"] - pred.bytes < 100
    assert 0 <= rep.torch_save.bytes - pred.torch_save.bytes < 100  # the quant_state digits again
    if deep:
        assert rep.torch_save.bytes_cpu == _real_torch_save_bytes(res.model_dir)
        assert AutoModelForMultimodalLM.from_pretrained(str(res.model_dir)).config.text_config.vocab_size == t["vocab_size"]


# ------------------------------------------------------------------ the gemma4_unified kit

def test_unified_kit_layout(gemma_unified_kit):
    from iwslt_mc.sizing import sizer
    from iwslt_mc.families import family_for

    model_dir = gemma_unified_kit / "model"
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "gemma4_unified" and family_for(model_dir).name == "gemma4"
    assert cfg["architectures"] == ["Gemma4UnifiedForConditionalGeneration"]
    assert cfg["audio_config"] == {**cfg["audio_config"], "audio_embed_dim": 640}
    assert json.loads((gemma_unified_kit / "kit.json").read_text())["model_type"] == "gemma4_unified"
    assert json.loads((model_dir / "processor_config.json").read_text())["processor_class"] == "Gemma4UnifiedProcessor"
    rep = sizer.measure(model_dir)
    c = rep.components
    assert c["audio_encoder"]["params"] == c["per_layer_embeddings"]["params"] == 0
    assert c["projector"]["params"] == 640 * 64  # embed_audio: a weightless RMSNorm over the 640-sample frame, then Linear
    # the plan of the kit, exact component by component: test_family_kits (every kit)


def test_unified_kit_decode_equals_generate(gemma_unified_kit, gemma_organizers_generate):
    """Reference mode on the unified kit: the organizers' steps (chat template with enable_thinking=False, one
    user turn text then audio, greedy) with transformers' generate give the same tokens."""
    wav = gemma_unified_kit / "data" / "testsets" / "KITCLIPS" / "clip-a.wav"
    ours, theirs, inputs, processor, audio = gemma_organizers_generate(gemma_unified_kit / "model", wav)
    assert type(processor).__name__ == "Gemma4UnifiedProcessor"
    # one soft token per 40 ms frame (no encoder downsampling)
    assert inputs["input_ids"][0].tolist().count(processor.tokenizer.audio_token_id) == -(-len(audio) // 640)
    assert len(ours) == 8 and theirs == ours


def test_unified_kit_prune_and_drop_vision(gemma_unified_kit, tmp_path):
    from transformers import AutoModelForMultimodalLM

    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.errors import UserError
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    model_dir = gemma_unified_kit / "model"
    ctx = StageContext(device="cpu", log=lambda s: None)
    with pytest.raises(UserError, match="cannot remove layer 1: kept layer 3 reads its keys/values from it"):
        run_stage(make_stage("prune-layers", {"llm_layers": [1]}), model_dir, tmp_path / "bad", ctx)
    out = tmp_path / "p"
    run_stage(make_stage("prune-layers", {"llm_layers": [2]}), model_dir, out, ctx)
    new = AutoModelForMultimodalLM.from_pretrained(str(out))
    t = new.config.text_config
    assert (t.num_hidden_layers, t.num_kv_shared_layers) == (3, 1)
    rep = sizer.measure(out)
    pred = planner.predict(planner.Spec(precision="fp32", llm_layers=3), planner.load_base_config(model_dir), "2025")
    assert (pred.bytes, pred.params) == (rep.bytes, rep.params)
    nv = tmp_path / "nv"
    run_stage(make_stage("drop-vision"), out, nv, ctx)
    rep2 = sizer.measure(nv)
    assert rep.params - rep2.params == rep.components["vision_encoder"]["params"] > 0
    pred = planner.predict(planner.Spec(precision="fp32", llm_layers=3, drop_vision=True),
                           planner.load_base_config(model_dir), "2025")
    assert (pred.bytes, pred.params) == (rep2.bytes, rep2.params)
    assert getattr(AutoModelForMultimodalLM.from_pretrained(str(nv)).model, "vision_embedder", None) is None


def test_planner_follows_the_layers_a_recipe_names(gemma_kit, g12, tmp_path):
    """Gemma 4's sliding and global layers differ in size: a recipe that names its layers is planned with
    those layers (not the middle block), and two prune stages chain on the current model's indices."""
    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.build import build, predict_recipe
    from iwslt_mc.recipes import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("name: r\nfamily: gemma4\nstages:\n  - {id: a, stage: prune-layers, options: {llm_layers: [5]}}\n")
    pred = predict_recipe(load_recipe(str(p)), str(g12), condition="constrained", lang="en-de", data={}, edition="2027")
    assert pred["dims"]["llm_kept"] == [i for i in range(48) if i != 5]
    base = planner.load_base_config(g12)
    named = planner.predict(planner.Spec(llm_layers=47, llm_kept=pred["dims"]["llm_kept"]), base, "2027")
    sliding = planner.predict(planner.Spec(llm_layers=47, llm_kept=[i for i in range(48) if i != 4]), base, "2027")
    assert named.bytes == pred["bytes"] and named.config.text_config.layer_types.count("full_attention") == 7
    assert sliding.config.text_config.layer_types.count("full_attention") == 8
    # layer 5 is global: q and o of 16 heads of width 512 and one key head of 512 that is also the value (no
    # v_proj), where a sliding layer has 16 + 8 + 8 + 16 heads of 256 in q/k/v/o; q/k norms 512 instead of 256
    assert sliding.params - named.params == (16 * 512 + 512 + 16 * 512 - (16 + 8 + 8 + 16) * 256) * 3840 + 2 * 256
    kit = gemma_kit[0]
    p.write_text("name: r\nfamily: gemma4\nstages:\n"
                 "  - {id: a, stage: prune-layers, options: {llm_layers: [2]}}\n"
                 "  - {id: b, stage: prune-layers, options: {llm_layers: [2]}}\n")  # the old layer 3 next
    recipe = load_recipe(str(p))
    pred = predict_recipe(recipe, str(kit / "model"), condition="constrained", lang="en-de", data={}, edition="2025")
    assert pred["dims"]["llm_kept"] == [0, 1]
    res = build(recipe, lang="en-de", base=str(kit / "model"), data={}, condition="constrained", out=tmp_path / "b",
                log=lambda *a: None)
    assert res.size["bytes"] == pred["bytes"] == sizer.measure(res.model_dir).bytes
