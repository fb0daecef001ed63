"""Fine-tuning on the kit: label masking, loss drops (full, LoRA, QLoRA), exact resume, merge, DDP, bad data.

The kit model is random and tiny, so the settings differ from the published ones (lr 5e-3 on 4
utterances, batch 1): what is tested is that the machinery learns, resumes and merges exactly.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iwslt_mc.training import data, training
from iwslt_mc.errors import InputFileError, UserError
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage

from conftest import TrainingInterrupted, stop_at_step

# constant lr: the cosine decay stalls the tiny random model at its unigram plateau (~4 nats)
FAST = {"batch_size": 1, "limit": 4, "lr": 5e-3, "scheduler": "constant", "progress": False}
LLM_LORA = {"lora_r": 16, "lora_alpha": 32, "target_modules": r".*(language_model.*_proj|lm_head)"}
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared; 1 thread is also what makes runs repeatable


def _finetune(kit, out: Path, options: dict, data_spec=None, lang="en-de"):
    ctx = StageContext(lang=lang, data=[str(data_spec or kit / "data")], device="cpu", log=lambda m: None)
    return run_stage(make_stage("finetune", options), kit / "model", out, ctx)


def _losses(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / training.HISTORY_NAME).read_text())["history"]]


def _batch(kit, processor, n=2):
    exs = data.load_examples(kit / "data", "test")[:n]
    items = [training.encode_example(processor, e.waveform(), e.text_de, "en-de") for e in exs]
    b = training.Collator(training.pad_token_id(processor))(items)
    b.pop("labels")
    return b


def _logits(model, batch):
    import torch

    with torch.no_grad():
        return model(**batch).logits


def test_labels_masked_through_the_assistant_header(kit, kit_processor):
    from iwslt_mc.families import prompt_text

    ex = data.load_examples(kit / "data")[0]
    item = training.encode_example(kit_processor, ex.waveform(), ex.text_de, "en-de")
    tok = kit_processor.tokenizer
    prompt = kit_processor(text=prompt_text(kit_processor, "en-de"), audio=ex.waveform(), sampling_rate=16000,
                           return_tensors="pt")["input_ids"][0].tolist()
    # the prompt masked, the target ending the turn, on every family: tests/training/test_family_training.py
    header = len(prompt) - prompt[::-1].index(tok.convert_tokens_to_ids("<|im_start|>")) - 1
    assert tok.decode(prompt[header:]) == "<|im_start|>assistant\n"  # the prompt ends with the assistant header
    assert tok.decode(item["labels"][len(prompt):]) == ex.text_de + "<|im_end|>"
    assert item["input_features"].shape == (128, 3000) and int(item["feature_attention_mask"].sum()) == len(ex.waveform()) // 160
    b = training.Collator(training.pad_token_id(kit_processor))([item, training.encode_example(
        kit_processor, ex.waveform()[:16000], "Ja.", "en-de")])
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
    short = int(b["attention_mask"][1].sum())
    assert (b["labels"][1, short:] == training.IGNORE_INDEX).all() and (b["input_ids"][1, short:] == tok.pad_token_id).all()


def test_full_finetuning_lowers_loss_and_logs(kit, tmp_path):
    from iwslt_mc.modelio import load_model

    out = tmp_path / "full"
    rec = _finetune(kit, out, dict(FAST, mode="full", max_steps=60, freeze=["audio_encoder"]))
    losses = _losses(out)
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.5 * losses[0], losses
    assert rec["train"]["steps"] == 60 and rec["train"]["first_loss"] == losses[0]
    assert rec["train"]["trainable_params"] < 594_304  # the audio encoder stayed frozen
    assert rec["techniques"][0].startswith("full fine-tuning (lr 0.005; batch 1; constant; 60 steps")
    log = (out / training.LOG_NAME).read_text()
    assert "train begin: 60 steps" in log and "step 60/60" in log and "train end" in log
    assert not (tmp_path / "full.work").exists()  # checkpoints removed after success
    trained, base = load_model(out), load_model(kit / "model")
    sd, sd0 = trained.state_dict(), base.state_dict()
    changed = [k for k in sd if not (sd[k] == sd0[k]).all()]
    assert changed and not any("audio_tower" in k for k in changed)


def test_lora_lowers_loss_and_merge_gives_the_adapter_logits(kit, kit_processor, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from iwslt_mc.modelio import load_model

    out = tmp_path / "lora"
    rec = _finetune(kit, out, dict(FAST, **LLM_LORA, mode="lora", max_steps=80, merge=False))
    losses = _losses(out)
    assert np.mean(losses[-10:]) < 0.6 * losses[0], losses
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert "LoRA fine-tuning (r 16, alpha 32, rsLoRA" in rec["techniques"][0]

    merged_dir = tmp_path / "merged"
    mrec = run_stage(make_stage("merge", {}), out, merged_dir, StageContext(device="cpu", log=lambda m: None))
    assert mrec["merged"]["r"] == 16 and not (merged_dir / "adapter").exists()
    batch = _batch(kit, kit_processor)
    adapted = PeftModel.from_pretrained(load_model(out), str(out / "adapter")).eval()
    merged = load_model(merged_dir)
    base = load_model(kit / "model")
    la, lm, lb = _logits(adapted, batch), _logits(merged, batch), _logits(base, batch)
    assert (la - lb).abs().max() > 1e-2  # the adapter really changes the model
    # fp32: x@(W + sBA) and x@W + s(x@A)@B round differently; measured mean ~1e-6, max ~5e-5 at |logits| ~ 9
    assert (la - lm).abs().mean() < 1e-5 and (la - lm).abs().max() < 1e-4
    # the merged weights are W + (alpha / sqrt(r)) B A (rsLoRA), computed here in fp64 from the adapter file
    lora = load_file(out / "adapter" / "adapter_model.safetensors")
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    names = [k[len("base_model.model."):-len(".lora_A.weight")] for k in lora if k.endswith(".lora_A.weight")]
    assert len(names) == 4 * 7 + 1  # q k v o gate up down in 4 layers, and lm_head
    for n in names:
        a_, b_ = (lora[f"base_model.model.{n}.lora_{x}.weight"].double() for x in "AB")
        want = base_sd[f"{n}.weight"].double() + 32 / 16 ** 0.5 * (b_ @ a_)
        assert (merged_sd[f"{n}.weight"].double() - want).abs().max() < 1e-6, n
    assert type(merged).__name__ == "Qwen2AudioForConditionalGeneration"


def _trained_4bit_state(monkeypatch) -> dict:
    """Wrap ``training.train`` to record the 4-bit state of the model the finetune stage actually trained,
    right after training (the merge that follows dequantizes it in place)."""
    from bitsandbytes.nn import Linear4bit

    from iwslt_mc.training.common import repacked_layers

    seen = {}
    real_train = training.train

    def train(model, *args, **kwargs):
        result = real_train(model, *args, **kwargs)
        qc = model.get_base_model().config.quantization_config
        seen["config"] = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc)
        seen["layers"] = {n: (m.weight.dtype, m.weight.quant_state) for n, m in model.named_modules()
                          if isinstance(m, Linear4bit)}
        seen["repacked"] = repacked_layers(model)
        return result

    monkeypatch.setattr(training, "train", train)
    return seen


def test_qlora_lowers_loss_and_merges_into_a_plain_model(kit, kit_processor, tmp_path, monkeypatch, bnb_cpu_path):
    import torch

    from iwslt_mc.modelio import load_model

    out = tmp_path / "qlora"
    seen = _trained_4bit_state(monkeypatch)
    rec = _finetune(kit, out, dict(FAST, **LLM_LORA, mode="qlora", max_steps=80))
    # the model that trained (before the merge) was NF4 with double quantization, layer by layer
    qc = seen["config"]
    assert qc["load_in_4bit"] and qc["bnb_4bit_quant_type"] == "nf4" and qc["bnb_4bit_use_double_quant"] is True
    q4 = seen["layers"]
    assert len(q4) == 2 * 6 + 4 * 7 + 1  # audio q/k/v/out/fc1/fc2, LLM q/k/v/o/gate/up/down, projector (lm_head skipped)
    for n, (dtype, qs) in q4.items():
        assert qs.quant_type == "nf4" and qs.blocksize == 64 and dtype == torch.uint8, n
        assert qs.nested and qs.state2 is not None and qs.state2.blocksize == 256, n  # double quantization:
        assert qs.absmax.dtype == torch.uint8, n  # the absmax itself 8-bit quantized
    assert not any("lm_head" in n for n in q4)
    assert not seen["repacked"]  # training (grad) never takes the CPU repack path, even where forced
    losses = _losses(out)
    assert np.mean(losses[-10:]) < 0.6 * losses[0], losses
    # merged: dequantized NF4 + adapters, in the input's dtype, ready for a quantize stage
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert rec["bytes_after"] == rec["bytes_before"]
    model = load_model(out)
    assert not any(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.isfinite(_logits(model, _batch(kit, kit_processor, 1))).all()
    assert rec["techniques"] == ["QLoRA fine-tuning (4-bit NF4 with double quantization; r 16, alpha 32, rsLoRA, "
                                 "targets .*(language_model.*_proj|lm_head); lr 0.005; batch 1; constant; 80 steps)",
                                 "LoRA adapters merged into the base model"]


@pytest.mark.parametrize("options", [
    dict(mode="full", freeze=["audio_encoder"]),
    dict(LLM_LORA, mode="lora", lora_r=4, lora_alpha=8),
], ids=["full", "lora"])
def test_interrupted_run_resumes_to_the_same_weights(kit, tmp_path, monkeypatch, options):
    from safetensors.torch import load_file

    opts = dict(FAST, **options, batch_size=2, max_steps=8, save_steps=3, scheduler="cosine")  # scheduler state resumes too
    _finetune(kit, tmp_path / "straight", opts)
    orig = training.train
    monkeypatch.setattr(training, "train", functools.partial(orig, callbacks=[stop_at_step(5)]))
    with pytest.raises(TrainingInterrupted):
        _finetune(kit, tmp_path / "resumed", opts)
    assert not (tmp_path / "resumed").exists()
    assert sorted(p.name for p in (tmp_path / "resumed.work" / "checkpoints").iterdir()) == ["checkpoint-3"]
    monkeypatch.setattr(training, "train", orig)
    rec = _finetune(kit, tmp_path / "resumed", opts)
    assert rec["train"]["resumed_from"].endswith("checkpoint-3")
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not (a[k] == b[k]).all()] == []
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_run_on_cpu(kit, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "iwslt_mc", "stage", "finetune", "--in", str(kit / "model"), "--out", str(out),
           "--data", str(kit / "data"), "--device", "cpu", "--json",
           "--set", "max_steps=4", "--set", "batch_size=1", "--set", "limit=4", "--set", "lr=5e-3",
           "--set", "freeze=[audio_encoder]", "--set", "save_steps=2", "--set", "progress=false"]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "provenance.json").read_text())["stages"][-1]
    assert rec["train"]["processes"] == 2 and rec["train"]["steps"] == 4 and rec["train"]["epochs"] == 2.0
    # the loss is a per-token mean, not multiplied by the number of processes
    assert 6.5 < rec["train"]["first_loss"] < 8.0  # ln(1600) = 7.38 for the random kit model
    assert "2 process(es)" in (out / training.LOG_NAME).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no rank scratch or work dir left


def test_bad_data_fails_before_the_model_loads(kit, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from iwslt_mc import modelio

    table = pq.read_table(kit / "data" / "dev.parquet").to_pylist()
    table[5]["audio"] = {"bytes": b"\x00" * 100, "path": "x.wav"}
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "bad" / "dev.parquet")
    monkeypatch.setattr(modelio, "load_model", lambda *a, **k: pytest.fail("model loaded before the data check"))
    with pytest.raises(InputFileError) as e:
        _finetune(kit, tmp_path / "out", dict(FAST, mode="full", max_steps=2, limit=None, split=None),
                  data_spec=tmp_path / "bad")
    assert str(e.value).startswith(f"{tmp_path / 'bad' / 'dev.parquet'}: row 5: cannot decode audio")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()

    table[5] = pq.read_table(kit / "data" / "dev.parquet").to_pylist()[5]
    table[2]["text_de"] = ""
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "bad" / "dev.parquet")
    with pytest.raises(InputFileError, match=r"dev\.parquet: row 2: empty text_de"):
        _finetune(kit, tmp_path / "out", dict(FAST, mode="full", split=None), data_spec=tmp_path / "bad")
    with pytest.raises(InputFileError, match="no text_zh column"):
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "text_zh"} for r in table]),
                       tmp_path / "bad" / "dev.parquet")
        _finetune(kit, tmp_path / "out", dict(FAST, mode="full", split=None), data_spec=tmp_path / "bad", lang="en-zh")
    with pytest.raises(UserError, match="no training data"):
        run_stage(make_stage("finetune", {}), kit / "model", tmp_path / "out", StageContext(data=[]))


def test_options_defaults_validation_and_smoke():
    from iwslt_mc.stages.finetune import FinetuneOptions

    o = FinetuneOptions.from_dict({})
    assert (o.mode, o.batch_size, o.lr, o.scheduler, o.epochs, o.warmup_steps) == ("full", 4, 1e-5, "cosine", 3.0, 0)
    assert (o.lora_r, o.lora_alpha, o.rslora, o.lora_dropout, o.target_modules) == (64, 128, True, 0.0, "all-linear")
    assert (o.quant_type, o.double_quant, o.merge, o.split) == ("nf4", True, True, "train")
    assert FinetuneOptions.from_dict({"target_modules": "[q_proj, v_proj]"}).target_modules == ["q_proj", "v_proj"]
    s = FinetuneOptions.from_dict({"mode": "qlora", "warmup_steps": 50}).smoke()
    assert (s.max_steps, s.limit, s.lora_r, s.mode, s.warmup_steps) == (2, 4, 8, "qlora", 0)
    for bad, msg in [({"mode": "dora"}, "mode"), ({"lr": 0}, "lr"), ({"freeze": ["encoder"]}, "cannot freeze"),
                     ({"mode": "lora", "freeze": ["audio_encoder"]}, "mode full"), ({"scheduler": "cosinus"}, "scheduler"),
                     ({"target_modules": "("}, "invalid regex"), ({"learning_rate": 1}, "unknown option")]:
        with pytest.raises(UserError, match=msg):
            FinetuneOptions.from_dict(bad, stage="finetune")


def test_merge_stage_on_an_unmerged_qlora_output(kit, kit_processor, tmp_path, bnb_cpu_path):
    from peft import PeftModel

    from iwslt_mc.modelio import load_model
    from iwslt_mc.training.common import repacked_layers

    out = tmp_path / "q"
    _finetune(kit, out, dict(FAST, **LLM_LORA, mode="qlora", max_steps=6, merge=False))
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]  # the 4-bit base, kept
    assert cfg["bnb_4bit_quant_type"] == "nf4" and cfg["bnb_4bit_compute_dtype"] == "float32"  # CPU: fp32 compute
    run_stage(make_stage("merge", {}), out, tmp_path / "m", StageContext(device="cpu", log=lambda m: None))
    batch = _batch(kit, kit_processor, 1)

    def adapted(repack: bool):
        model = PeftModel.from_pretrained(load_model(out, device="cpu"), str(out / "adapter")).eval()
        if not repack:  # the numerics the adapters trained with: dequantize, fp32 matmul
            for m in model.modules():
                if hasattr(m, "support_avx512bf16_for_cpu"):
                    m.support_avx512bf16_for_cpu = False
        return _logits(model, batch), repacked_layers(model)

    lb = _logits(load_model(out, device="cpu"), batch)
    la, repacked = adapted(repack=False)
    assert not repacked
    merged = load_model(tmp_path / "m")
    assert "quantization_config" not in json.loads((tmp_path / "m" / "config.json").read_text())
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())
    lm = _logits(merged, batch)
    # dequantized NF4 + s*B*A is the model the adapters trained with: equal up to fp32 rounding
    assert (la - lb).abs().mean() > 1e-3
    assert (la - lm).abs().mean() < 1e-5 and (la - lm).abs().max() < 1e-4
    # the unmerged model on the forced CPU path: the repack (bf16 kernel) takes the layers whose shape allows
    # it (not the kit's 176-wide MLP) and stays within bf16 rounding of the merged model
    lp, repacked = adapted(repack=True)
    assert bool(repacked) == bnb_cpu_path and not any(".mlp." in n for n in repacked)
    assert (lp - lm).abs().max() < 0.02 * lm.abs().max()


def test_torn_checkpoint_is_skipped(tmp_path):
    """A kill while a checkpoint is written leaves it without trainer_state.json: resume uses the previous one."""
    from iwslt_mc.training.training import CHECKPOINTS, last_checkpoint

    d = tmp_path / CHECKPOINTS
    for step, complete in ((1, True), (2, True), (3, False)):
        c = d / f"checkpoint-{step}"
        c.mkdir(parents=True)
        (c / "model.safetensors").write_bytes(b"x")
        if complete:
            (c / "trainer_state.json").write_text('{"global_step": %d}' % step)
    (d / "checkpoint-4").mkdir()
    (d / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # torn JSON
    assert last_checkpoint(tmp_path) == str(d / "checkpoint-2")
    assert sorted(p.name for p in d.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert last_checkpoint(tmp_path / "none") is None


def test_checkpoints_of_another_training_run_are_refused_not_resumed(kit, tmp_path):
    """Checkpoints left in a work directory (a killed stage) and a rerun with another learning rate:
    one-line refusal naming the directory and what changed (resuming would mix two runs' weights);
    the same settings, a cosmetic option changed, resume."""
    from iwslt_mc import modelio
    from iwslt_mc.training import training
    from iwslt_mc.training.data import load_examples
    from iwslt_mc.errors import UserError

    model = modelio.load_model(kit / "model", dtype="float32", device="cpu")
    proc = modelio.load_processor(kit / "model")
    exs = load_examples(str(kit / "data"), limit=4)

    def settings(**kw):
        return training.TrainSettings(**{**dict(max_steps=2, batch_size=2, save_steps=1, lr=1e-5, device="cpu",
                                                progress=False), **kw})

    work = tmp_path / "w"
    training.train(model, proc, exs, "en-de", settings(), work_dir=work)
    assert (work / "run.json").exists() and training.last_checkpoint(work)
    with pytest.raises(UserError) as e:
        training.train(model, proc, exs, "en-de", settings(lr=2e-5), work_dir=work)
    msg = str(e.value)
    assert msg.startswith(f"{work}: holds checkpoints of a training run with other settings")
    assert "settings.lr" in msg and "remove that directory" in msg
    with pytest.raises(UserError, match="examples_sha256"):
        training.train(model, proc, exs[:3] + exs[:1], "en-de", settings(), work_dir=work)
    r = training.train(model, proc, exs, "en-de", settings(logging_steps=5), work_dir=work)
    assert r.resumed_from


def test_checkpointed_training_turns_the_text_configs_cache_off_and_back(kit, kit_processor, tmp_path):
    """With activation checkpointing, ``use_cache`` is off on the config the language model reads (Qwen2-Audio's
    text config; the top config has none), so transformers has nothing to switch off (and warn about); after
    training both are as before (the text config's True again, for decoding)."""
    from transformers import TrainerCallback

    from iwslt_mc.modelio import load_model

    model = load_model(kit / "model", dtype="fp32")
    text = model.config.get_text_config(decoder=True)
    assert text is not model.config and text.use_cache is True
    seen = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            seen.append((text.use_cache, model.config.use_cache, model.is_activation_checkpointing))

    exs = data.load_examples(kit / "data", "test")[:2]
    settings = training.TrainSettings(max_steps=2, batch_size=1, gradient_checkpointing=True, progress=False,
                                      device="cpu", save_steps=100)
    r = training.train(model, kit_processor, exs, "en-de", settings, work_dir=tmp_path / "w", callbacks=[Record()])
    assert r.steps == 2
    assert seen == [(False, False, True)] * 2
    assert (text.use_cache, model.config.use_cache) == (True, True)
