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
  right) and put back afterwards (:func:`iwslt_mc.families.llm_layers_removed`).
- **decoding is batched.** Segments are sorted by prompt length and decoded greedily in left-padded
  batches from the cached embeddings; each row is cut at the length batch-1 decoding would allow
  (``max_length`` counts the prompt, as in the published decoding), so in fp32 the hypotheses are the
  ones the per-segment loop produces (:class:`NaiveEngine`, kept for tests and the benchmark).
- **a round is one loop** (engine ``shared``, the default: :func:`round_greedy`): every (candidate,
  segment) pair is a row of one batch. The prompt prefill of the layers below a candidate's layer
  is the full model's, so it is computed once and shared (a round of K candidates costs about K/2
  full prefills, not K), and the prompt prefix every segment shares (the chat template up to the
  audio) is prefilled once per round; each row then decodes with every layer but its candidate's. Same
  hypotheses as the per-candidate engines in fp32 (tests/pruning/test_prune_search.py holds it to the naive
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

from ..decoding.core import decode_text, eos_ids, greedy_config, greedy_from_embeds
from ..decoding.embeds import encode_prompts, teacher_forced_logprob
from ..decoding.rounds import round_decoding_supported, round_greedy
from ..errors import UserError
from ..scoring.metrics import get_metric, is_comet_metric, metric_label, segment_statistics

# ---------------------------------------------------------------------------------------------
# engines: translate the held-out set with some layers removed


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
        from ..families import audio_layers_removed

        key = tuple(sorted(removed_audio))
        if key != self._cache_key:
            with audio_layers_removed(self.model, key):
                self._embeds = encode_prompts(self.model, self.processor, self.segments, self.lang,
                                              batch_size=self.batch_size)
            self._cache_key = key
        return self._embeds

    def translate(self, removed_llm=(), removed_audio=()) -> list[str]:
        from ..families import llm_layers_removed

        embeds = self.embeds(removed_audio)
        with llm_layers_removed(self.model, removed_llm):
            toks = greedy_from_embeds(self.model, embeds, max_new_tokens=self.max_new_tokens,
                                      max_length=self.max_length, batch_size=self.batch_size)
        return [decode_text(self.processor, t) for t in toks]

    def targets(self) -> list:
        if self._targets is None:
            tok = self.processor.tokenizer
            eos = sorted(eos_ids(greedy_config(self.model, self.max_length)))
            end = tok.convert_tokens_to_ids("<|im_end|>")
            end = end if isinstance(end, int) and end >= 0 else (eos[0] if eos else None)
            self._targets = [tok(s.reference, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
                             for s in self.segments]
        return self._targets

    def logprob(self, removed_llm=(), removed_audio=()) -> float:
        from ..families import llm_layers_removed

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
        from ..families import llm_layers_removed

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
        from ..decoding.core import translate
        from ..families import audio_layers_removed, llm_layers_removed

        with audio_layers_removed(self.model, removed_audio), llm_layers_removed(self.model, removed_llm):
            hyps = translate(self.model, self.processor, [s.wave for s in self.segments], self.lang, mode="reference",
                             max_length=self.max_length, max_new_tokens=self.max_new_tokens)
        return [h.text for h in hyps]

    def logprob(self, removed_llm=(), removed_audio=()) -> float:
        raise UserError("teacher-forced scoring needs the cached engine")


class RebuildEngine:
    """For a family whose layers cannot be taken out in place (:attr:`~iwslt_mc.families.base.Family.in_place_layer_removal`
    False: Gemma 4, whose KV sharing is wired into the attention modules and whose per-layer embeddings are one
    table sliced per layer): each candidate is a pruned copy (:meth:`~iwslt_mc.families.base.Family.pruned_copy`),
    decoded by the shared decoding core in batches (fast mode) and dropped. Teacher-forced scoring runs each
    held-out example (prompt with audio, reference, end of turn) through the whole copy: its LLM needs more
    than captured prompt embeddings."""

    name = "rebuild"

    def __init__(self, model, processor, segments, lang, *, max_new_tokens, max_length=1024, batch_size=8):
        self.model, self.processor, self.segments, self.lang = model, processor, segments, lang
        self.max_new_tokens, self.max_length, self.batch_size = max_new_tokens, max_length, batch_size

    def _copy(self, removed_llm, removed_audio):
        from ..families import family_of_model

        return family_of_model(self.model).pruned_copy(self.model, list(removed_llm), list(removed_audio))

    def translate(self, removed_llm=(), removed_audio=()) -> list[str]:
        from ..decoding.core import translate

        model = self._copy(removed_llm, removed_audio)
        hyps = translate(model, self.processor, [s.wave for s in self.segments], self.lang, mode="fast",
                         batch_size=self.batch_size, max_length=self.max_length, max_new_tokens=self.max_new_tokens)
        return [h.text for h in hyps]

    def logprob(self, removed_llm=(), removed_audio=()) -> float:
        """Mean log-probability per target token (the reference and the end of the turn) of the held-out set."""
        import torch

        from ..training.training import IGNORE_INDEX, Collator, encode_example, pad_token_id

        model = self._copy(removed_llm, removed_audio)
        collate = Collator(pad_token_id(self.processor, model))
        device = next(model.parameters()).device
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        total, count = 0.0, 0
        with torch.inference_mode():
            for seg in self.segments:
                batch = collate([encode_example(self.processor, seg.wave, seg.reference, self.lang)])
                labels = batch.pop("labels")[0, 1:].to(device)
                batch = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}
                logits = model(**batch, use_cache=False).logits[0, :-1].float()
                sel = labels != IGNORE_INDEX
                logp = torch.log_softmax(logits[sel], dim=-1)
                total += logp.gather(1, labels[sel][:, None]).sum().item()
                count += int(sel.sum())
        return total / max(count, 1)


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
                     screen: ScreenPlan | None = None, valid: Callable[[list], bool] | None = None) -> list[int]:
    """Greedy importance search: ``remove`` rounds, each removing the layer whose removal scores best.

    ``kind`` is ``llm`` or ``audio``; indices are positions in the input model. ``fixed_llm`` are LLM
    layers already chosen (kept removed while searching audio layers). Ties go to the lower index.
    ``screen``: screen each round (:class:`ScreenPlan`; only the finalists are scored on the whole
    held-out set) where the scorer can (:meth:`CandidateScorer.screen_reason`), else every candidate.
    ``valid(removed)``: False for a set of removed layers the model's family forbids (such a candidate is
    skipped; a round with none left is a one-line error). Returns the removed layers in the order they were chosen.
    """
    removed: list[int] = []
    allowed = [i for i in range(n_layers) if not (protect_first_last and i in (0, n_layers - 1))]
    why_not = scorer.screen_reason(kind) if screen is not None and hasattr(scorer, "screen_reason") else None
    if screen is not None and why_not:
        progress(f"{kind} rounds are not screened ({why_not}): every candidate is decoded")
    for rnd in range(1, remove + 1):
        best, best_score = None, None
        t_round = time.perf_counter()
        cands = [c for c in allowed if c not in removed and (valid is None or valid(removed + [c]))]
        if not cands:
            raise UserError(f"stage prune-layers: round {rnd} of the {kind} search: no remaining layer can be removed "
                            f"after {sorted(removed)} (the model family's rules, e.g. KV sharing, forbid every one)")
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
