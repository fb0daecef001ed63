"""Qwen2-Audio's ``torch.save(model.state_dict())`` layout, written out by hand (no torch, no model): the
modules of ``Qwen2AudioForConditionalGeneration`` in registration order (transformers >= 5.10) and the
load-time renames of its checkpoint keys, walked by :func:`iwslt_mc.floor.statedict.tree_state_dict_layout`.
"""

from __future__ import annotations

import re

from ...floor.statedict import CONV, EMB, LIN, LINB, NONE, NORM, RMS, Layers, tree_state_dict_layout

LAYOUT = "qwen2_audio/transformers>=5.10"

_ENCODER_LAYER = (("self_attn", (("k_proj", LIN), ("v_proj", LINB), ("q_proj", LINB), ("out_proj", LINB))),
                  ("self_attn_layer_norm", NORM), ("activation_fn", NONE), ("fc1", LINB), ("fc2", LINB),
                  ("final_layer_norm", NORM))
_DECODER_LAYER = (("self_attn", (("q_proj", LINB), ("k_proj", LINB), ("v_proj", LINB), ("o_proj", LIN))),
                  ("mlp", (("gate_proj", LIN), ("up_proj", LIN), ("down_proj", LIN), ("act_fn", NONE))),
                  ("input_layernorm", RMS), ("post_attention_layernorm", RMS))
# Qwen2AudioForConditionalGeneration's modules in registration order (transformers >= 5.10).
QWEN2_AUDIO_TREE = (
    ("model", (
        ("audio_tower", (("conv1", CONV), ("conv2", CONV), ("embed_positions", EMB),
                         ("layers", Layers(("audio_config", "encoder_layers"), _ENCODER_LAYER)),
                         ("layer_norm", NORM), ("avg_pooler", NONE))),
        ("multi_modal_projector", (("linear", LINB),)),
        ("language_model", (("embed_tokens", EMB),
                            ("layers", Layers(("text_config", "num_hidden_layers"), _DECODER_LAYER)),
                            ("norm", RMS), ("rotary_emb", NONE))),
    )),
    ("lm_head", LIN),
)

# transformers' load-time renames for qwen2_audio (conversion_mapping.py), first match wins. The LLM is on disk
# under ``language_model.model.`` (transformers 5.25's save_pretrained) or ``language_model.model.model.``
# (5.17's); 5.17 and 5.25 both load either with every weight (docs/bench/gpu_check_plan.md, last section).
_RENAMES = (
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^language_model\.model\.model\."), "model.language_model."),
    (re.compile(r"^language_model\.model\."), "model.language_model."),
    (re.compile(r"^language_model\."), "model.language_model."),
    (re.compile(r"^audio_tower\."), "model.audio_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
)


def memory_key(disk_key: str) -> str:
    """The state-dict key transformers gives a checkpoint key when it loads a Qwen2-Audio model."""
    for rx, repl in _RENAMES:
        if rx.match(disk_key):
            return rx.sub(repl, disk_key, count=1)
    return disk_key


def state_dict_layout(tensors, config: dict, float_dtype: str | None):
    """The in-memory state dict and ``_metadata`` modules of a Qwen2-Audio checkpoint (see
    :func:`iwslt_mc.sizing.torchsave.state_dict_layout`)."""
    return tree_state_dict_layout(tensors, config, float_dtype, tree=QWEN2_AUDIO_TREE, memory_key=memory_key,
                                  tied_source="model.language_model.embed_tokens.weight")
