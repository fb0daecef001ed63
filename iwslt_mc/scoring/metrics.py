"""The one metric registry: every metric a search, a filter or a report may name.

A metric has a name, a human label, and up to two scorers (higher is better):

- ``corpus(hyps, refs, sources, lang) -> float``: one score for a set of segments (the layer search of
  ``prune-layers`` ranks candidates with it);
- ``sentence(sources, hyps, refs, lang) -> list[float]``: one score per segment (``distill`` filters
  teacher pairs with it).

Built in: ``auto`` (the track's choice per language: chrF++ for German, chrF for Chinese; sacrebleu
settings from the language table), ``chrf``, ``chrf++`` and ``bleu``; and, by name, ``comet:CHECKPOINT``
and ``qe:CHECKPOINT`` (a reference-free COMET model), scored in COMET's own environment (see
``iwslt-mc setup-comet``). Others plug in with :func:`register_metric` (a corpus scorer) or
:func:`register_scorer` (a per-segment scorer, e.g. a COMET-Kiwi QE model that ignores references).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError

MetricFn = Callable[[list, list, list, str], float]  # corpus(hyps, refs, sources, lang)
Scorer = Callable[[list[str], list[str], list[str], str], list[float]]  # sentence(sources, hyps, refs, lang)


@dataclass(frozen=True)
class Metric:
    name: str
    corpus: MetricFn | None = None
    sentence: Scorer | None = None
    label: str | None = None


_REGISTRY: dict[str, Metric] = {}


def _register(name: str, **kw) -> None:
    old = _REGISTRY.get(name, Metric(name))
    _REGISTRY[name] = Metric(name, **{k: kw.get(k) or getattr(old, k) for k in ("corpus", "sentence", "label")})


def register_metric(name: str, fn: MetricFn, *, label: str | None = None) -> None:
    """Make ``fn(hyps, refs, sources, lang) -> float`` (higher is better) available as ``metric: name``
    to corpus scoring (the layer search)."""
    _register(name, corpus=fn, label=label)


def register_scorer(name: str, fn: Scorer) -> None:
    """Make ``fn(sources, hyps, refs, lang) -> list[float]`` (one score per segment, higher is better)
    available as ``metric: name`` to per-segment scoring (``distill``'s filter)."""
    _register(name, sentence=fn)


def _word_order(name: str, lang: str) -> int:
    from ..floor.languages import language

    return {"auto": language(lang).chrf_word_order, "chrf": 0, "chrf++": 2}[name]


def _chrf_corpus(name: str) -> MetricFn:
    def fn(hyps, refs, sources, lang):
        from sacrebleu.metrics import CHRF

        return CHRF(word_order=_word_order(name, lang)).corpus_score(list(hyps), [list(refs)]).score
    return fn


def _bleu_corpus(hyps, refs, sources, lang):
    from sacrebleu.metrics import BLEU

    from ..floor.languages import language

    return BLEU(tokenize=language(lang).bleu_tokenize).corpus_score(list(hyps), [list(refs)]).score


def _chrf_sentence(name: str) -> Scorer:
    def fn(srcs, hyps, refs, lang):
        import sacrebleu

        wo = _word_order(name, lang)
        return [sacrebleu.sentence_chrf(h, [r], word_order=wo).score for h, r in zip(hyps, refs)]
    return fn


def _bleu_sentence(srcs, hyps, refs, lang):
    import sacrebleu

    from ..floor.languages import language

    tok = language(lang).bleu_tokenize
    return [sacrebleu.sentence_bleu(h, [r], tokenize=tok).score for h, r in zip(hyps, refs)]


_register("auto", corpus=_chrf_corpus("auto"), sentence=_chrf_sentence("auto"))  # chrF++ German, chrF Chinese
_register("chrf", corpus=_chrf_corpus("chrf"), sentence=_chrf_sentence("chrf"), label="chrF")
_register("chrf++", corpus=_chrf_corpus("chrf++"), sentence=_chrf_sentence("chrf++"), label="chrF++")
_register("bleu", corpus=_bleu_corpus, sentence=_bleu_sentence, label="BLEU")

# the built-in metrics with sacrebleu's per-segment sufficient statistics (see segment_statistics)
SACREBLEU_METRICS = ("auto", "chrf", "chrf++", "bleu")


def metric_names() -> list[str]:
    """Names of the metrics with a corpus scorer (``comet:``/``qe:`` aside)."""
    return [n for n, m in _REGISTRY.items() if m.corpus is not None]


def scorer_names() -> list[str]:
    """Names of the metrics with a per-segment scorer, ``auto`` aside."""
    return [n for n, m in _REGISTRY.items() if m.sentence is not None and n != "auto"]


def resolve_metric(metric: str, lang: str) -> str:
    """``auto``: chrF++ for German, chrF for Chinese (the published choice); other names unchanged."""
    if metric == "auto":
        from ..floor.languages import language

        return "chrf" if language(lang).chrf_word_order == 0 else "chrf++"
    return metric


def metric_label(name: str, lang: str) -> str:
    """Human name of a metric for logs and provenance (``auto`` resolved for ``lang``)."""
    if name == "auto":
        return _REGISTRY[resolve_metric(name, lang)].label
    if name.startswith("comet:"):
        return "COMET"
    if name.startswith("qe:"):
        return "COMET QE (reference-free)"
    m = _REGISTRY.get(name)
    return (m.label if m is not None else None) or name


def _comet(checkpoint: str) -> MetricFn:
    def fn(hyps, refs, sources, lang):
        from . import comet_env

        return float(comet_env.run_comet(checkpoint, list(sources), list(hyps), list(refs))["system_score"])
    return fn


def _qe(checkpoint: str) -> MetricFn:
    def fn(hyps, refs, sources, lang):
        from . import comet_env

        return float(comet_env.run_qe(checkpoint, list(sources), list(hyps))["system_score"])
    return fn


def get_metric(name: str) -> MetricFn:
    """The corpus scorer of a registered metric, ``comet:CHECKPOINT`` or ``qe:CHECKPOINT`` (a reference-free
    COMET model), both scored in COMET's own environment (see ``iwslt-mc setup-comet``)."""
    if name.startswith("comet:"):
        return _comet(name.split(":", 1)[1])
    if name.startswith("qe:"):
        return _qe(name.split(":", 1)[1])
    m = _REGISTRY.get(name)
    if m is None or m.corpus is None:
        raise UserError(f"unknown metric {name!r} (known: {', '.join(metric_names())}, comet:CHECKPOINT, qe:CHECKPOINT)")
    return m.corpus


def get_scorer(name: str) -> Scorer | None:
    """The per-segment scorer of a registered metric (None if it has none)."""
    m = _REGISTRY.get(name)
    return None if m is None else m.sentence


def is_comet_metric(name: str) -> bool:
    """A metric scored by the COMET worker: a search scores a round's candidates in one worker call."""
    return name.startswith(("comet:", "qe:"))


def check_metric(name: str) -> None:
    """Fail early (before any work) on an unknown metric or a COMET checkpoint/environment that is missing
    (for ``qe:``, also a checkpoint that is not a reference-free model)."""
    if name.startswith("comet:"):
        from . import comet_env

        comet_env.resolve_checkpoint(name.split(":", 1)[1])
        comet_env.require_env()
    elif name.startswith("qe:"):
        from . import comet_env

        comet_env.require_qe_checkpoint(comet_env.resolve_checkpoint(name.split(":", 1)[1]))
    else:
        get_metric(name)


def segment_statistics(name: str, lang: str):
    """For a corpus metric that sums per-segment statistics (chrF, chrF++, BLEU: sacrebleu's sufficient
    statistics), ``(stats, score)``: ``stats(hyps, refs)`` an int array ``[segments, d]`` and ``score(total)``
    the corpus score of summed statistics (equal to the metric on those segments). None for other metrics."""
    import numpy as np

    from ..floor.languages import language

    if name in ("auto", "chrf", "chrf++"):
        from sacrebleu.metrics import CHRF

        m = CHRF(word_order=_word_order(name, lang))
    elif name == "bleu":
        from sacrebleu.metrics import BLEU

        m = BLEU(tokenize=language(lang).bleu_tokenize)
    else:
        return None

    def stats(hyps, refs):
        return np.asarray(m._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)

    def score(total) -> float:
        return float(m._compute_score_from_stats([int(x) for x in total]).score)

    return stats, score
