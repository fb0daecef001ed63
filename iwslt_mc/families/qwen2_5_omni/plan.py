"""The planner's shape knowledge of the Qwen2.5-Omni thinker, as arithmetic on its config.json (no torch,
no transformers).

:func:`inventory` lists every tensor ``save_pretrained`` writes for a ``qwen2_5_omni_thinker`` config, all
layers expanded, with the on-disk names (``audio_tower.``, ``visual.``, ``model.``, ``lm_head``: the
thinker's part of the Qwen/Qwen2.5-Omni-7B checkpoint without its ``thinker.`` prefix) and the shapes the
transformers modules give them. tests/families/test_family_qwen2_5_omni.py checks it against the kit's
model.safetensors and against the model transformers builds on the meta device for the 7B layout.
:func:`plain_config` reads a config.json dict into a :class:`~iwslt_mc.floor.modeldir.PlainConfig` with the
defaults of transformers' config classes filled in (tested against them). :func:`predict` is the family's
``plan``: bytes, parameters and bin of a spec, exact to the byte for the safetensors file; its torch.save
line (the planner adds it) from :meth:`Qwen25OmniFamily.torch_save_layout` (a meta-device model,
cached per config).
"""

from __future__ import annotations

import copy

# transformers 5.25's defaults (Qwen2_5OmniTextConfig, Qwen2_5OmniAudioEncoderConfig,
# Qwen2_5OmniVisionEncoderConfig, Qwen2_5OmniThinkerConfig) for the fields read here
TEXT_DEFAULTS = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": True}
AUDIO_DEFAULTS = {"num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
                  "d_model": 1280, "max_source_positions": 1500, "output_dim": 3584}
VISION_DEFAULTS = {"depth": 32, "hidden_size": 3584, "intermediate_size": 3420, "num_heads": 16, "in_channels": 3,
                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 3584}
_POSITIVE = {"text_config": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "num_key_value_heads"),
             "audio_config": tuple(k for k in AUDIO_DEFAULTS),
             "vision_config": tuple(k for k in VISION_DEFAULTS)}

# Qwen/Qwen2.5-Omni-7B's thinker (its config.json's thinker_config, as transformers' classes document it:
# @auto_docstring(checkpoint="Qwen/Qwen2.5-Omni-7B"); the text and audio defaults above are that model's;
# its vision encoder is Qwen2.5-VL's 1280-wide ViT (the class default hidden_size 3584 is not the 7B's).
REFERENCE_7B = {
    "model_type": "qwen2_5_omni_thinker", "tie_word_embeddings": False,
    "text_config": {"model_type": "qwen2_5_omni_text", "vocab_size": 152064, "hidden_size": 3584,
                    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                    "num_key_value_heads": 4, "tie_word_embeddings": False},
    "audio_config": {"model_type": "qwen2_5_omni_audio_encoder", "num_mel_bins": 128, "encoder_layers": 32,
                     "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "d_model": 1280,
                     "max_source_positions": 1500, "output_dim": 3584},
    "vision_config": {"model_type": "qwen2_5_omni_vision_encoder", "depth": 32, "hidden_size": 1280,
                      "intermediate_size": 3420, "num_heads": 16, "in_channels": 3, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 3584},
}


def plain_config(raw: dict):
    """``raw`` (a thinker config.json dict) as a PlainConfig with transformers' defaults filled in;
    ValueError naming the first field that is not a positive integer."""
    from ...floor.modeldir import PlainConfig

    cfg = PlainConfig.from_dict(raw, {"text_config": TEXT_DEFAULTS, "audio_config": AUDIO_DEFAULTS,
                                      "vision_config": VISION_DEFAULTS})
    t = cfg.text_config
    if getattr(t, "num_key_value_heads", None) is None:
        t.num_key_value_heads = t.num_attention_heads
    return cfg.require_positive(_POSITIVE)


def tied(cfg) -> bool:
    """Whether ``lm_head`` shares the token embeddings (then not saved): the text config's
    ``tie_word_embeddings`` (transformers 5.25 reads the text config's for this model; tested)."""
    t = getattr(cfg, "text_config", None) or cfg
    return bool(getattr(t, "tie_word_embeddings", False))


def inventory(cfg, *, ffn_dim: int | None = None, vocab: int | None = None, llm_layers: int | None = None,
              audio_layers: int | None = None, audio_ffn_dim: int | None = None) -> list[tuple]:
    """(on-disk key, shape, component, is a Linear weight, is the token embedding) of every tensor of
    ``cfg``'s thinker, every layer listed; the keyword arguments replace the config's values."""
    from .rules import component_for_key

    t, a, v = cfg.text_config, cfg.audio_config, cfg.vision_config
    h, heads = t.hidden_size, t.num_attention_heads
    kv = getattr(t, "num_key_value_heads", None) or heads
    hd = getattr(t, "head_dim", None) or h // heads
    ffn, rows = ffn_dim or t.intermediate_size, vocab or t.vocab_size
    n_llm = t.num_hidden_layers if llm_layers is None else llm_layers
    n_audio = a.encoder_layers if audio_layers is None else audio_layers
    out = []

    def add(key, shape, linear=False, embedding=False):
        out.append((key, tuple(shape), component_for_key(key), linear, embedding))

    def lin(prefix, o, i, bias):
        add(prefix + ".weight", (o, i), linear=True)
        if bias:
            add(prefix + ".bias", (o,))

    # audio encoder (Whisper-style) with its output projection
    d, affn, od = a.d_model, audio_ffn_dim or a.encoder_ffn_dim, a.output_dim
    add("audio_tower.conv1.weight", (d, a.num_mel_bins, 3))
    add("audio_tower.conv1.bias", (d,))
    add("audio_tower.conv2.weight", (d, d, 3))
    add("audio_tower.conv2.bias", (d,))
    add("audio_tower.audio_bos_eos_token.weight", (2, od))
    for i in range(n_audio):
        p = f"audio_tower.layers.{i}."
        for name, bias in (("q_proj", True), ("k_proj", False), ("v_proj", True), ("out_proj", True)):
            lin(p + "self_attn." + name, d, d, bias)
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            add(p + name + ".weight", (d,))
            add(p + name + ".bias", (d,))
        lin(p + "fc1", affn, d, True)
        lin(p + "fc2", d, affn, True)
    add("audio_tower.ln_post.weight", (d,))
    add("audio_tower.ln_post.bias", (d,))
    lin("audio_tower.proj", od, d, True)
    # vision encoder (Qwen2.5-VL ViT) with its patch merger
    vh, m2 = v.hidden_size, v.hidden_size * v.spatial_merge_size ** 2
    add("visual.patch_embed.proj.weight", (vh, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size))
    for i in range(v.depth):
        p = f"visual.blocks.{i}."
        add(p + "norm1.weight", (vh,))
        add(p + "norm2.weight", (vh,))
        for name in ("q", "k", "v", "proj"):
            lin(p + "attn." + name, vh, vh, True)
        lin(p + "mlp.gate_proj", v.intermediate_size, vh, True)
        lin(p + "mlp.up_proj", v.intermediate_size, vh, True)
        lin(p + "mlp.down_proj", vh, v.intermediate_size, True)
    add("visual.merger.ln_q.weight", (vh,))
    lin("visual.merger.mlp.0", m2, m2, True)
    lin("visual.merger.mlp.2", v.out_hidden_size, m2, True)
    # text decoder
    add("model.embed_tokens.weight", (rows, h), embedding=True)
    for i in range(n_llm):
        p = f"model.layers.{i}."
        lin(p + "self_attn.q_proj", heads * hd, h, True)
        lin(p + "self_attn.k_proj", kv * hd, h, True)
        lin(p + "self_attn.v_proj", kv * hd, h, True)
        lin(p + "self_attn.o_proj", h, heads * hd, False)
        lin(p + "mlp.gate_proj", ffn, h, False)
        lin(p + "mlp.up_proj", ffn, h, False)
        lin(p + "mlp.down_proj", h, ffn, False)
        add(p + "input_layernorm.weight", (h,))
        add(p + "post_attention_layernorm.weight", (h,))
    add("model.norm.weight", (h,))
    if not tied(cfg):
        lin("lm_head", rows, h, False)
    return out


def param_count(cfg) -> int:
    """Parameters of ``cfg``'s thinker as saved (exact; tied lm_head counted once)."""
    import math

    return sum(math.prod(shape) for _, shape, *_ in inventory(cfg))


def base_dims(cfg) -> dict:
    """The planner's Spec defaults: layer counts, FFN widths, vocabulary, and the widths (unchangeable here)."""
    t, a = cfg.text_config, cfg.audio_config
    return {"llm_layers": t.num_hidden_layers, "audio_layers": a.encoder_layers, "ffn_dim": t.intermediate_size,
            "audio_ffn_dim": a.encoder_ffn_dim, "vocab": t.vocab_size, **widths(cfg)}


def widths(cfg) -> dict:
    return {"hidden": cfg.text_config.hidden_size, "heads": cfg.text_config.num_attention_heads,
            "audio_hidden": cfg.audio_config.d_model}


def apply_dims(cfg, dims: dict):
    """A copy of ``cfg`` with the spec's dimensions (layer counts, widths, vocabulary); the config the built
    model would have (layer removal through :func:`.rules.config_after_layer_removal`)."""
    from .rules import config_after_audio_layer_removal, config_after_layer_removal

    if dims["llm_layers"] != cfg.text_config.num_hidden_layers:
        cfg = config_after_layer_removal(cfg, list(range(dims["llm_layers"])))
    if dims["audio_layers"] != cfg.audio_config.encoder_layers:
        cfg = config_after_audio_layer_removal(cfg, list(range(dims["audio_layers"])))
    cfg = copy.deepcopy(cfg)
    cfg.text_config.intermediate_size = dims["ffn_dim"]
    cfg.audio_config.encoder_ffn_dim = dims["audio_ffn_dim"]
    if dims["vocab"] != cfg.text_config.vocab_size:
        cfg.text_config.vocab_size = dims["vocab"]
        for c in (cfg, cfg.text_config):
            if isinstance(getattr(c, "pad_token_id", None), int) and c.pad_token_id >= dims["vocab"]:
                c.pad_token_id = None
    return cfg


def predict(spec, base_config, edition: str, *, base_name: str | None = None):
    """The planner's prediction for a Qwen2.5-Omni thinker base (see the module docstring). Supported spec
    dimensions: precision (per component too), ``vocab``, ``ffn_dim``, ``audio_ffn_dim``, ``llm_layers``,
    ``audio_layers`` (every layer of a stack has the same shapes: which ones go does not change the size)."""
    from ...errors import UserError
    from ...floor.sizes import check_components
    from ...sizing.track import get_edition
    from ..base import predict_from_inventory
    from .rules import COMPONENTS, LABEL

    ed = get_edition(edition)
    check_components(spec, COMPONENTS, LABEL)
    for k, v in widths(base_config).items():
        if getattr(spec, k) not in (None, v):
            raise UserError(f"--{k.replace('_', '-')} {getattr(spec, k)}: width changes are not supported for {LABEL} "
                            f"yet (the base has {v})")
    if spec.drop_vision:
        raise UserError(f"--drop-vision: not supported for {LABEL} (transformers always builds its vision encoder)")
    base = base_dims(base_config)
    dims = {k: (getattr(spec, k, None) if getattr(spec, k, None) is not None else v) for k, v in base.items()
            if k not in ("hidden", "heads", "audio_hidden")}
    for k in ("llm_layers", "audio_layers"):
        if dims[k] > base[k]:
            raise UserError(f"--{k.replace('_', '-')} {dims[k]}: the base model has only {base[k]}")
    cfg = apply_dims(base_config, dims)
    return predict_from_inventory(spec, ed, inventory(cfg), COMPONENTS, "qwen2_5_omni", dims=dims, cfg=cfg, base_name=base_name)
