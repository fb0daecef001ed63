"""`plan` without transformers: the Qwen2-Audio shapes by arithmetic, the config read as plain JSON, and
the same numbers as the model transformers builds on the meta device and its own config objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iwslt_mc.planning import planner
from iwslt_mc.families.qwen2_audio.plan import (AUDIO_DEFAULTS, TEXT_DEFAULTS, plain_config,
                                                qwen2_audio_7b_config, qwen2_audio_7b_plain_config)
from iwslt_mc.planning import recipe_spec
from iwslt_mc.planning.planner import Spec, predict

REPO = Path(__file__).resolve().parents[2]
# A small Qwen2-Audio config with grouped key/value heads, an explicit head size and odd widths.
SMALL = {
    "architectures": ["Qwen2AudioForConditionalGeneration"], "model_type": "qwen2_audio", "audio_token_index": 99,
    "dtype": "bfloat16",
    "audio_config": {"model_type": "qwen2_audio_encoder", "d_model": 96, "encoder_attention_heads": 4,
                     "encoder_ffn_dim": 160, "encoder_layers": 3, "num_mel_bins": 80, "max_source_positions": 40},
    "text_config": {"model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 8, "num_key_value_heads": 2,
                    "head_dim": 24, "intermediate_size": 192, "num_hidden_layers": 5, "vocab_size": 1000,
                    "tie_word_embeddings": False},
}


def _transformers_config(d: dict):
    from transformers import Qwen2AudioConfig

    d = json.loads(json.dumps(d))
    return Qwen2AudioConfig(**{k: v for k, v in d.items() if k != "model_type"})


def _meta(cfg, ffn=None, affn=None, vocab=None):
    return [(t.key, t.shape, t.component, t.linear, t.embedding, t.llm_layer, t.audio_layer)
            for t in planner._meta_inventory(cfg, ffn, affn, vocab)]


def _arith(cfg, ffn=None, affn=None, vocab=None):
    return [(t.key, t.shape, t.component, t.linear, t.embedding, t.llm_layer, t.audio_layer)
            for t in planner._inventory(cfg, ffn, affn, vocab)]


@pytest.mark.parametrize("case", ["7b", "7b-narrow", "7b-widths", "small", "small-tied", "small-narrow"])
def test_arithmetic_inventory_is_the_meta_models(case):
    """Every tensor (name, shape, component, Linear or embedding, layer) as transformers builds the model, in
    its order (the first tensor a precision cannot quantize is the one an error names)."""
    if case.startswith("7b"):
        cfg = qwen2_audio_7b_config()
    else:
        d = json.loads(json.dumps(SMALL))
        if case == "small-tied":
            d["text_config"]["tie_word_embeddings"] = True
        cfg = _transformers_config(d)
    over = (None, None, None)
    if case.endswith("narrow"):
        wide = planner.base_dims(cfg)
        cfg = planner.apply_hidden_dims(cfg, {"hidden": wide["hidden"] // 2, "heads": wide["heads"] // 2,
                                              "audio_hidden": wide["audio_hidden"] // 2})
    if case == "7b-widths":
        over = (5504, 2560, 32768)
    arith, meta = _arith(cfg, *over), _meta(cfg, *over)
    assert arith == meta
    assert len(arith) == 39  # 12 LLM and 15 audio-layer templates, 12 others (lm_head also when tied: not tied in 5.x)


def test_plain_config_defaults_are_transformers_defaults():
    from transformers import Qwen2AudioEncoderConfig, Qwen2Config

    t, a = Qwen2Config(), Qwen2AudioEncoderConfig()
    assert {k: getattr(t, k) for k in TEXT_DEFAULTS} == TEXT_DEFAULTS
    assert {k: getattr(a, k) for k in AUDIO_DEFAULTS} == AUDIO_DEFAULTS
    for given in ({}, {"num_key_value_heads": None}):
        tf = Qwen2Config(num_attention_heads=8, **given).num_key_value_heads
        raw = {"model_type": "qwen2_audio", "text_config": {"num_attention_heads": 8, **given}}
        assert plain_config(raw).text_config.num_key_value_heads == tf == (32 if not given else 8)


def test_scheduler_names_are_transformers():
    from transformers.trainer_utils import SchedulerType

    from iwslt_mc.stages.base import LR_SCHEDULERS

    assert sorted(LR_SCHEDULERS) == sorted(t.value for t in SchedulerType)


SPECS = [
    Spec(),
    Spec(llm_layers=3, precision="nf4-dq"),
    Spec(precision="int8", component_precision={"lm_head": "bf16", "audio_encoder": "bf16"}),
    Spec(precision="ct4-g32", quantize_embeddings=True, vocab=512),
    Spec(precision="fp4", ffn_dim=128, audio_ffn_dim=64, audio_layers=1),
    Spec(precision="nf4-dq", hidden=64, heads=4, audio_hidden=48),
    Spec(precision="fp16", float_dtype="fp16"),
]


@pytest.mark.parametrize("raw", ["small", "sparse", "7b"])
def test_plain_config_predicts_what_the_transformers_config_does(raw):
    """Bytes, parameters, components, header and the torch.save measure, for configs that give every field,
    leave most to the defaults (as a hub config.json does), or are the built-in 7B."""
    if raw == "7b":
        plain, tf = qwen2_audio_7b_plain_config(), qwen2_audio_7b_config()
        specs = [Spec(), Spec(llm_layers=24, precision="nf4-dq"), Spec(hidden=2048, heads=16, audio_hidden=640, precision="nf4-dq")]
    else:
        d = json.loads(json.dumps(SMALL))
        if raw == "sparse":  # only what differs from transformers' defaults, as save_pretrained(use_diff) writes
            d["text_config"] = {"model_type": "qwen2", "num_hidden_layers": 3, "vocab_size": 1000, "hidden_size": 128}
            d["audio_config"] = {"model_type": "qwen2_audio_encoder", "encoder_layers": 2}
            d["torch_dtype"] = d.pop("dtype")
        plain, tf = plain_config(d), _transformers_config(d)
        specs = SPECS if raw == "small" else SPECS[:4]
    assert planner.base_dims(plain) == planner.base_dims(tf)
    for spec in specs:
        a, b = predict(spec, plain, "2025"), predict(spec, tf, "2025")
        assert (a.bytes, a.params, a.components, a.header_bytes, a.tensors, a.dims) == \
               (b.bytes, b.params, b.components, b.header_bytes, b.tensors, b.dims), spec
        assert (a.torch_save is None) == (b.torch_save is None)
        if a.torch_save is not None:
            assert (a.torch_save.bytes, a.torch_save.bytes_cpu) == (b.torch_save.bytes, b.torch_save.bytes_cpu)
        assert _how_to_build(spec, plain) == _how_to_build(spec, tf)


def _how_to_build(spec, cfg):
    from iwslt_mc.errors import UserError

    try:
        return recipe_spec.build_plan(spec, cfg).to_json()
    except UserError as e:
        return str(e)


def _plan_without_torch(args: list[str], cwd) -> subprocess.CompletedProcess:
    """``iwslt-mc plan ARGS`` in a process where importing torch or transformers fails."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from iwslt_mc.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, "plan", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_cli_plan_needs_neither_torch_nor_transformers(tmp_path):
    r = _plan_without_torch(["--llm-layers", "24", "--precision", "nf4-dq", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # the figures `plan` printed before the arithmetic (transformers 5.25 meta model, at f79333a)
    assert (out["bytes"], out["params"], out["header_bytes"]) == (5_406_694_459, 6_777_929_728, 325_520)
    assert (out["torch_save"]["bytes"], out["torch_save"]["bytes_cpu_load"]) == (5_407_306_010, 5_407_274_842)
    assert out["build"]["recipe"] == "recipe-b"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(SMALL))
    r = _plan_without_torch(["--base", str(tmp_path / "m"), "--precision", "nf4-dq", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes"] == predict(Spec(precision="nf4-dq"), _transformers_config(SMALL), "2027").bytes


def test_cli_plan_target_needs_neither_torch_nor_transformers(tmp_path):
    r = _plan_without_torch(["--target", "Bin4", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["specs"]
    assert len(rows) == 8 and all(4 * 10**8 <= p["bytes"] < 5 * 10**8 for p in rows)
    # the deferred torch.save measure of a listed row is the one predict gives it directly
    first = rows[0]
    spec = Spec(**{k: v for k, v in first["spec"].items()})
    direct = predict(spec, qwen2_audio_7b_plain_config(), "2025")
    assert first["bytes"] == direct.bytes
    assert first["torch_save"] == (direct.torch_save.to_json() if direct.torch_save else None)
    assert first["torch_save_note"] == direct.torch_save_note
    nf4 = [p for p in rows if p["spec"]["precision"] == "nf4-dq"]
    assert nf4 and all(p["torch_save"]["bytes"] > p["bytes"] for p in nf4)


def test_cli_plan_bad_config_is_one_line(tmp_path, capsys):
    from iwslt_mc.cli import main

    d = json.loads(json.dumps(SMALL))
    d["text_config"]["hidden_size"] = "wide"
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert main(["plan", "--base", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0] and "text_config.hidden_size is 'wide'" in err[0]


@pytest.mark.parametrize("precision", ["bf16", "int8", "nf4-dq", "fp4", "ct3-g64"])
def test_header_length_counted_is_the_header_written(precision):
    pred = predict(Spec(precision=precision, llm_layers=11, vocab=32768), qwen2_audio_7b_plain_config())
    for meta in ({"format": "pt"}, None, {"a": "é\"\\"}):
        assert planner.safetensors_header_bytes(pred.entries, meta) == len(planner.safetensors_header(pred.entries, meta)[0])
    odd = [("quote\"d", "F32", (3,), 12, None), ("ünï\\code", "BF16", (2, 2), 8, None), ("tab\tx", "U8", (), 1, None),
           ("del\x7f", "I64", (1,), 8, None)]
    for entries in (odd, odd[:1], []):
        for meta in ({"format": "pt"}, None):
            assert planner.safetensors_header_bytes(entries, meta) == len(planner.safetensors_header(entries, meta)[0])


def test_layer_keys_expand_as_the_regex_renames_them():
    templates = planner._inventory(qwen2_audio_7b_plain_config(), None, None, None)
    got = [key for _, key in planner._expand(templates, 3, 2)]
    want = []
    for t in templates:
        if t.llm_layer is not None:
            want += [planner._layer_key(t.key, i, planner._LLM_LAYER_RX) for i in range(3)]
        elif t.audio_layer is not None:
            want += [planner._layer_key(t.key, i, planner._AUDIO_LAYER_RX) for i in range(2)]
        else:
            want.append(t.key)
    assert got == want and "language_model.model.layers.2.mlp.up_proj.weight" in got and len(got) == 12 + 12 * 3 + 15 * 2
