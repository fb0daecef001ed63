"""Compression and training stages, by name. A literal list is the registry (like torchtune's).

Each entry maps a stage name to ``module:Class`` inside this package, imported only when used,
so listing stages never imports torch.
"""

from __future__ import annotations

import importlib

from ..errors import UserError

REGISTRY: dict[str, str] = {
    "prune-layers": "prune_layers:PruneLayers",
    "prune-ffn": "prune_ffn:PruneFFN",
    "prune-hidden": "prune_hidden:PruneHidden",
    "trim-vocab": "trim_vocab:TrimVocab",
    "quantize": "quantize:Quantize",
    "finetune": "finetune:Finetune",
    "merge": "merge:Merge",
    "distill": "distill:Distill",
    "kd": "kd:KD",
    "replace-layers": "replace_layers:ReplaceLayers",
    "drop-vision": "drop_vision:DropVision",
}


def stage_names() -> list[str]:
    return list(REGISTRY)


def get_stage_class(name: str):
    if name not in REGISTRY:
        raise UserError(f"unknown stage {name!r} (known: {', '.join(REGISTRY)})")
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f".{mod}", __package__), cls)


def make_stage(name: str, options: dict | None = None):
    """Instantiate stage ``name`` with strictly validated ``options`` (raises UserError)."""
    return get_stage_class(name)(options or {})
