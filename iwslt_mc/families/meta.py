"""A family's tools for a model built on the meta device (no weights): the skeleton of its state dict that
:func:`iwslt_mc.floor.statedict.meta_state_dict_layout` lays out (families without a hand-written tree)."""

from __future__ import annotations

from ..floor.statedict import _TORCH_TO_ST

def meta_skeleton(model) -> dict:
    """What :func:`meta_state_dict_layout` reads of a model built on the meta device, as JSON: per state-dict
    entry [in-memory key, shape, is floating point, safetensors dtype or None, index of the entry that first
    holds the same tensor (tied), its on-disk names], the ``_metadata`` modules, and whether every module's
    metadata is ``{'version': 1}`` (:mod:`iwslt_mc.plancache` keeps it per config)."""
    from transformers.core_model_loading import revert_weight_conversion

    sd = model.state_dict(keep_vars=True)
    disk_of: dict[int, list[str]] = {}
    for k, t in revert_weight_conversion(model, dict(sd)).items():
        disk_of.setdefault(id(t), []).append(k)
    first: dict[int, int] = {}
    rows = []
    for k, t in sd.items():
        first.setdefault(id(t), len(rows))
        rows.append([k, list(t.shape), bool(t.is_floating_point()), _TORCH_TO_ST.get(str(t.dtype)), first[id(t)],
                     disk_of.get(id(t), [k])])
    return {"tensors": rows, "modules": list(sd._metadata),
            "metadata_ok": all(v == {"version": 1} for v in sd._metadata.values())}


def cached_skeleton(cache: str, cfg_dict: dict, float_dtype: str, build) -> dict:
    """The :func:`meta_skeleton` of ``build(config dict without quantization_config, torch dtype)`` (a model on
    the meta device) for a config.json dict and safetensors float dtype, remembered by :mod:`iwslt_mc.plancache`
    under ``cache`` per config (``_name_or_path`` left out of the key), so plan reads it without transformers."""
    from .. import plancache

    key = [{k: v for k, v in cfg_dict.items() if k not in ("quantization_config", "_name_or_path")}, float_dtype]
    got = plancache.get(cache, key)
    if got is None:
        import torch

        torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F64": torch.float64}[float_dtype]
        model = build({k: v for k, v in cfg_dict.items() if k != "quantization_config"}, torch_dtype)
        got = meta_skeleton(model)
        plancache.put(cache, key, got)
    return got


def meta_torch_save_layout(cache: str, build, tensors, config: dict, float_dtype: str | None):
    """A family's ``torch_save_layout`` from the model transformers builds on the meta device
    (:func:`iwslt_mc.floor.statedict.meta_state_dict_layout` over :func:`cached_skeleton`)."""
    from ..floor.statedict import meta_state_dict_layout

    return meta_state_dict_layout(tensors, config, float_dtype,
                                  skeleton=lambda cfg_dict, fdt: cached_skeleton(cache, cfg_dict, fdt, build))


def meta_layout_name(config: dict) -> str:
    """``MODEL_TYPE/meta-model(transformers-VERSION)``: the ``torch_save_layout_name`` of a family whose layout
    comes from a meta-device model (:func:`meta_torch_save_layout`)."""
    from ..plancache import transformers_version

    return f"{config.get('model_type')}/meta-model(transformers-{transformers_version()})"
