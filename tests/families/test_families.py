"""The model-family seam: detection from config.json, one-line refusals, Qwen2-Audio delegation."""

from __future__ import annotations

import json

import pytest

from iwslt_mc import families
from iwslt_mc.errors import InputFileError


def _model_dir(tmp_path, model_type):
    d = tmp_path / str(model_type)
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": model_type} if model_type else {}), encoding="utf-8")
    return d


def test_registry_names_match():
    assert families.family_names() == ("qwen2_audio", "gemma4", "qwen2_5_omni") == tuple(f.name for f in families.families())
    assert families.REGISTRY == ("qwen2_audio:Qwen2AudioFamily", "gemma4:Gemma4Family", "qwen2_5_omni:Qwen25OmniFamily")
    assert families.default_family().name == "qwen2_audio"
    assert families.supported_text() == ("qwen2_audio [qwen2_audio], gemma4 [gemma4, gemma4_unified], "
                                         "qwen2_5_omni [qwen2_5_omni_thinker]")
    # modelio and the planner refuse by the registry itself (no second list to keep in step)
    assert tuple(t for f in families.families() for t in f.model_types) == ("qwen2_audio", "gemma4", "gemma4_unified",
                                                                                "qwen2_5_omni_thinker")


@pytest.mark.parametrize("model_type,name", [("qwen2_audio", "qwen2_audio"), ("gemma4", "gemma4"),
                                             ("gemma4_unified", "gemma4")])
def test_family_for_detects_model_type(tmp_path, model_type, name):
    assert families.family_for(_model_dir(tmp_path, model_type)).name == name


@pytest.mark.parametrize("model_type", ["bert", None])
def test_unsupported_model_type_is_one_line_naming_families(tmp_path, model_type):
    d = _model_dir(tmp_path, model_type)
    with pytest.raises(InputFileError) as e:
        families.family_for(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg
    assert f"model_type {model_type!r}" in msg and "qwen2_audio" in msg and "gemma4" in msg


def test_require_supported_model_consults_registry(tmp_path):
    from iwslt_mc.modelio import require_supported_model

    assert require_supported_model(_model_dir(tmp_path, "gemma4")) == "gemma4"
    assert require_supported_model(_model_dir(tmp_path, "qwen2_audio")) == "qwen2_audio"
    with pytest.raises(InputFileError, match="supported families: qwen2_audio"):
        require_supported_model(_model_dir(tmp_path, "bert"))


def test_unknown_family_name():
    from iwslt_mc.errors import UserError

    with pytest.raises(UserError, match="unknown model family 'llama' \\(supported: qwen2_audio, gemma4, qwen2_5_omni\\)"):
        families.family_named("llama")


def test_qwen2_audio_key_mapping_is_layouts():
    from iwslt_mc.families.qwen2_audio import layout

    q = families.family_named("qwen2_audio")
    assert q.components == layout.COMPONENTS
    for key in ("language_model.model.layers.3.mlp.up_proj.weight", "audio_tower.layers.0.fc1.weight",
                "multi_modal_projector.linear.weight", "language_model.lm_head.weight", "model.norm.weight"):
        assert q.component_for_key(key) == layout.component_for_key(key)


def test_gemma4_key_mapping():
    g = families.family_named("gemma4")
    expect = {
        "model.audio_tower.layers.0.self_attn.q_proj.linear.weight": "audio_encoder",
        "model.vision_tower.encoder.layers.0.mlp.up_proj.linear.weight": "vision_encoder",
        "model.embed_vision.embedding_projection.weight": "vision_encoder",
        "model.vision_embedder.patch_dense.weight": "vision_encoder",
        "model.embed_audio.embedding_projection.weight": "projector",
        "model.language_model.layers.7.per_layer_input_gate.weight": "llm_layers",
        "model.language_model.embed_tokens_per_layer.weight": "per_layer_embeddings",
        "model.language_model.per_layer_model_projection.weight": "per_layer_embeddings",
        "model.language_model.embed_tokens.weight": "embed_tokens",
        "lm_head.weight": "lm_head",
        "model.language_model.norm.weight": "other",
    }
    assert {k: g.component_for_key(k) for k in expect} == expect


def test_qwen2_audio_prompt_unchanged(kit_processor):
    """The Qwen2-Audio prompt comes from its family's messages (system + audio + instruction)."""
    from iwslt_mc.families.qwen2_audio.prompt import messages
    from iwslt_mc.families import prompt_text

    text = prompt_text(kit_processor, "en-de")
    assert text == kit_processor.apply_chat_template(messages("en-de"), add_generation_prompt=True, tokenize=False)
    assert "You are a professional translator." in text and "Translate the English speech into German:" in text


def test_family_of_config_unknown_model_type_is_one_line_naming_config(tmp_path):
    """An unknown model_type is an error naming the config file (it used to fall back to Qwen2-Audio);
    a config that names no model type is the default family's."""
    from types import SimpleNamespace

    from iwslt_mc.errors import UserError

    cfg = SimpleNamespace(model_type="bert", _name_or_path=str(tmp_path / "m"))
    with pytest.raises(UserError) as e:
        families.family_of_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'm' / 'config.json'}: unsupported model family (model_type 'bert'")
    assert "qwen2_audio [qwen2_audio]" in msg
    assert families.family_of_config(None).name == "qwen2_audio"
    assert families.family_of_config(SimpleNamespace(model_type="gemma4_unified")).name == "gemma4"


@pytest.mark.parametrize("stage,qwen,gemma", [("prune-ffn", True, True), ("prune-hidden", True, True),
                                              ("replace-layers", True, True), ("drop-vision", False, True),
                                              ("prune-layers", True, True), ("trim-vocab", True, True),
                                              ("quantize", True, True), ("kd", True, True)])
def test_families_declare_supported_stages(stage, qwen, gemma):
    from iwslt_mc.families.base import ALL_STAGES
    from iwslt_mc.stages import stage_names

    assert tuple(stage_names()) == ALL_STAGES
    assert families.family_named("qwen2_audio").supports(stage) is qwen
    assert families.family_named("gemma4").supports(stage) is gemma


def test_stage_refuses_unsupported_family_by_declaration(tmp_path):
    from iwslt_mc.errors import UserError
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import _check_family

    d = _model_dir(tmp_path, "qwen2_5_omni_thinker")
    with pytest.raises(UserError, match=r"stage prune-hidden: not supported for qwen2_5_omni models yet \(.*; it handles: "
                                        r"qwen2_audio, gemma4\)"):
        _check_family(make_stage("prune-hidden", {"llm_ratio": 0.5}), d)


def test_family_of_processor_by_declared_prefix():
    class Qwen2AudioProcessor: ...
    class Gemma4UnifiedProcessor: ...
    class WhisperProcessor: ...

    assert families.family_of_processor(Qwen2AudioProcessor()).name == "qwen2_audio"
    assert families.family_of_processor(Gemma4UnifiedProcessor()).name == "gemma4"
    assert families.family_of_processor(WhisperProcessor()) is None
