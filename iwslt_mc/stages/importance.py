"""Scoring machinery of the layer-importance search (``prune-layers`` with ``strategy: iterative``).

The published search removes one decoder layer at a time: at each round every remaining layer
(never the first or last) is tried out, the held-out set is translated with that layer gone, and
the layer whose removal gives the best score (chrF++ for German, chrF for Chinese) is removed.
That is about 230 full decodes of the held-out set for 8 layers on a 32-layer model.

This module makes one round much cheaper without changing what it selects:

- **the audio is encoded once.** Removing LLM layers does not change the audio encoder or the
  projector, so the prompt embeddings (text embeddings with the audio features already merged in,
  exactly what the model's own forward computes) are captured once per held-out segment and reused
  by every candidate. They are captured with a forward pre-hook on the decoder stack, so the merge
  is the model's own code, not a copy of it.
- **a candidate costs no copy.** The candidate layer is taken out of the decoder's ``ModuleList``
  (config, ``layer_types`` and each attention's ``layer_idx`` follow, so the KV cache is indexed
  right) and put back afterwards (:func:`iwslt_mc.surgery.llm_layers_removed`).
- **decoding is batched.** Segments are sorted by prompt length and decoded greedily in left-padded
  batches from the cached embeddings; each row is cut at the length batch-1 decoding would allow
  (``max_length`` counts the prompt, as in the published decoding), so in fp32 the hypotheses are the
  ones the per-segment loop produces (:class:`NaiveEngine`, kept for tests and the benchmark).
- **a round is one loop** (engine ``shared``, the default: :func:`round_greedy`): every (candidate,
  segment) pair is a row of one batch. The prompt prefill of the layers below a candidate's layer
  is the full model's, so it is computed once and shared (a round of K candidates costs about K/2
  full prefills, not K), and the prompt prefix every segment shares (the chat template up to the
  audio) is prefilled once per round; each row then decodes with every layer but its candidate's. Same
  hypotheses as the per-candidate engines in fp32 (tests/test_prune_search.py holds it to the naive
  loop on the kit, a 32-layer kit-width model and the toy teacher). What is left is compute: the
  prefill above each candidate's layer cannot be shared without changing the hypotheses.
- **the race** (``screen: segments``, off by default; :class:`ScreenPlan`): every candidate decoded
  exactly on a few segments, the ones still within a few standard errors of the leader on a few
  more, and so on; the finalists on all. Cheaper; its choice is measured equal, not guaranteed.
- **teacher forcing** (``scoring: teacher-forced``) is an optional, much cheaper score: one forward
  pass per candidate over prompt + reference, scored as the mean log-probability per reference
  token (the reference followed by ``<|im_end|>``, so stopping is scored too). It needs no
  generation at all but ranks layers by a different criterion than chrF of decoded output, so it may
  select different layers.

Metrics come from the one registry, :mod:`iwslt_mc.scoring.metrics`: ``auto`` is the track's choice per
language (chrF++ for German, chrF for Chinese); others (e.g. a COMET scorer) can be added there with
``register_metric(name, fn)`` where ``fn(hyps, refs, sources, lang) -> float`` (higher is better).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import UserError
from ..scoring.metrics import get_metric, is_comet_metric, metric_label, segment_statistics

# ---------------------------------------------------------------------------------------------
# held-out set


@dataclass
class HeldoutSegment:
    id: str
    wave: object  # 16 kHz float32 array
    reference: str
    source: str = ""


def calibration_segments(ctx, split: str | None, n: int, *, stage: str, use: str) -> tuple[list, list[dict]]:
    """A seeded sample of ``n`` segments of ``ctx.data`` (split ``split``) for activation statistics, and the
    data records for provenance (``use`` + the count and seed). One line naming the stage if there are none."""
    import numpy as np

    from ..data import describe_data, load_examples

    exs = load_examples(ctx.data, split=split, seed=ctx.seed, lang=ctx.lang)
    if not exs:
        raise UserError(f"stage {stage}: no calibration examples in {ctx.data} (split {split})")
    if len(exs) > n:
        pick = sorted(np.random.default_rng(ctx.seed).permutation(len(exs))[:n].tolist())
        exs = [exs[i] for i in pick]
    ctx.log(f"{stage}: activation statistics on {len(exs)} segments")
    data = describe_data(ctx.data, split)
    for d in data:
        d["use"] = f"{use} ({len(exs)} segments, seed {ctx.seed})"
    return heldout_segments(exs, ctx.lang), data


def heldout_segments(examples, lang: str) -> list[HeldoutSegment]:
    """Held-out segments (audio decoded once) with the ``lang`` reference; examples without one are an error."""
    from ..data import target_text

    out = []
    for ex in examples:
        ref = target_text(ex, lang)
        if ref is None:
            raise UserError(f"{ex.source or ex.id}: no {lang} reference text for the held-out set")
        out.append(HeldoutSegment(ex.id, ex.waveform(), ref, ex.text_en or ""))
    return out


# ---------------------------------------------------------------------------------------------
# engines: translate the held-out set with some layers removed


class _Stop(Exception):
    pass


def capture_prompt_embeds(model, inputs) -> tuple:
    """Run ``model`` on processor ``inputs`` only up to the LLM and return (inputs_embeds, attention_mask).

    The embeddings are what the decoder stack receives: token embeddings with the projected audio
    features merged in by the model's own code.
    """
    from ..layout import find_layout

    layout = find_layout(model)
    got = {}

    def hook(module, args, kwargs):
        got["embeds"] = kwargs.get("inputs_embeds")
        got["mask"] = kwargs.get("attention_mask")
        raise _Stop

    h = layout.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    if got.get("embeds") is None:
        raise RuntimeError("could not capture the decoder's inputs_embeds")
    return got["embeds"], got["mask"]


def _model_inputs(processor, waves, lang, model):
    from ..prompting import prompt_text

    text = prompt_text(processor, lang)
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        inputs = processor(text=[text] * len(waves), audio=list(waves), sampling_rate=16000, return_tensors="pt",
                           padding=True)
    finally:
        tok.padding_side = side
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return {k: (v.to(model.device, dtype) if k == "input_features" else v.to(model.device)) for k, v in inputs.items()}


def calibration_pass(model, processor, layout, segments, lang: str, hooks: list, real: dict) -> dict:
    """Run each calibration segment (its prompt and its reference) through the LLM, with ``hooks`` (forward
    hooks the caller registered; removed afterwards, also on error) accumulating activations. Before each
    segment ``real`` gets the encoder positions that hold real audio ("positions", after the stride-2
    convolution; the encoder always sees its whole padded window) and those left after the average pooling
    ("pooled"). Returns the counts the sums are divided by: LLM positions, audio positions, pooled positions."""
    import torch

    counts = {"llm": 0, "audio": 0, "audio_pooled": 0}
    fe = processor.feature_extractor
    max_frames = fe.n_samples // fe.hop_length  # mel frames in the window (3,000 for 30 s)
    tok = processor.tokenizer
    try:
        with torch.inference_mode():
            for seg in segments:
                frames = min(len(seg.wave) // fe.hop_length, max_frames)
                real["positions"] = (frames - 1) // 2 + 1  # after the stride-2 convolution
                real["pooled"] = (real["positions"] - 2) // 2 + 1  # after the average pooling
                counts["audio"] += real["positions"]
                counts["audio_pooled"] += real["pooled"]
                embeds = encode_prompts(model, processor, [seg], lang, batch_size=1)[0]
                ref = tok(seg.reference, add_special_tokens=False)["input_ids"]
                ids = torch.as_tensor(ref, dtype=torch.long, device=embeds.device)
                x = torch.cat([embeds, layout.embed_tokens(ids).to(embeds.dtype)])[None]
                layout.language_model(inputs_embeds=x, use_cache=False)
                counts["llm"] += x.shape[1]
    finally:
        for h in hooks:
            h.remove()
    return counts


def encode_prompts(model, processor, segments: Sequence[HeldoutSegment], lang: str, *, batch_size: int = 8) -> list:
    """Per segment, the prompt embeddings ``[T_i, hidden]`` the LLM sees (audio encoded once, batched)."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(segments), batch_size):
            chunk = segments[i:i + batch_size]
            inputs = _model_inputs(processor, [s.wave for s in chunk], lang, model)
            embeds, mask = capture_prompt_embeds(model, inputs)
            for row in range(len(chunk)):
                keep = mask[row].bool()
                out.append(embeds[row][keep].clone())
    return out


def _left_pad(embeds: list):
    import torch

    T = max(e.shape[0] for e in embeds)
    H = embeds[0].shape[-1]
    x = embeds[0].new_zeros(len(embeds), T, H)
    mask = torch.zeros(len(embeds), T, dtype=torch.long, device=embeds[0].device)
    for i, e in enumerate(embeds):
        x[i, T - e.shape[0]:] = e
        mask[i, T - e.shape[0]:] = 1
    return x, mask


def _eos_ids(gc) -> set[int]:
    eos = gc.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def greedy_from_embeds(model, embeds: list, *, max_new_tokens: int | None, max_length: int = 1024,
                       batch_size: int = 16) -> list[list[int]]:
    """Greedy token ids for each prompt embedding, batched with left padding.

    Each row is cut where batch-1 ``generate`` would stop: after the first end token, after
    ``max_new_tokens``, or when prompt + output reach ``max_length``.
    """
    import torch

    from ..decoding import greedy_config

    gc = greedy_config(model, max_length)
    eos = _eos_ids(gc)
    budgets = [max(0, min(max_length - e.shape[0], max_new_tokens if max_new_tokens is not None else 1 << 30))
               for e in embeds]
    order = sorted(range(len(embeds)), key=lambda i: (-embeds[i].shape[0], i))
    out: list[list[int]] = [[] for _ in embeds]
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = [i for i in order[b:b + batch_size] if budgets[i] > 0]
            if not idx:
                continue
            x, mask = _left_pad([embeds[i] for i in idx])
            gc.max_new_tokens = max(budgets[i] for i in idx)
            gc.max_length = None
            gen = model.generate(inputs_embeds=x, attention_mask=mask, generation_config=gc).tolist()
            for i, row in zip(idx, gen):
                toks = []
                for t in row[:budgets[i]]:
                    toks.append(t)
                    if t in eos:
                        break
                out[i] = toks
    return out


def teacher_forced_logprob(model, embeds: list, targets: list, *, batch_size: int = 16) -> float:
    """Mean log-probability per target token of ``targets[i]`` (token ids) after prompt ``embeds[i]``."""
    import torch

    from ..layout import find_layout

    layout = find_layout(model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for b in range(0, len(embeds), batch_size):
            rows = list(range(b, min(b + batch_size, len(embeds))))
            seqs, spans = [], []
            for i in rows:
                tgt = torch.as_tensor(targets[i], dtype=torch.long, device=embeds[i].device)
                # the last target is only predicted, never fed
                seqs.append(torch.cat([embeds[i], layout.embed_tokens(tgt[:-1]).to(embeds[i].dtype)]))
                spans.append((embeds[i].shape[0] - 1, tgt))
            T = max(s.shape[0] for s in seqs)
            x = seqs[0].new_zeros(len(seqs), T, seqs[0].shape[-1])
            mask = torch.zeros(len(seqs), T, dtype=torch.long, device=x.device)
            for j, s in enumerate(seqs):  # right padding: real positions start at 0 as in batch 1
                x[j, :s.shape[0]] = s
                mask[j, :s.shape[0]] = 1
            hidden = layout.language_model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
            for j, (start, tgt) in enumerate(spans):
                h = hidden[j, start:start + len(tgt)]
                logp = torch.log_softmax(layout.lm_head(h).float(), dim=-1)
                total += logp.gather(1, tgt[:, None]).sum().item()
                count += len(tgt)
    return total / max(count, 1)



# ---------------------------------------------------------------------------------------------
# a whole round at once: every candidate layer's greedy decoding in one batched loop


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
    from ..decoding import greedy_config

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

    from ..decoding import greedy_config
    from ..layout import find_layout

    layout = find_layout(model)
    layers = list(layout.decoder_layers)
    positions = sorted(set(int(p) for p in positions))
    if not positions:
        return {}
    if positions[0] < 0 or positions[-1] >= len(layers):
        raise ValueError(f"candidate layer positions {positions} outside 0..{len(layers) - 1}")
    gc = greedy_config(model, max_length)
    eos = _eos_ids(gc)
    budgets = [max(0, min(max_length - e.shape[0], max_new_tokens if max_new_tokens is not None else 1 << 30))
               for e in embeds]
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


def decode_text(processor, tokens: list[int]) -> str:
    return processor.batch_decode([tokens], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0].strip()


class CachedEngine:
    """The fast engine: audio encoded once per audio-encoder configuration, batched greedy decoding."""

    name = "cached"

    def __init__(self, model, processor, segments, lang, *, max_new_tokens, max_length=1024, batch_size=16):
        self.model, self.processor, self.segments, self.lang = model, processor, segments, lang
        self.max_new_tokens, self.max_length, self.batch_size = max_new_tokens, max_length, batch_size
        self._cache_key = None
        self._embeds = None
        self._targets = None

    def embeds(self, removed_audio: tuple = ()) -> list:
        from ..surgery import audio_layers_removed

        key = tuple(sorted(removed_audio))
        if key != self._cache_key:
            with audio_layers_removed(self.model, key):
                self._embeds = encode_prompts(self.model, self.processor, self.segments, self.lang,
                                              batch_size=self.batch_size)
            self._cache_key = key
        return self._embeds

    def translate(self, removed_llm=(), removed_audio=()) -> list[str]:
        from ..surgery import llm_layers_removed

        embeds = self.embeds(removed_audio)
        with llm_layers_removed(self.model, removed_llm):
            toks = greedy_from_embeds(self.model, embeds, max_new_tokens=self.max_new_tokens,
                                      max_length=self.max_length, batch_size=self.batch_size)
        return [decode_text(self.processor, t) for t in toks]

    def targets(self) -> list:
        if self._targets is None:
            tok = self.processor.tokenizer
            from ..decoding import greedy_config

            eos = sorted(_eos_ids(greedy_config(self.model, self.max_length)))
            end = tok.convert_tokens_to_ids("<|im_end|>")
            end = end if isinstance(end, int) and end >= 0 else (eos[0] if eos else None)
            self._targets = [tok(s.reference, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
                             for s in self.segments]
        return self._targets

    def logprob(self, removed_llm=(), removed_audio=()) -> float:
        from ..surgery import llm_layers_removed

        embeds = self.embeds(removed_audio)
        with llm_layers_removed(self.model, removed_llm):
            return teacher_forced_logprob(self.model, embeds, self.targets(), batch_size=self.batch_size)


class SharedEngine(CachedEngine):
    """The cached engine, plus a whole round decoded in one loop (:func:`round_greedy`): the audio is
    encoded once, the prompt prefill below each candidate's layer is the full model's and computed
    once, and every (candidate, segment) pair is a row of one batch. Same hypotheses as the
    per-candidate engines (greedy argmax with the model's own layers); other searches (audio layers,
    teacher forcing) use the cached engine's per-candidate path.
    """

    name = "shared"

    def __init__(self, model, processor, segments, lang, *, max_new_tokens, max_length=1024, batch_size=16,
                 round_rows=256):
        super().__init__(model, processor, segments, lang, max_new_tokens=max_new_tokens, max_length=max_length,
                         batch_size=batch_size)
        self.round_rows = round_rows
        self.fallback = round_decoding_supported(model, max_length)

    def translate_round(self, removed_llm, candidates, stats: dict | None = None,
                        segments: Sequence[int] | None = None) -> dict | None:
        """``{c: hypotheses with LLM layers removed_llm + [c]}`` for every candidate; None if unsupported.

        ``segments``: indices of the held-out segments to decode (default: all), the hypotheses in that order.
        A segment's hypothesis does not depend on which others are decoded with it.
        """
        from ..surgery import llm_layers_removed

        if self.fallback:
            return None
        removed = sorted(set(removed_llm))
        if any(c in removed for c in candidates):
            raise ValueError(f"candidates {list(candidates)} overlap the removed layers {removed}")
        embeds = self.embeds(())
        if segments is not None:
            embeds = [embeds[i] for i in segments]
        at = {c: c - sum(1 for r in removed if r < c) for c in candidates}  # position in the pruned stack
        with llm_layers_removed(self.model, removed):
            toks = round_greedy(self.model, embeds, list(at.values()), max_new_tokens=self.max_new_tokens,
                                max_length=self.max_length, max_rows=self.round_rows, stats=stats)
        return {c: [decode_text(self.processor, t) for t in toks[at[c]]] for c in candidates}


class NaiveEngine:
    """The published loop: every candidate re-encodes the audio and decodes one segment at a time."""

    name = "naive"

    def __init__(self, model, processor, segments, lang, *, max_new_tokens, max_length=1024, batch_size=1):
        self.model, self.processor, self.segments, self.lang = model, processor, segments, lang
        self.max_new_tokens, self.max_length = max_new_tokens, max_length

    def translate(self, removed_llm=(), removed_audio=()) -> list[str]:
        from ..decoding import translate
        from ..surgery import audio_layers_removed, llm_layers_removed

        with audio_layers_removed(self.model, removed_audio), llm_layers_removed(self.model, removed_llm):
            hyps = translate(self.model, self.processor, [s.wave for s in self.segments], self.lang, mode="reference",
                             max_length=self.max_length, max_new_tokens=self.max_new_tokens)
        return [h.text for h in hyps]

    def logprob(self, removed_llm=(), removed_audio=()) -> float:
        raise UserError("teacher-forced scoring needs the cached engine")


ENGINES = {"shared": SharedEngine, "cached": CachedEngine, "naive": NaiveEngine}


# ---------------------------------------------------------------------------------------------
# the screen: decode every candidate on a few segments, only the close ones on all


@dataclass(frozen=True)
class ScreenPlan:
    """How a round is screened (``prune-layers`` option ``screen: segments``): a race.

    Every candidate is decoded exactly (the shared engine) on the first ``every`` segments of a seeded
    order of the held-out set; after each look the survivors are decoded on the next ``every``, and
    so on (or at the explicit segment counts ``stages``, increasing); the finalists, the survivors of
    the last look, are decoded on all segments, and the round's choice is the best full-set score
    among them. At each look, with ``L`` the leader on the segments decoded so far (corpus score, ties
    to the lower layer), candidate ``c`` survives when ``score_L - score_c <= t * se * sqrt(1 - n / N)``:
    ``se`` is the jackknife standard error (over the ``n`` segments) of the corpus-score difference of
    the pair, ``t`` the Student-t quantile for ``n - 1`` degrees of freedom at the normal tail of ``z``
    (:func:`critical_value`), ``sqrt(1 - n / N)`` the finite-population factor for the full set of ``N``
    it has to predict. **Fallback**: when more than ``fallback_share`` of the candidates survive the last look
    the margins are too small to trust and every candidate is decoded on all segments (then the choice
    is the exact one). The choice equals the exact search's whenever the exact winner is among the
    finalists.
    """

    stages: tuple = ()
    every: int = 8
    z: float = 3.0
    fallback_share: float = 0.5
    seed: int = 0

    def looks(self, n_total: int) -> list[int]:
        """The segment counts after which the candidates are compared, for a held-out set of ``n_total``."""
        if self.stages:
            return [n for n in sorted(set(self.stages)) if 0 < n < n_total]
        return list(range(self.every, n_total, self.every))

    def as_dict(self) -> dict:
        return {"stages": list(self.stages), "every": self.every, "z": self.z, "fallback_share": self.fallback_share,
                "seed": self.seed}


def _ranked(scores: dict) -> list:
    return sorted(scores, key=lambda c: (-scores[c], c))


def screen_stage(stats: dict, score_fn, n_total: int, z: float) -> dict:
    """One screening stage: ``stats`` ``{candidate: int array [n, d]}`` of the same ``n`` segments.
    Returns ``{"scores", "gap", "se", "kept", "leader", "critical"}`` (see :class:`ScreenPlan` for the rule)."""
    import numpy as np

    cands = list(stats)
    n = next(iter(stats.values())).shape[0]
    crit = critical_value(z, n)
    tot = {c: stats[c].sum(0) for c in cands}
    scores = {c: score_fn(tot[c]) for c in cands}
    leader = _ranked(scores)[0]
    loo = {c: np.array([score_fn(tot[c] - stats[c][i]) for i in range(n)]) for c in cands} if n > 1 else {}
    fpc = (max(0.0, 1.0 - n / n_total)) ** 0.5
    gap, se, kept = {}, {}, []
    for c in cands:
        gap[c] = scores[leader] - scores[c]
        if n > 1:
            d = loo[leader] - loo[c]
            se[c] = float(((n - 1) / n * ((d - d.mean()) ** 2).sum()) ** 0.5)
        else:
            se[c] = float("inf")
        if c == leader or gap[c] <= crit * se[c] * fpc:
            kept.append(c)
    return {"segments": n, "scores": scores, "gap": gap, "se": se, "kept": _ranked({c: scores[c] for c in kept}),
            "leader": leader, "critical": crit}


def critical_value(z: float, n: int) -> float:
    """How many standard errors a gap must exceed when the standard error comes from ``n`` segments: the
    Student-t quantile with ``n - 1`` degrees of freedom at the normal tail probability of ``z`` (4.53 for
    z = 3 at 8 segments, 3.26 at 32, 3.08 at 96): a jackknife error from a few segments is itself uncertain."""
    from scipy.special import ndtr, stdtrit

    return float(stdtrit(n - 1, ndtr(z))) if n > 1 else float("inf")


class CandidateScorer:
    """Score a model with given LLM/audio layers removed on the held-out set (higher is better)."""

    def __init__(self, engine, *, metric: str = "auto", scoring: str = "decode"):
        self.engine = engine
        self.metric_name = metric
        self.metric = get_metric(metric)
        self.scoring = scoring
        self.refs = [s.reference for s in engine.segments]
        self.sources = [s.source for s in engine.segments]

    @property
    def label(self) -> str:
        if self.scoring == "teacher-forced":
            return "mean reference log-prob (teacher-forced)"
        return metric_label(self.metric_name, self.engine.lang)

    def prepare(self, kind: str, removed, candidates, fixed_llm=()) -> int:
        """Decode a round's ``candidates`` together when the engine can (LLM layers, decode scoring);
        their hypotheses wait for :meth:`__call__`. With a COMET/QE metric, every candidate's hypotheses
        are then scored in ONE worker call (the model loaded once per round, not once per candidate).
        Returns how many were decoded together."""
        self._ready, self._scored = {}, {}
        if self.scoring != "decode":
            return 0
        together = 0
        if kind == "llm" and hasattr(self.engine, "translate_round"):
            got = self.engine.translate_round(tuple(removed), list(candidates))
            if got is not None:
                for c, hyps in got.items():
                    self._ready[(tuple(sorted(list(removed) + [c])), ())] = hyps
                together = len(got)
        if is_comet_metric(self.metric_name) and candidates:
            keys = []
            for c in candidates:
                key = ((tuple(sorted(list(removed) + [c])), ()) if kind == "llm"
                       else (tuple(sorted(fixed_llm)), tuple(sorted(list(removed) + [c]))))
                if key not in self._ready:
                    self._ready[key] = self.engine.translate(*key)
                keys.append(key)
            self._scored.update(self._score_many({k: self._ready.pop(k) for k in keys}))
        return together

    def screen_reason(self, kind: str) -> str | None:
        """Why a round of ``kind`` cannot be screened (None: it can)."""
        if self.scoring != "decode":
            return "teacher-forced scoring"
        if kind != "llm" or not hasattr(self.engine, "translate_round") or getattr(self.engine, "fallback", None):
            return "only LLM rounds of the shared engine are screened"
        if segment_statistics(self.metric_name, self.engine.lang) is None:
            return f"metric {self.metric_name} has no per-segment statistics"
        return None

    def screen_round(self, removed, candidates, plan: ScreenPlan) -> dict | None:
        """Screen a round of LLM ``candidates`` (see :class:`ScreenPlan`): returns ``{"stages": [...],
        "finalists", "fallback", "proxy_ranking"}`` with every finalist's full-set hypotheses
        waiting for :meth:`__call__`; None when the round cannot be screened (the caller decodes exactly)."""
        import numpy as np

        if self.screen_reason("llm"):
            return None
        stats_fn, score_fn = segment_statistics(self.metric_name, self.engine.lang)
        N = len(self.refs)
        sizes = plan.looks(N)
        if not sizes or not candidates:
            return None
        self._ready, self._scored = {}, {}
        order = np.random.default_rng(plan.seed).permutation(N).tolist()
        hyps = {c: {} for c in candidates}
        stats = {c: {} for c in candidates}
        alive, stages, done = list(candidates), [], 0

        def decode(cands, idx):
            got = self.engine.translate_round(tuple(removed), list(cands), segments=idx)
            if got is None:
                raise RuntimeError("the shared engine refused a round it accepted before")
            for c in cands:
                hyps[c].update(zip(idx, got[c]))
                for i, row in zip(idx, stats_fn(got[c], [self.refs[i] for i in idx])):
                    stats[c][i] = row

        for n in sizes:
            decode(alive, order[done:n])
            done = n
            st = screen_stage({c: np.stack([stats[c][i] for i in order[:n]]) for c in alive}, score_fn, N, plan.z)
            # per candidate, best first: [layer, score on these segments, gap to the leader, its standard error]
            stages.append({"segments": n, "candidates": [[c, round(st["scores"][c], 6), round(st["gap"][c], 6),
                                                          round(st["se"][c], 6)] for c in _ranked(st["scores"])],
                           "critical": round(st["critical"], 4), "kept": st["kept"]})
            alive = st["kept"]
            if len(alive) == 1:  # a lone survivor is the finalist: nothing is left to compare it with
                break
        fallback = len(alive) > plan.fallback_share * len(candidates)
        finalists = list(candidates) if fallback else alive
        groups: dict = {}  # candidates missing the same segments are decoded together
        for c in finalists:
            groups.setdefault(tuple(i for i in range(N) if i not in hyps[c]), []).append(c)
        for idx, cands in groups.items():
            if idx:
                decode(cands, list(idx))
        for c in finalists:
            self._ready[(tuple(sorted(list(removed) + [c])), ())] = [hyps[c][i] for i in range(N)]
        return {"stages": stages, "finalists": sorted(finalists), "fallback": fallback,
                "proxy_ranking": [row[0] for row in stages[0]["candidates"]]}

    def _score_many(self, hyps_by_key: dict) -> dict:
        from ..scoring import comet_env

        qe = self.metric_name.startswith("qe:")
        ckpt = comet_env.resolve_checkpoint(self.metric_name.split(":", 1)[1])
        names = {f"{k}": k for k in hyps_by_key}
        scores = comet_env.score_many(ckpt, list(self.sources), {n: list(hyps_by_key[k]) for n, k in names.items()},
                                      None if qe else list(self.refs), qe=qe)
        return {names[n]: float(v) for n, v in scores.items()}

    def __call__(self, removed_llm=(), removed_audio=()) -> float:
        if self.scoring == "teacher-forced":
            return self.engine.logprob(tuple(removed_llm), tuple(removed_audio))
        key = (tuple(sorted(removed_llm)), tuple(sorted(removed_audio)))
        if key in getattr(self, "_scored", {}):
            return self._scored.pop(key)
        hyps = getattr(self, "_ready", {}).pop(key, None)
        if hyps is None:
            hyps = self.engine.translate(tuple(removed_llm), tuple(removed_audio))
        return float(self.metric(hyps, self.refs, self.sources, self.engine.lang))


# ---------------------------------------------------------------------------------------------
# the search, with a log that doubles as the resume checkpoint


class SearchLog:
    """JSONL log of every evaluated candidate and every round; rereading it resumes a search.

    Lines: ``{"type": "header", "key": {...}}``, ``{"type": "baseline", "score"}``,
    ``{"type": "screen", "kind", "round", "removed", "stages", "finalists", "fallback", "proxy_ranking"}``
    (a screened round, before its finalists' exact scores),
    ``{"type": "candidate", "kind", "round", "removed", "candidate", "score", "seconds"}``,
    ``{"type": "round", "kind", "round", "chosen", "score", "removed"}`` (with ``screen``: the proxy
    ranking, the exact scores of the candidates decoded in full, whether the fallback fired). A log whose header key
    differs from the current search (other model, options or held-out set) is started afresh.
    """

    def __init__(self, path, key: dict, log: Callable[[str], None] = print):
        import json
        from pathlib import Path

        self.path = Path(path)
        self.key = key
        self.memo: dict = {}
        self.lines: list[dict] = []
        self.resumed = 0
        if self.path.exists():
            try:
                old = [json.loads(l) for l in self.path.read_text("utf-8").splitlines() if l.strip()]
            except ValueError:
                old = []
            if old and old[0].get("type") == "header" and old[0].get("key") == key:
                for rec in old[1:]:
                    self._remember(rec)
                self.lines = old
                self.resumed = sum(1 for r in old if r.get("type") == "candidate")
                if self.resumed:
                    log(f"resuming the layer search from {self.path} ({self.resumed} candidates already scored)")
            else:
                if old:
                    log(f"{self.path}: a log of a different search (model, options or held-out set); starting afresh")
                old = []
            if not old:
                self.path.unlink()
        if not self.lines:
            self._write({"type": "header", "key": key})

    @staticmethod
    def _mkey(kind, removed, candidate):
        return (kind, tuple(sorted(removed)), candidate)

    def _remember(self, rec):
        if rec.get("type") == "candidate":
            self.memo[self._mkey(rec["kind"], rec["removed"], rec["candidate"])] = rec["score"]
        elif rec.get("type") == "baseline":
            self.memo[("baseline",)] = rec["score"]
        elif rec.get("type") == "screen":
            self.memo[("screen",) + self._mkey(rec["kind"], rec["removed"], None)[:2]] = rec

    def _write(self, rec: dict) -> None:
        import json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
        self.lines.append(rec)

    def lookup(self, kind, removed, candidate):
        return self.memo.get(self._mkey(kind, removed, candidate))

    def screen(self, kind, removed) -> dict | None:
        """The screen record of the round that starts from ``removed`` (resume), if logged."""
        return self.memo.get(("screen",) + self._mkey(kind, removed, None)[:2])

    def add(self, rec: dict) -> None:
        if rec.get("type") == "round" and any(r.get("type") == "round" and r.get("kind") == rec["kind"]
                                               and r.get("round") == rec["round"] for r in self.lines):
            return  # replayed on resume: already logged
        if rec.get("type") == "baseline" and ("baseline",) in self.memo:
            return
        self._remember(rec)
        self._write(rec)


def iterative_search(scorer: CandidateScorer, *, kind: str, n_layers: int, remove: int, protect_first_last: bool,
                     log: SearchLog, fixed_llm: Sequence[int] = (), progress: Callable[[str], None] = print,
                     screen: ScreenPlan | None = None) -> list[int]:
    """Greedy importance search: ``remove`` rounds, each removing the layer whose removal scores best.

    ``kind`` is ``llm`` or ``audio``; indices are positions in the input model. ``fixed_llm`` are LLM
    layers already chosen (kept removed while searching audio layers). Ties go to the lower index.
    ``screen``: screen each round (:class:`ScreenPlan`; only the finalists are scored on the whole
    held-out set) where the scorer can (:meth:`CandidateScorer.screen_reason`), else every candidate.
    Returns the removed layers in the order they were chosen.
    """
    removed: list[int] = []
    allowed = [i for i in range(n_layers) if not (protect_first_last and i in (0, n_layers - 1))]
    why_not = scorer.screen_reason(kind) if screen is not None and hasattr(scorer, "screen_reason") else None
    if screen is not None and why_not:
        progress(f"{kind} rounds are not screened ({why_not}): every candidate is decoded")
    for rnd in range(1, remove + 1):
        best, best_score = None, None
        t_round = time.perf_counter()
        cands = [c for c in allowed if c not in removed]
        together, share, screened = 0, 0.0, None
        if screen is not None and not why_not:
            screened = log.screen(kind, removed)
            fresh = screened is None and any(log.lookup(kind, removed, c) is None for c in cands)
            if fresh:
                t0 = time.perf_counter()
                got = scorer.screen_round(removed, cands, screen)
                if got is not None:
                    screened = {"type": "screen", "kind": kind, "round": rnd, "removed": sorted(removed), **got}
                    log.add(screened)
                    share = (time.perf_counter() - t0) / len(got["finalists"])
                    together = len(cands)
        scored = [c for c in cands if c in screened["finalists"]] if screened else cands
        missing = [c for c in scored if log.lookup(kind, removed, c) is None]
        if missing and hasattr(scorer, "prepare") and not together:
            t0 = time.perf_counter()
            together = scorer.prepare(kind, removed, missing, fixed_llm)
            share = (time.perf_counter() - t0) / len(missing)  # batched decoding / one COMET call, spread
        exact = {}
        for c in scored:
            score = log.lookup(kind, removed, c)
            if score is None:
                t0 = time.perf_counter()
                trial = removed + [c]
                if kind == "llm":
                    score = scorer(removed_llm=trial)
                else:
                    score = scorer(removed_llm=fixed_llm, removed_audio=trial)
                # decoded together with the round: its share of that loop, plus its own scoring
                log.add({"type": "candidate", "kind": kind, "round": rnd, "removed": sorted(removed), "candidate": c,
                         "score": score, "seconds": round(time.perf_counter() - t0 + share, 3)})
            exact[c] = score
            if best_score is None or score > best_score:
                best, best_score = c, score
        removed.append(best)
        rec = {"type": "round", "kind": kind, "round": rnd, "chosen": best, "score": best_score,
               "removed": list(removed), "seconds": round(time.perf_counter() - t_round, 3),
               "decoded_together": together}
        if screened:
            rec["screen"] = {"proxy_ranking": [[row[0], row[1]] for row in screened["stages"][0]["candidates"]],
                             "proxy_segments": screened["stages"][0]["segments"],
                             "exact_scores": [[c, exact[c]] for c in _ranked(exact)],
                             "fallback": screened["fallback"], "decoded_in_full": len(scored), "candidates": len(cands),
                             "proxy_rank_of_chosen": screened["proxy_ranking"].index(best) + 1}
        log.add(rec)
        how = ""
        if screened:
            how = ("; screen: fallback, all decoded" if screened["fallback"] else
                   f"; screen: {len(scored)} of {len(cands)} decoded in full, proxy rank "
                   f"{rec['screen']['proxy_rank_of_chosen']}")
        progress(f"{kind} round {rnd}/{remove}: removed layer {best} ({scorer.label} {best_score:.4g}; "
                 f"{len(cands)} candidates{how})")
    return removed
