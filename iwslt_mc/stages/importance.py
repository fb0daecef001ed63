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
- **teacher forcing** (``scoring: teacher-forced``) is an optional, much cheaper score: one forward
  pass per candidate over prompt + reference, scored as the mean log-probability per reference
  token (the reference followed by ``<|im_end|>``, so stopping is scored too). It needs no
  generation at all but ranks layers by a different criterion than chrF of decoded output, so it may
  select different layers.

Metrics are a registry (:func:`register_metric`): ``auto`` is the track's choice per language
(chrF++ for German, chrF for Chinese, sacrebleu settings from :mod:`iwslt_mc.scoring`); others
(e.g. a COMET scorer) can be added with ``register_metric(name, fn)`` where
``fn(hyps, refs, sources, lang) -> float`` (higher is better).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import UserError

# ---------------------------------------------------------------------------------------------
# metrics

MetricFn = Callable[[list, list, list, str], float]
_METRICS: dict[str, MetricFn] = {}


def register_metric(name: str, fn: MetricFn) -> None:
    """Make ``fn(hyps, refs, sources, lang) -> float`` (higher is better) available as ``metric: name``."""
    _METRICS[name] = fn


def _chrf(word_order: int | None):
    def fn(hyps, refs, sources, lang):
        from sacrebleu.metrics import CHRF

        from ..scoring import check_lang

        wo = check_lang(lang).chrf_word_order if word_order is None else word_order
        return CHRF(word_order=wo).corpus_score(list(hyps), [list(refs)]).score
    return fn


def _bleu(hyps, refs, sources, lang):
    from sacrebleu.metrics import BLEU

    from ..scoring import check_lang

    return BLEU(tokenize=check_lang(lang).bleu_tokenize).corpus_score(list(hyps), [list(refs)]).score


register_metric("auto", _chrf(None))  # chrF++ for German, chrF for Chinese (the track's settings)
register_metric("chrf", _chrf(0))
register_metric("chrf++", _chrf(2))
register_metric("bleu", _bleu)


def metric_names() -> list[str]:
    return list(_METRICS)


def metric_label(name: str, lang: str) -> str:
    """Human name of a metric for logs and provenance (``auto`` resolved for ``lang``)."""
    if name == "auto":
        from ..scoring import check_lang

        return "chrF++" if check_lang(lang).chrf_word_order == 2 else "chrF"
    if name.startswith("comet:"):
        return "COMET"
    return {"chrf": "chrF", "chrf++": "chrF++", "bleu": "BLEU"}.get(name, name)


def _comet(checkpoint: str) -> MetricFn:
    def fn(hyps, refs, sources, lang):
        from .. import comet_env

        return float(comet_env.run_comet(checkpoint, list(sources), list(hyps), list(refs))["system_score"])
    return fn


def get_metric(name: str) -> MetricFn:
    """A registered metric, or ``comet:CHECKPOINT`` (COMET in its own environment, see ``iwslt-mc setup-comet``)."""
    if name.startswith("comet:"):
        return _comet(name.split(":", 1)[1])
    if name not in _METRICS:
        raise UserError(f"unknown metric {name!r} (known: {', '.join(_METRICS)}, comet:CHECKPOINT)")
    return _METRICS[name]


def check_metric(name: str) -> None:
    """Fail early (before any work) on an unknown metric or a COMET checkpoint/environment that is missing."""
    if name.startswith("comet:"):
        from .. import comet_env

        comet_env.resolve_checkpoint(name.split(":", 1)[1])
        comet_env.require_env()
    else:
        get_metric(name)


# ---------------------------------------------------------------------------------------------
# held-out set


@dataclass
class HeldoutSegment:
    id: str
    wave: object  # 16 kHz float32 array
    reference: str
    source: str = ""


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


ENGINES = {"cached": CachedEngine, "naive": NaiveEngine}


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

    def __call__(self, removed_llm=(), removed_audio=()) -> float:
        if self.scoring == "teacher-forced":
            return self.engine.logprob(tuple(removed_llm), tuple(removed_audio))
        hyps = self.engine.translate(tuple(removed_llm), tuple(removed_audio))
        return float(self.metric(hyps, self.refs, self.sources, self.engine.lang))


# ---------------------------------------------------------------------------------------------
# the search, with a log that doubles as the resume checkpoint


class SearchLog:
    """JSONL log of every evaluated candidate and every round; rereading it resumes a search.

    Lines: ``{"type": "header", "key": {...}}``, ``{"type": "baseline", "score"}``,
    ``{"type": "candidate", "kind", "round", "removed", "candidate", "score", "seconds"}``,
    ``{"type": "round", "kind", "round", "chosen", "score", "removed"}``. A log whose header key
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

    def _write(self, rec: dict) -> None:
        import json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
        self.lines.append(rec)

    def lookup(self, kind, removed, candidate):
        return self.memo.get(self._mkey(kind, removed, candidate))

    def add(self, rec: dict) -> None:
        if rec.get("type") == "round" and any(r.get("type") == "round" and r.get("kind") == rec["kind"]
                                               and r.get("round") == rec["round"] for r in self.lines):
            return  # replayed on resume: already logged
        if rec.get("type") == "baseline" and ("baseline",) in self.memo:
            return
        self._remember(rec)
        self._write(rec)


def iterative_search(scorer: CandidateScorer, *, kind: str, n_layers: int, remove: int, protect_first_last: bool,
                     log: SearchLog, fixed_llm: Sequence[int] = (), progress: Callable[[str], None] = print) -> list[int]:
    """Greedy importance search: ``remove`` rounds, each removing the layer whose removal scores best.

    ``kind`` is ``llm`` or ``audio``; indices are positions in the input model. ``fixed_llm`` are LLM
    layers already chosen (kept removed while searching audio layers). Ties go to the lower index.
    Returns the removed layers in the order they were chosen.
    """
    removed: list[int] = []
    allowed = [i for i in range(n_layers) if not (protect_first_last and i in (0, n_layers - 1))]
    for rnd in range(1, remove + 1):
        best, best_score = None, None
        t_round = time.perf_counter()
        cands = [c for c in allowed if c not in removed]
        for c in cands:
            score = log.lookup(kind, removed, c)
            if score is None:
                t0 = time.perf_counter()
                trial = removed + [c]
                if kind == "llm":
                    score = scorer(removed_llm=trial)
                else:
                    score = scorer(removed_llm=fixed_llm, removed_audio=trial)
                log.add({"type": "candidate", "kind": kind, "round": rnd, "removed": sorted(removed), "candidate": c,
                         "score": score, "seconds": round(time.perf_counter() - t0, 3)})
            if best_score is None or score > best_score:
                best, best_score = c, score
        removed.append(best)
        log.add({"type": "round", "kind": kind, "round": rnd, "chosen": best, "score": best_score,
                 "removed": list(removed), "seconds": round(time.perf_counter() - t_round, 3)})
        progress(f"{kind} round {rnd}/{remove}: removed layer {best} ({scorer.label} {best_score:.4g}; "
                 f"{len(cands)} candidates)")
    return removed
