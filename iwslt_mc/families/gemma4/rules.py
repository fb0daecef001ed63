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


# ---------------------------------------------------------------------------------------------
# attention heads (prune-hidden's llm_heads). transformers' Gemma4TextAttention builds every layer's q_proj and
# o_proj from the one ``num_attention_heads`` and its k/v from the layer's own ``num_key_value_heads`` and
# ``head_dim`` (``per_layer_config``: the global layers' ``global_head_dim`` and, with ``attention_k_eq_v``,
# ``num_global_key_value_heads``); a KV-sharing layer reads its source layer's keys/values with its own
# ``num_key_value_heads`` of that layer type. So the query heads kept are one count for all layers, and each
# layer's key/value heads follow from it: whole GQA groups where the count allows it (as in Qwen2-Audio), else
# (a layer type with fewer key/value heads, e.g. the 12B's one global key head for 16 query heads) every kept
# key/value head keeps an equal share of its group's query heads.


def attention_layers(td: dict) -> list[tuple[str, int, int]]:
    """(layer type, key/value heads, head size) of each decoder layer of a text config dict (``per_layer_config``
    overrides, or ``global_head_dim``/``num_global_key_value_heads`` as ``Gemma4TextConfig`` reads them)."""
    n = int(td["num_hidden_layers"])
    types = td.get("layer_types") or ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)]
    kv, hd = int(td.get("num_key_value_heads") or td["num_attention_heads"]), int(td["head_dim"])
    plc = td.get("per_layer_config")
    if plc is None:  # the hub's form: transformers derives the global layers' overrides from these keys
        glob = {"head_dim": td.get("global_head_dim", 512)}
        if td.get("num_global_key_value_heads") is not None and td.get("attention_k_eq_v", False):
            glob["num_key_value_heads"] = td["num_global_key_value_heads"]
        plc = {i: glob for i, t in enumerate(types) if t == "full_attention"}
    over = {int(k): v for k, v in plc.items()}
    return [(types[i], int(over.get(i, {}).get("num_key_value_heads") or kv), int(over.get(i, {}).get("head_dim") or hd))
            for i in range(n)]


def kept_head_counts(td: dict, heads: int) -> list[tuple[int, int]]:
    """(key/value heads kept, query heads per kept key/value head) of each decoder layer when ``heads`` query heads
    stay: whole GQA groups (``heads`` a multiple of the layer's group size), or, where a group is larger than
    ``heads`` (the 12B's global layers: one key head for all 16 query heads), one key/value head with ``heads`` of
    its query heads. UserError (one line) otherwise."""
    from ...errors import UserError

    q = int(td["num_attention_heads"])
    if not 1 <= heads <= q:
        raise UserError(f"llm_heads={heads}: Gemma 4 has {q} query heads (one count for every layer), keep 1..{q}")
    out = []
    for kind, kv, _hd in attention_layers(td):
        group = q // kv
        if heads % group and heads > group:
            raise UserError(f"llm_heads={heads} must be a multiple of the GQA group size {group} of Gemma 4's {kind} "
                            f"layers ({q} query / {kv} key-value heads), or less than it")
        out.append((heads // group, group) if heads % group == 0 else (1, heads))
    return out


def text_dict_after_heads(td: dict, heads: int) -> dict:
    """A copy of text config dict ``td`` for ``heads`` query heads: ``num_attention_heads``, the sliding layers'
    ``num_key_value_heads`` and the per-layer overrides (``per_layer_config``, written explicitly)."""
    import copy

    counts = kept_head_counts(td, heads)
    layers = attention_layers(td)
    out = copy.deepcopy(td)
    base_kv, base_hd = int(td.get("num_key_value_heads") or td["num_attention_heads"]), int(td["head_dim"])
    # the global value: the sliding layers' (the first layer whose overrides do not change it)
    ref = next((i for i, (_k, kv, hd) in enumerate(layers) if (kv, hd) == (base_kv, base_hd)), None)
    new_kv = counts[ref][0] if ref is not None else max(1, heads * base_kv // int(td["num_attention_heads"]))
    plc = {}
    for i, ((_k, kv, hd), (kv_new, _g)) in enumerate(zip(layers, counts)):
        o = {}
        if hd != base_hd:
            o["head_dim"] = hd
        if kv_new != new_kv or kv != base_kv:
            o["num_key_value_heads"] = kv_new
        if o:
            plc[str(i)] = o
    for k in ("global_head_dim", "num_global_key_value_heads"):
        out.pop(k, None)
    out.update(num_attention_heads=heads, num_key_value_heads=new_kv, per_layer_config=plc)
    return out
