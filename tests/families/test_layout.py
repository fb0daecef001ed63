"""Layout accessors on both transformers layouts (5.10+ and the older nesting), and key->component."""

import pytest
import torch
from torch import nn
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2ForCausalLM
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder, Qwen2AudioMultiModalProjector

from iwslt_mc.families.qwen2_audio.layout import (LayoutError, audio_layer_index, component_for_key, find_layout, llm_layer_index)


def tiny_config():
    return Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=3, encoder_attention_heads=2, encoder_ffn_dim=48,
                          num_mel_bins=128, max_source_positions=1500),
        text_config=dict(hidden_size=32, num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=40, vocab_size=97),
        audio_token_index=96,
    )


class OldLayoutQwen2Audio(nn.Module):
    """The pre-5.10 nesting: language_model is a Qwen2ForCausalLM holding model.layers and lm_head."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.audio_tower = Qwen2AudioEncoder(config.audio_config)
        self.multi_modal_projector = Qwen2AudioMultiModalProjector(config)
        self.language_model = Qwen2ForCausalLM(config.text_config)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()


@pytest.fixture(scope="module")
def new_model():
    torch.manual_seed(0)
    return Qwen2AudioForConditionalGeneration(tiny_config())


def test_new_layout(new_model):
    lay = find_layout(new_model)
    assert lay.num_llm_layers == 5 and lay.num_audio_layers == 3
    assert lay.decoder_layers is new_model.model.language_model.layers
    assert lay.audio_layers is new_model.model.audio_tower.layers
    assert lay.embed_tokens is new_model.model.language_model.embed_tokens
    assert lay.lm_head is new_model.lm_head
    assert lay.projector is new_model.model.multi_modal_projector
    assert lay.decoder_layers_name == "model.language_model.layers"
    assert lay.audio_layers_name == "model.audio_tower.layers"
    assert lay.lm_head_name == "lm_head"
    assert lay.text_config.num_hidden_layers == 5 and lay.audio_config.encoder_layers == 3


def test_old_layout():
    torch.manual_seed(0)
    m = OldLayoutQwen2Audio(tiny_config())
    lay = find_layout(m)
    assert lay.decoder_layers is m.language_model.model.layers
    assert lay.embed_tokens is m.language_model.model.embed_tokens
    assert lay.lm_head is m.language_model.lm_head
    assert lay.decoder_layers_name == "language_model.model.layers"
    assert lay.lm_head_name == "language_model.lm_head"
    assert lay.audio_layers_name == "audio_tower.layers"
    assert lay.projector_name == "multi_modal_projector"


def test_peft_wrapped(new_model):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(new_model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    lay = find_layout(wrapped)
    assert lay.num_llm_layers == 5
    assert lay.decoder_layers_name.endswith("model.language_model.layers")
    assert lay.lm_head.weight.shape == (97, 32)
    wrapped.unload()


def test_not_qwen2_audio():
    with pytest.raises(LayoutError, match="could not find audio encoder"):
        find_layout(Qwen2ForCausalLM(tiny_config().text_config))


def test_state_dict_keys_cover_components(new_model):
    """Every saved key maps to a component; counts match module parameter counts."""
    lay = find_layout(new_model)
    counts = {}
    for k, v in new_model.state_dict().items():
        counts[component_for_key(k)] = counts.get(component_for_key(k), 0) + v.numel()
    assert counts["audio_encoder"] == sum(p.numel() for p in lay.audio_tower.parameters())
    assert counts["projector"] == sum(p.numel() for p in lay.projector.parameters())
    assert counts["llm_layers"] == sum(p.numel() for p in lay.decoder_layers.parameters())
    assert counts["embed_tokens"] == lay.embed_tokens.weight.numel()
    assert counts["lm_head"] == lay.lm_head.weight.numel()
    assert counts["other"] == lay.norm.weight.numel()


@pytest.mark.parametrize("key,comp,layer", [
    ("language_model.model.layers.13.mlp.up_proj.weight", "llm_layers", 13),  # on-disk (all 5.x)
    ("model.language_model.layers.2.self_attn.q_proj.weight", "llm_layers", 2),  # 5.10+ in memory
    ("language_model.layers.7.input_layernorm.weight", "llm_layers", 7),
    ("base_model.model.model.language_model.layers.1.mlp.down_proj.lora_A.weight", "llm_layers", 1),
    ("language_model.model.embed_tokens.weight", "embed_tokens", None),
    ("language_model.lm_head.weight", "lm_head", None),
    ("lm_head.weight", "lm_head", None),
    ("audio_tower.layers.0.fc1.weight", "audio_encoder", None),
    ("multi_modal_projector.linear.weight", "projector", None),
    ("language_model.model.norm.weight", "other", None),
])
def test_component_for_key(key, comp, layer):
    assert component_for_key(key) == comp
    assert llm_layer_index(key) == layer


def test_audio_layer_index():
    assert audio_layer_index("audio_tower.layers.31.fc2.bias") == 31
    assert audio_layer_index("model.audio_tower.layers.4.self_attn.k_proj.weight") == 4
    assert audio_layer_index("audio_tower.conv1.weight") is None
