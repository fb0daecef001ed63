"""gemma-4-12B-it's attention at kit size: the unified kit with the 12B's global layers (one key head that is
also the value: ``attention_k_eq_v``, no ``v_proj``; ``num_global_key_value_heads`` 1) and no KV sharing
(``num_kv_shared_layers`` 0), as iwslt_mc.families.gemma4.GEMMA4_12B_TEXT has them. The unified kit itself
keeps KV sharing (the refusal tests need it); this model checks the 12B's own layout through the planner,
the sizer's torch.save measure, prune-layers, quantize, LoRA and decoding."""

from __future__ import annotations

import json
import re
import shutil

import pytest


@pytest.fixture(scope="module")
def keqv(gemma_unified_kit, tmp_path_factory):
    """The unified kit's model rebuilt (random fp32, seed 0) with the 12B's attention layout; its processor."""
    import torch
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration

    src = gemma_unified_kit / "model"
    out = tmp_path_factory.mktemp("keqv") / "model"
    shutil.copytree(src, out)
    (out / "model.safetensors").unlink()
    d = json.loads((src / "config.json").read_text())
    t = d["text_config"]
    glob = {str(i): {"head_dim": 32, "num_key_value_heads": 1}
            for i, kind in enumerate(t["layer_types"]) if kind == "full_attention"}
    t.update(attention_k_eq_v=True, num_kv_shared_layers=0, per_layer_config=glob)
    cfg = Gemma4UnifiedConfig.from_dict(d)
    torch.manual_seed(0)
    model = Gemma4UnifiedForConditionalGeneration(cfg).to(torch.float32).eval()
    model.save_pretrained(out)
    return out


def test_layout_plan_and_torch_save_exact(keqv):
    from safetensors import safe_open

    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.sizing.torchsave import measure_streamed

    with safe_open(str(keqv / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        k1 = f.get_slice("model.language_model.layers.1.self_attn.k_proj.weight").get_shape()
    assert "model.language_model.layers.1.self_attn.v_proj.weight" not in keys  # global: the key is the value
    assert "model.language_model.layers.0.self_attn.v_proj.weight" in keys
    assert k1 == [32, 64]  # one key head of width 32 (the 12B: one of 512)
    base = planner.load_base_config(keqv)
    assert (base.text_config.num_kv_shared_layers, base.text_config.attention_k_eq_v) == (0, True)
    rep = sizer.measure(keqv, "2027")
    pred = planner.predict(planner.Spec(precision="fp32"), base, "2027")
    assert (pred.bytes, pred.params) == (rep.bytes, rep.params)
    assert pred.torch_save.bytes == rep.torch_save.bytes
    assert rep.torch_save.bytes_cpu == measure_streamed(keqv, device="cpu").bytes


def test_prune_quantize_lora_on_the_12b_attention(keqv, gemma_unified_kit, tmp_path):
    """No KV sharing: a global layer can go (the kit's KV-sharing refusal does not apply); the planner follows
    the layers kept; NF4 + double quantization measured equals a real torch.save; LoRA (--smoke) on the LLM
    projections trains and merges with global layers that have no v_proj."""
    from safetensors import safe_open

    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage
    from iwslt_mc.sizing.torchsave import measure_streamed

    ctx = StageContext(device="cpu", log=lambda s: None, data=[str(gemma_unified_kit / "data")], smoke=True)
    pruned = tmp_path / "pruned"
    run_stage(make_stage("prune-layers", {"llm_layers": [1]}), keqv, pruned, ctx)
    t = json.loads((pruned / "config.json").read_text())["text_config"]
    assert t["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]
    base = planner.load_base_config(keqv)
    pred = planner.predict(planner.Spec(precision="fp32", llm_layers=3, llm_kept=[0, 2, 3]), base, "2027")
    rep = sizer.measure(pruned, "2027")
    assert (pred.bytes, pred.params) == (rep.bytes, rep.params)

    q = tmp_path / "nf4"
    run_stage(make_stage("quantize", {"method": "nf4"}), pruned, q, ctx)
    rq = sizer.measure(q, "2027")
    assert rq.torch_save.bytes_cpu == measure_streamed(q, device="cpu").bytes
    pq = planner.predict(planner.Spec(precision="nf4-dq", float_dtype="fp32", llm_layers=3, llm_kept=[0, 2, 3]),
                        base, "2027")
    assert 0 <= rq.bytes - pq.bytes < 100  # the quant_state JSON's digits, as on the other layouts

    lora = tmp_path / "lora"
    target = r".*language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    run_stage(make_stage("finetune", {"mode": "lora", "lora_r": 4, "lora_alpha": 8, "target_modules": target}),
              pruned, lora, ctx)
    prov = json.loads((lora / "provenance.json").read_text())["stages"][-1]
    # 3 layers x (q, k, o, gate, up, down) + v on the 2 sliding layers: 20 projections, r 4 each
    with safe_open(str(pruned / "model.safetensors"), "pt") as f:
        shapes = [f.get_slice(k).get_shape() for k in f.keys() if re.fullmatch(target + r"\.weight", k)]
    assert len(shapes) == 20
    assert prov["train"]["trainable_params"] == sum(4 * sum(s) for s in shapes)
    assert sizer.measure(lora).params == rep.params  # merged


def test_decode_on_the_12b_attention_equals_generate(keqv, gemma_unified_kit, gemma_organizers_generate):
    wav = gemma_unified_kit / "data" / "testsets" / "KITCLIPS" / "clip-a.wav"
    ours, theirs, *_ = gemma_organizers_generate(keqv, wav)
    assert len(ours) == 8 and theirs == ours


def test_prune_heads_on_the_12b_attention(keqv, gemma_unified_kit, tmp_path):
    """``llm_heads`` 2 of 4 where the global layers have one key head that is also the value (the 12B's layout):
    the sliding layers keep one whole GQA group (1 of 2 key/value heads), the global layers their one key head
    (no v_proj) serving 2 of its 4 query heads; every head kept gives the same logits; the output reloads,
    decodes (greedy, the organizers' prompt) and is planned exactly, the 2027 torch.save measure too."""
    import torch
    from transformers import AutoModelForMultimodalLM

    from iwslt_mc import modelio
    from iwslt_mc.decoding.audio import load_audio
    from iwslt_mc.decoding.core import prepare_batch, reference_one
    from iwslt_mc.families.gemma4 import surgery
    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    model = AutoModelForMultimodalLM.from_pretrained(str(keqv), dtype=torch.float32).eval()
    proc = modelio.load_processor(keqv)
    wave = load_audio(gemma_unified_kit / "data" / "testsets" / "KITCLIPS" / "clip-a.wav")
    inputs = prepare_batch(proc, [wave], "en-de").inputs
    with torch.inference_mode():
        ref = model(**inputs, use_cache=False).logits
        same = surgery.prune_llm_hidden(model, torch.arange(64), [torch.arange(4)] * 4)(**inputs, use_cache=False).logits
    assert torch.equal(same, ref)
    out = tmp_path / "heads"
    run_stage(make_stage("prune-hidden", {"llm_heads": 2}), keqv, out, StageContext(device="cpu", log=lambda s: None))
    new = AutoModelForMultimodalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    t = new.config.text_config
    assert t.num_attention_heads == 2
    assert [t.per_layer_config[i].num_key_value_heads for i in range(4)] == [1, 1, 1, 1]
    for i, layer in enumerate(new.model.language_model.layers):
        a, hd = layer.self_attn, (32 if i % 2 else 16)
        assert a.q_proj.weight.shape == (2 * hd, 64) and a.k_proj.weight.shape == (hd, 64)
        assert (a.v_proj is None) == bool(i % 2)
    # the global layers' one key head is the original one, whole
    assert torch.equal(new.model.language_model.layers[1].self_attn.k_proj.weight,
                       model.model.language_model.layers[1].self_attn.k_proj.weight)
    assert len(reference_one(modelio.load_model(out, device="cpu"), proc, wave, "en-de", max_new_tokens=6).tokens) == 6
    base = planner.load_base_config(keqv)
    pred = planner.predict(planner.Spec(precision="fp32", heads=2), base, "2027")
    rep = sizer.measure(out, "2027")
    assert (pred.bytes, pred.params, pred.torch_save.bytes) == (rep.bytes, rep.params, rep.torch_save.bytes)
