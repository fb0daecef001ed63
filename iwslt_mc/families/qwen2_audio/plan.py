"""The planner's shape knowledge of Qwen2-Audio, as arithmetic on its config (no transformers, no model).

:func:`inventory` lists every tensor ``save_pretrained`` writes for a Qwen2-Audio config, with one LLM and
one audio layer (the planner repeats the layer templates), with the on-disk names and the shapes the
transformers modules give them (the names' prefixes are the installed transformers' own, asked once per
transformers version and remembered: :func:`disk_prefixes`); tests/planning/test_planner.py checks it against the model transformers builds on
the meta device for the 7B, narrowed, trimmed and small configs (tie_word_embeddings set too). :func:`plain_config` reads a config.json
dict into a :class:`~iwslt_mc.floor.modeldir.PlainConfig`, filling the fields a saved config may leave out
with the defaults of transformers' ``Qwen2Config`` / ``Qwen2AudioEncoderConfig`` (tested against them).
"""

from __future__ import annotations

import functools

# transformers' defaults for the fields the planner and the torch.save layout read (Qwen2Config,
# Qwen2AudioEncoderConfig); a num_key_value_heads given as null is num_attention_heads (see plain_config)
TEXT_DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "tie_word_embeddings": False}
AUDIO_DEFAULTS = {"num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
                  "d_model": 1280, "max_source_positions": 1500}
_POSITIVE = {"text_config": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                             "num_key_value_heads"),
             "audio_config": ("num_mel_bins", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "d_model",
                              "max_source_positions")}


def plain_config(raw: dict):
    """``raw`` (a Qwen2-Audio config.json dict) as a PlainConfig with transformers' defaults filled in;
    ValueError naming the first field that is not a positive integer."""
    from ...floor.modeldir import PlainConfig

    cfg = PlainConfig.from_dict(raw, {"text_config": TEXT_DEFAULTS, "audio_config": AUDIO_DEFAULTS})
    t = cfg.text_config
    if getattr(t, "num_key_value_heads", None) is None:
        t.num_key_value_heads = t.num_attention_heads
    return cfg.require_positive(_POSITIVE, optional={"text_config": ("head_dim",)})


# The on-disk prefix ``save_pretrained`` gives each in-memory part of ``Qwen2AudioForConditionalGeneration``
# (transformers >= 5.10 holds ``model.language_model``, ``lm_head``, ``model.audio_tower``,
# ``model.multi_modal_projector``): transformers reverts its load-time renames when it saves, and releases revert
# them differently (5.25: ``language_model.model.``; 5.17: ``language_model.model.model.``; both load either
# with every weight). These are the names of the project's lock (5.25); :func:`disk_prefixes` asks the installed one.
DISK_PREFIXES = {"model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head.",
                 "model.audio_tower.": "audio_tower.", "model.multi_modal_projector.": "multi_modal_projector."}


@functools.lru_cache(maxsize=1)
def disk_prefixes() -> dict[str, str]:
    """:data:`DISK_PREFIXES` as the installed transformers writes them, learned from its own names: a tiny model
    built on the meta device, its state dict reverted by transformers' ``revert_weight_conversion``
    (:func:`learn_disk_prefixes`); remembered per transformers version by :mod:`iwslt_mc.plancache` (``plan``
    then reads it without transformers). Without transformers (or torch): the lock's, :data:`DISK_PREFIXES`."""
    from ... import plancache

    got = plancache.get("qwen2_audio-disk-prefixes", sorted(DISK_PREFIXES))
    if isinstance(got, dict) and set(got) == set(DISK_PREFIXES):
        return got
    try:
        got = learn_disk_prefixes()
    except (ImportError, ValueError):  # no transformers here (nothing will be saved by it), or an unknown naming
        return dict(DISK_PREFIXES)
    plancache.put("qwen2_audio-disk-prefixes", sorted(DISK_PREFIXES), got)
    return got


def learn_disk_prefixes() -> dict[str, str]:
    """The installed transformers' on-disk prefix of each key of :data:`DISK_PREFIXES` (ImportError without
    torch or transformers, or with a transformers before 5 that saves in-memory names). ValueError when a part's
    tensors do not share one prefix (a naming this module does not know)."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from ..meta import meta_skeleton

    cfg = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", encoder_layers=1, d_model=8, encoder_attention_heads=2,
                          encoder_ffn_dim=8, num_mel_bins=4, max_source_positions=4),
        text_config=dict(model_type="qwen2", num_hidden_layers=1, hidden_size=8, intermediate_size=8,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=16))
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(cfg)
    found: dict[str, set[str]] = {p: set() for p in DISK_PREFIXES}
    for key, *_, disk in meta_skeleton(model)["tensors"]:
        mem = next((p for p in DISK_PREFIXES if key.startswith(p)), None)
        if mem is None:
            raise ValueError(f"Qwen2-Audio tensor {key!r} is under none of {', '.join(DISK_PREFIXES)}")
        tail = key[len(mem):]
        for d in disk:
            if not d.endswith(tail):
                raise ValueError(f"transformers saves {key!r} as {d!r}: not a prefix change")
            found[mem].add(d[: len(d) - len(tail)])
    bad = {p: sorted(v) for p, v in found.items() if len(v) != 1}
    if bad:
        raise ValueError(f"transformers saves a Qwen2-Audio part under more or fewer than one prefix: {bad}")
    return {p: v.pop() for p, v in found.items()}


def inventory(cfg, *, ffn_dim: int | None = None, audio_ffn_dim: int | None = None,
              vocab: int | None = None) -> list[tuple[str, tuple[int, ...], bool, bool]]:
    """(on-disk key, shape, is a Linear weight, is the token embedding) of every tensor of ``cfg``'s model with
    one LLM layer (``language_model.model.layers.0.``) and one audio layer (``audio_tower.layers.0.``),
    lm_head first, then sorted by key; ``ffn_dim``/``audio_ffn_dim``/``vocab`` replace the config's widths.
    The on-disk names are the installed transformers' (:func:`disk_prefixes`)."""
    pre = disk_prefixes()
    t, a = getattr(cfg, "text_config", None) or cfg, getattr(cfg, "audio_config", None)
    h, heads = t.hidden_size, t.num_attention_heads
    kv = getattr(t, "num_key_value_heads", None) or heads
    hd = getattr(t, "head_dim", None) or h // heads
    ffn, v = ffn_dim or t.intermediate_size, vocab or t.vocab_size
    out = []

    def add(key, shape, linear=False, embedding=False):
        out.append((key, tuple(shape), linear, embedding))

    def linear(prefix, rows, cols, bias):
        add(prefix + ".weight", (rows, cols), linear=True)
        if bias:
            add(prefix + ".bias", (rows,))

    lm = pre["model.language_model."]
    add(lm + "embed_tokens.weight", (v, h), embedding=True)
    layer = lm + "layers.0."
    linear(layer + "self_attn.q_proj", heads * hd, h, True)
    linear(layer + "self_attn.k_proj", kv * hd, h, True)
    linear(layer + "self_attn.v_proj", kv * hd, h, True)
    linear(layer + "self_attn.o_proj", h, heads * hd, False)
    linear(layer + "mlp.gate_proj", ffn, h, False)
    linear(layer + "mlp.up_proj", ffn, h, False)
    linear(layer + "mlp.down_proj", h, ffn, False)
    add(layer + "input_layernorm.weight", (h,))
    add(layer + "post_attention_layernorm.weight", (h,))
    add(lm + "norm.weight", (h,))
    # transformers (5.x) builds and saves Qwen2-Audio's lm_head whatever tie_word_embeddings says (tested)
    lm_head = pre["lm_head."] + "weight"
    linear(lm_head[: -len(".weight")], v, h, False)
    if a is not None:
        d, affn = a.d_model, audio_ffn_dim or a.encoder_ffn_dim
        at = pre["model.audio_tower."]
        add(at + "conv1.weight", (d, a.num_mel_bins, 3))
        add(at + "conv1.bias", (d,))
        add(at + "conv2.weight", (d, d, 3))
        add(at + "conv2.bias", (d,))
        add(at + "embed_positions.weight", (a.max_source_positions, d))
        add(at + "layer_norm.weight", (d,))
        add(at + "layer_norm.bias", (d,))
        layer = at + "layers.0."
        for name, bias in (("q_proj", True), ("k_proj", False), ("v_proj", True), ("out_proj", True)):
            linear(layer + "self_attn." + name, d, d, bias)
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            add(layer + name + ".weight", (d,))
            add(layer + name + ".bias", (d,))
        linear(layer + "fc1", affn, d, True)
        linear(layer + "fc2", d, affn, True)
        linear(pre["model.multi_modal_projector."] + "linear", h, d, True)
    # in the order transformers' state dict comes out of revert_weight_conversion: lm_head, then by key
    # (the planner reports the first tensor a precision cannot quantize, so the order shows in messages)
    return sorted(out, key=lambda e: (e[0] != lm_head, e[0]))


# ----------------------------------------------------------------------------- the built-in reference

def qwen2_audio_7b_config_dict() -> dict:
    """config.json values of Qwen2-Audio-7B-Instruct (the architecture only; see qwen2-audio.md)."""
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "model_type": "qwen2_audio",
        "audio_token_index": 151646,
        "dtype": "bfloat16",
        "audio_config": {
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": 128,
            "encoder_layers": 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "d_model": 1280,
            "max_source_positions": 1500,
            "activation_function": "gelu",
        },
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "intermediate_size": 11008,
            "vocab_size": 156032,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8192,
            "tie_word_embeddings": False,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "dtype": "bfloat16",
        },
    }


def qwen2_audio_7b_config():
    """The built-in Qwen2-Audio-7B-Instruct architecture as a transformers ``Qwen2AudioConfig``."""
    from transformers import Qwen2AudioConfig

    d = qwen2_audio_7b_config_dict()
    return Qwen2AudioConfig(audio_config=d["audio_config"], text_config=d["text_config"],
                            audio_token_index=d["audio_token_index"])


def qwen2_audio_7b_plain_config():
    """The built-in Qwen2-Audio-7B-Instruct architecture as a :class:`~iwslt_mc.floor.modeldir.PlainConfig`:
    the same widths and predictions as :func:`qwen2_audio_7b_config`, without importing transformers."""
    return plain_config(qwen2_audio_7b_config_dict())
