"""Planner: predictions against real saved models (tiny, pruned, bf16/int8/nf4) and the full-size figures."""

from __future__ import annotations

import json

import pytest

from iwslt_mc import planner, sizer
from iwslt_mc.cli import main
from iwslt_mc.errors import UserError
from iwslt_mc.planner import Spec, predict

# Measured with transformers 5.17 + bitsandbytes 0.50.2 on the full-size model (shared/reference/qwen2-audio.md).
FULL_BF16_BYTES = 16_794_299_128
FULL_NF4_DQ_BYTES = 6_242_345_704
FULL_INT8_BYTES = 9_690_934_025
FULL_PARAMS = 8_397_094_912
PER_LLM_LAYER = 202_395_648
PER_AUDIO_LAYER = 19_676_160


def within(pred: int, real: int, rel: float = 0.005) -> bool:
    return abs(pred - real) <= rel * real


# ----------------------------------------------------------------------------- the kit model, pruned and saved

@pytest.fixture(scope="module")
def pruned(kit, tmp_path_factory):
    """The kit model with LLM layers 1 and 2 and audio layer 1 removed, saved in bf16, int8, nf4 and nf4-dq."""
    import torch
    from torch import nn
    from transformers import BitsAndBytesConfig, Qwen2AudioForConditionalGeneration

    from iwslt_mc.layout import find_layout

    root = tmp_path_factory.mktemp("planner_models")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(kit / "model", dtype=torch.bfloat16)
    lay = find_layout(model)
    base_llm, base_audio = lay.num_llm_layers, lay.num_audio_layers
    keep_llm = [0] + list(range(3, base_llm))
    lay.language_model.layers = nn.ModuleList([lay.decoder_layers[i] for i in keep_llm])
    lay.audio_tower.layers = nn.ModuleList([lay.audio_layers[0]])
    lay.text_config.num_hidden_layers = len(keep_llm)
    lay.text_config.layer_types = [lay.text_config.layer_types[i] for i in keep_llm]
    lay.audio_config.encoder_layers = 1
    model.save_pretrained(root / "bf16")
    dirs = {"bf16": root / "bf16"}
    quant = {
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        "nf4-dq": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    }
    for name, q in quant.items():
        qm = Qwen2AudioForConditionalGeneration.from_pretrained(root / "bf16", quantization_config=q, dtype=torch.bfloat16,
                                                                device_map="cpu")
        qm.save_pretrained(root / name)
        dirs[name] = root / name
    spec_dims = {"llm_layers": len(keep_llm), "audio_layers": 1}
    assert len(keep_llm) < base_llm and base_audio > 1
    return dirs, spec_dims, model.num_parameters()


@pytest.mark.parametrize("precision", ["bf16", "int8", "nf4", "nf4-dq"])
def test_prediction_matches_pruned_kit_model_saved(kit, pruned, precision):
    dirs, dims, num_parameters = pruned
    base = planner.load_base_config(kit / "model")  # the unpruned kit: the planner removes the layers
    pred = predict(Spec(precision=precision, **dims), base)
    real = sizer.measure(dirs[precision])
    assert within(pred.bytes, real.bytes), (pred.bytes, real.bytes)
    assert pred.params == real.params == num_parameters
    assert pred.overhead == pytest.approx(real.overhead, abs=16)
    for comp, v in real.components.items():
        assert pred.components[comp]["params"] == v["params"], comp
        assert within(pred.components[comp]["bytes"], v["bytes"], 0.001), comp
    # the arithmetic is exact up to the few characters of a double-quantized state's float offset
    assert abs(pred.bytes - real.bytes) <= (16 * real.quantized.get("bnb-nf4", 0) if precision == "nf4-dq" else 0)


def test_vocab_and_ffn_widths_match_a_real_model(kit):
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    base = planner.load_base_config(kit / "model")
    spec = Spec(vocab=1000, ffn_dim=96, audio_ffn_dim=64, llm_layers=3)
    cfg = predict(spec, base).config
    assert (cfg.text_config.vocab_size, cfg.text_config.intermediate_size, cfg.audio_config.encoder_ffn_dim,
            cfg.text_config.num_hidden_layers) == (1000, 96, 64, 3)
    with torch.device("meta"):
        real = Qwen2AudioForConditionalGeneration(cfg)
    pred = predict(spec, base)
    assert pred.params == real.num_parameters()
    assert pred.components["embed_tokens"]["params"] == 1000 * base.text_config.hidden_size


def test_quantized_lm_head_and_per_component_precision(pruned, tmp_path, kit):
    import torch
    from transformers import BitsAndBytesConfig, Qwen2AudioForConditionalGeneration

    dirs, dims, _ = pruned
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=[".*audio_tower"])
    qm = Qwen2AudioForConditionalGeneration.from_pretrained(dirs["bf16"], quantization_config=q, dtype=torch.bfloat16,
                                                            device_map="cpu")
    qm.save_pretrained(tmp_path / "m")
    spec = Spec(precision="nf4", component_precision={"lm_head": "nf4", "audio": "bf16"}, **dims)
    pred = predict(spec, planner.load_base_config(kit / "model"))
    real = sizer.measure(tmp_path / "m")
    assert (pred.bytes, pred.params) == (real.bytes, real.params)
    assert real.components["lm_head"]["bytes"] < real.components["lm_head"]["params"]  # 4 bits a weight


# ----------------------------------------------------------------------------- the full-size architecture

def test_full_size_bf16_and_components():
    pred = predict(Spec())
    assert pred.params == FULL_PARAMS
    assert within(pred.bytes, FULL_BF16_BYTES)
    assert pred.bin is None
    c = pred.components
    assert c["llm_layers"]["params"] == 32 * PER_LLM_LAYER
    assert c["audio_encoder"]["params"] == 636_968_960 and c["projector"]["params"] == 5_246_976
    assert c["embed_tokens"]["params"] == c["lm_head"]["params"] == 639_107_072
    assert predict(Spec(llm_layers=24)).params == 6_777_929_728
    assert predict(Spec(audio_layers=31)).params == FULL_PARAMS - PER_AUDIO_LAYER


def test_full_size_quantized_match_measured_figures():
    nf4 = predict(Spec(precision="nf4-dq"))
    int8 = predict(Spec(precision="int8"))
    assert within(nf4.bytes, FULL_NF4_DQ_BYTES) and within(int8.bytes, FULL_INT8_BYTES)
    assert nf4.params == int8.params == FULL_PARAMS
    # transformers' default leaves embeddings and lm_head in bf16
    assert nf4.components["lm_head"]["bytes"] == 2 * 639_107_072
    emb = predict(Spec(precision="nf4-dq", quantize_embeddings=True))
    assert emb.components["lm_head"]["bytes"] < 0.6 * 639_107_072 and emb.bytes < nf4.bytes


def test_estimate_is_a_tight_upper_bound():
    base = planner.qwen2_audio_7b_config()
    for spec in (Spec(), Spec(precision="nf4-dq", llm_layers=7, vocab=32768, quantize_embeddings=True),
                 Spec(precision="int8", audio_layers=3)):
        est, exact = planner.estimate_bytes(spec, base), predict(spec, base).bytes
        assert 0 <= est - exact < 20_000


def test_target_bin_specs_land_in_the_bin_least_aggressive_first():
    base = planner.qwen2_audio_7b_config()
    rows = planner.specs_for_bin("Bin3", base, precision="nf4-dq")
    assert 2 <= len(rows) <= 8
    scores = [planner.aggressiveness(p, planner.base_dims(base)) for p in rows]
    assert scores == sorted(scores)
    for p in rows:
        assert p.bin == "Bin3" and p.spec.precision == "nf4-dq" and 500e6 <= p.bytes < 1e9
        if p.dims["llm_layers"] < 32:  # the most layers that fit: one more would not
            more = Spec(**{**p.spec.to_json(), "llm_layers": p.dims["llm_layers"] + 1})
            assert predict(more, base).bytes >= 1e9
    with pytest.raises(UserError, match="unknown bin"):
        planner.specs_for_bin("Bin9", base)
    with pytest.raises(UserError, match="no size bins"):
        planner.specs_for_bin("Bin3", base, edition="2026")


def test_spec_validation():
    with pytest.raises(UserError, match="unknown precision"):
        Spec(precision="nf5")
    with pytest.raises(UserError, match="unknown component"):
        Spec(component_precision={"decoderz": "int8"})
    with pytest.raises(UserError, match="positive"):
        Spec(llm_layers=0)
    with pytest.raises(UserError, match="only 32"):
        predict(Spec(llm_layers=40))
    s = Spec(precision="nf4", component_precision={"embeddings": "int8"})
    assert (s.precision_of("embed_tokens"), s.precision_of("lm_head"), s.precision_of("llm_layers")) == ("int8", "int8", "nf4")
    assert Spec(precision="nf4").precision_of("lm_head") == "bf16"
    assert Spec(precision="fp16").precision_of("lm_head") == "fp16"


def test_cli_plan(capsys, kit):
    assert main(["plan", "--llm-layers", "24", "--precision", "nf4-dq", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 6_777_929_728 and out["bin"] is None and out["dims"]["llm_layers"] == 24
    assert main(["plan", "--base", str(kit / "model"), "--precision", "int8", "--precision", "lm_head=int8"]) == 0
    text = capsys.readouterr().out
    assert "storage size" in text and "Bin5" in text and "predicted|" in text
    assert main(["plan", "--precision", "nf5"]) == 2
    assert "nf5" in capsys.readouterr().err
    assert main(["plan", "--base", str(kit / "nope")]) == 2
