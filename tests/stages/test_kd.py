"""Word-level + hidden-state distillation (kd) and module replacement (replace-layers).

On the toy teacher (tests/fixtures/toy: a float16 Qwen2-Audio that really translates) and the kit:
losses fall, frozen parts stay bit-identical, a replaced block's output error falls, interrupted runs
resume to the same weights, outputs reload with ``from_pretrained`` alone, and bad options fail in one
line before any model is loaded. One thread: the machine is shared, and it is ~10x faster here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iwslt_mc.training import training
from iwslt_mc.errors import InputFileError, UserError
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage

from conftest import TrainingInterrupted, stop_at_step

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "toy"
TEACHER = FIXTURE / "teacher"
DATA = FIXTURE / "data"
REPO = Path(__file__).resolve().parents[2]
FAST = {"dtype": "float32", "batch_size": 4, "lr": 5e-4, "scheduler": "constant", "save_steps": 1000,
        "logging_steps": 1, "progress": False, "weight_decay": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(data=DATA, **kw):
    return StageContext(lang="en-de", data=[str(data)], device="cpu", seed=0, log=lambda m: None, **kw)


def _state(model_dir):
    from iwslt_mc import modelio

    return modelio.load_model(model_dir, dtype=None, device="cpu").state_dict()


def _parts(out_dir, name="kd_history.jsonl") -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The toy teacher without its two middle LLM layers (6 -> 4): the student of most tests."""
    out = tmp_path_factory.mktemp("kd") / "pruned"
    run_stage(make_stage("prune-layers", {"strategy": "middle", "remove": 2}), TEACHER, out, _ctx())
    return out


def _probe_kl(student_dir, teacher_dir, n=8) -> float:
    """Mean per-token KL(teacher || student) at temperature 1 on the first n training utterances."""
    import torch

    from iwslt_mc.training import data
    from iwslt_mc import modelio

    proc = modelio.load_processor(student_dir)
    s = modelio.load_model(student_dir, dtype=torch.float32, device="cpu").eval()
    t = modelio.load_model(teacher_dir, dtype=torch.float32, device="cpu").eval()
    exs = data.load_examples(str(DATA), "train", lang="en-de")[:n]
    ds = training.SpeechTranslationDataset(exs, proc, "en-de")
    b = training.Collator(training.pad_token_id(proc))([ds[i] for i in range(len(ds))])
    labels = b.pop("labels")
    with torch.no_grad():
        sel = training.label_positions(labels)
        return float(training.word_kd_loss(s(**b).logits[:, :-1][sel], t(**b).logits[:, :-1][sel], 1.0))


# ---------------------------------------------------------------------------------------------- kd


def test_kd_brings_the_pruned_student_towards_the_teacher(pruned, tmp_path):
    """Word-level + hidden-state KD from the teacher, audio encoder frozen: the KL to the teacher on
    training utterances falls, the frozen encoder is bit-identical, the output is float16 like the
    input and reloads with from_pretrained alone; the layer map follows the pruning lineage."""
    from transformers import Qwen2AudioForConditionalGeneration

    out = tmp_path / "kd"
    rec = run_stage(make_stage("kd", dict(FAST, teacher=str(TEACHER), max_steps=12, hidden_weight=1.0,
                                          freeze=["audio_encoder"])), pruned, out, _ctx())
    # student layers 0,1,4,5 of the teacher: each is compared with the teacher layer before the next survivor
    assert rec["layer_maps"]["llm"] == [[0, 0], [1, 3], [2, 4], [3, 5]]
    assert rec["layer_maps"]["audio"] == [[0, 0], [1, 1]]
    assert not rec["vocab_mapped"] and "word-level KL at temperature 2" in rec["techniques"][0]
    parts = _parts(out)
    assert len(parts) == 12 and {"kl", "ce", "hidden", "loss"} <= parts[0].keys()
    before, after = _probe_kl(pruned, TEACHER), _probe_kl(out, TEACHER)
    assert after < 0.7 * before, (before, after)
    a, b = _state(pruned), _state(out)
    audio = [k for k in a if "audio_tower" in k]
    assert audio and all((a[k] == b[k]).all() for k in audio)
    assert any(not (a[k] == b[k]).all() for k in a if "language_model" in k)
    m = Qwen2AudioForConditionalGeneration.from_pretrained(out)
    assert m.config.text_config.num_hidden_layers == 4
    assert {str(p.dtype) for p in m.parameters()} == {"torch.float16"}
    assert (out / "train.log").exists() and rec["teacher"]["fingerprint"]


# a student identical to its teacher starts at KL 0 (hidden distance 0): tests/stages/test_family_stages.py


def test_kd_into_a_trimmed_vocabulary_maps_token_ids(tmp_path):
    """A student whose vocabulary was trimmed: ids go through the two tokenizers, the teacher's
    distribution is restricted to the student's tokens, and an untouched trimmed student starts at
    (almost) zero KL: its logits are the teacher's over the kept tokens."""
    from iwslt_mc.stages.kd import vocab_map

    trimmed = tmp_path / "trimmed"
    run_stage(make_stage("trim-vocab", {"languages": ["en", "de"]}), TEACHER, trimmed, _ctx())
    s_cfg = json.loads((trimmed / "config.json").read_text())["text_config"]
    t_cfg = json.loads((TEACHER / "config.json").read_text())["text_config"]
    assert s_cfg["vocab_size"] < t_cfg["vocab_size"]
    m = vocab_map(trimmed, TEACHER, s_cfg["vocab_size"], t_cfg["vocab_size"])
    s_tok = json.loads((trimmed / "tokenizer.json").read_text())["model"]["vocab"]
    t_tok = json.loads((TEACHER / "tokenizer.json").read_text())["model"]["vocab"]
    assert all(m[i] == t_tok[tok] for tok, i in s_tok.items())
    assert len(set(m)) == len(m)
    out = tmp_path / "kd"
    rec = run_stage(make_stage("kd", dict(FAST, teacher=str(TEACHER), max_steps=2, alpha=1.0, lr=1e-9)),
                    trimmed, out, _ctx())
    assert rec["vocab_mapped"]
    assert _parts(out)[0]["kl"] < 1e-3


@pytest.fixture(scope="module")
def narrow_student(tmp_path_factory):
    """A random student half the teacher's width (LLM 64, audio 64), 2 LLM and 1 audio layer, the teacher's processor."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from iwslt_mc import modelio

    cfg = json.loads((TEACHER / "config.json").read_text())
    tc, ac = cfg["text_config"], cfg["audio_config"]
    tc.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              layer_types=["full_attention"] * 2)
    ac.update(d_model=64, encoder_ffn_dim=128, encoder_layers=1, encoder_attention_heads=2)
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(**{k: v for k, v in cfg.items()
                                                                   if k not in ("architectures", "transformers_version")}))
    out = tmp_path_factory.mktemp("narrow") / "student"
    modelio.save_model(model.to(torch.float16), modelio.load_processor(TEACHER), out)
    return out


def _same_after_interrupt(monkeypatch, tmp_path, stage, options, in_dir, out_name="model.safetensors"):
    from safetensors.torch import load_file

    run_stage(make_stage(stage, options), in_dir, tmp_path / "straight", _ctx())
    orig = training.train
    stop = stop_at_step(3)
    monkeypatch.setattr(training, "train", lambda *a, callbacks=(), **kw: orig(*a, callbacks=[*callbacks, stop], **kw))
    with pytest.raises(TrainingInterrupted):
        run_stage(make_stage(stage, options), in_dir, tmp_path / "resumed", _ctx())
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(training, "train", orig)
    rec = run_stage(make_stage(stage, options), in_dir, tmp_path / "resumed", _ctx())
    a, b = load_file(tmp_path / "straight" / out_name), load_file(tmp_path / "resumed" / out_name)
    assert a.keys() == b.keys() and [k for k in a if not (a[k] == b[k]).all()] == []
    return rec


def test_kd_with_projections_to_a_wider_teacher_resumes_to_the_same_weights(narrow_student, tmp_path, monkeypatch):
    """Widths differ (64 vs 128): learned projections train with the student and are checkpointed, so an
    interrupted run resumes to bit-identical weights; the loss falls; the projections are not in the output."""
    opts = dict(FAST, teacher=str(TEACHER), max_steps=5, batch_size=2, save_steps=2, hidden_weight=1.0,
                hidden_loss="cosine", lr=3e-3, limit=16)
    rec = _same_after_interrupt(monkeypatch, tmp_path, "kd", opts, narrow_student)
    assert rec["train"]["resumed_from"].endswith("checkpoint-2")
    assert rec["layer_maps"] == {"llm": [[0, 2], [1, 5]], "audio": [[0, 1]]}  # uniform: no lineage
    ckpt = tmp_path / "resumed.work"
    assert not ckpt.exists()  # cleaned after success
    parts = _parts(tmp_path / "straight")
    assert parts[-1]["loss"] < parts[0]["loss"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "resumed" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith(("aux", "student")) for k in f.keys())


# ---------------------------------------------------------------------------------------------- replace-layers


def test_replace_two_llm_layers_by_one_lowers_the_block_error(tmp_path):
    """Layers 2-3 of 6 become one (from layer 3), trained alone: the block's output error on training
    utterances falls, every other weight is bit-identical, the config says 5 layers and reloads."""
    from transformers import Qwen2AudioForConditionalGeneration

    out = tmp_path / "r"
    rec = run_stage(make_stage("replace-layers", dict(FAST, layers=[2, 3], max_steps=10, lr=2e-3, mse_weight=10, search_examples=8)),
                    TEACHER, out, _ctx())
    err = rec["block_error"]
    assert err["after"] < 0.8 * err["before"], err
    assert rec["replaced_llm_layers"] == [2, 3] and rec["layers_after"] == 5
    a, b = _state(TEACHER), _state(out)

    def renamed(k):  # input layer i >= 4 is output layer i - 1; input layer 3 is the new layer 2
        import re

        m = re.search(r"(language_model\.(?:model\.)?layers\.)(\d+)\.", k)
        if not m:
            return k
        i = int(m.group(2))
        return None if i == 2 else k.replace(m.group(0), f"{m.group(1)}{i - 1 if i >= 3 else i}.")

    moved = {renamed(k): v for k, v in a.items() if renamed(k) is not None}
    assert moved.keys() == b.keys()
    changed = sorted(k for k in b if not (moved[k] == b[k]).all())
    assert changed and all(".layers.2." in k for k in changed), changed
    m = Qwen2AudioForConditionalGeneration.from_pretrained(out)
    assert m.config.text_config.num_hidden_layers == 5 and len(m.config.text_config.layer_types) == 5


def test_replace_audio_layers_and_unfreeze(tmp_path):
    """Both audio-encoder layers become one (random start), then every parameter trains briefly."""
    from transformers import Qwen2AudioForConditionalGeneration

    out = tmp_path / "a"
    rec = run_stage(make_stage("replace-layers", dict(FAST, component="audio", layers=[0, 1], init="random", ce_weight=0,
                                                      max_steps=6, lr=3e-3, unfreeze_steps=2, search_examples=4)),
                    TEACHER, out, _ctx())
    assert rec["block_error"]["after"] < rec["block_error"]["before"]
    assert rec["train"]["unfreeze"]["steps"] == 2
    assert Qwen2AudioForConditionalGeneration.from_pretrained(out).config.audio_config.encoder_layers == 1
    assert "initialised randomly" in rec["techniques"][0]


def test_replace_search_takes_the_block_that_loses_least(tmp_path):
    rec = run_stage(make_stage("replace-layers", dict(FAST, count=2, position="search", max_steps=1, search_examples=4)),
                    TEACHER, tmp_path / "s", _ctx())
    scores = rec["search"]["scores"]
    assert list(scores) == ["1-2", "2-3", "3-4"]  # first and last protected
    best = min(scores, key=scores.get)
    assert f"{rec['replaced_llm_layers'][0]}-{rec['replaced_llm_layers'][-1]}" == best
    assert (tmp_path / "s" / "replace_search.jsonl").exists()


def test_replace_layers_resumes_to_the_same_weights(tmp_path, monkeypatch):
    opts = dict(FAST, layers=[3, 4], max_steps=5, batch_size=2, save_steps=2, limit=12, search_examples=2)
    rec = _same_after_interrupt(monkeypatch, tmp_path, "replace-layers", opts, TEACHER)
    assert rec["train"]["resumed_from"].endswith("checkpoint-2")


# ---------------------------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("stage,options,message", [
    ("kd", {"temperature": 0}, "'temperature' must be > 0"),
    ("kd", {"temperature": -1.5}, "'temperature' must be > 0"),
    ("kd", {"alpha": 1.5}, "'alpha' must be in [0, 1]"),
    ("kd", {"hidden": ["decoder"]}, "unknown component 'decoder'"),
    ("kd", {"llm_layer_map": ["0-3"]}, "not a student:teacher pair"),
    ("replace-layers", {"layers": [2, 4]}, "not a block of consecutive layers"),
    ("replace-layers", {"layers": [2]}, "at least 2"),
    ("replace-layers", {}, "nothing to replace"),
    ("replace-layers", {"layers": [1, 2], "init": "middle"}, "'init' must be"),
])
def test_bad_options_are_one_line_errors(stage, options, message):
    with pytest.raises(UserError) as e:
        make_stage(stage, options)
    assert message in str(e.value) and "\n" not in str(e.value)


def _fails_before_work(tmp_path, stage, options, in_dir=TEACHER, exc=UserError):
    out = tmp_path / "out"
    with pytest.raises(exc) as e:
        run_stage(make_stage(stage, options), in_dir, out, _ctx())
    assert not out.exists() and not (tmp_path / "out.work").exists()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_model_dependent_bad_options_fail_before_any_work(tmp_path, pruned):
    msg = _fails_before_work(tmp_path, "kd", {"teacher": str(TEACHER), "hidden_weight": 1, "llm_layer_map": ["0:6"]}, pruned)
    assert "teacher layer 6 out of range" in msg
    msg = _fails_before_work(tmp_path, "kd", {"teacher": str(TEACHER), "llm_layer_map": ["4:1"]}, pruned)
    assert "student layer 4 out of range" in msg
    assert "no teacher" in _fails_before_work(tmp_path, "kd", {}, pruned)
    assert "LLM layer 6 out of range" in _fails_before_work(tmp_path, "replace-layers", {"layers": [5, 6]})
    assert "no block of 5 LLM layers" in _fails_before_work(tmp_path, "replace-layers", {"count": 5})
    assert "init layer 1 is not in the block" in _fails_before_work(tmp_path, "replace-layers",
                                                                     {"layers": [2, 3], "init": "1"})


def test_a_teacher_of_another_architecture_or_tokenizer_fails_before_any_work(tmp_path, pruned, kit):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (llama / "model.safetensors").write_bytes(b"")
    msg = _fails_before_work(tmp_path, "kd", {"teacher": str(llama)}, pruned, exc=InputFileError)
    assert "not a Qwen2-Audio model" in msg
    other = tmp_path / "other-tok"
    shutil.copytree(TEACHER, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    tok = next(t for t in vocab if len(t) > 3)
    vocab["zz" + tok] = vocab.pop(tok)
    (other / "tokenizer.json").write_text(json.dumps(tj))
    msg = _fails_before_work(tmp_path, "kd", {"teacher": str(other)}, pruned)
    assert "has another tokenizer" in msg and repr(tok) in msg
    # the kit: another audio front end (30 s window) and tokenizer
    msg = _fails_before_work(tmp_path, "kd", {"teacher": str(kit / "model")}, pruned)
    assert "another audio feature extractor" in msg


def test_cli_lists_the_new_stages_and_refuses_a_bad_temperature(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "iwslt_mc", "stage", "--list"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "kd" in r.stdout and "replace-layers" in r.stdout
    r = subprocess.run([sys.executable, "-m", "iwslt_mc", "stage", "kd", "--in", str(TEACHER), "--out", str(tmp_path / "o"),
                        "--data", str(DATA), "--set", "teacher=" + str(TEACHER), "--set", "temperature=0"],
                       capture_output=True, text=True, env=env)
    # the libraries' warnings (bitsandbytes' kernel hint on AVX512-BF16 CPUs, kernels' trust-check note) stay out
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "'temperature' must be > 0" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
