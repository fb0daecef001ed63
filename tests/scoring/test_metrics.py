"""The one metric registry (iwslt_mc.scoring.metrics): the layer search's corpus metrics and distill's
per-segment filter scorers come from it, with the track's settings per language."""

import pytest
import sacrebleu

from iwslt_mc.errors import UserError
from iwslt_mc.scoring import metrics
from iwslt_mc.pruning import importance
from iwslt_mc.stages.distill import DistillOptions

HYPS = ["Das ist ein kleiner Test.", "Heute sprechen wir über Modelle.", "我们今天谈论模型。"]
REFS = ["Das ist ein kleiner Test!", "Heute reden wir über große Modelle.", "今天我们谈论大模型。"]


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))


def test_builtin_corpus_metrics_use_the_track_settings_per_language():
    assert metrics.metric_names() == ["auto", "chrf", "chrf++", "bleu"]
    de = sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score
    zh = sacrebleu.corpus_chrf(HYPS, [REFS], word_order=0).score
    assert de != zh
    assert metrics.get_metric("auto")(HYPS, REFS, [], "en-de") == pytest.approx(de)
    assert metrics.get_metric("auto")(HYPS, REFS, [], "en-zh") == pytest.approx(zh)
    assert metrics.get_metric("bleu")(HYPS, REFS, [], "en-zh") == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="zh").score)
    assert (metrics.metric_label("auto", "en-de"), metrics.metric_label("auto", "en-zh")) == ("chrF++", "chrF")
    assert metrics.metric_label("comet:x", "en-de") == "COMET"


def test_builtin_sentence_scorers_match_sacrebleu():
    assert metrics.scorer_names() == ["chrf", "chrf++", "bleu"]
    got = metrics.get_scorer("bleu")([""] * 3, HYPS, REFS, "en-zh")
    assert got == [pytest.approx(sacrebleu.sentence_bleu(h, [r], tokenize="zh").score) for h, r in zip(HYPS, REFS)]
    got = metrics.get_scorer("chrf++")([""] * 3, HYPS, REFS, "en-de")
    assert got == [pytest.approx(sacrebleu.sentence_chrf(h, [r], word_order=2).score) for h, r in zip(HYPS, REFS)]
    assert [metrics.resolve_metric("auto", lg) for lg in ("en-de", "en-zh", "en-ar")] == ["chrf++", "chrf", "chrf++"]
    assert metrics.resolve_metric("bleu", "en-zh") == "bleu"


def test_unknown_metrics_are_one_line_errors_naming_the_known_ones():
    with pytest.raises(UserError) as e:
        metrics.get_metric("ter")
    assert str(e.value) == "unknown metric 'ter' (known: auto, chrf, chrf++, bleu, comet:CHECKPOINT, qe:CHECKPOINT)"
    with pytest.raises(UserError) as e:
        DistillOptions(metric="ter").validate()
    assert str(e.value) == "stage distill: unknown metric 'ter' (known: auto, chrf, chrf++, bleu)"


def test_one_registry_serves_the_search_and_the_filter(registry):
    metrics.register_scorer("len", lambda srcs, hyps, refs, lang: [float(len(h)) for h in hyps])
    DistillOptions(metric="len").validate()  # distill's filter sees it
    with pytest.raises(UserError, match="unknown metric 'len'"):
        metrics.get_metric("len")  # no corpus scorer yet
    metrics.register_metric("len", lambda hyps, refs, srcs, lang: float(sum(map(len, hyps))))
    assert metrics.get_metric("len")(HYPS, REFS, [], "en-de") == sum(map(len, HYPS))
    assert metrics.get_scorer("len")([], HYPS, REFS, "en-de") == [float(len(h)) for h in HYPS]  # kept
    assert "len" in metrics.metric_names() and metrics.metric_label("len", "en-de") == "len"
    assert importance.get_metric is metrics.get_metric  # the search has no registry of its own
