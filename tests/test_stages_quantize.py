"""quantize on the kit (bitsandbytes on the CPU): reload with from_pretrained alone equals a fresh quantization."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from iwslt_mc import modelio
from iwslt_mc.prompting import prompt_text
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage
from iwslt_mc.stages.quantize import quantize_model, repacked_layers, save_quantized, skip_pattern

pytest.importorskip("bitsandbytes")

QUIET = dict(log=lambda *a: None, device="cpu")
NF4 = {"method": "nf4", "double_quant": True, "skip": ["lm_head", "audio_tower"]}


def _plain_reload(path):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(str(path)).eval()


@pytest.fixture(scope="module")
def dev_inputs(kit_processor, kit_waves):
    return kit_processor(text=prompt_text(kit_processor, "en-de"), audio=kit_waves["dev"][1][1], sampling_rate=16000,
                         return_tensors="pt")


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def nf4_dir(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "nf4"
    rec = run_stage(make_stage("quantize", NF4), kit / "model", out, StageContext(**QUIET))
    return out, rec


def test_nf4_reloads_with_from_pretrained_alone_equals_fresh_quantization_and_generates(kit, kit_model, nf4_dir, dev_inputs):
    out, rec = nf4_dir
    cfg = json.loads((out / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "bitsandbytes" and q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4"
    assert q["bnb_4bit_use_double_quant"] is True and q["bnb_4bit_compute_dtype"] == "bfloat16"
    reloaded = _plain_reload(out)
    lm = reloaded.model.language_model
    assert type(lm.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert type(reloaded.model.audio_tower.layers[0].fc1).__name__ == "Linear"  # skipped
    assert type(reloaded.lm_head).__name__ == "Linear"
    fresh = quantize_model(kit / "model", NF4)
    assert torch.equal(_logits(reloaded, dev_inputs), _logits(fresh, dev_inputs))
    # it is quantized: close to the float model, not equal
    diff = (_logits(reloaded, dev_inputs) - _logits(kit_model, dev_inputs)).abs().max().item()
    assert 0 < diff < 1.0
    # the logical parameter count does not change; the bytes do (LLM linear layers are 4-bit now)
    assert rec["params_after"] == rec["params_before"] == kit_model.num_parameters()
    assert rec["bytes_after"] < rec["bytes_before"]
    assert rec["quantized_linear_layers"] == 4 * 7 + 1  # q k v o gate up down per LLM layer, and the projector
    assert "NF4" in rec["techniques"][0] and "double quantization" in rec["techniques"][0]
    assert "lm_head, audio_tower" in rec["techniques"][0]
    with torch.inference_mode():
        gen = reloaded.generate(**dev_inputs, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == dev_inputs["input_ids"].shape[1] + 5


def test_saved_checkpoint_is_the_same_after_inference(kit, tmp_path, dev_inputs):
    """quantize -> decode -> save -> reload gives what quantize -> save -> reload gives."""
    a = quantize_model(kit / "model", NF4)
    save_quantized(a, None, tmp_path / "a")
    b = quantize_model(kit / "model", NF4)
    with torch.inference_mode():
        b.generate(**dev_inputs, max_new_tokens=4, do_sample=False)
    save_quantized(b, None, tmp_path / "b", log=lambda *x: None)
    assert torch.equal(_logits(_plain_reload(tmp_path / "a"), dev_inputs), _logits(_plain_reload(tmp_path / "b"), dev_inputs))


def _repack_like_an_avx512_cpu(model) -> int:
    """What the first no-grad CPU forward does to 4-bit layers on AVX512-bf16/AMX machines (not this one, maybe)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    n = 0
    for mod in model.modules():
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        if qs is not None and qs.shape[0] % 32 == 0 and qs.shape[1] % qs.blocksize == 0:
            mod.weight.data, mod.weight.quant_state = _convert_weight_packed_for_cpu(mod.weight.data, qs)
            n += 1
    return n


def test_repacked_weights_are_not_saved(kit, tmp_path, dev_inputs):
    fresh = _logits(quantize_model(kit / "model", NF4), dev_inputs)
    naive = quantize_model(kit / "model", NF4)
    assert _repack_like_an_avx512_cpu(naive) > 0 and repacked_layers(naive)
    modelio.save_model(naive, None, tmp_path / "naive")
    # the pitfall: saving repacked weights writes a different checkpoint
    assert not torch.equal(_logits(_plain_reload(tmp_path / "naive"), dev_inputs), fresh)
    safe = quantize_model(kit / "model", NF4)
    _repack_like_an_avx512_cpu(safe)
    msgs = []
    save_quantized(safe, None, tmp_path / "safe", log=msgs.append)
    assert msgs and "fresh quantization" in msgs[0]
    assert torch.equal(_logits(_plain_reload(tmp_path / "safe"), dev_inputs), fresh)


def test_int8_reload_equals_fresh_and_cast_warning_is_silenced(kit, tmp_path, dev_inputs, caplog):
    out = tmp_path / "int8"
    rec = run_stage(make_stage("quantize", {"method": "int8"}), kit / "model", out, StageContext(**QUIET))
    reloaded = _plain_reload(out)
    assert type(reloaded.model.audio_tower.layers[0].fc1).__name__ == "Linear8bitLt"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["load_in_8bit"] is True
    fresh = quantize_model(kit / "model", {"method": "int8"})
    with caplog.at_level(logging.WARNING):
        assert torch.equal(_logits(reloaded, dev_inputs), _logits(fresh, dev_inputs))
    assert not [r for r in caplog.records if "will be cast" in r.getMessage()]
    assert "LLM.int8" in rec["techniques"][0] and rec["bytes_after"] < rec["bytes_before"]


def test_skip_patterns_match_from_the_start():
    from transformers.quantizers.quantizers_utils import should_convert_module

    p = [skip_pattern("audio_tower")]
    assert not should_convert_module("model.audio_tower.layers.0.fc1", p)
    assert should_convert_module("model.language_model.layers.0.mlp.up_proj", p)
    assert not should_convert_module("lm_head", [skip_pattern("lm_head")])
    assert should_convert_module("model.xlm_head", [skip_pattern("lm_head")])
    assert not should_convert_module("model.language_model.layers.0.mlp.up_proj", [skip_pattern("layers.0.mlp")])
    assert should_convert_module("model.language_model.layers.10.mlp.up_proj", [skip_pattern("layers.1.mlp")])
    assert should_convert_module("model.audio_tower.layers.0.fc1", ["audio_tower"])  # why plain names are rewritten


@pytest.mark.parametrize("sets,msg", [
    (["skip=[audio_towr]"], "matches no module"),
    (["method=int4"], "must be one of"),
    (["skip=['re:(']"], "invalid regex"),
    (["compute_dtype=fp8"], "must be one of"),
    (["dbl=true"], "unknown option 'dbl'"),
])
def test_bad_options(kit, tmp_path, monkeypatch, capsys, sets, msg):
    from iwslt_mc import cli

    monkeypatch.setattr(modelio, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    argv = ["stage", "quantize", "--in", str(kit / "model"), "--out", str(tmp_path / "o")]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err
    assert not (tmp_path / "o").exists()


def test_quantizing_a_quantized_model_is_refused(nf4_dir, tmp_path):
    from iwslt_mc.errors import UserError

    out, _ = nf4_dir
    with pytest.raises(UserError, match="already quantized"):
        run_stage(make_stage("quantize", {}), out, tmp_path / "o", StageContext(**QUIET))
