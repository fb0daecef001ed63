"""A whole round of the layer search at once: every candidate layer's greedy decoding in one batched loop.

Used by the ``shared`` engine of ``prune-layers`` (:mod:`iwslt_mc.pruning.importance`). Plain greedy argmax
with the model's own decoder layers, stopping each row as batch-1 ``generate`` does (the end tokens and
budgets of :mod:`iwslt_mc.decoding.core`), so in fp32 the hypotheses equal the per-candidate decodes.
"""

from __future__ import annotations

import time
from typing import Sequence

from .core import eos_ids, greedy_config, new_tokens_budget


class _LayerKV:
    """The key/value cache of one decoder layer, in the shape the model's attention appends to."""

    def __init__(self, k=None, v=None):
        self.k, self.v = k, v

    def update(self, k, v, *args, **kwargs):
        import torch

        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return self.k, self.v


_PROCESSOR_FIELDS = ("suppress_tokens", "begin_suppress_tokens", "bad_words_ids", "sequence_bias",
                     "forced_bos_token_id", "forced_eos_token_id", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
                     "min_length", "min_new_tokens", "exponential_decay_length_penalty", "guidance_scale",
                     "renormalize_logits", "epsilon_cutoff", "eta_cutoff", "min_p", "typical_p", "watermarking_config")


def round_decoding_supported(model, max_length: int = 1024) -> str | None:
    """Why the one-loop round decoding cannot reproduce ``generate`` for ``model`` (None: it can).

    The loop is plain greedy argmax with the model's own decoder layers; a generation config that
    adds logits processors (suppressed tokens, a minimum length, ...) or an attention implementation
    other than sdpa/eager is left to the per-candidate engine.
    """

    gc = greedy_config(model, max_length)
    default = type(gc)()
    for f in _PROCESSOR_FIELDS:
        if getattr(gc, f, None) not in (None, getattr(default, f, None)):
            return f"generation config sets {f}"
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    text_impl = getattr(getattr(model.config, "text_config", None), "_attn_implementation", None) or impl
    if text_impl not in ("sdpa", "eager"):
        return f"attention implementation {text_impl}"
    return None


def round_greedy(model, embeds: list, positions: Sequence[int], *, max_new_tokens: int | None, max_length: int = 1024,
                 max_rows: int = 256, stats: dict | None = None) -> dict:
    """Greedy token ids of every segment once per candidate: ``{p: [tokens of segment i]}`` where the
    model runs without its current decoder layer ``p`` (positions in the current stack).

    All candidates of a round are decoded in one loop, a batch row per (candidate, segment):

    - the prompt prefill of the layers below a candidate's layer is the full model's, so it is computed
      once and shared: at layer ``l`` the rows of every candidate above ``l`` are one shared group of
      segment rows, a candidate branches off (with the shared hidden state and KV cache) at its own
      layer and from there on has its own rows. A round of ``K`` candidates costs about ``K/2``
      full-model prefills instead of ``K``; the prompt positions every segment shares at the start (the
      chat template up to the audio: 29 of 106 on the kit) are prefilled once for the round;
    - after the prompt every row decodes its own tokens with every layer but its candidate's (rows of
      that candidate pass the layer by), finished rows leave the batch;
    - each row stops as batch-1 ``generate`` does: after the first end token, after ``max_new_tokens``,
      or when prompt + output reach ``max_length``.

    Segments are taken longest first, ``max_rows // len(positions)`` at a time (at least one).
    ``stats`` (a dict), if given, receives the CPU seconds of the prefill and the decoding and the
    layer-rows computed (``prefill_s``, ``decode_s``, ``prefill_rows``, ``decode_rows``).
    """
    import torch

    from ..families import layout_of as find_layout

    layout = find_layout(model)
    layers = list(layout.decoder_layers)
    positions = sorted(set(int(p) for p in positions))
    if not positions:
        return {}
    if positions[0] < 0 or positions[-1] >= len(layers):
        raise ValueError(f"candidate layer positions {positions} outside 0..{len(layers) - 1}")
    gc = greedy_config(model, max_length)
    eos = eos_ids(gc)
    budgets = [new_tokens_budget(e.shape[0], max_length, max_new_tokens) for e in embeds]
    order = sorted(range(len(embeds)), key=lambda i: (-embeds[i].shape[0], i))
    per = max(1, max_rows // len(positions))
    impl = getattr(layout.text_config, "_attn_implementation", None) or getattr(model.config, "_attn_implementation",
                                                                                  None) or "eager"
    import inspect

    cache_kw = "cache" if "cache" in inspect.signature(layers[0].forward).parameters else "past_key_values"
    out = {p: [[] for _ in embeds] for p in positions}
    live = [i for i in order if budgets[i] > 0]
    with torch.inference_mode():
        prefix = None
        n_prefix = common_prefix([embeds[i] for i in live]) if len(live) > 1 else 0
        if n_prefix:  # the chat template up to the audio: computed once for the round, not once per segment
            st = stats if stats is not None else {}
            t0 = time.process_time()
            kvs, _ = _prefill_stack(layers, positions, embeds[live[0]][:n_prefix][None], 0, layout.language_model,
                                    _layer_caller(cache_kw, st), eager=impl == "eager")
            prefix = _Prefix(n_prefix, kvs)
            st["prefill_s"] = st.get("prefill_s", 0.0) + time.process_time() - t0
            st["prefix_positions"] = n_prefix
        for b in range(0, len(order), per):
            idx = [i for i in order[b:b + per] if budgets[i] > 0]
            if not idx:
                continue
            toks = _round_chunk(layout, layers, [embeds[i] for i in idx], [budgets[i] for i in idx], positions, eos,
                                eager=impl == "eager", cache_kw=cache_kw, stats=stats, prefix=prefix)
            for k, p in enumerate(positions):
                for j, i in enumerate(idx):
                    out[p][i] = toks[k][j]
    return out


def _layer_caller(cache_kw: str, st: dict):
    """``call(layer, h, kv, mask, pos_ids, cos, sin)``: one decoder layer on rows ``h`` with cache ``kv``
    (position ids and rotary tables given for one row are repeated), counting layer-rows into ``st``."""

    def call(layer, h, kv, mask, pos_ids, c, s):
        n = h.shape[0]
        key = "prefill_rows" if h.shape[1] > 1 else "decode_rows"
        st[key] = st.get(key, 0) + n * h.shape[1]
        return layer(h, attention_mask=mask, position_ids=_rep(pos_ids, n) if pos_ids.shape[0] != n else pos_ids,
                     position_embeddings=(c if c.shape[0] == n else _rep(c, n), s if s.shape[0] == n else _rep(s, n)),
                     use_cache=True, **{cache_kw: kv})

    return call


def _rep(t, n: int):
    return t if n == 1 else t.repeat(n, *([1] * (t.dim() - 1)))


def _mask_for(valid, q_len: int, eager: bool, dtype):
    """Attention mask [rows, 1, q_len, kv_len] from key validity ``valid`` [rows, kv_len] (bool).

    Query ``i`` (the last ``q_len`` positions) sees valid keys up to itself; a padded query also sees
    itself, so it never has an empty row (its output is never read by a real position).
    """
    import torch

    kv = valid.shape[1]
    q_at = torch.arange(kv - q_len, kv, device=valid.device)
    k_at = torch.arange(kv, device=valid.device)
    m = (k_at[None, :] <= q_at[:, None])[None] & valid[:, None, :]
    m = m | (k_at[None, :] == q_at[:, None])[None]
    m = m[:, None]
    if eager:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, torch.finfo(dtype).min)
    return m


class _Prefix:
    """The prompt prefix every segment of a round starts with (the chat template up to the audio): its
    length and, per decoder layer, the key/value cache of each row group :func:`_prefill_stack` keeps
    there (the candidates that branched off below the layer, then the full model's row)."""

    def __init__(self, length: int, kv: list):
        self.length, self.kv = length, kv


def common_prefix(embeds: list) -> int:
    """How many leading prompt positions every embedding in ``embeds`` shares exactly (at most the
    shortest prompt's length minus one: every segment keeps its own last position)."""
    import torch

    first = embeds[0]
    n = min(e.shape[0] for e in embeds) - 1
    if n <= 0:
        return 0
    same = torch.ones(n, dtype=torch.bool, device=first.device)
    for e in embeds[1:]:
        same &= (e[:n] == first[:n]).all(-1)
    off = (~same).nonzero()
    return int(off[0]) if off.numel() else n


def _prefill_stack(layers, positions, x, start: int, lm, call, *, eager: bool, past=None):
    """Run prompt positions ``start .. start + x.shape[1] - 1`` (``x``: [1, t, hidden]) through the
    decoder stack once for the full model and once per candidate from its layer on (candidate ``p``
    skips layer ``p``; below it its state is the full model's, computed once). ``past``: per layer,
    the key/value cache of the earlier positions for the same row groups (a :class:`_Prefix`'s).

    Returns, per layer, the cache after these positions (a :class:`_LayerKV` whose rows are the
    candidates that branched off below the layer, in position order, then the full model's row if a
    candidate lies above; None where no row ran) and the final hidden states, a row per candidate.
    """
    import torch

    t, dev, dtype = x.shape[1], x.device, x.dtype
    pos = torch.arange(start, start + t, device=dev)[None]
    cos, sin = lm.rotary_emb(x, pos)
    if start or eager:  # the queries are the last t of start + t keys: causal with an offset
        mask = _mask_for(torch.ones(1, start + t, dtype=torch.bool, device=dev), t, eager, dtype)
    else:
        mask = None  # sdpa's own causal kernel, as batch-1 decoding runs it
    cand = set(positions)
    kvs: list = []
    shared, div, nd = x, None, 0
    for l, layer in enumerate(layers):
        n_above = sum(1 for p in positions if p > l)
        parts = ([div] if nd else []) + ([shared] if n_above else [])
        new_div = new_shared = None
        kv = None
        if parts:
            kv = _LayerKV(*(past[l].k, past[l].v) if past is not None else ())
            h = torch.cat(parts) if len(parts) > 1 else parts[0]
            h = call(layer, h, kv, None if mask is None else mask.expand(h.shape[0], -1, -1, -1), pos, cos, sin)
            new_div = h[:nd] if nd else None
            new_shared = h[nd:] if n_above else None
        kvs.append(kv)
        if l in cand:  # this candidate skips layer l: its state is the shared one before it
            new_div = shared if new_div is None else torch.cat([new_div, shared])
            nd += 1
        div, shared = new_div, new_shared
    return kvs, div


def _round_chunk(layout, layers, embeds, budgets, positions, eos, *, eager: bool, cache_kw: str, stats=None,
                 prefix=None):
    import torch

    st = stats if stats is not None else {}
    t0 = time.process_time()

    lm = layout.language_model
    B, K, L = len(embeds), len(positions), len(layers)
    cand_at = {p: k for k, p in enumerate(positions)}
    lens = [e.shape[0] for e in embeds]
    T, steps = max(lens), max(budgets)
    dtype, dev = embeds[0].dtype, embeds[0].device
    H = embeds[0].shape[-1]

    call = _layer_caller(cache_kw, st)

    # prefill, one segment at a time (unpadded: the kernels of batch-1 decoding), shared below each
    # candidate's layer; the KV caches go into left-padded per-layer buffers with room for the output.
    # The round's common prompt prefix (``prefix``: its KV per layer and row group) is not computed again.
    P = 0 if prefix is None else prefix.length
    bufs: list = [None] * L  # per layer: [k, v] buffers [slots * B, kv_heads, T + steps, head_dim]
    last = torch.empty(K * B, H, dtype=dtype, device=dev)  # last prompt position's hidden state per row
    below = [sum(1 for p in positions if p < l) for l in range(L)]  # candidates branched off below layer l
    for b, e in enumerate(embeds):
        t = e.shape[0]
        kvs, div = _prefill_stack(layers, positions, e[P:][None], P, lm, call, eager=eager,
                                  past=None if prefix is None else prefix.kv)
        for l, kv in enumerate(kvs):
            if kv is None:
                continue
            nd = below[l]
            slots = K - (1 if l in cand_at else 0)
            if bufs[l] is None:
                shape = (slots * B, kv.k.shape[1], T + steps, kv.k.shape[3])
                bufs[l] = [kv.k.new_zeros(shape), kv.v.new_zeros(shape)]
            for buf, new in zip(bufs[l], (kv.k, kv.v)):
                view = buf.view(slots, B, *buf.shape[1:])[:, b, :, T - t:T]
                if nd:
                    view[:nd] = new[:nd]
                if slots > nd:
                    view[nd:] = new[nd:nd + 1]  # the full model's cache, the same for every candidate above
        last.view(K, B, H)[:, b] = div[:, -1]

    def next_tokens(h):
        return layout.lm_head(layout.norm(h)).float()[:, -1].argmax(-1)

    t1 = time.process_time()
    st["prefill_s"] = st.get("prefill_s", 0.0) + t1 - t0

    R = K * B
    cand = torch.arange(R) // B  # row -> candidate index (candidate-major rows)
    seg = torch.arange(R) % B
    alive = torch.arange(R)
    rows_budget = torch.tensor(budgets)[seg].tolist()
    toks: list[list[int]] = [[] for _ in range(R)]
    nxt = next_tokens(last[:, None])
    valid = torch.zeros(R, T + steps, dtype=torch.bool, device=dev)
    lens_r = torch.tensor(lens, device=dev)[seg.to(dev)]
    valid[:, :T] = torch.arange(T, device=dev)[None, :] >= (T - lens_r)[:, None]
    cur = lens_r - 1  # position id of the last token
    n = T

    def selections():
        sel = []
        for l in range(L):
            k = cand_at.get(l)
            if k is None:
                sel.append(None)
            else:
                m = cand[alive] != k
                sel.append(None if bool(m.all()) else m.nonzero().squeeze(1).to(dev))
        return sel

    sel = selections()
    while True:
        new = nxt.tolist()
        keep = []
        for j, r in enumerate(alive.tolist()):
            toks[r].append(new[j])
            keep.append(not (new[j] in eos or len(toks[r]) >= rows_budget[r]))
        if not any(keep):
            break
        keep_t = torch.tensor(keep)
        if not all(keep):
            for l in range(L):
                if bufs[l] is None:
                    continue
                k = cand_at.get(l)
                km = keep_t if k is None else keep_t[cand[alive] != k]
                bufs[l] = [t[km.to(dev)] for t in bufs[l]]
            alive, nxt, valid, cur = alive[keep_t], nxt[keep_t.to(nxt.device)], valid[keep_t.to(dev)], cur[keep_t.to(dev)]
            sel = selections()
        h = layout.embed_tokens(nxt)[:, None, :].to(dtype)
        cur = cur + 1
        valid[:, n] = True
        n += 1
        m = valid[:, None, None, :n]
        if eager:
            m = torch.zeros(m.shape, dtype=dtype, device=dev).masked_fill(~m, torch.finfo(dtype).min)
        pid = cur[:, None]
        c, s = lm.rotary_emb(h, pid)
        for l, layer in enumerate(layers):
            sl = sel[l]
            if sl is not None and sl.numel() == 0:
                continue  # every row left is this layer's candidate
            kv = _BufferKV(bufs[l], n)
            if sl is None:
                h = call(layer, h, kv, m, pid, c, s)
            else:
                o = call(layer, h[sl], kv, m[sl], pid[sl], c[sl], s[sl])
                h = h.index_copy(0, sl, o)
        nxt = next_tokens(h)
    st["decode_s"] = st.get("decode_s", 0.0) + time.process_time() - t1
    return [[toks[k * B + j] for j in range(B)] for k in range(K)]


class _BufferKV:
    """One decoding step's view of a layer's preallocated cache: the new key/value go to column ``n - 1``."""

    def __init__(self, buf, n):
        self.buf, self.n = buf, n

    def update(self, k, v, *args, **kwargs):
        bk, bv = self.buf
        bk[:, :, self.n - 1:self.n] = k
        bv[:, :, self.n - 1:self.n] = v
        return bk[:, :, :self.n], bv[:, :, :self.n]
