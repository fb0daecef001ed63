"""Surgery on a loaded Gemma 4 model: remove decoder layers (with their per-layer-embedding slices, under
the KV-sharing constraint) and remove the vision encoder. Each returns a model that ``from_pretrained``
alone loads back once saved: the config is rebuilt first, then a fresh model of that config receives
the kept weights (``load_state_dict(strict=True)``, so nothing is silently dropped or left random).

The layout-based stage paths (:meth:`Gemma4Family.surgery`) get this module too: :func:`prune_llm_mlp`
narrows the MLPs in place as Qwen2-Audio's surgery does (``ffn_widths``, ``llm_mlp_widths``); prune-hidden
narrows the residual width and, with ``llm_heads``, the attention heads per layer (:func:`prune_llm_hidden`,
:func:`kept_heads`: a KV-sharing layer keeps its source layer's key/value heads)."""

from __future__ import annotations

import re

from .rules import allowed_removal, config_after_audio_layer_removal, config_after_layer_removal

_LAYER = re.compile(r"^(.*language_model\.layers\.)(\d+)(\..*)$")
_AUDIO_LAYER = re.compile(r"^(.*audio_tower\.layers\.)(\d+)(\..*)$")


def _rebuild(model, config, state_dict, buffers=None):
    """A fresh model of ``config`` holding ``state_dict`` (every key but a tied lm_head must be there).

    With ``buffers`` (the non-persistent buffers by their new names: in a layer removal each kept module's are
    the original's; prune-hidden gives the new embedding scale), the model is laid out on the meta device and takes ``state_dict``'s tensors and
    ``buffers`` themselves (``assign``): no memory is allocated and nothing is copied, so a layer-search
    candidate shares the loaded model's weights, on its device. Otherwise (vocabulary trimming, dropping the
    vision encoder) it is built on the CPU without random initialisation (transformers'
    ``no_init_weights``; the weights are overwritten anyway), its non-persistent buffers computed by the modules'
    constructors. Either way the tie ``init_weights`` would make is made here. Random init was ~85% of a
    candidate's cost at the 12B's widths (README, Gemma 4 path); tests/families/test_gemma4_stages.py compares
    every parameter and buffer of both ways with a randomly initialised build."""
    import torch
    from transformers.initialization import no_init_weights

    if buffers is not None:
        with torch.device("meta"), no_init_weights():
            new = type(model)(config)
        missing, unexpected = new.load_state_dict(state_dict, strict=False, assign=True)
        for name, buf in buffers.items():
            owner, _, attr = name.rpartition(".")
            try:
                mod = new.get_submodule(owner) if owner else new
            except AttributeError:
                continue
            if attr in mod._buffers:  # a layer type no kept layer has any more leaves its rotary buffers behind
                mod._buffers[attr] = buf
        new.tie_weights()
        left = [n for n, t in list(new.named_parameters()) + list(new.named_buffers()) if t.is_meta]
        if left:
            raise RuntimeError(f"Gemma 4 surgery: {left[:3]} not given")
    else:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        with torch.device("cpu"), no_init_weights():
            new = type(model)(config)
        new.tie_weights()
        new = new.to(dtype)
        missing, unexpected = new.load_state_dict(state_dict, strict=False)
    # tied lm_head is in neither or both; anything else is a bug
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"Gemma 4 surgery: missing {missing[:3]}, unexpected {unexpected[:3]}")
    new.generation_config = model.generation_config
    return new.eval()


def _volatile_buffers(model) -> dict:
    """``model``'s non-persistent buffers (not in its state dict: computed at construction), by name."""
    keys = model.state_dict().keys()
    return {n: b for n, b in model.named_buffers() if n not in keys}


def _kept_layers(remove, n: int, what: str, owner: str) -> list[int]:
    """The layers left of ``n`` after removing ``remove`` (UserError when one is out of range or none is left)."""
    from ...errors import UserError

    remove = sorted(set(remove))
    if any(i < 0 or i >= n for i in remove) or len(remove) >= n:
        raise UserError(f"{what} to remove {remove}: {owner} has {n} layers (0..{n - 1}), at least one must stay")
    return [i for i in range(n) if i not in remove]


def _renumbered_state(model, pattern, kept: list[int], other=lambda k, v: v, items=None) -> dict:
    """``model``'s state dict (or ``items``) without the layers ``pattern`` numbers (group 2) that are not in
    ``kept``, the kept ones renumbered 0, 1, ...; every other tensor passed through ``other(key, tensor)``."""
    new_index = {old: new for new, old in enumerate(kept)}
    sd = {}
    for k, v in (model.state_dict() if items is None else items).items():
        m = pattern.match(k)
        if m is None:
            sd[k] = other(k, v)
        elif int(m.group(2)) in new_index:
            sd[f"{m.group(1)}{new_index[int(m.group(2))]}{m.group(3)}"] = v
    return sd


def remove_llm_layers(model, remove):
    """A new model without decoder layers ``remove``; refuses (UserError) a removal that breaks KV sharing."""
    t = model.config.text_config
    n = t.num_hidden_layers
    kept = _kept_layers(remove, n, "layers", "the model")
    config = config_after_layer_removal(model.config, kept)
    P = getattr(t, "hidden_size_per_layer_input", 0) or 0

    def per_layer_slices(k, v):
        if P and k.endswith("embed_tokens_per_layer.weight"):  # [V, n*P]: P columns per layer
            return v.reshape(v.shape[0], n, P)[:, kept].reshape(v.shape[0], len(kept) * P)
        if P and k.endswith("per_layer_model_projection.weight"):  # [n*P, H]: P rows per layer
            return v.reshape(n, P, v.shape[1])[kept].reshape(len(kept) * P, v.shape[1])
        return v

    buffers = _renumbered_state(model, _LAYER, kept, items=_volatile_buffers(model))
    return _rebuild(model, config, _renumbered_state(model, _LAYER, kept, per_layer_slices), buffers), kept


def audio_layer_count(config) -> int:
    """Conformer layers of the audio encoder (0 for ``gemma4_unified``, whose audio has no encoder)."""
    a = getattr(config, "audio_config", None)
    return int(getattr(a, "num_hidden_layers", 0) or 0) if a is not None else 0


def remove_audio_layers(model, remove):
    """A new model without audio-encoder (conformer) layers ``remove``; ``audio_config.num_hidden_layers``
    edited through the family (:meth:`Gemma4Family.config_after_audio_layer_removal`)."""
    from ...errors import UserError
    n = audio_layer_count(model.config)
    if not n:
        raise UserError("this Gemma 4 model has no audio-encoder layers to remove (gemma4_unified: raw audio frames "
                        "enter through embed_audio)")
    kept = _kept_layers(remove, n, "audio layers", "the audio encoder")
    config = config_after_audio_layer_removal(model.config, kept)
    buffers = _renumbered_state(model, _AUDIO_LAYER, kept, items=_volatile_buffers(model))
    return _rebuild(model, config, _renumbered_state(model, _AUDIO_LAYER, kept), buffers), kept


def drop_vision(model):
    """A new model without the vision encoder and its projector (``vision_config`` None)."""
    from ...errors import UserError

    if getattr(model.config, "vision_config", None) is None:
        raise UserError("the model has no vision encoder (vision_config is empty)")
    d = model.config.to_dict()
    d["vision_config"] = None
    config = type(model.config).from_dict(d)
    sd = {k: v for k, v in model.state_dict().items()
          if not re.search(r"(^|\.)(vision_tower|embed_vision|vision_embedder)\.", k)}
    return _rebuild(model, config, sd)


def pruned_copy(model, removed_llm, removed_audio=()):
    """A new model without LLM layers ``removed_llm`` and audio-encoder layers ``removed_audio`` (the stage's
    surgery: KV sharing checked, PLE slices with their layers), on ``model``'s device: a layer-search candidate."""
    new = model
    if removed_audio:
        new, _ = remove_audio_layers(new, removed_audio)
    if removed_llm:
        new, _ = remove_llm_layers(new, removed_llm)
    if new is model:
        return model
    return new.to(next(model.parameters()).device)


def run_prune_layers(stage, in_dir, out_dir, ctx) -> dict:
    """The prune-layers stage for Gemma 4: explicit ``llm_layers``/``audio_layers``, the middle/top
    strategies (``remove``/``audio_remove``), or the iterative search (the stage's own, each candidate a
    pruned copy: :func:`pruned_copy`; only removals KV sharing allows are candidates)."""
    from ...errors import UserError
    from ...floor.layers import fmt_layers, middle_block, top_block

    o = stage.options
    run_dtype = stage.runtime_dtype(in_dir, ctx.resolved_device())
    search = o.strategy == "iterative"
    model = stage.load_model(in_dir, dtype=run_dtype, device=ctx.resolved_device() if search else "cpu")
    processor = stage.load_processor(in_dir)
    n = model.config.text_config.num_hidden_layers
    n_audio = audio_layer_count(model.config)
    extras = {}
    if search:
        llm, audio, info = stage.search_layers(model, processor, in_dir, out_dir, ctx)
        extras = {"search": info, "data": info.pop("data")}
        model = model.to("cpu")
    elif o.strategy is None:
        llm, audio = sorted(o.llm_layers or []), sorted(o.audio_layers or [])
    elif o.strategy == "middle":
        # the planner's rule: the valid block (KV sharing, a global last layer) nearest the middle
        llm = allowed_removal(model.config, o.remove) if o.remove else []
        audio = middle_block(n_audio, o.audio_remove) if o.audio_remove else []
    else:
        llm = top_block(n, o.remove) if o.remove else []
        audio = top_block(n_audio, o.audio_remove) if o.audio_remove else []
    new, techniques = model, []
    how = "given" if o.strategy is None else f"{o.strategy} block"
    kept = list(range(n))
    if llm:
        new, kept = remove_llm_layers(new, llm)
        ctx.log(f"prune-layers: removed Gemma 4 LLM layers [{fmt_layers(llm)}] (PLE slices with them)")
        techniques.append(stage.search_technique("LLM", llm, n, extras["search"]) if search
                          else f"layer pruning: {len(llm)} of {n} Gemma 4 LLM layers removed ({how}: {fmt_layers(llm)})")
    if audio:
        new, _ = remove_audio_layers(new, audio)
        ctx.log(f"prune-layers: removed Gemma 4 audio-encoder layers [{fmt_layers(audio)}]")
        techniques.append(stage.search_technique("audio-encoder", audio, n_audio, extras["search"]) if search else
                          f"audio encoder layer pruning: {len(audio)} of {n_audio} conformer layers removed "
                          f"({how}: {fmt_layers(audio)})")
    if not techniques:
        raise UserError("stage prune-layers: nothing to remove (give llm_layers/audio_layers, or remove/audio_remove)")
    ctx.log("prune-layers: saving")
    stage.save_model(new, processor, out_dir, dtype=stage.checkpoint_dtype(in_dir) if run_dtype else None)
    out = {"techniques": techniques, "removed_llm_layers": llm, "removed_audio_layers": audio,
           "llm_layers_before": n, "llm_layers_after": len(kept),
           "audio_layers_before": n_audio, "audio_layers_after": n_audio - len(audio)}
    return {**out, **extras}


def check_removal(model_dir, remove, middle: int = 0) -> None:
    """Refuse (UserError) removing ``remove`` (or, with ``middle``, a block of that many layers nearest the
    middle) from the model in ``model_dir`` when it breaks KV sharing, reading its config only (no weights)."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)  # the config only, no weights
    n = cfg.text_config.num_hidden_layers
    if middle:
        allowed_removal(cfg, middle)
        return
    config_after_layer_removal(cfg, [i for i in range(n) if i not in set(remove or [])])


# Token ids a Gemma 4 config names beyond bos/eos/pad (top level of Gemma4Config).
_MM_ID_KEYS = ("boi_token_id", "eoi_token_id", "image_token_id", "video_token_id", "boa_token_id",
               "eoa_token_index", "audio_token_id")
_TEXT_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _config_ids(d: dict) -> set[int]:
    ids = set()
    for part, keys in ((d, _MM_ID_KEYS + _TEXT_ID_KEYS), (d.get("text_config") or {}, _TEXT_ID_KEYS)):
        for k in keys:
            v = part.get(k)
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, int) and x >= 0:
                    ids.add(x)
    return ids


def _remap_ids(d: dict, old2new: dict) -> None:
    for part, keys in ((d, _MM_ID_KEYS + _TEXT_ID_KEYS), (d.get("text_config") or {}, _TEXT_ID_KEYS)):
        for k in keys:
            v = part.get(k)
            if isinstance(v, list):
                part[k] = [old2new[x] for x in v]
            elif isinstance(v, int) and v >= 0:
                part[k] = old2new[v]


def select_vocab(model, keep_ids: list[int]):
    """A new model keeping token rows ``keep_ids`` (sorted old ids; new id = position) of the token
    embeddings, the PLE table and the tied ``lm_head``, with every token id in the config renumbered."""
    from ...errors import UserError

    t = model.config.text_config
    ple_rows = getattr(t, "vocab_size_per_layer_input", None) if getattr(t, "hidden_size_per_layer_input", 0) else None
    if ple_rows is not None and ple_rows != t.vocab_size:
        raise UserError(f"trim-vocab: the PLE table has {ple_rows} rows and the vocabulary {t.vocab_size}; "
                        "only equal sizes are handled")
    old2new = {old: new for new, old in enumerate(keep_ids)}
    d = model.config.to_dict()
    _remap_ids(d, old2new)
    d["text_config"]["vocab_size"] = len(keep_ids)
    if ple_rows is not None:
        d["text_config"]["vocab_size_per_layer_input"] = len(keep_ids)
    config = type(model.config).from_dict(d)
    import torch

    idx = torch.tensor(keep_ids)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith(("embed_tokens.weight", "embed_tokens_per_layer.weight", "lm_head.weight")) and v.shape[0] == t.vocab_size:
            v = v.index_select(0, idx).clone()
        sd[k] = v
    new = _rebuild(model, config, sd)
    gc = new.generation_config
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(gc, k, None)
        if isinstance(v, list):
            setattr(gc, k, [old2new[x] for x in v])
        elif isinstance(v, int):
            setattr(gc, k, old2new[v])
    return new, old2new


def kept_ids(stage, in_dir, processor, tok_json: dict, config: dict, generation_config, ctx):
    """(kept token ids, prompts, texts, data records) of trim-vocab on a Gemma 4 directory: the stage's
    keep rules plus the 256 byte-fallback tokens, every id the config names and ``<unk>``. Reads the
    tokenizer and configs only, so ``build``'s prediction counts exactly what the stage keeps."""
    from ..base import trim_vocab_keep
    from .prompt import prompt_text

    tok = processor.tokenizer
    vocab = tok_json["model"]["vocab"]
    byte_ids = [vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab]
    extra = [byte_ids, sorted(_config_ids(config)), [tok.unk_token_id] if tok.unk_token_id is not None else []]
    return trim_vocab_keep(stage, processor, tok_json, config, generation_config, ctx, prompt_text, extra)


def run_trim_vocab(stage, in_dir, out_dir, ctx) -> dict:
    """The trim-vocab stage for Gemma 4: the same keep rules as for Qwen2-Audio (prompt, given text,
    special/added tokens, config ids, explicit tokens, closed under merges), the 256 byte-fallback
    tokens instead of the byte-level alphabet, and the PLE table trimmed with the token embeddings."""
    from ..base import run_rebuilt_trim_vocab

    return run_rebuilt_trim_vocab(stage, in_dir, out_dir, ctx, kept_ids=kept_ids, select_vocab=select_vocab,
                                  rows_note="embeddings, PLE table, tied lm_head",
                                  technique_note=", PLE table with them")


# ---------------------------------------------------------------------------------------------
# MLP width (prune-ffn): gate_proj/up_proj rows and down_proj columns, as in Qwen2's MLP. The config has one
# ``intermediate_size``; with ``use_double_wide_mlp`` the KV-sharing layers are twice as wide, so they keep
# twice the units and the ratio stays the config's.


def ffn_widths(model) -> tuple[int, int | None]:
    """(LLM ``intermediate_size``, None): Gemma 4's audio encoder has no FFN-width setting."""
    return model.config.text_config.intermediate_size, None


def _mlp_factor(text_config, i: int) -> int:
    shared = getattr(text_config, "num_kv_shared_layers", 0) or 0
    double = bool(getattr(text_config, "use_double_wide_mlp", False))
    return 2 if double and i >= text_config.num_hidden_layers - shared else 1


def llm_mlp_widths(model, width: int) -> list[int]:
    """The units each decoder layer keeps when ``intermediate_size`` becomes ``width`` (double-wide
    KV-sharing layers: twice as many)."""
    t = model.config.text_config
    return [width * _mlp_factor(t, i) for i in range(t.num_hidden_layers)]


def _narrow_linear(lin, out_idx=None, in_idx=None):
    """A new bias-free nn.Linear keeping output rows ``out_idx`` and/or input columns ``in_idx`` of ``lin``."""
    import torch.nn as nn

    w = lin.weight.data
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    new.weight.requires_grad_(lin.weight.requires_grad)
    return new


def prune_llm_mlp(model, keep: list) -> None:
    """Keep intermediate units ``keep[l]`` (LongTensors) of each decoder layer's MLP, in place; the config's
    ``intermediate_size`` follows (every layer must keep :func:`llm_mlp_widths` of one width)."""
    t = model.config.text_config
    layers = model.model.language_model.layers
    widths = {len(k) // _mlp_factor(t, i) for i, k in enumerate(keep)}
    if len(widths) != 1 or any(len(k) % _mlp_factor(t, i) for i, k in enumerate(keep)):
        raise ValueError("every layer must keep the same number of MLP units (the config has one intermediate_size)")
    for layer, idx in zip(layers, keep):
        mlp, idx = layer.mlp, idx.sort().values
        mlp.gate_proj = _narrow_linear(mlp.gate_proj, out_idx=idx)
        mlp.up_proj = _narrow_linear(mlp.up_proj, out_idx=idx)
        mlp.down_proj = _narrow_linear(mlp.down_proj, in_idx=idx)
        mlp.intermediate_size = len(idx)
    t.intermediate_size = widths.pop()


def prune_audio_ffn(model, keep: list) -> None:
    from ...errors import UserError

    raise UserError(AUDIO_FFN_REFUSAL)


# why prune-ffn's audio_width is refused for Gemma 4 (the family's check_ffn_pruning says it before any work)
AUDIO_FFN_REFUSAL = ("Gemma 4's audio encoder has no FFN-width setting (its conformer FFNs are 4 x hidden_size, "
                     "fixed in transformers' Gemma4AudioFeedForward), so a narrower one would not load back")


# ---------------------------------------------------------------------------------------------
# Residual width (prune-hidden). Everything of the text decoder built from ``text_config.hidden_size`` follows
# the kept dimensions: the token embeddings (and the tied lm_head), every RMSNorm over the residual (the four
# per decoder layer, the PLE's post_per_layer_input_norm, the final norm), q/k/v and the MLP's gate/up
# (input columns), o_proj and down_proj (output rows), the PLE's per_layer_input_gate (columns),
# per_layer_projection (rows) and per_layer_model_projection (columns), and the audio/vision projectors into
# the LLM (embed_audio's and embed_vision's embedding_projection rows). Which axis of which tensor is the
# residual one is read from the shapes a model of the narrowed config has (every axis that changes must go
# from the old width to the new), so nothing built from hidden_size is missed or cut twice.
#
# Three factors Gemma computes from hidden_size at run time are compensated in the weights, so the narrowed
# model computes, on its kept dimensions, what the unpruned one did:
# - the embedding scale sqrt(hidden_size) (Gemma4TextScaledWordEmbedding.embed_scale, applied in the weights'
#   dtype): embed_tokens is multiplied by old/new scale, so each kept channel of an embedding is the unpruned
#   model's (to the rounding of one multiplication);
# - with lm_head tied to embed_tokens that factor would also scale the logits: the final norm's weight is
#   divided by it (Gemma's RMSNorm multiplies by its weight), so the logits keep their scale;
# - the PLE's context projection is scaled by hidden_size**-0.5 (per_layer_model_projection_scale): its
#   weight is multiplied by sqrt(new/old).
# Attention heads stay unless ``llm_heads`` is given: the attention width (heads x head_dim, explicit per layer
# type) is not tied to hidden_size. With it, each layer keeps the query heads :func:`kept_heads` chooses and
# the key/value heads serving them (the counts: :func:`.rules.kept_head_counts`); a KV-sharing layer keeps the
# key/value heads its source layer keeps (same indices), so the keys/values it reads line up with its queries.
# q_norm/k_norm act per head (head_dim wide) and stay. RMSNorms over a subset of the residual are not the
# original norms (the mean of squares changes), so the narrowed model is exact only when every dimension is kept.


def llm_attention_shape(model) -> tuple[int, int, int]:
    """(query heads, key/value heads of the sliding layers, their head size), for the stage's reports; the
    global layers' own are in ``per_layer_config`` (:func:`.rules.attention_layers`; read from the config's dict:
    transformers refuses the global ``num_key_value_heads`` once a layer overrides it)."""
    td = model.config.text_config.to_dict()
    return td["num_attention_heads"], td.get("num_key_value_heads") or td["num_attention_heads"], td["head_dim"]


def hidden_readers(layout) -> tuple[list, list, None]:
    """What prune-hidden's importance reads: per norm of the text decoder that feeds projections, (norm, the
    linears reading its output): input_layernorm -> q/k/v (a KV-sharing layer has q only; attention_k_eq_v
    global layers no v), pre_feedforward_layernorm -> gate/up, the final norm -> lm_head. No audio readers
    (the audio encoder's width is not narrowed)."""
    llm = []
    for layer in layout.decoder_layers:
        a, m = layer.self_attn, layer.mlp
        qkv = tuple(p for p in (a.q_proj, getattr(a, "k_proj", None), getattr(a, "v_proj", None)) if p is not None)
        llm += [(layer.input_layernorm, qkv), (layer.pre_feedforward_layernorm, (m.gate_proj, m.up_proj))]
    llm.append((layout.norm, (layout.lm_head,)))
    return llm, [], None


# why prune-hidden keeps the audio encoder's width (the family's check_hidden_pruning says it before any work)
AUDIO_HIDDEN_REFUSAL = ("Gemma 4's conformer ties its FFN (4 x hidden_size, no config field) and its head size "
                        "to its width, which prune-hidden does not narrow; its width stays (the projector "
                        "embed_audio follows the LLM's)")


def attention_heads(layout) -> list[tuple]:
    """Per decoder layer, what prune-hidden's head importance reads: (o_proj, query heads, head size, the weight
    whose rows are the values (v_proj; k_proj when the key is the value, ``attention_k_eq_v``; a KV-sharing
    layer: its source layer's), query heads per key/value head)."""
    from .rules import kv_sources

    src = kv_sources(layout.text_config)
    out = []
    for i, layer in enumerate(layout.decoder_layers):
        a = layer.self_attn
        owner = layout.decoder_layers[src[i]].self_attn if i in src else a
        v = getattr(owner, "v_proj", None) or owner.k_proj
        heads = a.o_proj.in_features // a.head_dim
        out.append((a.o_proj, heads, a.head_dim, v.weight, heads // (v.out_features // a.head_dim)))
    return out


def kept_heads(model, layer_scores: list, heads: int) -> list:
    """The query heads (LongTensor, original indices) each decoder layer keeps when ``heads`` stay, from per-layer
    query-head scores: a non-sharing layer keeps the key/value heads whose query heads (its own and those of the
    KV-sharing layers reading it) score highest in sum, and in each the best query heads of that layer; a
    KV-sharing layer keeps its source's key/value heads (same indices)."""
    import torch

    from .rules import attention_layers, kept_head_counts, kv_sources

    t = model.config.text_config
    td = t.to_dict()
    counts, layers, src = kept_head_counts(td, heads), attention_layers(td), kv_sources(t)
    readers = {}
    for i, s in src.items():
        readers.setdefault(s, []).append(i)
    kv_keep = {}
    for i, (kv_new, _g) in enumerate(counts):
        if i not in src:
            total = sum(torch.as_tensor(layer_scores[j]).float().cpu() for j in [i] + readers.get(i, []))
            order = torch.sort(total.reshape(layers[i][1], -1).sum(1), descending=True, stable=True).indices[:kv_new]
            kv_keep[i] = order.sort().values
    out = []
    for i, (_kv_new, g_new) in enumerate(counts):
        sc = torch.as_tensor(layer_scores[i]).float().cpu().reshape(layers[i][1], -1)
        group = sc.shape[1]
        rows = [torch.sort(sc[k], descending=True, stable=True).indices[:g_new].sort().values + k * group
                for k in kv_keep[src.get(i, i)].tolist()]
        out.append(torch.cat(rows))
    return out


def prune_llm_hidden(model, keep_dims, keep_kv_heads=None):
    """A new model keeping residual dimensions ``keep_dims`` of the text decoder (see above) and, with
    ``keep_kv_heads`` (per decoder layer, the query heads kept: :func:`kept_heads`), those query heads with the
    key/value heads serving them; ``text_config.hidden_size`` and the head counts follow."""
    import torch

    from ...errors import UserError
    from .layout import find_layout
    from .rules import attention_layers, kept_head_counts, kv_sources, text_dict_after_heads

    t = model.config.text_config
    if getattr(t, "enable_moe_block", False):
        raise UserError("stage prune-hidden: this Gemma 4 model has mixture-of-experts blocks, whose router scales by "
                        "hidden_size**-0.5; narrowing them is not implemented")
    old = t.hidden_size
    dims = torch.as_tensor(keep_dims, dtype=torch.long).sort().values
    if len(dims) < 1 or int(dims[0]) < 0 or int(dims[-1]) >= old or len(set(dims.tolist())) != len(dims):
        raise ValueError(f"hidden dimensions to keep must be distinct, in 0..{old - 1}")
    new_h = len(dims)
    d = model.config.to_dict()
    rows = {}  # state-dict key -> (axis, kept indices) of the attention heads
    if keep_kv_heads is not None:
        td = d["text_config"]
        q = td["num_attention_heads"]
        heads = {len(k) for k in keep_kv_heads}
        if len(heads) != 1 or len(keep_kv_heads) != len(attention_layers(td)):
            raise ValueError("every decoder layer must keep the same number of query heads")
        counts, layers, src = kept_head_counts(td, heads.pop()), attention_layers(td), kv_sources(t)
        names = {id(m): n for n, m in model.named_modules()}
        lm_layers = find_layout(model).decoder_layers
        kv_of = []
        for i, (qk, (kv_new, g_new), (_k, kv, hd)) in enumerate(zip(keep_kv_heads, counts, layers)):
            qk = torch.as_tensor(qk, dtype=torch.long).sort().values
            kvk = (qk // (q // kv)).unique()
            if len(kvk) != kv_new or any(int((qk // (q // kv) == k).sum()) != g_new for k in kvk):
                raise ValueError(f"layer {i}: query heads {qk.tolist()} are not {kv_new} key/value groups of {g_new}")
            if i in src and not torch.equal(kvk, kv_of[src[i]]):
                raise ValueError(f"layer {i} reads layer {src[i]}'s keys/values: it must keep its key/value heads")
            kv_of.append(kvk)
            a = lm_layers[i].self_attn
            qr = (qk[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
            kr = (kvk[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
            for proj, axis, idx in (("q_proj", 0, qr), ("k_proj", 0, kr), ("v_proj", 0, kr), ("o_proj", 1, qr)):
                mod = getattr(a, proj, None)
                if mod is None:
                    continue
                rows[f"{names[id(mod)]}.weight"] = (axis, idx)
                if getattr(mod, "bias", None) is not None and axis == 0:
                    rows[f"{names[id(mod)]}.bias"] = (0, idx)
        d["text_config"] = text_dict_after_heads(td, len(keep_kv_heads[0]))
    d["text_config"]["hidden_size"] = new_h
    config = type(model.config).from_dict(d)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in type(model)(config).state_dict().items()}

    names = {id(m): n for n, m in model.named_modules()}
    lm = find_layout(model).language_model
    emb = lm.embed_tokens
    dtype = emb.weight.dtype
    # the factors the forward computes from hidden_size, as it computes them (the scale in the weights' dtype)
    old_scale = float(emb.embed_scale.to(dtype))
    new_scale = float(torch.tensor(new_h ** 0.5).to(dtype))
    embed_factor = old_scale / new_scale
    factors = {f"{names[id(emb)]}.weight": embed_factor}
    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is emb.weight
    skip = set()
    if tied:  # one tensor: loaded (scaled) under the embedding's name only
        factors[f"{names[id(lm.norm)]}.weight"] = 1 / embed_factor
        skip.add(f"{names[id(out_emb)]}.weight")
    if getattr(lm, "per_layer_model_projection", None) is not None:
        factors[f"{names[id(lm.per_layer_model_projection)]}.weight"] = (old ** -0.5) / (new_h ** -0.5)

    sd = {}
    for k, v in model.state_dict().items():
        if k in skip:
            continue
        if k in rows:
            v = v.index_select(rows[k][0], rows[k][1].to(v.device))
        want = shapes.get(k)
        if want is not None and tuple(v.shape) != want:
            for axis, (a, b) in enumerate(zip(v.shape, want)):
                if a == b:
                    continue
                if (a, b) != (old, new_h):
                    raise RuntimeError(f"Gemma 4 prune-hidden: {k} {tuple(v.shape)} -> {want}: not a residual axis")
                v = v.index_select(axis, dims.to(v.device))
        if k in factors:
            v = (v.float() * factors[k]).to(v.dtype)
        sd[k] = v
    # laid out on the meta device, taking these tensors (no second copy of a 12B model): the run-time buffers
    # are the original's, but for the embedding scale, which the constructor computes from the new width
    buffers = _volatile_buffers(model)
    buffers[f"{names[id(emb)]}.embed_scale"] = torch.tensor(new_h ** 0.5).to(emb.embed_scale.device, emb.embed_scale.dtype)
    return _rebuild(model, config, sd, buffers)
