"""quantize method ct (compressed-tensors pack-quantized) on the kit: reload with from_pretrained alone
gives the logits of the model before saving; the planner predicts the bytes exactly; bad options fail first."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from iwslt_mc import modelio
from iwslt_mc.planning import planner
from iwslt_mc.quantization import formats as quant_formats
from iwslt_mc.sizing import sizer
from iwslt_mc.build import spec_for_stages
from iwslt_mc.errors import UserError
from iwslt_mc.families import prompt_text
from iwslt_mc.recipes import StageEntry
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage
from iwslt_mc.stages.quantize import QuantizeOptions

pytest.importorskip("compressed_tensors")

QUIET = dict(log=lambda *a: None, device="cpu")
# the kit's layers are 64/176/... wide: groups of 16 divide them all
CT3 = {"method": "ct", "bits": 3, "group_size": 16, "quantize_embeddings": True, "skip": []}
CT4 = {"method": "ct", "bits": 4, "group_size": 16, "symmetric": True, "scales": "minmax"}


def _plain_reload(path):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(str(path)).eval()


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits


def _header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


@pytest.fixture(scope="module")
def dev_inputs(kit_processor, kit_waves):
    return kit_processor(text=prompt_text(kit_processor, "en-de"), audio=kit_waves["dev"][1][1], sampling_rate=16000,
                         return_tensors="pt")


@pytest.fixture(scope="module")
def ct3_dir(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct") / "ct3"
    rec = run_stage(make_stage("quantize", CT3), kit / "model", out, StageContext(**QUIET))
    return out, rec


def _predicted(kit, options):
    cfg = planner.load_base_config(kit / "model")
    spec, notes = spec_for_stages([StageEntry("q", "quantize", options)], cfg, base=str(kit / "model"), lang="en-de",
                                  data={}, condition="constrained")
    assert notes == []
    return spec, planner.predict(spec, cfg)


def test_ct3_with_embeddings_reloads_with_from_pretrained_alone_with_the_logits_before_saving(kit, kit_model, ct3_dir, dev_inputs):
    out, rec = ct3_dir
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized" and q["dequantize"] is True
    assert q["config_groups"]["group_0"]["weights"]["num_bits"] == 3
    assert q["config_groups"]["group_1"]["targets"] == [r"re:(?:.*\.)?embed_tokens$"]
    h = _header(out / "model.safetensors")
    # packed: 32 values of 3 bits in 3 int32 words; zero points packed along the rows
    up = "language_model.model.layers.0.mlp.up_proj."
    assert h[up + "weight_packed"]["dtype"] == "I32" and h[up + "weight_packed"]["shape"] == [176, 64 * 3 // 32]
    assert h[up + "weight_zero_point"]["shape"] == [-(-176 * 3 // 32), 64 // 16]
    assert "language_model.model.embed_tokens.weight_packed" in h and "language_model.lm_head.weight_packed" in h
    assert up + "weight" not in h
    # the model before saving (same process), quantized again: its logits are the reloaded model's
    before, _ = quant_formats.ct_quantize(kit / "model", QuantizeOptions.from_dict(CT3), log=lambda *a: None)
    reloaded = _plain_reload(out)
    assert torch.equal(_logits(reloaded, dev_inputs), _logits(before, dev_inputs))
    diff = (_logits(reloaded, dev_inputs) - _logits(kit_model, dev_inputs)).abs().max().item()
    assert 0 < diff < 5.0
    assert rec["params_after"] == rec["params_before"] == kit_model.num_parameters()
    assert rec["bytes_after"] < rec["bytes_before"] / 2
    assert rec["quantized_linear_layers"] == 43  # 39 Linear layers, lm_head, projector... and embed_tokens
    assert "3-bit" in rec["techniques"][0] and "token embeddings quantized" in rec["techniques"][0]
    with torch.inference_mode():
        gen = reloaded.generate(**dev_inputs, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == dev_inputs["input_ids"].shape[1] + 4


def test_planner_predicts_the_ct_bytes_exactly(kit, ct3_dir, tmp_path):
    out, _ = ct3_dir
    spec, pred = _predicted(kit, CT3)
    assert spec.label() == "ct3-g16+emb embed_tokens=ct3-g16"
    real = sizer.measure(out)
    assert pred.bytes == real.bytes and pred.params == real.params and pred.tensors == real.tensors
    assert real.quantized == {"ct-int3": 43} and real.overhead > 0
    # symmetric 4-bit, lm_head and embeddings left float (the default skip)
    out4 = tmp_path / "ct4"
    run_stage(make_stage("quantize", CT4), kit / "model", out4, StageContext(**QUIET))
    spec4, pred4 = _predicted(kit, CT4)
    assert spec4.precision == "ct4-g16-sym" and spec4.precision_of("lm_head") == spec4.precision_of("embed_tokens") == "fp32"
    real4 = sizer.measure(out4)
    assert pred4.bytes == real4.bytes and real4.quantized == {"ct-int4": 41}
    assert not any(k.endswith("weight_zero_point") for k in _header(out4 / "model.safetensors"))
    # embeddings quantized, lm_head kept float (the default skip)
    out5 = tmp_path / "ct5"
    opts5 = {"method": "ct", "bits": 5, "group_size": 16, "quantize_embeddings": True, "scales": "minmax"}
    run_stage(make_stage("quantize", opts5), kit / "model", out5, StageContext(**QUIET))
    spec5, pred5 = _predicted(kit, opts5)
    assert spec5.precision_of("embed_tokens") == "ct5-g16" and spec5.precision_of("lm_head") == "fp32"
    assert pred5.bytes == sizer.measure(out5).bytes
    assert json.loads((out4 / "config.json").read_text())["quantization_config"]["ignore"] == [r"re:(?:.*\.)?lm_head"]


def test_planner_ct_arithmetic_at_full_size():
    """Qwen2-Audio-7B, 4-bit groups of 128: the LLM linears are 4 bits + 16/128 (scale) + ~4/128 (zero point)."""
    p = planner.predict(planner.Spec(precision="ct4"))
    llm = p.components["llm_layers"]
    bits = llm["bytes"] * 8 / llm["params"]
    assert 4.15 < bits < 4.2
    assert planner.predict(planner.Spec(precision="ct3")).bytes < planner.predict(planner.Spec(precision="nf4-dq")).bytes
    e = planner.disk_tensors("a.weight", (4096, 11008), "ct3-g64")[0]
    assert [x[:3] for x in e] == [("a.weight_packed", "I32", (4096, 1032)), ("a.weight_scale", "BF16", (4096, 172)),
                                  ("a.weight_shape", "I64", (2,)), ("a.weight_zero_point", "I32", (384, 172))]
    with pytest.raises(Exception, match="does not divide"):
        planner.disk_tensors("a.weight", (10, 100), "ct4")
    with pytest.raises(Exception, match="ctB"):
        planner.check_precision("ct9")


def test_saving_after_a_forward_saves_the_same_checkpoint(kit, tmp_path, dev_inputs):
    o = QuantizeOptions.from_dict({**CT3, "quantize_embeddings": False, "skip": ["lm_head"]})
    a, _ = quant_formats.ct_quantize(kit / "model", o, log=lambda *x: None)
    quant_formats.ct_save(a, None, tmp_path / "a")
    b, _ = quant_formats.ct_quantize(kit / "model", o, log=lambda *x: None)
    first = _logits(b, dev_inputs)  # unpacks b in memory
    quant_formats.ct_save(b, None, tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert torch.equal(_logits(_plain_reload(tmp_path / "b"), dev_inputs), first)


def test_mse_ranges_beat_minmax_ranges():
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.linspace(0.5, 2, 256)
    w[0, 3] = 9.0  # an outlier: min/max wastes most of its group's levels on it
    o = QuantizeOptions.from_dict({"method": "ct", "bits": 3, "group_size": 32})
    args = quant_formats.weight_args(o)
    err = {}
    for how in ("minmax", "mse"):
        s, z = quant_formats.choose_qparams(w, args, torch.float32, how)
        err[how] = (fake_quantize(w, s, z, args) - w).pow(2).sum().item()
    assert err["mse"] < 0.9 * err["minmax"]


def test_decode_runs_a_ct_model_on_cpu(kit, ct3_dir, tmp_path):
    from iwslt_mc import cli

    out, _ = ct3_dir
    hyp = tmp_path / "hyp.de"
    assert cli.main(["decode", str(out), "--lang", "en-de", "--audio", f"{kit / 'data'}?split=eval", "--out", str(hyp),
                     "--max-new-tokens", "4", "--no-progress", "--device", "cpu"]) == 0
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == 8


@pytest.mark.parametrize("sets,msg", [
    (["method=ct", "bits=9"], "method ct has 2-8 bits, not bits=9"),
    (["method=ct", "bits=1"], "not bits=1"),
    (["bits=3"], "method nf4 is 4-bit only"),
    (["method=int8", "bits=4"], "method int8 is 8-bit only"),
    (["quantize_embeddings=true"], "cannot quantize embeddings"),
    (["group_size=64"], "option group_size is for method ct only"),
    (["method=ct", "group_size=100"], "group_size 100 does not divide the input width"),
    (["method=ct", "group_size=0"], "group_size must be a positive integer"),
    (["method=ct", "skip=[audio_towr]"], "matches no module"),
    (["method=ct", "scales=absmax"], "must be one of"),
    (["scales=mse"], "option scales is for method ct only"),
    (["symmetric=true"], "option symmetric is for method ct only"),
    (["method=gptq"], "must be one of"),
    (["method=ct", "skip=[re:(]"], "invalid regex"),
    (["method=ct", "skip=[lm_head,'']"], "empty name in skip"),
    (["method=ct", "bits=4", "group_size=16", "skip=[re:.*audio_tower.layers.0.fc2]"], None),  # valid: fails later only
])
def test_bad_ct_options_fail_with_one_line_before_loading(kit, tmp_path, monkeypatch, capsys, sets, msg):
    from iwslt_mc import cli

    monkeypatch.setattr(modelio, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    argv = ["stage", "quantize", "--in", str(kit / "model"), "--out", str(tmp_path / "o")]
    for s in sets:
        argv += ["--set", s]
    if msg is None:  # the control: good options pass every check and get as far as loading the model
        with pytest.raises(AssertionError, match="loaded"):
            cli.main(argv)
        return
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err
    assert not (tmp_path / "o").exists()


def test_help_options_documents_every_method(capsys):
    from iwslt_mc import cli

    assert cli.main(["stage", "quantize", "--help-options"]) == 0
    text = capsys.readouterr().out
    for word in ("nf4", "fp4", "int8", "ct:", "compressed-tensors", "bits", "group_size", "symmetric", "scales",
                 "quantize_embeddings"):
        assert word in text


def test_ct_models_run_in_float32_on_a_cpu(tmp_path):
    """ct checkpoints unpack to floats at load: on a CPU they run in float32 like a bf16 model; bnb ones as stored."""
    for method, want in (({"quant_method": "compressed-tensors", "dequantize": True}, torch.float32),
                         ({"quant_method": "bitsandbytes", "load_in_4bit": True}, None)):
        (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16", "quantization_config": method}))
        assert modelio.runtime_dtype(tmp_path, "cpu") is want
        assert modelio.runtime_dtype(tmp_path, "cuda") is None


def test_missing_compressed_tensors_is_one_line_before_loading(kit, tmp_path, monkeypatch, capsys):
    import sys

    from iwslt_mc import cli

    monkeypatch.setitem(sys.modules, "compressed_tensors", None)  # import raises ImportError
    monkeypatch.setattr(modelio, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert cli.main(["stage", "quantize", "--in", str(kit / "model"), "--out", str(tmp_path / "o"), "--set", "method=ct",
                     "--set", "group_size=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "compressed-tensors" in err and "pip install" in err


# ----------------------------------------------------------------------------- tied embeddings (Gemma 4)
# Qwen2AudioForConditionalGeneration has no tied weights in transformers 5.24 (tie_word_embeddings in its
# config changes nothing), so a tied model is the Gemma 4 kit. The quantize stage refuses gemma4 until the
# families seam wires it (gemma-train): these tests call quant_formats directly.

@pytest.fixture(scope="module")
def gemma_model(tmp_path_factory):
    from iwslt_mc.families.gemma4.kit import build_kit_gemma4

    out = tmp_path_factory.mktemp("g4") / "kit"
    build_kit_gemma4(out, seed=0)
    return out / "model"


# groups of 8 divide every width of the Gemma kit; per_layer_input_gate has 8 outputs (see the next test)
TIED = {"method": "ct", "bits": 4, "group_size": 8, "quantize_embeddings": True,
        "skip": ["lm_head", "per_layer_input_gate"]}


def test_tied_embeddings_are_quantized_once_saved_once_and_reload_tied(gemma_model, tmp_path):
    from iwslt_mc.families import family_for

    o = QuantizeOptions.from_dict(TIED)
    quant_formats.check_ct(gemma_model, o)  # no refusal
    logs = []
    model, _ = quant_formats.ct_quantize(gemma_model, o, log=logs.append)
    assert any("lm_head is tied to the token embeddings: quantized with them and saved once" in x for x in logs)
    emb = model.get_input_embeddings()
    # the skip entry lm_head (the default) does not split the shared matrix: it is quantized, once, as the embedding
    assert torch.equal(model.lm_head.weight_packed, emb.weight_packed) and torch.equal(model.lm_head.weight_scale,
                                                                                        emb.weight_scale)
    out = quant_formats.ct_save(model, None, tmp_path / "q")
    keys = _header(out / "model.safetensors")
    assert not [k for k in keys if k.startswith("lm_head")] and "model.language_model.embed_tokens.weight_packed" in keys
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["tie_word_embeddings"] is True and cfg["quantization_config"]["dequantize"] is True
    reloaded = family_for(out).loader_class().from_pretrained(str(out)).eval()
    assert reloaded.lm_head.weight is reloaded.get_input_embeddings().weight
    ids = torch.randint(0, emb.num_embeddings, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before, after = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
        floats = family_for(gemma_model).loader_class().from_pretrained(str(gemma_model)).eval()(input_ids=ids).logits
    assert torch.equal(before, after)
    assert 0 < (after - floats).abs().max() < 1.0  # quantized: close to the float model, not equal
    # saving the tied matrix once spares one packed copy of it (untied, lm_head's four tensors would be stored too)
    v, h = emb.num_embeddings, emb.embedding_dim
    packed = v * h * 4 // 8 + v * (h // 8) * 4 + -(-v // 8) * (h // 8) * 4 + 16  # ints, fp32 scales, zero points, shape
    assert sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in keys.items()
               if k.startswith("model.language_model.embed_tokens.weight_")) == packed

    # quantize_embeddings off: the shared matrix stays float (lm_head is not quantized apart from it)
    o2 = QuantizeOptions.from_dict({**TIED, "quantize_embeddings": False, "skip": ["per_layer_input_gate"]})
    logs.clear()
    m2, _ = quant_formats.ct_quantize(gemma_model, o2, log=logs.append)
    assert any("kept float with them" in x for x in logs)
    assert m2.lm_head.weight is m2.get_input_embeddings().weight and m2.lm_head.weight.dtype == torch.float32


def test_4bit_zero_points_of_eight_outputs_are_refused_before_loading(gemma_model, monkeypatch):
    """compressed-tensors 0.20 packs such zero points into one int32 row it cannot unpack again: the reload
    would fail, so the options are refused first (symmetric ones, or skipping the layer, are fine)."""
    monkeypatch.setattr(modelio, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(UserError, match=r"per_layer_input_gate has 8 outputs: compressed-tensors cannot reload"):
        quant_formats.check_ct(gemma_model, QuantizeOptions.from_dict({**TIED, "skip": []}))
    quant_formats.check_ct(gemma_model, QuantizeOptions.from_dict({**TIED, "skip": [], "symmetric": True}))
    quant_formats.check_ct(gemma_model, QuantizeOptions.from_dict({**TIED, "skip": [], "bits": 3}))


def test_planner_predicts_a_tied_ct_checkpoint_exactly(gemma_model, tmp_path):
    o = QuantizeOptions.from_dict({**TIED, "skip": [], "symmetric": True})
    model, _ = quant_formats.ct_quantize(gemma_model, o, log=lambda *a: None)
    out = quant_formats.ct_save(model, None, tmp_path / "q")
    cfg = planner.load_base_config(gemma_model)
    spec = planner.Spec(precision="ct4-g8-sym", quantize_embeddings=True, float_dtype="fp32")
    assert planner.predict(spec, cfg).bytes == sizer.measure(out).bytes
