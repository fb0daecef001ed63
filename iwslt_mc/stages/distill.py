"""distill: sequence-level knowledge distillation data (Kim and Rush, 2016), as in the published recipes.

A teacher model (``teacher``; default: this stage's input model) translates the training audio
(``ctx.data``, split ``split``) with :func:`iwslt_mc.decoding.core.translate` (greedy, the published
prompt). Its outputs become extra (audio, target) pairs next to the reference pairs; pairs are
deduplicated on (audio, normalized target text: Unicode NFKC, case-folded, whitespace collapsed),
and teacher pairs may be filtered by a score threshold (``metric``/``min_score``: sentence chrF/chrF++
or BLEU against the reference; other scorers plug in through :func:`iwslt_mc.scoring.metrics.register_scorer`) and by
quality estimation (papers/003, "filtering labeled data based on QE scores"): ``qe`` names a
reference-free COMET checkpoint (COMET-Kiwi style), scored in the COMET environment in one process
for all teacher outputs; ``qe_min`` keeps teacher pairs scoring at least that, ``qe_top`` keeps the
best share of them (after deduplication and ``min_score``). References are never QE-filtered.

The stage passes its input model through unchanged (files hard-linked, or copied) and writes the
dataset alongside, in ``OUT/distill_data/``:

    train.parquet      id, audio ({bytes, path}), text_en, text_<target>, origin (reference|teacher),
                       score, source_id (and qe, the teacher pair's QE score, with ``qe``);
                       readable with ``load_examples(OUT/distill_data)``
    provenance.json    teacher (path, fingerprint, stage history), data, language, decoding, filter, counts

A following stage reads it through a data reference to this stage (``data: ["@distill"]`` in a
recipe; the recipe runner resolves it to ``OUT/distill_data``), optionally mixed with other sources
(``OUT/distill_data?repeat=10``).

Translation is resumable: finished hypotheses are appended to ``ctx.work_dir/teacher.jsonl`` chunk by
chunk, and a rerun translates only what is missing. The stage runs on one process: under
``accelerate launch`` the other processes return at once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..scoring.metrics import get_scorer, resolve_metric, scorer_names
from ..training.common import teacher_fingerprint
from .base import Stage, StageContext, StageOptions

DATA_DIR = "distill_data"
TEACHER_LOG = "teacher.jsonl"
# Files of the input directory that describe how it was made, not what it is: not passed through.
_NOT_PASSED = {"provenance.json", "train.log", "loss_history.json", DATA_DIR}


def normalize_text(text: str) -> str:
    """The text compared for deduplication: NFKC, case-folded, whitespace collapsed and stripped."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


@dataclass
class DistillOptions(StageOptions):
    teacher: str | None = field(default=None, metadata={
        "help": "teacher model directory (default: this stage's input model)"})
    split: str | None = field(default="train", metadata={
        "help": "split of the data the teacher translates ('train' = the published training split; none = all)"})
    limit: int | None = field(default=None, metadata={"help": "translate only the first N utterances"})
    decode_mode: Literal["fast", "reference"] = field(default="fast", metadata={
        "help": "decoding path: fast (batched) or reference (batch 1, the published loop)"})
    batch_size: int = field(default=8, metadata={"help": "fast mode: segments decoded together"})
    max_length: int = field(default=1024, metadata={"help": "prompt + output token limit (published: 1024)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "cap on generated tokens per segment"})
    keep_references: bool = field(default=True, metadata={
        "help": "include the reference pairs (the published data: references + teacher outputs)"})
    dedup: bool = field(default=True, metadata={"help": "drop pairs whose audio and normalized target repeat"})
    metric: str = field(default="auto", metadata={
        "help": "score of a teacher pair: auto (chrF++ German, chrF Chinese), chrf, chrf++, bleu, or a registered scorer"})
    min_score: float | None = field(default=None, metadata={
        "help": "drop teacher pairs scoring below this (none = keep all, as published)"})
    chunk: int = field(default=64, metadata={"help": "segments translated between resume points"})
    qe: str | None = field(default=None, metadata={
        "help": "reference-free COMET checkpoint (COMET-Kiwi style, e.g. .../wmt22-cometkiwi-da/checkpoints/model.ckpt) "
                "scoring teacher pairs; needs the COMET environment (iwslt-mc setup-comet)"})
    qe_min: float | None = field(default=None, metadata={
        "help": "with qe: keep teacher pairs whose QE score is at least this (-1 to 1; COMET-Kiwi scores lie in 0..1)"})
    qe_top: float | None = field(default=None, metadata={
        "help": "with qe: keep this share (0 < share <= 1) of the teacher pairs, those with the highest QE scores"})
    qe_batch_size: int | None = field(default=None, metadata={
        "help": "QE batch size (default 64 on a GPU, 16 on the CPU)"})

    def validate(self) -> None:
        for k in ("batch_size", "max_length", "chunk"):
            if getattr(self, k) < 1:
                raise UserError(f"stage distill: option {k!r} must be at least 1")
        for k in ("limit", "max_new_tokens"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise UserError(f"stage distill: option {k!r} must be at least 1")
        if self.metric != "auto" and self.metric not in scorer_names():
            raise UserError(f"stage distill: unknown metric {self.metric!r} (known: auto, {', '.join(scorer_names())})")
        self._validate_qe()

    def _validate_qe(self) -> None:
        import math

        if self.qe_min is not None and self.qe_top is not None:
            raise UserError("stage distill: options 'qe_min' and 'qe_top' exclude each other (choose one)")
        if (self.qe_min is not None or self.qe_top is not None or self.qe_batch_size is not None) and not self.qe:
            raise UserError("stage distill: 'qe_min', 'qe_top' and 'qe_batch_size' need 'qe' (a QE checkpoint)")
        if self.qe_min is not None and not (math.isfinite(self.qe_min) and -1.0 <= self.qe_min <= 1.0):
            raise UserError(f"stage distill: option 'qe_min' must lie in [-1, 1] (QE scores; COMET-Kiwi's lie in "
                            f"0..1), not {self.qe_min:g}")
        if self.qe_top is not None and not (math.isfinite(self.qe_top) and 0.0 < self.qe_top <= 1.0):
            raise UserError(f"stage distill: option 'qe_top' is a share: 0 < qe_top <= 1, not {self.qe_top:g}")
        if self.qe_batch_size is not None and self.qe_batch_size < 1:
            raise UserError("stage distill: option 'qe_batch_size' must be at least 1")
        if self.qe:
            # before any work: the checkpoint exists, is reference-free, and the COMET environment is ready
            from ..scoring import comet_env

            try:
                comet_env.require_qe_checkpoint(self.qe)
            except UserError as e:
                raise UserError(f"stage distill: option 'qe': {e}") from None

    def smoke(self) -> "DistillOptions":
        import dataclasses

        return dataclasses.replace(self, limit=min(self.limit or 4, 4), max_new_tokens=min(self.max_new_tokens or 8, 8))


def _read_teacher_log(path: Path, fingerprint: str) -> dict[int, dict]:
    """Finished hypotheses of an earlier, interrupted run with the same teacher and settings."""
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return done
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        return done
    if head.get("fingerprint") != fingerprint:
        return done  # different teacher/data/settings: start over
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line from a crash
        done[int(rec["i"])] = rec
    return done


def pass_through(in_dir: Path, out_dir: Path) -> None:
    """The input model's files in ``out_dir``: hard links where possible (no copy of GBs), else copies."""
    for src in Path(in_dir).iterdir():
        if src.name in _NOT_PASSED:
            continue
        dst = Path(out_dir) / src.name
        if src.is_dir():
            shutil.copytree(src, dst, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)


def _qe_filter(survivors: list[tuple], qe_min: float | None, qe_top: float | None):
    """The candidates kept by the QE rule (order unchanged) and the effective cutoff.

    Only teacher pairs are filtered. ``qe_min``: kept when score >= qe_min. ``qe_top``: the
    ceil(share * n) teacher pairs with the highest scores are kept (ties: the earlier pair first).
    A teacher pair without a score (none here: every non-empty output is scored) would be kept.
    """
    import math

    teacher = [k for k, c in enumerate(survivors) if c[2] == "teacher" and c[4] is not None]
    if qe_min is not None:
        drop = {k for k in teacher if survivors[k][4] < qe_min}
        cutoff = qe_min
    elif qe_top is not None:
        keep_n = math.ceil(qe_top * len(teacher) - 1e-9)
        ranked = sorted(teacher, key=lambda k: (-survivors[k][4], k))
        drop = set(ranked[keep_n:])
        cutoff = survivors[ranked[keep_n - 1]][4] if keep_n else None
    else:
        return survivors, None
    return [c for k, c in enumerate(survivors) if k not in drop], cutoff


def _qe_technique(qe: dict, counts: dict) -> str:
    if qe.get("min") is not None:
        return f", {counts['qe_dropped']} teacher pairs with QE ({qe['name']}) below {qe['min']:g} dropped"
    if qe.get("top") is not None:
        return (f", {counts['qe_dropped']} teacher pairs outside the top {qe['top']:.0%} by QE ({qe['name']}) "
                f"dropped")
    return f", teacher pairs scored by QE ({qe['name']})"


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Distill(Stage):
    name = "distill"
    Options = DistillOptions
    techniques = ["sequence-level knowledge distillation"]

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        from ..modelio import check_model_dir
        from ..floor.languages import check_lang

        check_lang(ctx.lang)
        if not ctx.data:
            raise UserError("stage distill: no data to translate (give --data)")
        if self.options.teacher:
            check_model_dir(self.options.teacher)
        self._examples = self._load_data(ctx)

    def _load_data(self, ctx: StageContext):
        from ..training.data import load_examples, validate_examples

        o = self.options
        exs = load_examples(ctx.data, o.split, limit=o.limit, seed=ctx.seed)
        validate_examples(exs, None)  # English text and audio; references are optional here
        return exs

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from ..training import training

        if not training.is_main_process():
            return {}
        pass_through(in_dir, out_dir)
        from .. import modelio
        from ..submission import provenance
        from ..training.data import audio_key, describe_data, duration, target_code, write_parquet
        from ..decoding.core import translate
        from ..families import max_audio_seconds
        from ..fsutil import atomic_write_json

        o = self.options
        examples = getattr(self, "_examples", None) or self._load_data(ctx)
        teacher = Path(o.teacher) if o.teacher else Path(in_dir)
        work = Path(ctx.work_dir) if ctx.work_dir else out_dir.with_name(out_dir.name + ".work")
        work.mkdir(parents=True, exist_ok=True)
        settings = {"teacher": teacher_fingerprint(teacher), "lang": ctx.lang, "mode": o.decode_mode,
                    "max_length": o.max_length, "max_new_tokens": o.max_new_tokens,
                    "examples": [audio_key(ex) for ex in examples]}
        fp = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        log_path = work / TEACHER_LOG
        done = _read_teacher_log(log_path, fp)
        todo = [i for i in range(len(examples)) if i not in done]
        ctx.log(f"distill: teacher {teacher}; {len(examples)} utterances, {len(done)} already translated")
        if todo:
            device = ctx.resolved_device()
            model = modelio.load_model(teacher, dtype=modelio.runtime_dtype(teacher, device), device=device)
            processor = modelio.load_processor(teacher)
            # the teacher hears what the student will train on: audio cut at the family's longest piece
            # (30 s; gemma4_unified 18 s = 450 audio tokens), so a teacher pair matches its cut audio
            max_s = max_audio_seconds(model)
            if not done:
                log_path.write_text(json.dumps({"fingerprint": fp, "teacher": str(teacher)}) + "\n", encoding="utf-8")
            t0 = time.time()
            for start in range(0, len(todo), o.chunk):
                part = todo[start:start + o.chunk]
                waves = [functools.partial(examples[i].waveform, max_s) for i in part]
                hyps = translate(model, processor, waves, ctx.lang,
                                 mode=o.decode_mode, batch_size=o.batch_size, max_length=o.max_length,
                                 max_new_tokens=o.max_new_tokens, progress=True,
                                 lengths=[min(duration(examples[i]), max_s) for i in part])
                with open(log_path, "a", encoding="utf-8") as f:
                    for i, h in zip(part, hyps):
                        rec = {"i": i, "id": examples[i].id, "text": h.text, "n_tokens": h.n_tokens}
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        done[i] = rec
                    f.flush()
                    os.fsync(f.fileno())
                ctx.log(f"distill: {len(done)}/{len(examples)} translated ({time.time() - t0:.0f}s)")
            del model

        rows, counts, qe = self._pairs(examples, done, ctx.lang, ctx.log)
        code = target_code(ctx.lang)
        data_dir = out_dir / DATA_DIR
        write_parquet(rows, data_dir / "train.parquet",
                      extra_columns=("origin", "score", "source_id") + (("qe",) if o.qe else ()))
        record = {
            "format": 1, "kind": "distillation data",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "lang": ctx.lang, "target_column": f"text_{code}",
            "teacher": {"path": str(teacher.resolve()), "fingerprint": settings["teacher"],
                        "stages": [s.get("stage") for s in provenance.read(teacher).get("stages", [])],
                        "techniques": provenance.techniques(provenance.read(teacher))},
            "data": describe_data(ctx.data, o.split),
            "decoding": {"mode": o.decode_mode, "max_length": o.max_length, "max_new_tokens": o.max_new_tokens,
                         "greedy": True},
            "filter": {"dedup": o.dedup, "normalization": "NFKC, casefold, whitespace collapsed" if o.dedup else None,
                       "metric": resolve_metric(o.metric, ctx.lang) if o.min_score is not None else None,
                       "min_score": o.min_score, "qe": qe},
            "counts": counts, "versions": provenance.versions(), "fingerprint": fp,
        }
        atomic_write_json(data_dir / "provenance.json", record)
        ctx.log(f"distill: {counts['pairs']} pairs ({counts['reference_pairs']} reference, {counts['teacher_pairs']} "
                f"teacher; dropped: {counts['duplicates']} duplicates, {counts['empty']} empty, "
                f"{counts['below_min_score']} below min_score"
                + (f", {counts['qe_dropped']} by QE" if o.qe else "") + f") in {DATA_DIR}/")
        what = (f"sequence-level knowledge distillation: {counts['teacher_pairs']} teacher translations of "
                f"{counts['utterances']} utterances added to {counts['reference_pairs']} reference pairs"
                + (", deduplicated" if o.dedup else "")
                + (f", teacher pairs below {resolve_metric(o.metric, ctx.lang)} {o.min_score:g} dropped"
                   if o.min_score is not None else "")
                + (_qe_technique(qe, counts) if qe else ""))
        return {"techniques": [what], "data": describe_data(ctx.data, o.split),
                "distill": {"dataset": DATA_DIR, "teacher": str(teacher), **counts}}

    def _pairs(self, examples, done: dict[int, dict], lang: str, log=lambda m: None):
        """Reference and teacher pairs, scored, filtered and deduplicated (references win ties).

        Returns (rows, counts, QE record or None)."""
        import dataclasses

        from ..training.data import audio_key, target_code, target_text

        o = self.options
        code = target_code(lang)
        hyps = [done[i]["text"] for i in range(len(examples))]
        refs = [target_text(ex, lang) for ex in examples]
        scores: list[float | None] = [None] * len(examples)
        metric = resolve_metric(o.metric, lang)
        scorable = [i for i, r in enumerate(refs) if r and r.strip() and hyps[i].strip()]
        # sacrebleu scores are cheap: always recorded; other scorers (a QE model) only run to filter
        if scorable and (o.min_score is not None or metric in ("chrf", "chrf++", "bleu")):
            got = get_scorer(metric)([examples[i].text_en for i in scorable], [hyps[i] for i in scorable],
                                  [refs[i] for i in scorable], lang)
            for i, s in zip(scorable, got):
                scores[i] = round(float(s), 4)
        qe_scores, qe = self._qe_scores(examples, hyps, log) if o.qe else ({}, None)
        counts = {"utterances": len(examples), "reference_pairs": 0, "teacher_pairs": 0, "duplicates": 0, "empty": 0,
                  "below_min_score": 0, "qe_dropped": 0, "pairs": 0, "score_metric": metric}
        candidates = []
        for i, ex in enumerate(examples):
            if o.keep_references and refs[i] and refs[i].strip():
                candidates.append((ex, refs[i], "reference", None, None))
        for i, ex in enumerate(examples):
            if not hyps[i].strip():
                counts["empty"] += 1
            else:
                candidates.append((ex, hyps[i], "teacher", scores[i], qe_scores.get(i)))
        # duplicates first: a teacher output equal to its reference is a duplicate whatever its score
        seen: set[tuple[str, str]] = set()
        survivors = []
        for cand in candidates:
            ex, text, origin, score, _ = cand
            key = (audio_key(ex), normalize_text(text))
            if o.dedup and key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            if o.min_score is not None and score is not None and score < o.min_score:
                counts["below_min_score"] += 1
                continue
            survivors.append(cand)
        if qe is not None:
            qe["candidates"] = sum(c[2] == "teacher" for c in survivors)  # after dedup and min_score
            survivors, qe["cutoff"] = _qe_filter(survivors, o.qe_min, o.qe_top)
            counts["qe_dropped"] = qe["dropped"] = qe["candidates"] - sum(c[2] == "teacher" for c in survivors)
        rows = []
        for ex, text, origin, score, qe_score in survivors:
            meta = {"origin": origin, "score": score, "source_id": ex.id}
            if o.qe:
                meta["qe"] = None if qe_score is None else round(float(qe_score), 6)
            row = dataclasses.replace(ex, id=f"{ex.id}:{'ref' if origin == 'reference' else 'kd'}{len(rows)}",
                                      text_de=None, text_zh=None, texts={}, meta=meta)
            if code in ("de", "zh"):
                setattr(row, f"text_{code}", text)
            else:
                row.texts[code] = text
            rows.append(row)
            counts[f"{origin}_pairs"] += 1
        counts["pairs"] = len(rows)
        return rows, counts, qe

    def _qe_scores(self, examples, hyps: list[str], log) -> tuple[dict[int, float], dict]:
        """QE scores of the non-empty teacher outputs (one COMET process for all); and the QE record."""
        from ..scoring import comet_env

        o = self.options
        todo = [i for i, h in enumerate(hyps) if h.strip()]
        log(f"distill: QE scoring {len(todo)} teacher translations with {o.qe}")
        got: dict[int, float] = {}
        rec = {"checkpoint": o.qe, "name": comet_env.checkpoint_name(o.qe), "min": o.qe_min, "top": o.qe_top,
               "scored": len(todo)}
        if todo:
            r = comet_env.run_qe(comet_env.resolve_checkpoint(o.qe), [examples[i].text_en for i in todo],
                                 [hyps[i] for i in todo], batch_size=o.qe_batch_size)
            got = dict(zip(todo, r["scores"]))
            rec["signature"] = (f"model:{r['model']}|comet:{r['versions']['comet']}|kind:{r['kind']}|"
                                f"batch:{r['batch_size']}|device:{r['device']}")
        return got, rec
