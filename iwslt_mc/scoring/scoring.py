"""Local scores computed the way the organizers compute them.

- BLEU and chrF with sacrebleu, settings per target language (the language table, :mod:`iwslt_mc.floor.languages`): BLEU ``tok:13a`` and
  chrF++ for German, BLEU ``tok:zh`` and plain chrF for Chinese; case-sensitive, punctuation kept.
  Files are read as the sacrebleu command line reads them (split on ``\\n``, trailing whitespace
  stripped), so corpus scores equal ``sacrebleu REF -i HYP`` exactly.
- Resegmentation of the hypothesis to the reference segments with mweralign (the mwerSegmenter
  alignment), offline tokenization only: whitespace for German, characters (mweralign's
  ``CJSegmenter``) for Chinese, or a local SentencePiece model. AS-WER is recomputed from the
  resegmented output: edit distance per reference segment on the same tokens the aligner saw,
  case-insensitive like the aligner, summed over segments / reference tokens.
- COMET through :mod:`iwslt_mc.scoring.comet_env` (its own environment, a separate process).
- Tags such as ``(Applause)``, ``(Laughter)``, ``[Applaus]``, ``(笑声)`` are removed from hypotheses
  and references before anything is scored, as the organizers ignore them ("Tags such as applause,
  laughing, etc are not considered during the evaluation"); ``tags="keep"`` scores the lines as
  they are (then BLEU/chrF equal the sacrebleu command line exactly), ``tag_pattern`` replaces the
  rule. Only the scorer's copy changes: files are never rewritten.

- Acceptability (papers/000: QE is used for binary decisions, judge it at thresholds): per threshold,
  the share of segments whose sentence COMET (or sentence chrF when COMET is not set up) is at or
  above it; against a teacher's outputs of the same segments (a segment the teacher gets acceptable
  is a positive), precision, recall and F1 of the system's "acceptable" decisions. See
  :func:`acceptability`.

Everything a score depends on is in its signature string.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError, UserError
from ..floor.languages import Language, check_lang, language

RESEGMENT_MODES = ("auto", "always", "never")
TAG_MODES = ("strip", "keep")


# ---------------------------------------------------------------------------------------------
# Reading input


def read_lines(path: str | os.PathLike, *, what: str = "file") -> list[str]:
    """Lines of a UTF-8 text file, read as the sacrebleu command line reads them.

    Raises InputFileError for a missing file, a directory, or invalid UTF-8 (naming the line).
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, f"{what} not found")
    if p.is_dir():
        raise InputFileError(p, f"{what} is a directory, expected a text file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputFileError(p, f"cannot read {what} ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputFileError(p, f"line {line} is not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {col} of the line)") from None
    if text.startswith("\ufeff"):
        # Kept, as the sacrebleu command line keeps it (part of the first word), so scores stay
        # identical to it; but a byte-order mark is almost always an editor's accident.
        from ..output import warn

        warn(f"{p}: starts with a UTF-8 byte-order mark; it is scored as part of the first word (as sacrebleu does)")
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip() for line in lines]


def read_reference(path: str | os.PathLike, lang: str | None = None) -> list[str]:
    lines = read_lines(path, what="reference")
    if not any(lines):
        raise InputFileError(path, "reference is empty")
    if lang is not None:
        check_reference_language(lines, lang, path)
    return lines


_EN_WORDS = frozenset("the and of to is that it in for you this was with are be have not they we on".split())
_DE_WORDS = frozenset("der die das und ist nicht ich es sie ein eine zu den mit sich auf für wir von dass".split())


def text_language(lines: list[str]) -> str | None:
    """The language the text reads as, by script (Chinese, Arabic, Latin) and, for Latin script, by the most
    frequent function words (English or German); None when there is too little text to tell."""
    import re as _re

    text = "".join(lines)
    cjk = sum(1 for c in text if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf")
    arabic = sum(1 for c in text if "\u0600" <= c <= "\u06ff")
    latin = sum(1 for c in text if c.isascii() and c.isalpha() or "\u00c0" <= c <= "\u024f")
    letters = cjk + arabic + latin
    if letters < 20:
        return None
    if cjk / letters > 0.5:
        return "zh"
    if arabic / letters > 0.5:
        return "ar"
    if latin / letters > 0.5:
        words = _re.findall(r"[^\W\d_]+", " ".join(lines).lower())
        en, de = sum(w in _EN_WORDS for w in words), sum(w in _DE_WORDS for w in words)
        if en >= 8 and en > 4 * de:
            return "en"
        if de >= 8 and de > 4 * en:
            return "de"
        return "latin"
    return None


def check_reference_language(lines: list[str], lang: str, path) -> None:
    """A one-line error when the reference plainly is not in the target language of ``lang`` (e.g. the English
    source, or the other pair's reference): scores against it would be meaningless, not an error."""
    tgt = lang.split("-")[1]
    got = text_language(lines)
    if got is None or got == tgt or (got == "latin" and tgt == "de"):
        return
    from ..floor.languages import LANGUAGES

    names = {v.code: v.name for v in LANGUAGES.values()}
    name = {"en": "English", "latin": "Latin-script"}.get(got) or names.get(got, got)
    raise InputFileError(path, f"reference reads as {name} text, not {names.get(tgt, tgt)} (--lang {lang}): "
                               f"pass the {names.get(tgt, tgt)} reference, or the right --lang")


# ---------------------------------------------------------------------------------------------
# Tags the scorer ignores

# A tag is a parenthesized or bracketed span (ASCII or full-width brackets) whose words are all
# sound-event words, alone or joined by "and"/"und"/"和"/commas: "(Applause)", "(Laughter and
# applause)", "[Applaus]", "(Gelächter)", "（笑声）", "(笑声和掌声)". Other parentheticals, e.g.
# "(siehe Abbildung 3)", are text and stay.
TAG_WORDS = frozenset("""
applause laughter laughs laughing laugh music cheering cheers cheer noise silence inaudible crosstalk
cough coughs coughing sighs sigh audience clapping claps beep video audio singing sings
applaus beifall gelächter lachen lacht musik jubel publikum husten räuspern unverständlich stille
笑声 掌声 音乐 笑 鼓掌 欢呼 欢呼声 噪音 咳嗽 听不清 观众 静音
""".split())
_TAG_SPAN = re.compile(r"\s*[\(\[（【]([^()\[\]（）【】]{1,60})[\)\]）】]")
_TAG_SEPARATORS = re.compile(r"[\s,，、;；/&+.!。！]+|和|与|及")
_TAG_JOINERS = frozenset({"and", "und", "&"})


def _is_sound_tag(inner: str) -> bool:
    words = [w for w in _TAG_SEPARATORS.split(inner.strip().lower()) if w]
    return bool(words) and all(w in TAG_WORDS or w in _TAG_JOINERS for w in words) \
        and not all(w in _TAG_JOINERS for w in words)


@dataclass(frozen=True)
class TagFilter:
    """Removes tags from a line before scoring. ``pattern``: a regular expression whose matches are
    removed instead of the built-in rule (sound-event words in brackets). ``keep``: remove nothing."""

    keep: bool = False
    pattern: str | None = None

    def __post_init__(self):
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise UserError(f"--tag-pattern {self.pattern!r}: not a regular expression ({e})") from None

    @property
    def signature(self) -> str:
        if self.keep:
            return "tags:kept"
        return "tags:stripped" + (f"(re:{self.pattern})" if self.pattern else "(sound-events)")

    def strip(self, line: str) -> tuple[str, int]:
        """(line without tags, number of tags removed); spacing around a removed tag is tidied."""
        if self.keep:
            return line, 0
        n = 0
        if self.pattern:
            out, n = re.subn(self.pattern, " ", line)
        else:
            def repl(m):
                nonlocal n
                if _is_sound_tag(m.group(1)):
                    n += 1
                    return " "
                return m.group(0)

            out = _TAG_SPAN.sub(repl, line)
        if not n:
            return line, 0
        out = re.sub(r"\s+([,.;:!?，。；：！？])", r"\1", re.sub(r"[ \t]{2,}", " ", out)).strip()
        return out, n

    def apply(self, lines: list[str]) -> tuple[list[str], int]:
        out, total = [], 0
        for line in lines:
            s, n = self.strip(line)
            out.append(s)
            total += n
        return out, total


# ---------------------------------------------------------------------------------------------
# sacrebleu


def _bleu(spec: Language, sentence: bool = False):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=spec.bleu_tokenize, effective_order=sentence)


def _chrf(spec: Language):
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=spec.chrf_word_order)


def corpus_scores(hyps: list[str], refs: list[str], lang: str) -> dict:
    """Corpus BLEU and chrF/chrF++ with their sacrebleu signatures: ``{"bleu": {...}, "chrf": {...}}``."""
    spec = language(lang)
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypothesis lines for {len(refs)} reference lines")
    out = {}
    for key, metric in (("bleu", _bleu(spec)), ("chrf", _chrf(spec))):
        s = metric.corpus_score(hyps, [refs])
        out[key] = {"name": s.name, "score": s.score, "signature": str(metric.get_signature()),
                    "verbose": s.format(signature="", width=1, score_only=False)}
    return out


def segment_scores(hyps: list[str], refs: list[str], lang: str) -> tuple[list[dict], dict]:
    """Sentence BLEU (effective order, as ``sacrebleu --sentence-level``) and chrF per segment.

    Returns ``(segments, signatures)``; each segment is ``{"bleu": x, "chrf": y}``.
    """
    spec = language(lang)
    bleu, chrf = _bleu(spec, sentence=True), _chrf(spec)
    segs = [{"bleu": bleu.sentence_score(h, [r]).score, "chrf": chrf.sentence_score(h, [r]).score}
            for h, r in zip(hyps, refs)]
    return segs, {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}


# ---------------------------------------------------------------------------------------------
# Resegmentation


def _mweralign():
    # mweralign calls logging.basicConfig(level=INFO) when imported, which would turn on every
    # library's INFO messages in our process: undo exactly what that import added.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import mweralign

    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    return mweralign


@contextlib.contextmanager
def _capture_native_output():
    """Capture what native code writes to file descriptors 1 and 2 (yields a list, filled on exit).

    mweralign's C++ core prints its progress and AS-WER on stdout, which would corrupt ``--json``.
    """
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = (os.dup(1), os.dup(2))
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            libc.fflush(None)  # C stdio buffers the C++ output until flushed
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


_ALIGNER_ASWER = re.compile(r"AS-WER \(automatic segmentation mWER\):\s*(\S+)")


@dataclass
class Resegmentation:
    lines: list[str]  # one per reference line
    as_wer: float  # percent, recomputed: errors / ref_tokens
    errors: int
    ref_tokens: int
    tokenizer: str
    signature: str
    as_wer_aligner: float | None = None  # the number the aligner itself prints (None when it prints nan)

    def to_json(self) -> dict:
        return {"as_wer": self.as_wer, "as_wer_aligner": self.as_wer_aligner, "errors": self.errors,
                "ref_tokens": self.ref_tokens, "tokenizer": self.tokenizer, "signature": self.signature}


class _Tokenizer:
    """The token view the aligner works on: encode a line to tokens, decode an aligned line back."""

    def __init__(self, kind: str, spm_model: str | None = None):
        segmenter = _mweralign().mweralign
        self.kind = kind
        self.seg = None
        if spm_model:
            p = Path(spm_model)
            if not p.is_file():
                raise InputFileError(p, "SentencePiece model not found")
            try:
                self.seg = segmenter.SPSegmenter(str(p))
            except Exception as e:  # sentencepiece raises RuntimeError/OSError for a bad file
                raise InputFileError(p, f"not a SentencePiece model ({str(e).splitlines()[0]})") from None
            self.name = f"spm:{p.name}"
        elif kind == "cj":
            self.seg = segmenter.CJSegmenter()
            self.name = "cj"
        else:
            self.name = "whitespace"

    def encode(self, line: str) -> list[str]:
        return line.split() if self.seg is None else [t for t in self.seg.encode(line.strip()) if t.strip()]

    def decode(self, aligned: str) -> str:
        return aligned.strip() if self.seg is None else self.seg.decode(aligned)


def _join_stream(lines: list[str], kind: str) -> str:
    """The hypothesis as one stream: lines joined by a space, or for Chinese by nothing.

    Chinese lines are glued without a space (a space would be kept as text by the character
    tokenizer), except between two Latin letters/digits, which would otherwise merge into a word.
    """
    if kind != "cj":
        return " ".join(lines)
    out = ""
    for line in (x.strip() for x in lines):
        if out and line and out[-1].isascii() and out[-1].isalnum() and line[0].isascii() and line[0].isalnum():
            out += " "
        out += line
    return out


def resegment(hyp_lines: list[str], ref_lines: list[str], lang: str, *, spm_model: str | None = None) -> Resegmentation:
    """Align the hypothesis stream to the reference segments (mweralign); one output line per reference line."""
    spec = language(lang)
    mw = _mweralign()
    tok = _Tokenizer(spec.reseg_tokenizer, spm_model)
    non_whitespace = spec.reseg_tokenizer == "cj"
    # As mweralign's CLI: the internal-word penalty only applies to SentencePiece pieces of a
    # whitespace language.
    is_tokenized = tok.name.startswith("spm:") and not non_whitespace
    ref_str = "\n".join(" ".join(tok.encode(r)) for r in ref_lines)
    hyp_str = " ".join(tok.encode(_join_stream(hyp_lines, spec.reseg_tokenizer)))
    with _capture_native_output() as native:
        aligned = mw.align_texts(ref_str, hyp_str, is_tokenized=is_tokenized,
                                 forbid_midword_boundary=is_tokenized).split("\n")
    m = _ALIGNER_ASWER.search(native[0])
    try:
        aligner_wer = float(m.group(1)) if m else None
    except ValueError:
        aligner_wer = None
    if aligner_wer is not None and not math.isfinite(aligner_wer):
        aligner_wer = None
    if len(aligned) != len(ref_lines):
        raise RuntimeError(f"mweralign returned {len(aligned)} segments for {len(ref_lines)} reference lines")
    lines = [tok.decode(a) for a in aligned]
    errors = ref_tokens = 0
    for ref, a in zip(ref_lines, aligned):
        r = [t.lower() for t in tok.encode(ref)]
        h = [t.lower() for t in a.split()]
        s, i, d = mw.score_tokens(r, h)
        errors += s + i + d
        ref_tokens += len(r)
    as_wer = 100.0 * errors / ref_tokens if ref_tokens else 0.0
    signature = f"mweralign:{mw.__version__}|tok:{tok.name}|case:insensitive|join:{'none' if non_whitespace else 'space'}"
    return Resegmentation(lines, as_wer, errors, ref_tokens, tok.name, signature, aligner_wer)


# ---------------------------------------------------------------------------------------------
# Acceptability at thresholds (papers/000)

# The paper's DA thresholds (>= 51 and >= 70 mark an acceptable translation; >= 90 where very high
# quality is needed), on each metric's scale: COMET (DA-trained, 0..1) and chrF (0..100).
DEFAULT_THRESHOLDS = {"comet": (0.51, 0.70, 0.90), "chrf": (51.0, 70.0, 90.0)}
THRESHOLD_RANGES = {"comet": (0.0, 1.0), "chrf": (0.0, 100.0)}
ACCEPT_LABELS = {"comet": "COMET", "chrf": "chrF"}


def check_thresholds(values, metric: str, *, what: str | None = None) -> list[float]:
    """Thresholds as sorted distinct floats within the metric's range; one-line UserError otherwise.

    ``values``: numbers or a comma-separated string ("0.6,0.8").
    """
    what = what or f"--accept-{metric}"
    if isinstance(values, str):
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not parts:
            raise UserError(f"{what}: no threshold given (e.g. {','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS[metric])})")
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise UserError(f"{what}: {values!r} is not a comma-separated list of numbers") from None
    lo, hi = THRESHOLD_RANGES[metric]
    for v in values:
        if not (math.isfinite(v) and lo <= v <= hi):
            raise UserError(f"{what}: threshold {v:g} out of range ({ACCEPT_LABELS[metric]} thresholds lie in "
                            f"{lo:g}..{hi:g})")
    return sorted(set(float(v) for v in values))


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def acceptability(scores: list[float], thresholds: list[float], teacher: list[float] | None = None) -> list[dict]:
    """Per threshold t: segments with score >= t (``acceptable``, ``share``); with ``teacher`` (the
    teacher's scores of the same segments), the confusion counts of "system acceptable" against
    "teacher acceptable" (the positives) and precision, recall, F1.

    precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2PR / (P + R); None where the
    denominator is 0 (no segment predicted acceptable, or none acceptable for the teacher), F1 0
    when P + R is 0.
    """
    n = len(scores)
    if teacher is not None and len(teacher) != n:
        raise ValueError(f"{len(teacher)} teacher scores for {n} system scores")
    out = []
    for t in thresholds:
        sys_ok = [s >= t for s in scores]
        rec = {"threshold": t, "segments": n, "acceptable": sum(sys_ok), "share": _ratio(sum(sys_ok), n)}
        if teacher is not None:
            ref_ok = [s >= t for s in teacher]
            tp = sum(a and b for a, b in zip(sys_ok, ref_ok))
            fp = sum(a and not b for a, b in zip(sys_ok, ref_ok))
            fn = sum(b and not a for a, b in zip(sys_ok, ref_ok))
            p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
            f1 = None if p is None or r is None else (0.0 if p + r == 0 else 2 * p * r / (p + r))
            rec.update(teacher_acceptable=sum(ref_ok), teacher_share=_ratio(sum(ref_ok), n),
                       tp=tp, fp=fp, fn=fn, tn=n - tp - fp - fn, precision=p, recall=r, f1=f1)
        out.append(rec)
    return out


def segment_acceptability(segments: list[dict], thresholds: dict[str, list[float]] | None = None) -> dict | None:
    """The acceptability record of a scores file's segments: sentence COMET when every segment has
    it, else sentence chrF; the teacher's scores (``teacher_comet``/``teacher_chrf``) when present.
    None when the segments carry neither metric."""
    thresholds = thresholds or {k: list(v) for k, v in DEFAULT_THRESHOLDS.items()}
    metric = next((m for m in ("comet", "chrf") if segments and all(m in s for s in segments)), None)
    if metric is None:
        return None
    key = f"teacher_{metric}"
    teacher = [s[key] for s in segments] if all(key in s for s in segments) else None
    return {"metric": metric, "label": ACCEPT_LABELS[metric], "thresholds": list(thresholds[metric]),
            "teacher": teacher is not None,
            "levels": acceptability([s[metric] for s in segments], list(thresholds[metric]), teacher)}


# ---------------------------------------------------------------------------------------------
# The whole job


def score_files(hyp: str | os.PathLike, ref: str | os.PathLike, lang: str, *, src: str | os.PathLike | None = None,
                resegment_mode: str = "auto", spm_model: str | None = None, comet: str | None = None,
                comet_env: str | os.PathLike | None = None, comet_batch_size: int | None = None,
                testset: str | None = None, tags: str = "strip", tag_pattern: str | None = None,
                teacher_hyp: str | os.PathLike | None = None, accept: dict | None = None) -> dict:
    """Score a hypothesis file against a reference file; returns the JSON-ready result.

    Every input is checked (files, encodings, line counts, COMET environment) before any scoring.
    ``tags``: "strip" (default: applause/laughter-style tags removed from both sides first, as the
    organizers ignore them) or "keep"; ``tag_pattern``: a regex of what to remove instead.
    ``teacher_hyp``: a teacher's hypothesis file for the same segments (resegmented like the
    hypothesis, scored with the same metrics): its sentence scores are stored per segment
    (``teacher_*``) and the acceptability record gets precision/recall/F1 against it.
    ``accept``: ``{"comet": [thresholds], "chrf": [...]}`` (defaults: :data:`DEFAULT_THRESHOLDS`).
    """
    check_lang(lang)
    if tags not in TAG_MODES:
        raise UserError(f"tags must be one of {', '.join(TAG_MODES)} (got {tags!r})")
    if tags == "keep" and tag_pattern:
        raise UserError("--keep-tags and --tag-pattern exclude each other")
    tag_filter = TagFilter(keep=tags == "keep", pattern=tag_pattern)
    if resegment_mode not in RESEGMENT_MODES:
        raise UserError(f"--resegment must be one of {', '.join(RESEGMENT_MODES)} (got {resegment_mode!r})")
    refs = read_reference(ref, lang)
    hyps = read_lines(hyp, what="hypothesis")
    if not hyps:
        raise InputFileError(hyp, f"hypothesis is empty (0 lines) for {len(refs)} reference lines in {ref}: did "
                                  "decoding fail? a hypothesis file has one line per segment")
    if spm_model is not None and not Path(spm_model).is_file():
        raise InputFileError(spm_model, "SentencePiece model not found")
    srcs = None
    if src is not None:
        srcs = read_lines(src, what="source")
        if len(srcs) != len(refs):
            raise InputFileError(src, f"{len(srcs)} source lines for {len(refs)} reference lines in {ref}")
    if len(hyps) != len(refs) and resegment_mode == "never":
        raise InputFileError(hyp, f"{len(hyps)} lines for {len(refs)} reference lines in {ref} "
                                  f"(use --resegment auto to align it to the reference segments)")
    accept = {m: check_thresholds((accept or {}).get(m) or DEFAULT_THRESHOLDS[m], m) for m in DEFAULT_THRESHOLDS}
    teacher_lines = None
    if teacher_hyp is not None:
        teacher_lines = read_lines(teacher_hyp, what="teacher hypothesis")
        if not teacher_lines:
            raise InputFileError(teacher_hyp, f"teacher hypothesis is empty (0 lines) for {len(refs)} reference lines "
                                              f"in {ref}: a hypothesis file has one line per segment")
        if len(teacher_lines) != len(refs) and resegment_mode == "never":
            raise InputFileError(teacher_hyp, f"{len(teacher_lines)} lines for {len(refs)} reference lines in {ref} "
                                              f"(use --resegment auto to align it to the reference segments)")
    ckpt = None
    if comet:
        from . import comet_env as ce

        if srcs is None:
            raise UserError("--comet needs --src (COMET scores source, hypothesis and reference together)")
        ckpt = ce.resolve_checkpoint(comet)
        ce.require_env(comet_env)

    refs, ref_tags = tag_filter.apply(refs)
    hyps, hyp_tags = tag_filter.apply(hyps)
    reseg = None
    if resegment_mode == "always" or (resegment_mode == "auto" and len(hyps) != len(refs)):
        reseg = resegment(hyps, refs, lang, spm_model=spm_model)
        scored = reseg.lines
    else:
        scored = hyps
    teacher_reseg = teacher_scored = None
    if teacher_lines is not None:
        teacher_lines, _ = tag_filter.apply(teacher_lines)
        if resegment_mode == "always" or (resegment_mode == "auto" and len(teacher_lines) != len(refs)):
            teacher_reseg = resegment(teacher_lines, refs, lang, spm_model=spm_model)
            teacher_scored = teacher_reseg.lines
        else:
            teacher_scored = teacher_lines

    metrics = corpus_scores(scored, refs, lang)
    segs, seg_sigs = segment_scores(scored, refs, lang)
    for m in metrics.values():
        m["signature"] += "|" + tag_filter.signature
    seg_sigs = {k: v + "|" + tag_filter.signature for k, v in seg_sigs.items()}
    if teacher_scored is not None:
        for s, t in zip(segs, segment_scores(teacher_scored, refs, lang)[0]):
            s["teacher_chrf"] = t["chrf"]
    if ckpt is not None:
        from . import comet_env as ce

        if teacher_scored is not None:
            # system and teacher in one COMET process (segments they share are scored once)
            d: dict = {}
            ce.score_many(ckpt, srcs, {"system": scored, "teacher": teacher_scored}, refs, env_dir=comet_env,
                          batch_size=comet_batch_size, details=d)
            c = {**d, "scores": d["scores"]["system"], "system_score": sum(d["scores"]["system"]) / len(refs)}
            for s, v in zip(segs, d["scores"]["teacher"]):
                s["teacher_comet"] = v
        else:
            c = ce.run_comet(ckpt, srcs, scored, refs, env_dir=comet_env, batch_size=comet_batch_size)
        metrics["comet"] = {"name": "COMET", "score": c["system_score"], "model": comet,
                            "signature": f"model:{c['model']}|comet:{c['versions']['comet']}|"
                                         + ("reference-free|" if c.get("kind") == "qe" else "") +
                                         f"batch:{c['batch_size']}|device:{c['device']}|{tag_filter.signature}"}
        for s, v in zip(segs, c["scores"]):
            s["comet"] = v
    for i, s in enumerate(segs):
        s.update(index=i + 1, hyp=scored[i], ref=refs[i], **({"src": srcs[i]} if srcs else {}))
        if teacher_scored is not None:
            s["teacher_hyp"] = teacher_scored[i]
    accept_rec = segment_acceptability(segs, accept)
    if accept_rec is not None:
        accept_rec["teacher_file"] = None if teacher_hyp is None else str(teacher_hyp)
        accept_rec["teacher_resegmentation"] = None if teacher_reseg is None else teacher_reseg.to_json()
        accept_rec["signature"] = (metrics["comet"]["signature"] if accept_rec["metric"] == "comet"
                                   else seg_sigs["chrf"])
    from .. import __version__

    return {
        "format": 1,
        "tool": f"iwslt-mc {__version__}",
        "lang": lang,
        "testset": testset or Path(ref).name,
        "files": {"hyp": str(hyp), "ref": str(ref), "src": None if src is None else str(src)},
        "lines": {"hyp": len(hyps), "ref": len(refs)},
        "tags": {"mode": "keep" if tag_filter.keep else "strip", "pattern": tag_pattern,
                 "signature": tag_filter.signature, "removed": {"hyp": hyp_tags, "ref": ref_tags}},
        "resegmentation": {"mode": resegment_mode, "applied": reseg is not None,
                           **(reseg.to_json() if reseg else {})},
        "metrics": metrics,
        "segment_signatures": seg_sigs,
        "acceptability": accept_rec,
        "segments": segs,
    }
