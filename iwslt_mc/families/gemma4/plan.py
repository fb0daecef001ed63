"""The planner for the Gemma 4 family: every tensor of the model built on the meta device.

Qwen2-Audio's planner expands one template layer; Gemma 4's layers differ (sliding and global layers
have different head widths, KV-sharing layers, a PLE table whose width is per layer), so the whole model
is enumerated (on the meta device: no memory). The on-disk arithmetic and the safetensors header are the
planner's own (:func:`iwslt_mc.floor.sizes.disk_tensors`, :func:`iwslt_mc.floor.sizes.safetensors_header_bytes`).
Supported spec dimensions: precision (per component too), ``vocab``, ``ffn_dim`` (prune-ffn), ``hidden``
(prune-hidden: the LLM's residual width), ``heads`` (its query heads, each layer's key/value heads following:
:func:`.rules.kept_head_counts`; the audio encoder's width stays) and ``llm_layers``
(the removed layers are the contiguous block nearest the middle that KV sharing and the global last
layer allow: :meth:`Gemma4Family.allowed_removal`). ``--target`` searches are Qwen2-Audio only.
A plain config (``plan --base DIR`` reads config.json without transformers) is converted to transformers'
config only when :mod:`iwslt_mc.plancache` does not yet hold what the meta model says about it (the planned
config, its tensors, the torch.save skeleton): the first plan of a config takes seconds, a repeat does not.
"""

from __future__ import annotations

import copy

from .rules import (COMPONENTS, allowed_removal, component_for_key, config_after_audio_layer_removal,
                    config_after_layer_removal)


def _text(cfg):
    return getattr(cfg, "text_config", None) or cfg


def _is_plain(cfg) -> bool:
    from ...floor.modeldir import PlainConfig

    return isinstance(cfg, PlainConfig)


def _raw(cfg) -> dict:
    """A plain config's JSON dict (the cache key of what the meta model says about it)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "_name_or_path"}


def transformers_config(cfg):
    """``cfg`` as transformers' config object (a :class:`~iwslt_mc.floor.modeldir.PlainConfig` read from a
    config.json is converted as ``AutoConfig.from_pretrained`` reads that file); ``cfg`` itself otherwise."""
    if not _is_plain(cfg):
        return cfg
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    d = cfg.to_dict()
    return CONFIG_MAPPING[d["model_type"]].from_dict(d)


def _text_dict(cfg) -> dict:
    d = cfg.to_dict()
    return d.get("text_config") or d


def base_dims(cfg) -> dict:
    """LLM and audio layers (None: no audio encoder, as in ``gemma4_unified``), FFN width, vocabulary, whether a
    vision encoder is there, the LLM's residual width and query heads (a plain config: remembered by :mod:`iwslt_mc.plancache`)."""
    if _is_plain(cfg):
        from ... import plancache

        key = _raw(cfg)
        got = plancache.get("gemma4-base", key)
        if got is None:
            got = base_dims(transformers_config(cfg))
            plancache.put("gemma4-base", key, got)
        return got
    from .surgery import audio_layer_count

    t = _text(cfg)
    return {"llm_layers": t.num_hidden_layers, "audio_layers": audio_layer_count(cfg) or None,
            "ffn_dim": t.intermediate_size, "audio_ffn_dim": None, "vocab": t.vocab_size,
            "vision": getattr(cfg, "vision_config", None) is not None,
            # prune-hidden narrows the LLM's residual width and, asked, its query heads (the audio encoder's width stays)
            "hidden": t.hidden_size, "heads": t.num_attention_heads}


def apply_dims(cfg, dims: dict):
    """A copy of ``cfg`` with the spec's dimensions."""
    from ...errors import UserError
    base = base_dims(cfg)
    if dims["audio_layers"] != base["audio_layers"]:
        if base["audio_layers"] is None:
            raise UserError("--audio-layers: this Gemma 4 model has no audio-encoder layers (gemma4_unified)")
        if dims["audio_layers"] > base["audio_layers"]:
            raise UserError(f"--audio-layers {dims['audio_layers']}: the base model has only {base['audio_layers']}")
        cfg = config_after_audio_layer_removal(cfg, list(range(dims["audio_layers"])))
    if not dims["vision"] and base["vision"]:
        d = cfg.to_dict()
        d["vision_config"] = None
        cfg = type(cfg).from_dict(d)
    if dims["llm_layers"] != base["llm_layers"]:
        if dims["llm_layers"] > base["llm_layers"]:
            raise UserError(f"--llm-layers {dims['llm_layers']}: the base model has only {base['llm_layers']}")
        n = base["llm_layers"]
        kept = dims.get("llm_kept")
        if kept is None:
            block = allowed_removal(cfg, n - dims["llm_layers"])
            kept = [i for i in range(n) if i not in block]
        elif len(kept) != dims["llm_layers"] or any(not 0 <= i < n for i in kept):
            raise UserError(f"LLM layers kept {kept}: expected {dims['llm_layers']} distinct indices of 0..{n - 1}")
        cfg = config_after_layer_removal(cfg, sorted(kept))
    if dims.get("heads") and dims["heads"] != _text(cfg).num_attention_heads:  # prune-hidden's llm_heads
        from .rules import text_dict_after_heads

        d = cfg.to_dict()
        d["text_config"] = text_dict_after_heads(d["text_config"], dims["heads"])
        cfg = type(cfg).from_dict(d)
    cfg = copy.deepcopy(cfg)
    t = _text(cfg)
    t.intermediate_size = dims["ffn_dim"]
    if dims.get("hidden"):  # prune-hidden: everything built from hidden_size follows (surgery.prune_llm_hidden)
        t.hidden_size = dims["hidden"]
    if dims["vocab"] != t.vocab_size:
        t.vocab_size = dims["vocab"]
        if getattr(t, "vocab_size_per_layer_input", None):
            t.vocab_size_per_layer_input = dims["vocab"]
        for c in (cfg, t):
            if isinstance(getattr(c, "pad_token_id", None), int) and c.pad_token_id >= dims["vocab"]:
                c.pad_token_id = None
    return cfg


def kept_after_prune(cfg, kept: list[int], options: dict) -> list[int] | None:
    """The base's LLM layers still there after a prune-layers stage with ``options`` (the stage's own rules:
    explicit ``llm_layers`` of the current model, the ``middle`` block the family allows, the ``top``
    block), given ``kept`` before it; None when the stage searches (``iterative``: not known in advance)."""
    if _is_plain(cfg):
        from ... import plancache

        key = [_raw(cfg), kept, options]
        got = plancache.get("gemma4-kept", key)
        if got is None:
            got = {"kept": kept_after_prune(transformers_config(cfg), kept, options)}
            plancache.put("gemma4-kept", key, got)
        return got["kept"]
    from ...floor.layers import top_block
    n = len(kept)
    if options.get("llm_layers"):
        removed = set(options["llm_layers"])
    elif not options.get("remove"):
        return kept
    elif options.get("strategy") == "middle":
        current = config_after_layer_removal(cfg, kept) if n != _text(cfg).num_hidden_layers else cfg
        removed = set(allowed_removal(current, int(options["remove"])))
    elif options.get("strategy") == "top":
        removed = set(top_block(n, int(options["remove"])))
    else:
        return None
    return [k for i, k in enumerate(kept) if i not in removed]


def meta_model(cfg, dtype=None):
    """The model ``from_pretrained`` would build for ``cfg`` (its ``architectures`` class, else the
    ``AutoModelForMultimodalLM`` one), on the meta device: shapes, names and order, no memory."""
    import torch
    import transformers

    arch = (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModelForMultimodalLM._model_mapping[type(cfg)]
    with torch.device("meta"):
        return cls._from_config(cfg, dtype=dtype) if dtype is not None else cls(cfg)


def inventory(cfg) -> list[tuple[str, tuple, str, bool, bool]]:
    """(on-disk key, shape, component, is a Linear weight, is the token embedding) of every saved tensor."""
    from torch import nn
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    model = meta_model(cfg)
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embed_id = id(model.get_input_embeddings().weight)
    sd = remove_tied_weights_from_state_dict(model.state_dict(), model)
    kind = {}
    for name in sd:
        try:
            obj = model.get_parameter_or_buffer(name)
        except AttributeError:
            obj = None
        kind[name] = (id(obj) in linear_ids, id(obj) == embed_id)
    marked = {id(v): k for k, v in sd.items()}
    from transformers.core_model_loading import revert_weight_conversion

    disk = revert_weight_conversion(model, dict(sd))
    out = []
    for key, tensor in disk.items():
        lin, emb = kind.get(marked.get(id(tensor), key), (False, False))
        out.append((key, tuple(tensor.shape), component_for_key(key), lin, emb))
    return out


def planned(base_config, dims: dict):
    """(the config with ``dims``, its :func:`inventory`); for a plain base config both come from
    :mod:`iwslt_mc.plancache` when an earlier plan computed them (the config then is a PlainConfig of
    transformers' ``to_dict()``), else from transformers (and are stored there)."""
    if not _is_plain(base_config):
        cfg = apply_dims(base_config, dims)
        return cfg, inventory(cfg)
    from ... import plancache
    from ...floor.modeldir import PlainConfig

    key = [_raw(base_config), dims]
    got = plancache.get("gemma4-planned", key)
    if got is None:
        cfg = apply_dims(transformers_config(base_config), dims)
        got = {"config": cfg.to_dict(), "inventory": [[k, list(sh), c, lin, emb] for k, sh, c, lin, emb in inventory(cfg)]}
        plancache.put("gemma4-planned", key, got)
    return PlainConfig.from_dict(got["config"]), [(k, tuple(sh), c, lin, emb) for k, sh, c, lin, emb in got["inventory"]]


def predict(spec, base_config, edition: str, *, base_name: str | None = None):
    from ...floor.sizes import check_components
    from ...sizing.track import get_edition
    from ..base import predict_from_inventory

    from ...errors import UserError

    ed = get_edition(edition)
    check_components(spec, COMPONENTS, "Gemma 4")
    base = base_dims(base_config)
    t = _text(base_config)
    if spec.heads is not None and spec.heads != t.num_attention_heads:
        from .rules import kept_head_counts

        try:
            kept_head_counts(_text_dict(base_config), spec.heads)
        except UserError as e:
            raise UserError(f"--heads: {e}") from None
    if spec.audio_hidden is not None:
        from .surgery import AUDIO_HIDDEN_REFUSAL

        raise UserError("--audio-hidden: " + (AUDIO_HIDDEN_REFUSAL if base["audio_layers"] else
                                              "this Gemma 4 model has no audio encoder (gemma4_unified)"))
    if spec.hidden is not None and spec.hidden > t.hidden_size:
        raise UserError(f"--hidden {spec.hidden}: at most the base's width {t.hidden_size}")
    if spec.audio_ffn_dim is not None:
        from .surgery import AUDIO_FFN_REFUSAL

        raise UserError("--audio-ffn-dim: " + (AUDIO_FFN_REFUSAL if base["audio_layers"] else
                                               "this Gemma 4 model has no audio encoder (gemma4_unified)"))
    if spec.drop_vision and not base["vision"]:
        raise UserError("--drop-vision: this Gemma 4 model has no vision encoder (vision_config is empty)")
    dims = {k: (getattr(spec, k, None) if getattr(spec, k, None) is not None else v) for k, v in base.items()}
    dims["vision"] = base["vision"] and not spec.drop_vision
    if spec.llm_kept is not None:
        dims["llm_kept"] = sorted(spec.llm_kept)
    cfg, tensors = planned(base_config, dims)
    return predict_from_inventory(spec, ed, tensors, COMPONENTS, "gemma4", dims=dims, cfg=cfg, base_name=base_name)
