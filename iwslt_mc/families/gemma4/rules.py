"""Gemma 4's config-level rules: checkpoint key -> component, and which layer removals keep a model valid
(KV sharing, a global last layer). Pure: no torch or transformers import; the family
(:class:`iwslt_mc.families.gemma4.Gemma4Family`), its planner and its surgery all read them here.
"""

from __future__ import annotations

import re

COMPONENTS = ("audio_encoder", "vision_encoder", "projector", "llm_layers", "per_layer_embeddings",
              "embed_tokens", "lm_head", "other")
_KEY_RULES = [
    (re.compile(r"(^|\.)audio_tower\."), "audio_encoder"),
    (re.compile(r"(^|\.)(vision_tower|embed_vision|vision_embedder)\."), "vision_encoder"),
    (re.compile(r"(^|\.)embed_audio\."), "projector"),
    (re.compile(r"(^|\.)language_model\.(model\.)?layers\.\d+\."), "llm_layers"),
    (re.compile(r"(^|\.)(embed_tokens_per_layer|per_layer_model_projection|per_layer_projection_norm)\."),
     "per_layer_embeddings"),
    (re.compile(r"(^|\.)embed_tokens\."), "embed_tokens"),
    (re.compile(r"(^|\.)lm_head\."), "lm_head"),
]


def component_for_key(key: str) -> str:
    """The component of a Gemma 4 checkpoint / state-dict key (``other`` when it belongs to none)."""
    for rx, comp in _KEY_RULES:
        if rx.search(key):
            return comp
    return "other"


def kv_sources(text_config) -> dict[int, int]:
    """Layer -> the earlier layer whose keys/values it reuses (KV sharing), for every sharing layer."""
    n = text_config.num_hidden_layers
    shared = getattr(text_config, "num_kv_shared_layers", 0) or 0
    first = n - shared
    types = text_config.layer_types
    out = {}
    for i in range(first, n):
        src = max((j for j in range(first) if types[j] == types[i]), default=None)
        out[i] = src
    return out

def config_after_layer_removal(config, kept: list[int]):
    """Refuses a removal that breaks KV sharing: a kept sharing layer whose source layer is removed,
    or a kept plain layer between sharing layers (sharing layers must stay the last ones)."""
    from ...errors import UserError

    t = getattr(config, "text_config", config)
    src = kv_sources(t)
    for i in kept:
        if i in src and src[i] not in kept:
            raise UserError(f"cannot remove layer {src[i]}: kept layer {i} reads its keys/values from it "
                            f"(KV sharing, num_kv_shared_layers={t.num_kv_shared_layers})")
    n_shared = sum(1 for i in kept if i in src)
    if n_shared and any(i not in src for i in kept[len(kept) - n_shared:]):
        raise UserError("the KV-sharing layers must stay the last layers")
    # the source must still be the last earlier layer of its type after removal
    new_types = [t.layer_types[i] for i in kept]
    first = len(kept) - n_shared
    for pos, i in enumerate(kept[first:], start=first):
        last = max((p for p in range(first) if new_types[p] == new_types[pos]), default=None)
        if last is None or kept[last] != src[i]:
            raise UserError(f"removing these layers would make layer {i} read another layer's keys/values "
                            f"(it reads layer {src[i]})")
    if new_types and new_types[-1] != "full_attention":
        raise UserError(f"the last kept layer ({kept[-1]}) is a {new_types[-1]} layer; Gemma 4's last layer "
                        "must be a full_attention (global) layer")
    # rebuilt from its dict: the per-layer overrides (global layers' head width) are keyed by layer index
    d = config.to_dict()
    td = d["text_config"] if "text_config" in d else d
    overrides = {int(k): v for k, v in (td.get("per_layer_config") or {}).items()}
    td.update(layer_types=new_types, num_hidden_layers=len(kept), num_kv_shared_layers=n_shared,
              per_layer_config={new: overrides[old] for new, old in enumerate(kept) if old in overrides})
    return type(config).from_dict(d)

def config_after_audio_layer_removal(config, kept: list[int]):
    """``config`` (a copy) for a model whose audio encoder keeps conformer layers ``kept``."""
    d = config.to_dict()
    d["audio_config"]["num_hidden_layers"] = len(kept)
    return type(config).from_dict(d)

def allowed_removal(config, count: int) -> list[int]:
    """The contiguous block of ``count`` decoder layers nearest the middle whose removal keeps the model
    valid (KV sharing, a global last layer), for planning ``--llm-layers``; UserError when none is."""
    from ...errors import UserError

    n = getattr(config, "text_config", config).num_hidden_layers
    starts = sorted(range(0, n - count + 1), key=lambda s: (abs(s + count / 2 - n / 2), s))
    for s in starts:
        block = list(range(s, s + count))
        try:
            config_after_layer_removal(config, [i for i in range(n) if i not in block])
        except UserError:
            continue
        return block
    raise UserError(f"no block of {count} contiguous layers can be removed from this Gemma 4 model "
                    "(KV sharing or the global last layer forbid every one)")


def first_allowed_block(config, count: int, keep: int) -> list[int]:
    """The first block of ``count`` consecutive decoder layers whose collapse into its layer at position ``keep``
    (the others removed) keeps the model valid (KV sharing, a global last layer): ``build --smoke``'s block for a
    replace-layers stage written for the 12B; UserError when none is."""
    from ...errors import UserError

    n = getattr(config, "text_config", config).num_hidden_layers
    for s in range(0, n - count + 1):
        block = list(range(s, s + count))
        try:
            config_after_layer_removal(config, [i for i in range(n) if i not in block or i == block[keep]])
        except UserError:
            continue
        return block
    raise UserError(f"no block of {count} consecutive layers of this Gemma 4 model can become one layer "
                    "(KV sharing or the global last layer forbid every one)")
