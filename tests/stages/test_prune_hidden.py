"""prune-hidden on the kit model: exact with every dimension kept; narrowed, it reloads with from_pretrained
alone, decodes, and its saved size is the planner's; bad options fail before loading; resume and provenance."""

from __future__ import annotations

import json

import pytest
import torch

from iwslt_mc import modelio
from iwslt_mc.families.qwen2_audio import surgery
from iwslt_mc.planning import planner
from iwslt_mc.sizing import sizer
from iwslt_mc.families.qwen2_audio.layout import find_layout
from iwslt_mc.families import prompt_text
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage
from iwslt_mc.stages.prune_hidden import PruneHiddenOptions, target_shape

QUIET = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def inputs(kit_processor, kit_waves):
    wave = kit_waves["dev"][0][1]
    return kit_processor(text=prompt_text(kit_processor, "en-de"), audio=wave, sampling_rate=16000, return_tensors="pt")


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits


def test_every_dimension_kept_is_exact(kit, inputs):
    model = modelio.load_model(kit / "model", device="cpu")
    ref = _logits(model, inputs)
    g = torch.Generator().manual_seed(0)
    # indices in any order, heads too: the surgery sorts them, so the model is rebuilt unchanged
    surgery.prune_llm_hidden(model, torch.randperm(64, generator=g), torch.tensor([1, 0]))
    surgery.prune_audio_hidden(model, torch.randperm(64, generator=g), torch.tensor([3, 1, 2, 0]))
    assert torch.equal(_logits(model, inputs), ref)
    assert model.config.text_config.head_dim == 16 and model.config.text_config.num_key_value_heads == 2


def test_narrowed_model_keeps_the_chosen_slices(kit):
    orig = find_layout(modelio.load_model(kit / "model", device="cpu"))
    model = modelio.load_model(kit / "model", device="cpu")
    dims, adims = torch.tensor([0, 5, 9, 33, 40, 63]), torch.arange(16, 48)
    surgery.prune_llm_hidden(model, dims, torch.tensor([1]))  # kv head 1: query heads 2 and 3
    surgery.prune_audio_hidden(model, adims, torch.tensor([0, 2]))
    new = find_layout(model)
    q_rows = torch.arange(32, 64)  # heads 2, 3 of size 16
    a0, n0 = orig.decoder_layers[1].self_attn, new.decoder_layers[1].self_attn
    assert torch.equal(n0.q_proj.weight, a0.q_proj.weight[q_rows][:, dims])
    assert torch.equal(n0.q_proj.bias, a0.q_proj.bias[q_rows])
    assert torch.equal(n0.k_proj.weight, a0.k_proj.weight[16:32][:, dims])
    assert torch.equal(n0.o_proj.weight, a0.o_proj.weight[dims][:, q_rows])
    assert torch.equal(new.decoder_layers[1].mlp.down_proj.weight, orig.decoder_layers[1].mlp.down_proj.weight[dims])
    assert torch.equal(new.decoder_layers[1].input_layernorm.weight, orig.decoder_layers[1].input_layernorm.weight[dims])
    assert torch.equal(new.embed_tokens.weight, orig.embed_tokens.weight[:, dims])
    assert torch.equal(new.lm_head.weight, orig.lm_head.weight[:, dims])
    assert torch.equal(new.projector.linear.weight, orig.projector.linear.weight[dims][:, adims])
    assert torch.equal(new.projector.linear.bias, orig.projector.linear.bias[dims])
    rows = torch.cat([torch.arange(0, 16), torch.arange(32, 48)])
    assert torch.equal(new.audio_tower.conv2.weight, orig.audio_tower.conv2.weight[adims][:, adims])
    assert torch.equal(new.audio_tower.embed_positions.weight, orig.audio_tower.embed_positions.weight[:, adims])
    assert torch.equal(new.audio_layers[0].self_attn.out_proj.weight,
                       orig.audio_layers[0].self_attn.out_proj.weight[adims][:, rows])
    assert torch.equal(new.audio_layers[0].final_layer_norm.bias, orig.audio_layers[0].final_layer_norm.bias[adims])
    assert new.audio_layers[0].self_attn.num_heads == 2 and new.audio_layers[0].final_layer_norm.normalized_shape == (32,)


@pytest.fixture(scope="module")
def narrowed(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("hidden") / "out"
    rec = run_stage(make_stage("prune-hidden", {"llm_ratio": 0.5, "audio_hidden": 32, "importance": "activation",
                                                "calibration": 3}),
                    kit / "model", out, StageContext(lang="en-de", data=[str(kit / "data")], **QUIET))
    return out, rec


def test_narrowed_model_reloads_decodes_and_matches_the_planner(kit, narrowed, inputs):
    from transformers import Qwen2AudioForConditionalGeneration

    out, rec = narrowed
    cfg = json.loads((out / "config.json").read_text())
    t, a = cfg["text_config"], cfg["audio_config"]
    assert (t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]) == (32, 2, 1, 16)
    assert (a["d_model"], a["encoder_attention_heads"]) == (32, 2)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out).eval()  # nothing but from_pretrained
    with torch.inference_mode():
        gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 6 and torch.equal(gen, uncached)
    pred = planner.predict(planner.Spec(hidden=32, heads=2, audio_hidden=32, precision="fp32"),
                           planner.load_base_config(kit / "model"))
    measured = sizer.measure(out)
    assert (pred.bytes, pred.params) == (measured.bytes, measured.params) == (rec["bytes_after"], rec["params_after"])
    assert measured.params < rec["params_before"] // 2
    assert "64 -> 32 dimensions, 4 -> 2 attention heads of 16, activation importance on 3 segments" in rec["techniques"][0]
    assert rec["shape_after"]["audio_heads"] == 2 and rec["data"][0]["path"] == str(kit / "data")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stages"][-1]["stage"] == "prune-hidden"


def test_activation_importance_keeps_the_massive_dimensions(kit, tmp_path, inputs):
    """Dimensions that carry large activations (scaled up in every norm that reads the residual) are
    ranked first and kept; the narrowed model stays close to the original on them."""
    model = modelio.load_model(kit / "model", device="cpu")
    layout = find_layout(model)
    big = [3, 17, 42]
    with torch.no_grad():
        for layer in layout.decoder_layers:
            for n in (layer.input_layernorm, layer.post_attention_layernorm):
                n.weight[big] *= 50
    src = tmp_path / "src"
    modelio.save_model(model, modelio.load_processor(kit / "model"), src)
    rec = run_stage(make_stage("prune-hidden", {"llm_hidden": 8, "llm_heads": 4, "importance": "activation",
                                                "calibration": 2}),
                    src, tmp_path / "o", StageContext(lang="en-de", data=[str(kit / "data")], **QUIET))
    new = find_layout(modelio.load_model(tmp_path / "o", device="cpu"))
    kept = new.decoder_layers[0].input_layernorm.weight
    assert rec["shape_after"]["hidden"] == 8 and kept.shape == (8,)
    # the three scaled dimensions are among the kept ones (their norm weight is 50x the others')
    orig_w = layout.decoder_layers[0].input_layernorm.weight
    assert all(any(torch.equal(orig_w[d], k) for k in kept) for d in big)


def test_weight_importance_and_no_change(kit, tmp_path):
    rec = run_stage(make_stage("prune-hidden", {"llm_hidden": 64}), kit / "model", tmp_path / "same", StageContext(**QUIET))
    assert rec["techniques"] == ["hidden-size pruning (no change)"] and rec["params_after"] == rec["params_before"]
    rec = run_stage(make_stage("prune-hidden", {"llm_hidden": 48, "llm_heads": 2}), kit / "model", tmp_path / "w",
                    StageContext(**QUIET))
    pred = planner.predict(planner.Spec(hidden=48, heads=2, precision="fp32"), planner.load_base_config(kit / "model"))
    assert pred.bytes == sizer.measure(tmp_path / "w").bytes and "weight-norm importance" in rec["techniques"][0]


def test_target_shape_rules():
    cfg = {"text_config": {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32},
           "audio_config": {"d_model": 1280, "encoder_attention_heads": 20}}
    s = target_shape(cfg, PruneHiddenOptions(llm_ratio=0.5, audio_ratio=0.5))
    assert (s["hidden"], s["heads"], s["kv_heads"], s["head_dim"], s["audio_hidden"], s["audio_heads"]) == (2048, 16, 16, 128, 640, 10)
    s = target_shape(cfg, PruneHiddenOptions(llm_ratio=0.375, audio_ratio=0.37))
    assert (s["hidden"], s["heads"], s["audio_hidden"], s["audio_heads"]) == (1536, 12, 448, 7)
    kit = {"text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2},
           "audio_config": {"d_model": 64, "encoder_attention_heads": 4}}
    s = target_shape(kit, PruneHiddenOptions(llm_ratio=0.25))
    assert (s["hidden"], s["heads"], s["kv_heads"]) == (16, 2, 1)  # at least one whole GQA group


@pytest.mark.parametrize("sets,msg", [
    ([], "nothing to do"),
    (["llm_hidden=65"], "larger than the current width 64"),
    (["llm_heads=3"], "multiple of the GQA group size 2"),
    (["audio_hidden=40"], "multiple of the audio head size 16"),
    (["llm_hidden=32", "llm_ratio=0.5"], "not both"),
    (["llm_ratio=1.5"], "must be in (0, 1]"),
    (["llm_ratio=0.5", "importance=activation"], "needs calibration data"),
])
def test_bad_options_fail_in_one_line_before_loading(kit, tmp_path, stage_refuses, sets, msg):
    stage_refuses("prune-hidden", kit / "model", tmp_path / "o", sets, msg)


def test_build_resume_skips_the_finished_stage_and_a_crash_leaves_nothing(kit, tmp_path, monkeypatch):
    from iwslt_mc import build as build_mod
    from iwslt_mc.recipes import load_recipe
    from iwslt_mc.stages import prune_hidden

    rfile = tmp_path / "narrow.yaml"
    rfile.write_text("name: narrow\nstages:\n  - id: ffn\n    stage: prune-ffn\n    options: {llm_width: 128}\n"
                     "  - id: width\n    stage: prune-hidden\n    options: {llm_ratio: 0.5}\n")
    recipe = load_recipe(str(rfile))
    real = prune_hidden.PruneHidden.run
    kw = dict(lang="en-de", base=str(kit / "model"), data={}, condition="constrained", out=tmp_path / "b",
              log=lambda *a: None)

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_hidden.PruneHidden, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        build_mod.build(recipe, **kw)
    assert (tmp_path / "b" / "stages" / "01-ffn").exists() and not (tmp_path / "b" / "stages" / "02-width").exists()
    monkeypatch.setattr(prune_hidden.PruneHidden, "run", real)
    first = build_mod.build(recipe, resume=True, **kw)
    assert first.skipped == ["ffn"]
    assert first.size["bytes"] == first.prediction["bytes"]  # the planner follows prune-ffn then prune-hidden
    monkeypatch.setattr(prune_hidden.PruneHidden, "run", crash)  # must not run again
    again = build_mod.build(recipe, resume=True, **kw)
    assert again.skipped == ["ffn", "width"] and again.size["bytes"] == first.size["bytes"]
