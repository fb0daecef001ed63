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
