#!/usr/bin/env python3
"""Teacher-generated training data for the toy: new grammar sentences, spoken, translated by the toy teacher.

Three steps, each resumable (kill the process and run the same command again: it continues):

1. Sentences: ``tools/toy_grammar.py`` draws ``--sentences`` (plus a margin for those too long once spoken)
   with ``--seed``; every sentence whose English text is in a split of ``--exclude`` (by default the dev and
   test splits of the toy corpus) is removed, so nothing scored or chosen on is trained on. With ``--text N``
   the English and German of N such sentences (no audio) are also written to ``text.txt``, e.g. for
   ``trim-vocab``'s ``corpora``.
2. Speech: espeak-ng as ``tools/make_toy_corpus.py`` does (same voices, speed and pitch ranges, noise),
   rendered in chunks of ``--chunk`` sentences; each finished chunk is written atomically to
   ``OUT/work/audio/NNNNN.npz`` and its number appended to ``OUT/work/audio/done.jsonl`` (the done-index).
   Utterances longer than ``--max-seconds`` are dropped (the next sentences of the draw take their place).
   The first ``--sentences`` that fit become ``OUT/speech/train.parquet`` (ACL 60/60 schema, the grammar's
   references in ``text_en/text_de/text_zh``): the plain fine-tuning data.
3. Teacher translations: the project's ``distill`` stage (:mod:`iwslt_mc.stages.distill`: batched greedy
   decoding, appended to ``OUT/work/distill/teacher.jsonl`` chunk by chunk, a rerun translates only what is
   missing) translates ``OUT/speech`` with ``--teacher``; optionally filtered by sentence chrF++ against the
   reference (``--min-score``) or by reference-free QE (``--qe`` + ``--qe-min``/``--qe-top``). The teacher
   pairs (no references: ``keep_references: false``) become ``OUT/teacher/train.parquet`` with the stage's
   ``provenance.json``: the sequence-level KD data. Word-level KD (stage ``kd``) reads either directory.

Both outputs are data specs every stage reads (``--data OUT/teacher``, ``OUT/speech``); same audio, same
order of utterances, so methods compared on them see the same inputs. ``OUT/data.json`` has the counts,
options and seconds spent.

    python tools/toy_teacher_data.py --out /work/toy/teacher-data --sentences 6000 --exclude /work/toy/corpus-tiny
    nohup nice -n 19 python tools/toy_teacher_data.py ... > teacher-data.log 2>&1 &      # in the background
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import make_toy_corpus  # noqa: E402
import toy_grammar  # noqa: E402

DEFAULT_TEACHER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "toy" / "teacher"
MAX_NEW_TOKENS = 64  # toy references are at most ~30 tokens


def excluded_sentences(specs: list[str], splits: tuple[str, ...]) -> set[str]:
    """English texts of ``splits`` of each corpus in ``specs`` (a missing split is skipped), lower-cased."""
    import pyarrow.parquet as pq

    out: set[str] = set()
    for spec in specs:
        base = Path(spec)
        if not base.is_dir():
            raise SystemExit(f"{base}: --exclude must be a corpus directory (split.parquet files)")
        found = False
        for split in splits:
            f = base / f"{split}.parquet"
            if f.exists():
                found = True
                out.update(t.strip().lower() for t in pq.read_table(f, columns=["text_en"]).column("text_en").to_pylist())
        if not found:
            raise SystemExit(f"{base}: none of {', '.join(s + '.parquet' for s in splits)} found")
    return out


def plan_sentences(n: int, *, seed: int, level: str, exclude: set[str], voices: int) -> list[dict]:
    """``n`` sentences not in ``exclude``, each with how it is spoken (voice, speed, pitch, noise seed)."""
    rows = make_toy_corpus.plan_utterances({"train": n + len(exclude)}, seed, level,
                                           make_toy_corpus.VOICES[:voices])
    kept = [r for r in rows if r["text_en"].strip().lower() not in exclude]
    if len(kept) < n:
        raise SystemExit(f"the grammar gave only {len(kept)} sentences outside --exclude, fewer than {n}")
    return kept[:n]


def _read_done(path: Path) -> set[int]:
    done: set[int] = set()
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                done.add(int(json.loads(line)["chunk"]))
            except (ValueError, KeyError, json.JSONDecodeError):
                break  # a torn last line from a kill
    return done


def render_chunks(rows: list[dict], need: int, audio_dir: Path, *, chunk: int, noise: float, max_seconds: float,
                  jobs: int, log=print, render=None) -> list[dict]:
    """Speak ``rows`` chunk by chunk until ``need`` utterances fit ``max_seconds``; resumable.

    Returns the kept rows, each with ``seconds`` and ``flac`` (bytes), in plan order."""
    from concurrent.futures import ProcessPoolExecutor

    from iwslt_mc.fsutil import atomic_write_bytes

    render = render or make_toy_corpus._render
    audio_dir.mkdir(parents=True, exist_ok=True)
    done_path = audio_dir / "done.jsonl"
    done = _read_done(done_path)
    kept: list[dict] = []
    started = time.time()
    pool = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else None
    try:
        for c, start in enumerate(range(0, len(rows), chunk)):
            if len(kept) >= need:
                break
            part = rows[start:start + chunk]
            path = audio_dir / f"{c:05d}.npz"
            if c in done and path.exists():
                with np.load(path, allow_pickle=False) as z:
                    got = _load_npz(z)
            else:
                jobs_ = [{**r, "noise": noise} for r in part]
                got = list(pool.map(render, jobs_, chunksize=8) if pool else map(render, jobs_))
                buf = _npz_bytes(got)
                atomic_write_bytes(path, buf)
                with open(done_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"chunk": c, "rows": len(part)}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                log(f"  speech: chunk {c} ({len(kept) + len(got)} rendered of {need} needed, "
                    f"{time.time() - started:.0f} s)")
            by_index = {g["index"]: g for g in got}
            for r in part:
                g = by_index[r["index"]]
                if g["seconds"] <= max_seconds and len(kept) < need:
                    kept.append({**r, "seconds": g["seconds"], "flac": g["flac"]})
    finally:
        if pool:
            pool.shutdown()
    if len(kept) < need:
        raise SystemExit(f"only {len(kept)} of {need} sentences fit in {max_seconds} s once spoken; "
                         f"raise --max-seconds or lower --sentences")
    return kept


def _npz_bytes(got: list[dict]) -> bytes:
    import io

    buf = io.BytesIO()
    width = max((len(g["flac"]) for g in got), default=0)
    # fixed-width bytes (numpy 'S' strips trailing NULs, so store lengths and a uint8 matrix)
    mat = np.zeros((len(got), width), dtype=np.uint8)
    for k, g in enumerate(got):
        mat[k, :len(g["flac"])] = np.frombuffer(g["flac"], dtype=np.uint8)
    np.savez(buf, index=np.array([g["index"] for g in got], dtype=np.int64),
             seconds=np.array([g["seconds"] for g in got], dtype=np.float64),
             lengths=np.array([len(g["flac"]) for g in got], dtype=np.int64), flac_matrix=mat)
    return buf.getvalue()


def _load_npz(z) -> list[dict]:
    return [{"index": int(i), "seconds": float(s), "flac": z["flac_matrix"][k, :int(n)].tobytes()}
            for k, (i, s, n) in enumerate(zip(z["index"], z["seconds"], z["lengths"]))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[-3:]))
    ap.add_argument("--out", required=True, type=Path, help="output directory (a rerun continues in it)")
    ap.add_argument("--sentences", type=int, default=6000, help="spoken, translated utterances")
    ap.add_argument("--text", type=int, default=0, help="also write text.txt: English + German of this many sentences")
    ap.add_argument("--seed", type=int, default=1, help="grammar and voice draw (the toy corpus uses 0)")
    ap.add_argument("--level", choices=sorted(toy_grammar.LEVEL_WEIGHTS), default="tiny",
                    help="grammar level (the toy teacher's corpus: tiny)")
    ap.add_argument("--voices", type=int, default=4, help="first N espeak-ng voices (the toy corpus: 4)")
    ap.add_argument("--noise", type=float, default=0.03)
    ap.add_argument("--max-seconds", type=float, default=3.9, help="drop utterances longer than this (toy corpus: 3.9)")
    ap.add_argument("--exclude", action="append", default=None, metavar="CORPUS",
                    help="corpus whose --exclude-splits sentences are removed (repeatable)")
    ap.add_argument("--exclude-splits", default="dev,test")
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    ap.add_argument("--lang", default="en-de")
    ap.add_argument("--batch-size", type=int, default=16, help="utterances the teacher decodes together")
    ap.add_argument("--chunk", type=int, default=256, help="utterances between resume points (speech and teacher)")
    ap.add_argument("--jobs", type=int, default=2, help="espeak-ng worker processes")
    ap.add_argument("--min-score", type=float, default=None,
                    help="drop teacher pairs below this sentence chrF++ against the grammar's reference")
    ap.add_argument("--qe", default=None, help="reference-free COMET checkpoint for a QE filter (distill stage's qe)")
    ap.add_argument("--qe-min", type=float, default=None)
    ap.add_argument("--qe-top", type=float, default=None)
    ap.add_argument("--translate", type=int, default=None, metavar="N",
                    help="the teacher translates only the first N utterances (default: all; the distill stage's limit)")
    ap.add_argument("--no-teacher", action="store_true", help="stop after the speech (no translations)")
    args = ap.parse_args(argv)
    if args.sentences < 1:
        ap.error("--sentences must be at least 1")
    if not shutil.which("espeak-ng"):
        print("espeak-ng not found (apt-get install espeak-ng)", file=sys.stderr)
        return 2

    from iwslt_mc.fsutil import atomic_directory, atomic_write_json, atomic_write_text

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    record_path = out / "data.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    options = {k: getattr(args, k) for k in ("sentences", "seed", "level", "voices", "noise", "max_seconds",
                                             "exclude_splits")}
    options["exclude"] = [str(p) for p in (args.exclude or [])]
    if record.get("options") not in (None, options):
        print(f"{out}: made with other options ({record['options']}); choose another --out", file=sys.stderr)
        return 2
    record["options"] = options
    log = lambda m: print(m, flush=True)  # noqa: E731

    # 1. sentences
    splits = tuple(s for s in args.exclude_splits.split(",") if s)
    exclude = excluded_sentences(options["exclude"], splits) if args.exclude else set()
    margin = int(args.sentences * 1.3) + 20  # those too long once spoken are dropped
    rows = plan_sentences(max(margin, args.text), seed=args.seed, level=args.level, exclude=exclude, voices=args.voices)
    record["excluded_sentences"] = len(exclude)
    if args.text and not (out / "text.txt").exists():
        atomic_write_text(out / "text.txt", "".join(f"{r['text_en']}\n{r['text_de']}\n" for r in rows[:args.text]))
        record["text_sentences"] = args.text

    # 2. speech
    t0 = time.time()
    speech = out / "speech"
    if not (speech / "train.parquet").exists():
        kept = render_chunks(rows[:margin], args.sentences, work / "audio", chunk=args.chunk, noise=args.noise,
                             max_seconds=args.max_seconds, jobs=args.jobs, log=log)
        with atomic_directory(speech) as tmp:
            make_toy_corpus.write_split(tmp / "train.parquet", kept, {r["index"]: r["flac"] for r in kept}, "train")
            atomic_write_text(tmp / "README.md", (
                "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: train.parquet\n---\n"
                f"# Toy teacher data: speech with the grammar's references\n\n{args.sentences} sentences of "
                f"`tools/toy_grammar.py` (seed {args.seed}, level {args.level}; dev/test sentences of "
                f"{', '.join(options['exclude']) or 'no corpus'} removed), spoken by espeak-ng as "
                "`tools/make_toy_corpus.py` does. Made by `python tools/toy_teacher_data.py`.\n"))
        secs = [r["seconds"] for r in kept]
        record["speech"] = {"utterances": len(kept), "hours": round(sum(secs) / 3600, 3),
                            "seconds_mean": round(float(np.mean(secs)), 2), "seconds": round(time.time() - t0, 1)}
        atomic_write_json(record_path, record)
        log(f"speech: {len(kept)} utterances in {speech}")
    if args.no_teacher:
        atomic_write_json(record_path, record)
        return 0

    # 3. teacher translations (the distill stage: batched, resumable through its teacher.jsonl)
    teacher_out = out / "teacher"
    if (teacher_out / "train.parquet").exists() and record.get("teacher", {}).get("limit") != args.translate:
        print(f"{teacher_out}: made with --translate {record['teacher'].get('limit')}; choose another --out",
              file=sys.stderr)
        return 2
    if not (teacher_out / "train.parquet").exists():
        from iwslt_mc.stages import make_stage
        from iwslt_mc.stages.base import StageContext, run_stage

        t0 = time.time()
        stage_out = work / "distill-stage"
        if not stage_out.exists():
            opts = {"split": "train", "batch_size": args.batch_size, "max_new_tokens": MAX_NEW_TOKENS,
                    "keep_references": False, "dedup": True, "chunk": args.chunk, "limit": args.translate, "min_score": args.min_score,
                    "qe": args.qe, "qe_min": args.qe_min, "qe_top": args.qe_top}
            ctx = StageContext(lang=args.lang, data=[str(speech)], device="cpu", work_dir=work / "distill", log=log)
            run_stage(make_stage("distill", opts), args.teacher, stage_out, ctx)
        made = stage_out / "distill_data"
        with atomic_directory(teacher_out) as tmp:
            for f in made.iterdir():
                shutil.copy2(f, tmp / f.name)
        prov = json.loads((made / "provenance.json").read_text())
        record["teacher"] = {"path": str(args.teacher), "limit": args.translate, **prov["counts"], "filter": prov["filter"],
                             "seconds": round(time.time() - t0, 1)}
        atomic_write_json(record_path, record)
        shutil.rmtree(stage_out)  # the passed-through model copy; the log stays in work/distill
        log(f"teacher: {prov['counts']['teacher_pairs']} translations in {teacher_out}")
    atomic_write_json(record_path, record)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
