"""Pure model surgery on a loaded Qwen2-Audio model: remove layers, narrow MLPs, select vocabulary rows.

Everything goes through :func:`iwslt_mc.families.qwen2_audio.layout.find_layout`, and every change to a shape is mirrored
in the config (``text_config.num_hidden_layers`` / ``layer_types``, ``audio_config.encoder_layers``,
``intermediate_size``, ``encoder_ffn_dim``, ``vocab_size``) so that ``save_pretrained`` ->
``from_pretrained`` rebuilds exactly the same model. Attention modules keep a ``layer_idx`` that
indexes the KV cache; it is renumbered whenever the decoder stack changes.

torch is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Sequence

from .layout import ModelLayout, find_layout


def _layout(model_or_layout) -> ModelLayout:
    return model_or_layout if isinstance(model_or_layout, ModelLayout) else find_layout(model_or_layout)


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def llm_layer_params(model) -> int:
    """Parameters of one LLM decoder layer (all layers have the same shape)."""
    return num_params(_layout(model).decoder_layers[0])


def audio_layer_params(model) -> int:
    return num_params(_layout(model).audio_layers[0])


def check_indices(indices: Iterable[int], n: int, what: str) -> list[int]:
    """Sorted unique indices, each in ``range(n)``, leaving at least one layer; ValueError otherwise."""
    idx = sorted(set(int(i) for i in indices))
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"{what} index {bad[0]} out of range (the model has {n} {what}s: 0..{n - 1})")
    if len(idx) >= n:
        raise ValueError(f"cannot remove all {n} {what}s")
    return idx


def _renumber(layers: Sequence) -> None:
    # The KV cache is indexed by each attention module's layer_idx, so it must follow the position.
    for i, layer in enumerate(layers):
        for mod in layer.modules():
            if getattr(mod, "layer_idx", None) is not None:
                mod.layer_idx = i


def _install_llm_layers(layout: ModelLayout, layers: list, layer_types: list | None) -> None:
    stack = layout.decoder_layers
    del stack[:]
    stack.extend(layers)
    tc = layout.text_config
    tc.num_hidden_layers = len(layers)
    if layer_types is not None:
        tc.layer_types = list(layer_types)


def _layer_types(layout: ModelLayout) -> list | None:
    lt = getattr(layout.text_config, "layer_types", None)
    return list(lt) if isinstance(lt, (list, tuple)) else None


def remove_llm_layers(model, indices: Iterable[int]) -> list[int]:
    """Remove LLM decoder layers ``indices`` (positions in the current stack) in place; return them sorted."""
    layout = _layout(model)
    n = layout.num_llm_layers
    idx = check_indices(indices, n, "LLM layer")
    keep = [i for i in range(n) if i not in set(idx)]
    types = _layer_types(layout)
    layers = list(layout.decoder_layers)
    _install_llm_layers(layout, [layers[i] for i in keep], [types[i] for i in keep] if types else None)
    _renumber(layout.decoder_layers)
    return idx


def remove_audio_layers(model, indices: Iterable[int]) -> list[int]:
    """Remove audio-encoder layers ``indices`` in place; return them sorted."""
    layout = _layout(model)
    n = layout.num_audio_layers
    idx = check_indices(indices, n, "audio layer")
    layers = list(layout.audio_layers)
    stack = layout.audio_layers
    del stack[:]
    stack.extend(layers[i] for i in range(n) if i not in set(idx))
    layout.audio_config.encoder_layers = len(stack)
    _renumber(stack)
    return idx


@contextmanager
def llm_layers_removed(model, indices: Iterable[int]):
    """Temporarily run ``model`` without LLM layers ``indices``: no copy, restored on exit.

    The layer objects are moved, not copied, so a candidate in a layer-pruning search costs nothing
    to set up; config, ``layer_types`` and each attention's ``layer_idx`` follow so the KV cache works.
    """
    layout = _layout(model)
    n = layout.num_llm_layers
    idx = set(check_indices(indices, n, "LLM layer"))
    layers = list(layout.decoder_layers)
    types = _layer_types(layout)
    saved_idx = [[(m, m.layer_idx) for m in l.modules() if getattr(m, "layer_idx", None) is not None] for l in layers]
    keep = [i for i in range(n) if i not in idx]
    _install_llm_layers(layout, [layers[i] for i in keep], [types[i] for i in keep] if types else None)
    _renumber(layout.decoder_layers)
    try:
        yield layout
    finally:
        _install_llm_layers(layout, layers, types)
        layout.text_config.num_hidden_layers = n
        for pairs in saved_idx:
            for m, v in pairs:
                m.layer_idx = v


@contextmanager
def audio_layers_removed(model, indices: Iterable[int]):
    """Temporarily run ``model`` without audio-encoder layers ``indices`` (restored on exit)."""
    layout = _layout(model)
    n = layout.num_audio_layers
    idx = set(check_indices(indices, n, "audio layer"))
    layers = list(layout.audio_layers)
    stack = layout.audio_layers
    del stack[:]
    stack.extend(layers[i] for i in range(n) if i not in idx)
    layout.audio_config.encoder_layers = len(stack)
    try:
        yield layout
    finally:
        del stack[:]
        stack.extend(layers)
        layout.audio_config.encoder_layers = n


# ---------------------------------------------------------------------------------------------
# FFN (MLP) width


def _sliced(mod, out_idx=None, in_idx=None):
    """``mod``'s weight with output rows ``out_idx`` and/or input columns ``in_idx`` kept, and its bias (or None)
    with the same output rows."""
    w = mod.weight.data
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    b = mod.bias.data if mod.bias is not None else None
    if b is not None and out_idx is not None:
        b = b.index_select(0, out_idx.to(b.device))
    return w, b


def _filled(new, w, b):
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def _narrow_linear(lin, out_idx=None, in_idx=None):
    """A new nn.Linear keeping output rows ``out_idx`` and/or input columns ``in_idx`` of ``lin``."""
    import torch.nn as nn

    w, b = _sliced(lin, out_idx, in_idx)
    new = _filled(nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype), w, b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    return new


def llm_mlps(model) -> list:
    """The MLP module (gate_proj, up_proj, down_proj) of each LLM decoder layer."""
    return [layer.mlp for layer in _layout(model).decoder_layers]


def ffn_widths(model) -> tuple[int, int]:
    """(LLM ``intermediate_size``, audio ``encoder_ffn_dim``): the widths prune-ffn narrows."""
    layout = _layout(model)
    return layout.text_config.intermediate_size, layout.audio_config.encoder_ffn_dim


def llm_mlp_widths(model, width: int) -> list[int]:
    """The units each LLM layer keeps when ``intermediate_size`` becomes ``width`` (every layer: ``width``)."""
    return [width] * _layout(model).num_llm_layers


def prune_llm_mlp(model, keep: list) -> None:
    """Keep intermediate units ``keep[l]`` (a LongTensor of equal length for every layer) of each LLM MLP."""
    layout = _layout(model)
    widths = {len(k) for k in keep}
    if len(widths) != 1:
        raise ValueError("every layer must keep the same number of MLP units (the config has one intermediate_size)")
    for mlp, idx in zip(llm_mlps(layout), keep):
        idx = idx.sort().values
        mlp.gate_proj = _narrow_linear(mlp.gate_proj, out_idx=idx)
        mlp.up_proj = _narrow_linear(mlp.up_proj, out_idx=idx)
        mlp.down_proj = _narrow_linear(mlp.down_proj, in_idx=idx)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(idx)
    layout.text_config.intermediate_size = widths.pop()


def prune_audio_ffn(model, keep: list) -> None:
    """Keep FFN units ``keep[l]`` (equal length for every layer) of each audio-encoder layer (fc1 rows, fc2 columns)."""
    layout = _layout(model)
    widths = {len(k) for k in keep}
    if len(widths) != 1:
        raise ValueError("every audio layer must keep the same number of FFN units (the config has one encoder_ffn_dim)")
    for layer, idx in zip(layout.audio_layers, keep):
        idx = idx.sort().values
        layer.fc1 = _narrow_linear(layer.fc1, out_idx=idx)
        layer.fc2 = _narrow_linear(layer.fc2, in_idx=idx)
    layout.audio_config.encoder_ffn_dim = widths.pop()


# ---------------------------------------------------------------------------------------------
# vocabulary


def select_vocab(model, keep_ids: Sequence[int], new_pad_id: int | None = None) -> None:
    """Keep rows ``keep_ids`` (old ids, in new-id order) of ``embed_tokens`` and ``lm_head``; update vocab_size."""
    import torch
    import torch.nn as nn

    layout = _layout(model)
    idx = torch.as_tensor(list(keep_ids), dtype=torch.long)
    emb = layout.embed_tokens
    w = emb.weight.data.index_select(0, idx.to(emb.weight.device))
    new_emb = nn.Embedding(w.shape[0], w.shape[1], padding_idx=new_pad_id, device=w.device, dtype=w.dtype)
    new_emb.weight.data.copy_(w)
    layout.language_model.embed_tokens = new_emb
    head = layout.lm_head
    hw = head.weight.data.index_select(0, idx.to(head.weight.device))
    hb = head.bias.data.index_select(0, idx.to(head.bias.device)) if getattr(head, "bias", None) is not None else None
    new_head = nn.Linear(hw.shape[1], hw.shape[0], bias=hb is not None, device=hw.device, dtype=hw.dtype)
    new_head.weight.data.copy_(hw)
    if hb is not None:
        new_head.bias.data.copy_(hb)
    model.set_output_embeddings(new_head)
    layout.text_config.vocab_size = len(idx)
    if hasattr(layout.language_model, "vocab_size"):
        layout.language_model.vocab_size = len(idx)


# ---------------------------------------------------------------------------------------------
# hidden (residual) width and attention heads (prune-hidden)
#
# The residual stream of the LLM is read and written by every decoder layer, the token embedding,
# the final norm, lm_head and the projector's output; that of the audio encoder by its convolutions,
# position embeddings, every encoder layer, its final LayerNorm and the projector's input. Keeping a
# subset of residual dimensions keeps the same subset everywhere. Attention keeps whole heads of the
# original head size (so the softmax scaling and the rotary embedding, which act per head, are
# unchanged); in grouped-query attention whole groups (a key/value head and its query heads) are
# kept, so the group size stays valid. Norms over the kept dimensions are not the original norms (the
# mean of squares, and for LayerNorm the mean, are taken over fewer values): the result is exact only
# when every dimension is kept.


def _head_rows(heads, head_dim: int):
    import torch

    heads = torch.as_tensor(heads, dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _narrow_norm(norm, idx):
    """A copy of an RMSNorm (``weight``) or LayerNorm (``weight``, ``bias``, ``normalized_shape``) over ``idx``."""
    import torch
    import torch.nn as nn

    if isinstance(norm, nn.LayerNorm):
        new = nn.LayerNorm(len(idx), eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                           bias=norm.bias is not None, device=norm.weight.device, dtype=norm.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(norm.weight.index_select(0, idx.to(norm.weight.device)))
            if norm.bias is not None:
                new.bias.copy_(norm.bias.index_select(0, idx.to(norm.bias.device)))
        return new
    w = norm.weight.data.index_select(0, idx.to(norm.weight.device))
    norm.weight = nn.Parameter(w, requires_grad=norm.weight.requires_grad)
    if hasattr(norm, "hidden_size"):
        norm.hidden_size = len(idx)
    return norm


def _narrow_conv1d(conv, out_idx=None, in_idx=None):
    import torch.nn as nn

    w, b = _sliced(conv, out_idx, in_idx)
    return _filled(nn.Conv1d(w.shape[1], w.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
                             dilation=conv.dilation, groups=conv.groups, bias=b is not None, device=w.device,
                             dtype=w.dtype), w, b)


def hidden_readers(layout) -> tuple[list, list, object]:
    """What prune-hidden's importance reads: per norm of the LLM and of the audio encoder, (norm module,
    linears reading its output), and the audio encoder's final norm (its positions are the pooled ones)."""
    llm = []
    for layer in layout.decoder_layers:
        a, m = layer.self_attn, layer.mlp
        llm += [(layer.input_layernorm, (a.q_proj, a.k_proj, a.v_proj)), (layer.post_attention_layernorm, (m.gate_proj, m.up_proj))]
    llm.append((layout.norm, (layout.lm_head,)))
    audio = []
    for layer in layout.audio_layers:
        a = layer.self_attn
        audio += [(layer.self_attn_layer_norm, (a.q_proj, a.k_proj, a.v_proj)), (layer.final_layer_norm, (layer.fc1,))]
    audio.append((layout.audio_tower.layer_norm, (layout.projector.linear,)))
    return llm, audio, layout.audio_tower.layer_norm


def llm_attention_shape(model) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of the LLM's attention."""
    layout = _layout(model)
    tc = layout.text_config
    attn = layout.decoder_layers[0].self_attn
    return tc.num_attention_heads, tc.num_key_value_heads, attn.head_dim


def prune_llm_hidden(model, keep_dims, keep_kv_heads=None):
    """Keep residual dimensions ``keep_dims`` of the LLM and key/value heads ``keep_kv_heads`` (each with
    its group of query heads; None keeps every head), in place (returns ``model``); the config follows
    (``hidden_size``, ``num_attention_heads``, ``num_key_value_heads`` and an explicit ``head_dim``)."""
    import torch
    import torch.nn as nn

    layout = _layout(model)
    tc = layout.text_config
    heads, kv_heads, head_dim = llm_attention_shape(layout)
    group = heads // kv_heads
    dims = torch.as_tensor(keep_dims, dtype=torch.long).sort().values
    kv = torch.arange(kv_heads) if keep_kv_heads is None else torch.as_tensor(keep_kv_heads, dtype=torch.long).sort().values
    if len(kv) < 1 or int(kv.max()) >= kv_heads or len(set(kv.tolist())) != len(kv):
        raise ValueError(f"key/value heads to keep must be distinct, in 0..{kv_heads - 1}")
    if len(dims) < 1 or int(dims.max()) >= tc.hidden_size or len(set(dims.tolist())) != len(dims):
        raise ValueError(f"hidden dimensions to keep must be distinct, in 0..{tc.hidden_size - 1}")
    q_heads = (kv[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
    q_rows, kv_rows = _head_rows(q_heads, head_dim), _head_rows(kv, head_dim)
    for layer in layout.decoder_layers:
        attn, mlp = layer.self_attn, layer.mlp
        layer.input_layernorm = _narrow_norm(layer.input_layernorm, dims)
        layer.post_attention_layernorm = _narrow_norm(layer.post_attention_layernorm, dims)
        attn.q_proj = _narrow_linear(attn.q_proj, out_idx=q_rows, in_idx=dims)
        attn.k_proj = _narrow_linear(attn.k_proj, out_idx=kv_rows, in_idx=dims)
        attn.v_proj = _narrow_linear(attn.v_proj, out_idx=kv_rows, in_idx=dims)
        attn.o_proj = _narrow_linear(attn.o_proj, out_idx=dims, in_idx=q_rows)
        mlp.gate_proj = _narrow_linear(mlp.gate_proj, in_idx=dims)
        mlp.up_proj = _narrow_linear(mlp.up_proj, in_idx=dims)
        mlp.down_proj = _narrow_linear(mlp.down_proj, out_idx=dims)
        if hasattr(mlp, "hidden_size"):
            mlp.hidden_size = len(dims)
        if hasattr(layer, "hidden_size"):
            layer.hidden_size = len(dims)
    layout.language_model.norm = _narrow_norm(layout.norm, dims)
    emb = layout.embed_tokens
    w = emb.weight.data.index_select(1, dims.to(emb.weight.device))
    new_emb = nn.Embedding(w.shape[0], w.shape[1], padding_idx=emb.padding_idx, device=w.device, dtype=w.dtype)
    new_emb.weight.data.copy_(w)
    layout.language_model.embed_tokens = new_emb
    model.set_output_embeddings(_narrow_linear(layout.lm_head, in_idx=dims))
    layout.projector.linear = _narrow_linear(layout.projector.linear, out_idx=dims)
    tc.hidden_size = len(dims)
    tc.num_attention_heads = len(q_heads)
    tc.num_key_value_heads = len(kv)
    tc.head_dim = head_dim  # no longer hidden_size / num_attention_heads
    return model


def audio_attention_shape(model) -> tuple[int, int]:
    """(heads, head size) of the audio encoder's attention."""
    attn = _layout(model).audio_layers[0].self_attn
    return attn.num_heads, attn.head_dim


def prune_audio_hidden(model, keep_dims, keep_heads) -> None:
    """Keep residual dimensions ``keep_dims`` (d_model) and attention heads ``keep_heads`` of the audio
    encoder, in place. Its attention width equals d_model, so ``len(keep_heads) * head size`` must
    equal ``len(keep_dims)``; the config follows (``d_model``, ``encoder_attention_heads``)."""
    import torch

    layout = _layout(model)
    ac = layout.audio_config
    heads, head_dim = audio_attention_shape(layout)
    dims = torch.as_tensor(keep_dims, dtype=torch.long).sort().values
    hk = torch.as_tensor(keep_heads, dtype=torch.long).sort().values
    if len(hk) * head_dim != len(dims):
        raise ValueError(f"the audio encoder's attention width equals d_model: {len(hk)} heads of {head_dim} "
                         f"cannot serve {len(dims)} dimensions")
    if int(hk.max()) >= heads or int(dims.max()) >= ac.d_model:
        raise ValueError("audio heads or dimensions out of range")
    rows = _head_rows(hk, head_dim)
    enc = layout.audio_tower
    enc.conv1 = _narrow_conv1d(enc.conv1, out_idx=dims)
    enc.conv2 = _narrow_conv1d(enc.conv2, out_idx=dims, in_idx=dims)
    pos = enc.embed_positions
    pw = pos.weight.data.index_select(1, dims.to(pos.weight.device))
    new_pos = torch.nn.Embedding(pw.shape[0], pw.shape[1], device=pw.device, dtype=pw.dtype)
    new_pos.weight.data.copy_(pw)
    new_pos.requires_grad_(pos.weight.requires_grad)
    enc.embed_positions = new_pos
    for layer in layout.audio_layers:
        attn = layer.self_attn
        layer.self_attn_layer_norm = _narrow_norm(layer.self_attn_layer_norm, dims)
        layer.final_layer_norm = _narrow_norm(layer.final_layer_norm, dims)
        attn.q_proj = _narrow_linear(attn.q_proj, out_idx=rows, in_idx=dims)
        attn.k_proj = _narrow_linear(attn.k_proj, out_idx=rows, in_idx=dims)
        attn.v_proj = _narrow_linear(attn.v_proj, out_idx=rows, in_idx=dims)
        attn.out_proj = _narrow_linear(attn.out_proj, out_idx=dims, in_idx=rows)
        attn.embed_dim, attn.num_heads = len(dims), len(hk)
        layer.embed_dim = len(dims)
        layer.fc1 = _narrow_linear(layer.fc1, in_idx=dims)
        layer.fc2 = _narrow_linear(layer.fc2, out_idx=dims)
    enc.layer_norm = _narrow_norm(enc.layer_norm, dims)
    layout.projector.linear = _narrow_linear(layout.projector.linear, in_idx=dims)
    ac.d_model = len(dims)
    ac.encoder_attention_heads = len(hk)
