"""Gemma 4 through quantize, finetune (full, LoRA), distill and package (IWSLT27), on the Gemma 4 kit.

The kit is random and tiny: what is tested is that the machinery is right for this family (the
organizers' prompt in the training examples, labels masked on it, the tied lm_head left alone, a
quantized or trained output that reloads with ``from_pretrained`` alone and decodes), not quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iwslt_mc.training import data, training
from iwslt_mc import modelio
from iwslt_mc.sizing import sizer
from iwslt_mc.errors import UserError
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage

from conftest import TrainingInterrupted, stop_at_step

QUIET = dict(device="cpu", log=lambda *a: None)
FAST = {"batch_size": 1, "limit": 4, "scheduler": "constant", "progress": False}


@pytest.fixture(scope="module")
def gkit(gemma_kit):
    """The session's Gemma 4 kit (conftest), read-only."""
    return gemma_kit[0]


pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared; 1 thread also makes training runs repeatable


def _plain_reload(path):
    """``from_pretrained`` alone (the family's class, as the organizers load Gemma 4); for 4-bit layers the
    per-layer CPU path is then fitted as ``load_model`` does (the kit's narrow layers cannot take the repack)."""
    from transformers import AutoModelForMultimodalLM

    model = AutoModelForMultimodalLM.from_pretrained(str(path)).eval()
    modelio.fit_4bit_cpu_path(model)
    return model


@pytest.fixture(scope="module")
def inputs(gkit):
    from iwslt_mc.decoding.audio import load_audio
    from iwslt_mc.families import prompt_text

    proc = modelio.load_processor(gkit / "model")
    wave = load_audio(str(gkit / "data" / "testsets" / "KITCLIPS" / "clip-a.wav"))
    return proc(text=prompt_text(proc, "en-de"), audio=wave, sampling_rate=16000, return_tensors="pt")


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------------------------------- quantize

@pytest.mark.parametrize("method,skip,quantized", [("nf4", ["lm_head"], 67), ("int8", ["lm_head", "audio_tower"], 43)])
def test_quantize_bnb_reloads_with_from_pretrained_alone(gkit, tmp_path, inputs, method, skip, quantized):
    from iwslt_mc.stages.quantize import quantize_model

    pytest.importorskip("bitsandbytes")
    out = tmp_path / method
    rec = run_stage(make_stage("quantize", {"method": method, "skip": skip}), gkit / "model", out, StageContext(**QUIET))
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "bitsandbytes" and q["load_in_4bit" if method == "nf4" else "load_in_8bit"]
    reloaded = _plain_reload(out)
    lm = reloaded.model.language_model
    kind = "Linear4bit" if method == "nf4" else "Linear8bitLt"
    assert type(lm.layers[0].mlp.up_proj).__name__ == kind and type(lm.layers[0].per_layer_projection).__name__ == kind
    assert type(reloaded.model.vision_tower.encoder.layers[0].mlp.up_proj.linear).__name__ == kind
    audio_linear = type(reloaded.model.audio_tower.layers[0].feed_forward1.ffw_layer_1.linear).__name__
    assert audio_linear == (kind if "audio_tower" not in skip else "Linear")
    assert reloaded.lm_head.weight is lm.embed_tokens.weight  # still tied, not quantized
    assert rec["quantized_linear_layers"] == quantized
    # reloaded == a fresh quantization of the same input (with these skips; the stage's defaults on every family,
    # sizes summing to the file and generation: test_family_stages)
    fresh = quantize_model(gkit / "model", {"method": method, "skip": skip})
    assert torch.equal(_logits(reloaded, inputs), _logits(fresh, inputs))
    # the embedding tables (token, per-layer) are stored as they were; the tied lm_head is not stored
    before, after = sizer.measure(gkit / "model"), sizer.measure(out)
    for comp in ("embed_tokens", "per_layer_embeddings"):
        assert after.components[comp]["params"] == before.components[comp]["params"]
    assert after.components["embed_tokens"]["bytes"] == before.components["embed_tokens"]["bytes"]
    assert after.components["lm_head"]["bytes"] == 0


def test_quantize_ct_reloads_and_quantizes_tied_embeddings_once(gkit, tmp_path, inputs):
    from iwslt_mc.quantization import formats as quant_formats
    from iwslt_mc.stages.quantize import QuantizeOptions

    pytest.importorskip("compressed_tensors")
    ct = {"method": "ct", "bits": 4, "group_size": 8, "symmetric": True}
    out = tmp_path / "ct4"
    rec = run_stage(make_stage("quantize", ct), gkit / "model", out, StageContext(**QUIET))
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    w = _weights(out)
    up = "model.language_model.layers.0.mlp.up_proj."
    assert w[up + "weight_packed"].dtype == torch.int32 and tuple(w[up + "weight_packed"].shape) == (128, 64 * 4 // 32)
    assert "model.language_model.embed_tokens.weight" in w and not any(k.startswith("lm_head") for k in w)
    # reloaded == the in-memory quantization, planned and measured exactly: test_family_stages (every family)
    assert rec["quantized_linear_layers"] == 67
    # the token embeddings are lm_head (tied): with quantize_embeddings the one matrix is packed once, and the
    # checkpoint stays tied (no lm_head key) and reloads with from_pretrained alone to the same logits
    emb = dict(ct, quantize_embeddings=True)
    run_stage(make_stage("quantize", emb), gkit / "model", tmp_path / "e", StageContext(**QUIET))
    we = _weights(tmp_path / "e")
    assert "model.language_model.embed_tokens.weight_packed" in we and not any(k.startswith("lm_head") for k in we)
    assert "model.language_model.embed_tokens.weight" not in we
    before_e, _ = quant_formats.ct_quantize(gkit / "model", QuantizeOptions.from_dict(emb), log=lambda *a: None)
    assert torch.equal(_logits(_plain_reload(tmp_path / "e"), inputs), _logits(before_e, inputs))
    assert sizer.measure(tmp_path / "e").bytes < sizer.measure(out).bytes


# ---------------------------------------------------------------------------------------- training data

def test_training_examples_use_the_organizers_prompt(gkit):
    """Gemma 4's prompt in a training example: the organizers' words, no thinking turn, ``<turn|>`` ending the
    target; 128-bin audio features (the masking, token-aligned inputs and padded batches of every family:
    tests/training/test_family_training.py)."""
    from iwslt_mc.families.gemma4.prompt import organizers_prompt

    proc = modelio.load_processor(gkit / "model")
    tok = proc.tokenizer
    ex = data.load_examples(gkit / "data", "test")[0]
    it = training.encode_example(proc, ex.waveform(), ex.text_de, "en-de")
    n = it["labels"].count(training.IGNORE_INDEX)
    prompt = tok.decode(it["input_ids"][:n])
    assert prompt.startswith("<bos><|turn>user\n" + organizers_prompt("en-de") + "<|audio>")
    assert prompt.endswith("<audio|><turn|>\n<|turn>model\n")  # enable_thinking=False: no thinking turn
    assert "<|think|>" not in prompt
    assert tok.decode(it["labels"][n:]) == ex.text_de + "<turn|>"  # ends the model's turn, as the template does
    assert "mm_token_type_ids" in it
    assert it["input_features"].shape[1] == 128 and it["input_features_mask"].shape == it["input_features"].shape[:1]


# ---------------------------------------------------------------------------------------- finetune

def _losses(out) -> list[float]:
    return [h["loss"] for h in json.loads((out / training.HISTORY_NAME).read_text())["history"]]


def _finetune(gkit, out, options, data_spec=None):
    ctx = StageContext(lang="en-de", data=[str(data_spec or gkit / "data")], **QUIET)
    return run_stage(make_stage("finetune", options), gkit / "model", out, ctx)


def _decodes(model_dir, gkit, n=6) -> bool:
    """The model decodes a clip: ``n`` new tokens, or fewer ending with the end of the model's turn (which a
    model trained on targets ending with ``<turn|>`` soon learns to emit)."""
    from iwslt_mc.decoding.audio import load_audio
    from iwslt_mc.decoding.core import reference_one

    model, proc = modelio.load_model(model_dir, device="cpu"), modelio.load_processor(model_dir)
    wave = load_audio(str(gkit / "data" / "testsets" / "KITCLIPS" / "clip-b.wav"))
    toks = reference_one(model, proc, wave, "en-de", max_new_tokens=n).tokens
    return len(toks) == n or (0 < len(toks) < n and toks[-1] == proc.tokenizer.convert_tokens_to_ids("<turn|>"))


@pytest.fixture(scope="module")
def full_ft(gkit, tmp_path_factory):
    """The kit fully fine-tuned for 30 steps with its vision encoder frozen: (output dir, provenance record)."""
    out = tmp_path_factory.mktemp("gemma4full") / "full"
    return out, _finetune(gkit, out, dict(FAST, mode="full", lr=5e-3, max_steps=30, freeze=["vision_encoder"]))


def test_full_finetune_lowers_loss_keeps_frozen_vision_and_reloads(gkit, full_ft):
    out, rec = full_ft
    losses = _losses(out)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.6 * losses[0], losses
    assert losses[0] == pytest.approx(np.log(1856), abs=0.1)  # a random model starts at the uniform distribution
    old, new = _weights(gkit / "model"), _weights(out)
    assert sorted(old) == sorted(new) and not any(k.startswith("lm_head") for k in new)  # tied: not stored
    vision = [k for k in old if ".vision_tower." in k or ".embed_vision." in k]
    assert vision and all(torch.equal(old[k], new[k]) for k in vision)  # frozen
    assert not torch.equal(old["model.language_model.embed_tokens.weight"], new["model.language_model.embed_tokens.weight"])
    model = _plain_reload(out)
    total = sum(p.numel() for p in model.parameters())
    assert rec["train"]["trainable_params"] == total - sum(old[k].numel() for k in vision)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert _decodes(out, gkit)
    # the tied lm_head is the token embeddings' tensor: freezing lm_head freezes it (named once, as embed_tokens)
    from iwslt_mc.training.common import freeze_components

    assert freeze_components(model, ["lm_head"]) == 1856 * 64
    assert not model.model.language_model.embed_tokens.weight.requires_grad
    with pytest.raises(UserError, match=r"^stage finetune: cannot freeze 'vision_encoder': Qwen2-Audio models have no"):
        make_stage("finetune", {"freeze": ["vision_encoder"]}).check(
            Path(__file__).parents[1] / "fixtures" / "toy" / "teacher", StageContext(lang="en-de", data=["x"]))


def test_lora_lowers_loss_leaves_embeddings_and_refuses_a_tied_lm_head(gkit, tmp_path):
    lora = dict(FAST, mode="lora", lr=5e-2, max_steps=30, lora_r=16, lora_alpha=32, target_modules=".*language_model.*_proj")
    out = tmp_path / "lora"
    rec = _finetune(gkit, out, lora)
    losses = _losses(out)
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.1, losses
    assert rec["techniques"] == ["LoRA fine-tuning (r 16, alpha 32, rsLoRA, targets .*language_model.*_proj; lr 0.05; "
                                 "batch 1; constant; 30 steps)", "LoRA adapters merged into the base model"]
    old, new = _weights(gkit / "model"), _weights(out)
    changed = sorted(k for k in old if not torch.equal(old[k], new[k]))
    assert changed and all(".language_model.layers." in k or "per_layer_model_projection" in k for k in changed)
    assert "model.language_model.layers.0.mlp.down_proj.weight" in changed
    assert _decodes(out, gkit)
    with pytest.raises(UserError, match=r"^stage finetune: LoRA target_modules .* adapt lm_head, which .* ties to the "
                                        r"token embeddings \(merging would change both\); leave lm_head out$"):
        _finetune(gkit, tmp_path / "tied", dict(lora, max_steps=1, target_modules=".*(language_model.*_proj|lm_head)"))
    assert not (tmp_path / "tied").exists()


# ---------------------------------------------------------------------------------------- distill

def test_distill_with_a_gemma_teacher_then_finetune_on_its_pairs(gkit, tmp_path):
    out = tmp_path / "distilled"
    rec = run_stage(make_stage("distill", {"limit": 4, "max_new_tokens": 6, "batch_size": 4}), gkit / "model", out,
                    StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET))
    rows = data.load_examples(out / "distill_data")
    # 4 teacher pairs (that they are the model's own greedy decode: test_family_stages, every family)
    assert rec["distill"]["teacher_pairs"] == 4
    ft = tmp_path / "student"
    frec = _finetune(gkit, ft, dict(FAST, mode="full", lr=5e-3, max_steps=30, split=None, limit=None),
                     data_spec=out / "distill_data")
    assert frec["train"]["examples"] == len(rows)
    losses = _losses(ft)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * losses[0], losses
    assert _decodes(ft, gkit)


# ---------------------------------------------------------------------------------------- kd (word level)

def test_word_level_kd_lowers_kl_resumes_and_refuses_what_it_cannot(gkit, full_ft, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    teacher = full_ft[0]
    opts = dict(FAST, teacher=str(teacher), alpha=1.0, temperature=1.0, lr=5e-3, max_steps=8, save_steps=3)

    def kd(out):
        return run_stage(make_stage("kd", opts), gkit / "model", out,
                         StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET))

    rec = kd(tmp_path / "straight")
    kl = [json.loads(line)["kl"] for line in (tmp_path / "straight" / "kd_history.jsonl").read_text().splitlines()]
    assert len(kl) == 8 and kl[-1] < 0.5 * kl[0], kl  # the random student moves toward the fine-tuned teacher
    assert rec["techniques"][0].startswith("knowledge distillation from a teacher in the same process (word-level KL")

    orig = training.parts_recorder
    monkeypatch.setattr(training, "parts_recorder", lambda w, p: stop_at_step(5))
    with pytest.raises(TrainingInterrupted):
        kd(tmp_path / "resumed")
    # the checkpoint holds the tied embeddings once (safetensors refuses a tensor under two names)
    assert sorted(p.name for p in (tmp_path / "resumed.work" / "checkpoints").iterdir()) == ["checkpoint-3"]
    monkeypatch.setattr(training, "parts_recorder", orig)
    assert kd(tmp_path / "resumed")["train"]["resumed_from"].endswith("checkpoint-3")
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    ctx = StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET)
    # hidden-state KD (hidden_weight > 0) runs on Gemma 4: tests/families/test_gemma4_stages.py
    qwen = Path(__file__).parents[1] / "fixtures" / "toy" / "teacher"
    with pytest.raises(UserError, match=r"^stage kd: teacher .* is a Qwen2-Audio model and the student .* a Gemma 4 model"):
        run_stage(make_stage("kd", dict(opts, teacher=str(qwen))), gkit / "model", tmp_path / "q", ctx)
    assert not (tmp_path / "q").exists()


# ---------------------------------------------------------------------------------------- package

# the IWSLT 2027 package of a decode: test_family_stages.test_package_iwslt27_of_a_decode (every family)


def test_package_names_the_base_model_by_family(gkit, tmp_path):
    from iwslt_mc.sizing import track
    from iwslt_mc.submission import description as sub_desc

    ed = track.get_edition("2027")
    stages = [{"stage": "quantize"}]
    base = sub_desc.model_base
    assert base(gkit / "model", {"stages": [{"stage": "kit"}]}, ed) == "tiny random Gemma 4 (the iwslt-mc demo kit)"
    assert base(gkit / "model", {"base": {"path": "/models/gemma-4-12B-it"}, "stages": stages}, ed) == "google/gemma-4-12B-it"
    # a Gemma 4 model is never named after a Qwen2-Audio folder, nor the other way round
    assert base(gkit / "model", {"base": {"path": "/m/Qwen2-Audio-7B-Instruct"}, "stages": stages}, ed) == "a Gemma 4 model (model_type gemma4)"
    qwen = Path(__file__).parents[1] / "fixtures" / "toy" / "teacher"
    assert base(qwen, {"base": {"path": "/m/Qwen2-Audio-7B-Instruct"}, "stages": stages}, ed) == "Qwen/Qwen2-Audio-7B-Instruct"
