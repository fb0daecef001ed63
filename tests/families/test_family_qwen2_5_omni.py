"""The third family, Qwen2.5-Omni's thinker (iwslt_mc/families/qwen2_5_omni/), on its offline kit: the kit,
the processor and prompt, the planner's inventory (kit and the real 7B layout),
surgery, and generation with audio on the CPU (the torch.save measure and what every family shares: test_family_stages)."""

from __future__ import annotations

import json
import math

import pytest

from iwslt_mc.families.qwen2_5_omni import Qwen25OmniFamily, plan, surgery

FAM = Qwen25OmniFamily()


@pytest.fixture(scope="session")
def omni_kit(_kits):
    """(path, KitInfo) of the Qwen2.5-Omni kit, seed 0: the session's (conftest ``family_kit``). Read-only."""
    return _kits("qwen2_5_omni_thinker")


@pytest.fixture(scope="module")
def omni_model(omni_kit):
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return FAM.loader_class().from_pretrained(omni_kit[0] / "model", dtype=torch.float32).eval()


def _disk(model_dir) -> dict:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


def _real_torch_save_bytes(model_dir) -> int:
    """torch.save(model.state_dict()) of the model loaded as the organizers load it, on the CPU."""
    from iwslt_mc.sizing.torchsave import torch_save_bytes

    model = FAM.loader_class().from_pretrained(str(model_dir), dtype="auto", device_map="cpu")
    return torch_save_bytes(model.state_dict())




# ------------------------------------------------------------------ the kit


def test_kit_is_a_qwen2_5_omni_thinker_with_every_part(omni_kit):
    out, info = omni_kit
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_omni_thinker"
    assert cfg["architectures"] == ["Qwen2_5OmniThinkerForConditionalGeneration"]
    assert (cfg["text_config"]["num_hidden_layers"], cfg["audio_config"]["encoder_layers"], cfg["vision_config"]["depth"]) == (4, 2, 1)
    kit = json.loads((out / "kit.json").read_text())
    assert kit["family"] == "qwen2_5_omni" and kit["model_type"] == "qwen2_5_omni_thinker"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["README.md", "dev.parquet", "eval.parquet", "long", "testsets"]
    assert (info.tokenizer_size, info.vocab_size, info.params) == (1550, 1600, 528_320)
    # no video processor (torchvision absent): the processor files hold the other parts (the session's kit is
    # shared: leave out the weights' fingerprint cache that another test's package call writes beside them)
    assert sorted(p.name for p in (out / "model").iterdir() if p.name != ".iwslt-mc-fingerprint") == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "processor_config.json",
        "provenance.json", "tokenizer.json", "tokenizer_config.json"]


def test_kit_same_seed_same_weights(omni_kit, tmp_path):
    """Same seed, byte-identical weights; another seed, other weights."""
    from iwslt_mc.fsutil import sha256_file

    again = FAM.build_kit(tmp_path / "again", seed=0)
    assert again.weights_sha256 == omni_kit[1].weights_sha256 == sha256_file(omni_kit[0] / "model" / "model.safetensors")
    assert json.loads((tmp_path / "again" / "kit.json").read_text()) == json.loads((omni_kit[0] / "kit.json").read_text())


def test_processor_prompt_and_audio_tokens(omni_kit):
    import numpy as np

    proc = FAM.load_processor(omni_kit[0] / "model")
    assert type(proc).__name__ == "Qwen2_5OmniProcessor" and type(proc.feature_extractor).__name__ == "WhisperFeatureExtractor"
    tok = proc.tokenizer
    assert (tok.audio_token, tok.audio_bos_token, tok.audio_eos_token) == ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
    for t in ("<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>"):
        assert tok.tokenize(t) == [t]
    assert FAM.prompt_text(proc, "en-zh") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|audio_bos|><|AUDIO|><|audio_eos|>Translate the English speech into Chinese. Output only the translation."
        "<|im_end|>\n<|im_start|>assistant\n")
    # one second of audio: 25 audio tokens (100 mel frames, conv stride 2, pooling 2)
    enc = proc(text=FAM.prompt_text(proc, "en-de"), audio=np.zeros(16000, np.float32), sampling_rate=16000,
               return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    assert ids.count(tok.audio_token_id) == 25 and ids.count(tok.convert_tokens_to_ids("<|audio_bos|>")) == 1
    assert FAM.turn_end_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    assert FAM.max_segment_seconds(FAM.reference_config()) == 30.0


def test_generate_with_audio_on_cpu(omni_kit, omni_model):
    """from_pretrained + generate with speech: greedy, stops at max_new_tokens (random weights), deterministic."""
    import numpy as np
    import torch

    proc = FAM.load_processor(omni_kit[0] / "model")
    wave = np.random.RandomState(0).randn(32000).astype(np.float32) * 0.1
    enc = proc(text=FAM.prompt_text(proc, "en-de"), audio=wave, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        a = omni_model.generate(**enc, max_new_tokens=6, do_sample=False)
        b = omni_model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert a.shape == (1, enc["input_ids"].shape[1] + 6) and torch.equal(a, b)
    # the audio changes the answer's logits: the audio encoder is wired in
    with torch.no_grad():
        la = omni_model(**enc).logits[0, -1]
        enc2 = proc(text=FAM.prompt_text(proc, "en-de"), audio=wave[::-1].copy(), sampling_rate=16000, return_tensors="pt")
        lb = omni_model(**enc2).logits[0, -1]
    assert not torch.allclose(la, lb)


# ------------------------------------------------------------------ planning and sizing


def test_inventory_is_the_kit_file_exactly(omni_kit):
    model_dir = omni_kit[0] / "model"
    cfg = FAM.plain_config(json.loads((model_dir / "config.json").read_text()))
    inv = plan.inventory(cfg)
    assert {k: s for k, s, *_ in inv} == {k: s for k, (_, s) in _disk(model_dir).items()}
    assert plan.param_count(cfg) == omni_kit[1].params == 528_320
    comps = {}
    for _, shape, comp, *_ in inv:
        comps[comp] = comps.get(comp, 0) + math.prod(shape)
    assert comps["projector"] == 64 * 64 + 64 and comps["embed_tokens"] == comps["lm_head"] == 1600 * 64
    assert set(comps) == {"audio_encoder", "vision_encoder", "projector", "llm_layers", "embed_tokens", "lm_head", "other"}


def test_predict_is_exact_on_kit_and_after_surgery(omni_kit, omni_model, tmp_path):
    from iwslt_mc.planning.planner import Spec

    model_dir = omni_kit[0] / "model"
    base = FAM.plain_config(json.loads((model_dir / "config.json").read_text()))
    pred = FAM.predict(Spec(precision="fp32"), base, "2025")
    assert (pred.bytes, pred.params) == ((model_dir / "model.safetensors").stat().st_size, 528_320)
    new, kept = surgery.remove_llm_layers(omni_model, [1, 2])
    new, _ = surgery.remove_audio_layers(new, [0])
    keep = sorted(set(range(600)) | surgery.config_ids(omni_model.config.to_dict()))
    new, _ = surgery.select_vocab(new, keep)
    new.save_pretrained(tmp_path / "s")
    pred = FAM.predict(Spec(precision="fp32", llm_layers=2, audio_layers=1, vocab=len(keep)), base, "2025")
    assert kept == [0, 3] and pred.bytes == (tmp_path / "s" / "model.safetensors").stat().st_size
    assert pred.params == sum(p.numel() for p in new.parameters())


def test_plain_config_defaults_are_transformers_defaults():
    from transformers import Qwen2_5OmniAudioEncoderConfig, Qwen2_5OmniTextConfig, Qwen2_5OmniVisionEncoderConfig

    for defaults, cls in ((plan.TEXT_DEFAULTS, Qwen2_5OmniTextConfig), (plan.AUDIO_DEFAULTS, Qwen2_5OmniAudioEncoderConfig),
                          (plan.VISION_DEFAULTS, Qwen2_5OmniVisionEncoderConfig)):
        c = cls()
        assert {k: getattr(c, k) for k in defaults} == defaults
    with pytest.raises(ValueError, match=r"text_config.hidden_size is 0, not a positive integer"):
        plan.plain_config({"model_type": "qwen2_5_omni_thinker", "text_config": {"hidden_size": 0}})


@pytest.mark.parametrize("tied", [False, True])
def test_7b_inventory_matches_the_meta_model(tied):
    """The real Qwen2.5-Omni-7B thinker layout (tied too, as a 3B-style config): every key and shape of the
    model transformers builds on the meta device, as save_pretrained would write it."""
    import torch
    from transformers import Qwen2_5OmniThinkerConfig
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    ref = json.loads(json.dumps(plan.REFERENCE_7B))
    ref["tie_word_embeddings"] = ref["text_config"]["tie_word_embeddings"] = tied
    with torch.device("meta"):
        model = FAM.loader_class()._from_config(Qwen2_5OmniThinkerConfig.from_dict(ref))
    sd = revert_weight_conversion(model, remove_tied_weights_from_state_dict(model.state_dict(), model))
    mine = plan.inventory(plan.plain_config(ref))
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: s for k, s, *_ in mine}
    n = sum(p.numel() for p in model.parameters())
    assert plan.param_count(plan.plain_config(ref)) == n == (8_386_816_512 if tied else 8_931_813_888)




# ------------------------------------------------------------------ surgery


def test_surgery_reloads_and_keeps_the_kept_weights(omni_model, tmp_path):
    import torch

    new, kept = surgery.remove_llm_layers(omni_model, [0, 2])
    new.save_pretrained(tmp_path / "p")
    back = FAM.loader_class().from_pretrained(tmp_path / "p").eval()
    assert back.config.text_config.num_hidden_layers == 2 and kept == [1, 3]
    a = omni_model.model.language_model.layers[3].mlp.up_proj.weight
    assert torch.equal(back.model.language_model.layers[1].mlp.up_proj.weight, a)
    # vocabulary: kept rows, renumbered ids, the same logits on the kept tokens
    keep = sorted(set(range(0, 1536, 3)) | surgery.config_ids(omni_model.config.to_dict()))
    small, old2new = surgery.select_vocab(omni_model, keep)
    assert small.config.audio_token_index == old2new[omni_model.config.audio_token_index]
    assert small.generation_config.eos_token_id == [old2new[i] for i in omni_model.generation_config.eos_token_id]
    assert omni_model.generation_config.eos_token_id == [1538, 1536]  # the input model's ids are untouched
    ids = [1537, 3, 30, 300, 1538]
    with torch.no_grad():
        la = omni_model(input_ids=torch.tensor([ids])).logits[0][:, keep]
        lb = small(input_ids=torch.tensor([[old2new[i] for i in ids]])).logits[0]
    assert torch.allclose(la, lb, atol=1e-6)
    from iwslt_mc.errors import UserError

    with pytest.raises(UserError, match=r"LLM layers to remove \[0, 1, 2, 3\]: the model has 4 \(0..3\), at least one must stay"):
        surgery.remove_llm_layers(omni_model, [0, 1, 2, 3])


def test_component_rules_cover_disk_memory_and_full_checkpoint_names():
    c = FAM.component_for_key
    assert [c(k) for k in ("audio_tower.proj.weight", "model.audio_tower.proj.bias", "thinker.audio_tower.layers.3.fc1.weight",
                           "visual.merger.mlp.0.weight", "model.layers.5.mlp.up_proj.weight",
                           "model.language_model.layers.5.self_attn.q_proj.bias", "thinker.model.embed_tokens.weight",
                           "lm_head.weight", "model.norm.weight")] == [
        "projector", "projector", "audio_encoder", "vision_encoder", "llm_layers", "llm_layers", "embed_tokens", "lm_head", "other"]


# ------------------------------------------------------------------ through the CLI (the registry line)



def test_registered_and_found_by_model_type(omni_kit, capsys):
    from iwslt_mc.cli import main
    from iwslt_mc.families import family_for, family_named

    assert family_for(omni_kit[0] / "model").name == "qwen2_5_omni" and family_named("qwen2_5_omni").label == "Qwen2.5-Omni"
    assert main(["ls", "--json"]) == 0
    fams = {r["name"]: r["family"] for r in json.loads(capsys.readouterr().out)}
    assert fams["qwen2_5_omni-medium"] == fams["qwen2_5_omni-int8"] == "qwen2_5_omni"


def test_size_and_plan_on_kit_are_exact(omni_kit, capsys):
    """`size`: the file's bytes, the parameters and the organizers' torch.save measure (equal to a real
    torch.save); `plan --base KIT`: the same numbers before anything is built."""
    from iwslt_mc.cli import main

    model_dir = omni_kit[0] / "model"
    assert main(["size", str(model_dir), "--json"]) == 0
    size = json.loads(capsys.readouterr().out)
    assert (size["bytes"], size["params"]) == ((model_dir / "model.safetensors").stat().st_size, 528_320)
    assert size["torch_save"]["bytes_cpu_load"] == _real_torch_save_bytes(model_dir)
    assert size["components"]["projector"] == {"params": 4160, "bytes": 16640}
    assert main(["plan", "--base", str(model_dir), "--precision", "fp32", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert (pred["bytes"], pred["params"]) == (size["bytes"], size["params"])
    assert pred["torch_save"]["bytes"] == size["torch_save"]["bytes"]


def test_plan_recipes_on_the_7b_layout(tmp_path, capsys):
    """`plan RECIPE --base DIR` on a config-only Qwen2.5-Omni-7B thinker: the recipes' dims and sizes."""
    from transformers import Qwen2_5OmniThinkerConfig

    from iwslt_mc.cli import main

    d = tmp_path / "Qwen2.5-Omni-7B-thinker"
    d.mkdir()
    cfg = Qwen2_5OmniThinkerConfig.from_dict(plan.REFERENCE_7B)
    cfg.dtype = "bfloat16"
    (d / "config.json").write_text(cfg.to_json_string(use_diff=False))
    assert main(["plan", "--base", str(d), "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert base["params"] == 8_931_813_888 and base["bytes"] == 17_863_779_976
    out = {}
    for name in ("qwen2_5_omni-medium", "qwen2_5_omni-int8"):
        assert main(["plan", name, "--base", str(d), "--json"]) == 0
        out[name] = json.loads(capsys.readouterr().out)
    assert out["qwen2_5_omni-medium"]["dims"]["llm_layers"] == 21 and out["qwen2_5_omni-int8"]["dims"]["llm_layers"] == 28
    assert out["qwen2_5_omni-medium"]["torch_save"]["bytes"] == 3_447_445_091
    assert out["qwen2_5_omni-int8"]["torch_save"]["bytes"] == 8_089_173_591


def test_build_smoke_decode_and_package(omni_kit, tmp_path, capsys):
    """`build qwen2_5_omni-medium --smoke` on the kit: prune-layers (middle), LoRA finetune (merged),
    trim-vocab, NF4 with double quantization; the planner's prediction; then decode and package."""
    from iwslt_mc.cli import main

    out, _ = omni_kit
    assert main(["build", "qwen2_5_omni-medium", "--lang", "en-de", "--base", str(out / "model"), "--data",
                 str(out / "data"), "--smoke", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    model = tmp_path / "b" / "model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 3 and cfg["text_config"]["vocab_size"] < 1600
    assert cfg["quantization_config"]["bnb_4bit_quant_type"] == "nf4" and cfg["quantization_config"]["bnb_4bit_use_double_quant"]
    techniques = [t for r in json.loads((model / "provenance.json").read_text())["stages"] for t in r.get("techniques", [])]
    assert any(t.startswith("layer pruning: 1 of 4 Qwen2.5-Omni LLM layers removed (middle block: 1)") for t in techniques)
    assert any("LoRA adapters merged" in t for t in techniques) and any(t.startswith("vocabulary trimming") for t in techniques)
    final = json.loads((tmp_path / "b" / "build.json").read_text())["final"]
    assert final["bytes"] == (model / "model.safetensors").stat().st_size and final["params"] == 373_824
    assert abs(final["predicted_bytes"] - final["bytes"]) <= 8  # NF4 + double quantization: quant_state JSON digits
    # the torch.save measure of the quantized model equals a real torch.save of it
    assert main(["size", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["torch_save"]["bytes_cpu_load"] == _real_torch_save_bytes(model)
    # decode a test set, then package it
    hyp = tmp_path / "hyp" / "acl.de"
    assert main(["decode", str(model), "--lang", "en-de", "--audio", str(out / "data" / "testsets" / "KITCLIPS"),
                 "--out", str(hyp), "--max-new-tokens", "4", "--no-progress"]) == 0
    assert len(hyp.read_text("utf-8").splitlines()) == 3
    capsys.readouterr()
    assert main(["package", str(model), "--team", "KIT", "--lang", "en-de", "--condition", "constrained", "--type",
                 "primary", "--hyp", f"acl={hyp}", "--segments", "acl=3", "--partial", "--out", str(tmp_path / "subs")]) == 0
    sub = tmp_path / "subs" / "KIT_IWSLT27_ModelCompression_en-de_constrained_primary"
    desc = (sub / "description.txt").read_text("utf-8")
    assert "Base model: tiny random Qwen2.5-Omni" in desc and "layer pruning: 1 of 4 Qwen2.5-Omni LLM layers" in desc
    assert main(["check", str(sub)]) == 0


def test_prune_llm_and_audio_layers_through_stage(omni_kit, tmp_path, capsys):
    """LLM and audio-encoder layers in one prune-layers run, through the CLI (quantize and one kind of layer at a
    time: test_family_stages, every family)."""
    from iwslt_mc.cli import main

    model_dir = omni_kit[0] / "model"
    assert main(["stage", "prune-layers", "--in", str(model_dir), "--out", str(tmp_path / "pa"),
                 "--set", "audio_layers=[1]", "--set", "llm_layers=[0,3]"]) == 0
    cfg = json.loads((tmp_path / "pa" / "config.json").read_text())
    assert (cfg["text_config"]["num_hidden_layers"], cfg["audio_config"]["encoder_layers"]) == (2, 1)






def test_int8_recipe_try_line_builds_with_smoke(omni_kit, tmp_path, capsys):
    """The `# Try:` command of qwen2_5_omni-int8 (trim-vocab, LLM.int8) on the kit; the prediction is exact."""
    import shlex

    from iwslt_mc.cli import main
    from iwslt_mc.recipes import recipe_path

    line = next(ln for ln in recipe_path("qwen2_5_omni-int8").read_text("utf-8").splitlines() if ln.startswith("# Try:"))
    args = [a.replace("/tmp/okit/", f"{omni_kit[0]}/") for a in shlex.split(line.split("&&")[-1])][1:]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    final = json.loads((tmp_path / "b" / "build.json").read_text())["final"]
    assert final["predicted_bytes"] == final["bytes"] == (tmp_path / "b" / "model" / "model.safetensors").stat().st_size
    cfg = json.loads((tmp_path / "b" / "model" / "config.json").read_text())
    assert cfg["quantization_config"]["load_in_8bit"] and cfg["text_config"]["vocab_size"] < 1600
