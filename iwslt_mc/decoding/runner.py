"""Decode a test set into a hypothesis file: ``iwslt-mc decode``'s runner.

Checks the model and the segments, keeps a resumable JSONL log beside the output (one record per
segment as it finishes), splits data-parallel work under ``accelerate launch``, cuts segments longer
than the model family's longest piece, and writes the hypothesis file atomically at the end. The
decoding itself is :func:`iwslt_mc.decoding.core.iter_translate`.
"""

from __future__ import annotations

from pathlib import Path

import time
from dataclasses import dataclass, field

from ..floor.languages import check_lang
from . import core
from .core import MODES, SAMPLE_RATE, DecodeProgress, Hyp, one_line

# ---------------------------------------------------------------- a segment list to a hypothesis file

LOG_FORMAT = "iwslt-mc-decode/1"
# Header fields that must match for --resume to continue a log (batch size and device may change).
RESUME_KEYS = ("model_fingerprint", "audio_fingerprint", "segments", "lang", "mode", "prompt", "max_length",
               "max_new_tokens", "dtype")


def log_path(out) -> "Path":
    """The JSONL log next to the hypothesis file: ``<out>.jsonl``."""
    from pathlib import Path

    return Path(str(out) + ".jsonl")


def rank_log_path(out, rank: int) -> "Path":
    from pathlib import Path

    return Path(f"{out}.rank{rank}.jsonl")


def read_log(path) -> tuple[dict | None, dict[int, dict]]:
    """(header, records by index) of a decode log. A torn last line (the process was killed while
    writing it) is ignored; any other unreadable line is an error naming the line."""
    import json

    from ..errors import InputFileError

    header, records = None, {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if n == len(lines):  # no newline after it: interrupted while writing
                continue
            raise InputFileError(path, f"line {n}: not a JSON record (delete the log to start again)") from None
        kind = rec.get("type")
        if kind == "header":
            header = rec
        elif kind == "segment":
            records[int(rec["index"])] = rec
    return header, records


def _drop_torn_tail(path) -> None:
    """Cut a partial last line so appended records start on a line of their own."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


@dataclass
class DecodeSummary:
    """What a decode run did. ``rtf``: decoding seconds (summed over segments, i.e. one process's
    time) / seconds of audio; below 1 is faster than real time."""

    out: str
    log: str
    segments: int
    decoded: int  # in this run
    resumed: int  # taken from an earlier run's log
    bad: list[str]
    audio_seconds: float
    decode_seconds: float
    wall_seconds: float
    tokens: int
    mode: str
    device: str
    world_size: int = 1
    name: str = ""  # the test set's name
    split_segments: list[str] = field(default_factory=list)  # ids of segments decoded in pieces (> max_segment_seconds)
    pieces: int = 0  # pieces those segments were cut into
    max_segment_seconds: float = 30.0  # the longest piece the model got (its family's Family.max_segment_seconds)

    @property
    def rtf(self) -> float:
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d.update(rtf=round(self.rtf, 4),
                 tokens_per_second=round(self.tokens / self.decode_seconds, 2) if self.decode_seconds else 0.0,
                 segments_per_second=round(self.segments / self.decode_seconds, 3) if self.decode_seconds else 0.0)
        for k in ("audio_seconds", "decode_seconds", "wall_seconds"):
            d[k] = round(d[k], 3)
        return d


class _Dist:
    """Rank, world size, device and barrier: one process, or an ``accelerate launch`` process group."""

    def __init__(self, device: str | None):
        from ..distributed import world_size

        self.world = world_size()
        self.state = None
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=(device == "cpu"))
            self.rank, self.world = self.state.process_index, self.state.num_processes
            self.device = device if device == "cpu" else str(self.state.device)
            self.main = self.state.is_local_main_process
        else:
            self.rank = 0
            self.device = device or _default_device()
            self.main = True

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bad_segments_message(bad) -> str:
    first = bad[0].problem
    more = f" (and {len(bad) - 1} more bad segment{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
    return f"{first}{more}; pass --skip-bad to decode them as empty lines"


def check_weight_files(model_dir) -> None:
    """Every safetensors file of ``model_dir`` holds the bytes its header describes: a truncated or
    corrupt file is a one-line error naming it, before any weight is loaded (headers only, instant)."""
    from ..errors import InputFileError
    from ..floor.modeldir import read_header, weight_files

    base, files, _ = weight_files(model_dir)
    for rel in files:
        path = base / rel
        header, hbytes = read_header(path)
        try:
            end = max((int(m["data_offsets"][1]) for k, m in header.items() if k != "__metadata__"), default=0)
        except (KeyError, TypeError, ValueError, IndexError):
            raise InputFileError(path, "corrupt safetensors header (a tensor entry has no valid data_offsets)") from None
        size = path.stat().st_size
        if hbytes + end > size:
            raise InputFileError(path, f"truncated safetensors file (its header describes {hbytes + end:,} bytes, "
                                       f"the file has {size:,}); copy or download it again")


def check_hub_model(model_id: str) -> None:
    """For a hub id: fetch (or find cached) its config.json and refuse another architecture before any weight."""
    from ..errors import UserError
    from ..modelio import require_supported_model

    try:
        from huggingface_hub import hf_hub_download

        cfg = hf_hub_download(str(model_id), "config.json")
    except Exception as e:  # offline, unknown repo, no access: one line, not a traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{model_id}: cannot read config.json from the Hugging Face hub ({msg})") from None
    from pathlib import Path

    from ..errors import InputFileError

    try:
        require_supported_model(Path(cfg).parent)
    except InputFileError as e:  # named after the hub id, not the cache folder
        raise UserError(f"{model_id}: {e.problem}") from None


def check_model(model_dir) -> None:
    """What decode checks about the model before decoding: a local directory (config, architecture,
    weight files complete) or a hub id (architecture, from its config.json)."""
    from ..modelio import check_model_dir, is_local

    if is_local(model_dir):
        check_model_dir(model_dir)
        check_weight_files(model_dir)
    else:
        check_hub_model(model_dir)


def target_joiner(lang: str) -> str:
    """How the pieces of one split segment join into its line: no space in Chinese, one space otherwise."""
    return "" if lang.endswith("-zh") else " "


def output_lock_path(out, rank: int = 0) -> "Path":
    """The lock file of a decode output (one per process of a data-parallel run)."""
    from pathlib import Path

    out = Path(out)
    return out.with_name(f".{out.name}.lock" if rank == 0 else f".{out.name}.rank{rank}.lock")


class output_lock:
    """An exclusive ``fcntl.flock`` on ``.<out>.lock`` beside the output for the whole decode: a second decode of
    the same output (e.g. two ``--resume`` at once, which would interleave their appends to one log) is refused in
    one line. The lock dies with its process (no stale lock after a kill); the file is removed on release."""

    def __init__(self, out, rank: int = 0):
        self.out = out
        self.path = output_lock_path(out, rank)
        self.fd = None

    def __enter__(self):
        import fcntl
        import os

        from ..errors import InputFileError

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                return self  # the folder cannot be written: the decode reports that itself
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip()
                os.close(fd)
                raise InputFileError(self.out, f"another iwslt-mc decode{f' (pid {holder})' if holder else ''} is "
                                               f"writing it now (lock {self.path.name}): wait for it to finish, or "
                                               "choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its last holder removed just after we opened it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        import os

        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        return False


def decode_to_file(model_dir, audio, out, **kw) -> DecodeSummary:
    """:func:`_decode_to_file` holding :class:`output_lock` on ``out`` (one decode per output at a time)."""
    import os

    lock = output_lock(out, int(os.environ.get("RANK", "0") or 0))
    try:
        return _decode_to_file(model_dir, audio, out, _lock=lock, **kw)
    finally:
        lock.__exit__(None, None, None)


def _decode_to_file(model_dir, audio, out, *, lang: str, mode: str = "fast", batch_size: int = 8,
                   max_length: int = 1024, max_new_tokens: int | None = None, prompt: str | None = None,
                   dtype: str | None = None, device: str | None = None, skip_bad: bool = False,
                   resume: bool = False, overwrite: bool = False, progress: bool = False,
                   model=None, processor=None, cache: dict | None = None,
                   checked: bool = False, _lock: output_lock | None = None) -> DecodeSummary:
    """Decode every segment of ``audio`` (an :class:`iwslt_mc.decoding.inputs.AudioInput`) into ``out``.

    ``out`` gets one line per segment in input order, written atomically at the end; ``<out>.jsonl``
    gets a header and one record per segment as it finishes (flushed), so ``resume=True`` continues
    an interrupted run (refusing a log made with another model, audio, language or setting). Under
    ``accelerate launch`` each process decodes a share into ``<out>.rankN.jsonl`` and process 0 merges.
    Segments that cannot be read are an error before decoding starts, or with ``skip_bad`` empty lines
    (listed in the summary). A segment longer than the encoder's 30 s window is cut at pauses
    (:func:`iwslt_mc.decoding.inputs.split_long`); its pieces are decoded and joined into its one line, its log
    record lists them (``pieces``) and the summary names every such segment (``split_segments``).

    An existing ``out`` without a log is refused unless ``overwrite``. ``cache``: a dict that keeps the
    loaded model and processor for the next call (several test sets, one load). ``checked``: the model
    was already checked (:func:`check_model`).
    """
    from pathlib import Path

    out = Path(out)
    _check_request(model_dir, audio, out, lang=lang, mode=mode, batch_size=batch_size, max_length=max_length,
                   max_new_tokens=max_new_tokens, skip_bad=skip_bad, check=model is None and not checked)
    header = _header(model_dir, audio, lang=lang, mode=mode, prompt=prompt, max_length=max_length,
                     max_new_tokens=max_new_tokens, dtype=dtype)
    dist = _Dist(device)
    log = log_path(out)
    done = _read_earlier_logs(model_dir, out, log, header, dist, resume=resume, overwrite=overwrite, lock=_lock)

    run = _Run(audio, out, log if dist.world == 1 else rank_log_path(out, dist.rank), dist)
    run.todo(done)
    t_start = time.perf_counter()
    run.decode(model_dir, header, model=model, processor=processor, cache=cache, dtype=dtype, lang=lang,
               mode=mode, batch_size=batch_size, max_length=max_length, max_new_tokens=max_new_tokens,
               prompt=prompt, skip_bad=skip_bad, progress=progress)
    wall = time.perf_counter() - t_start

    dist.barrier()
    summary = _finish(run, header, done, log, mode=mode, wall=wall)
    dist.barrier()
    return summary


def _check_request(model_dir, audio, out, *, lang: str, mode: str, batch_size: int, max_length: int,
                   max_new_tokens: int | None, skip_bad: bool, check: bool) -> None:
    """The settings, the output path, the model (``check``) and the segments, before any work."""
    from ..errors import InputFileError, UserError
    from .inputs import check_segments

    check_lang(lang)
    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
    if batch_size < 1 or max_length < 1 or (max_new_tokens is not None and max_new_tokens < 1):
        raise UserError("--batch-size, --max-length and --max-new-tokens must be positive")
    if out.is_dir():
        raise InputFileError(out, "is a directory; --out names the hypothesis file")
    if check:
        check_model(model_dir)
    bad = [s for s in audio.segments if s.problem] or check_segments(audio)
    if bad and not skip_bad:
        raise UserError(bad_segments_message(bad))


def _header(model_dir, audio, *, lang: str, mode: str, prompt: str | None, max_length: int,
            max_new_tokens: int | None, dtype: str | None) -> dict:
    """The decode log's header: what the hypotheses were made from (compared on ``--resume``)."""
    from pathlib import Path

    from ..floor.modeldir import model_fingerprint
    from ..modelio import is_local

    return {
        "type": "header", "format": LOG_FORMAT,
        "model": str(Path(model_dir).resolve()) if is_local(model_dir) else str(model_dir),
        "model_fingerprint": model_fingerprint(model_dir) if is_local(model_dir) else str(model_dir),
        "audio": audio.spec, "audio_kind": audio.kind, "audio_fingerprint": audio.fingerprint(),
        "segments": len(audio.segments),
        "testset": audio.name, "references": audio.references,
        "lang": lang, "mode": mode, "prompt": prompt, "max_length": max_length, "max_new_tokens": max_new_tokens,
        "dtype": dtype or "auto",
    }


def _read_earlier_logs(model_dir, out, log, header: dict, dist, *, resume: bool, overwrite: bool,
                       lock: output_lock | None) -> dict[int, dict]:
    """Take the output's lock, then the records of earlier logs of this run (``resume``), after refusing
    logs or outputs that would be lost (without ``resume``/``overwrite``) or belong to another run."""
    from ..errors import InputFileError
    from ..floor.modeldir import legacy_model_fingerprint
    from ..modelio import is_local

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputFileError(out.parent, f"cannot create the output folder ({e.strerror or e})") from None
    if lock is not None:
        lock.__enter__()  # before any log is read: a second decode of this output stops here
    logs = _logs(out, log)
    if logs and not (resume or overwrite):
        raise InputFileError(logs[0], "a decode log already exists: pass --resume to continue it "
                                      "or --overwrite to start again")
    if out.exists() and not logs and not overwrite:
        raise InputFileError(out, f"already exists and has no decode log ({log.name}): pass --overwrite to replace it")
    dist.barrier()
    if overwrite and not resume and dist.rank == 0:
        for p in logs:
            p.unlink()
    dist.barrier()
    done: dict[int, dict] = {}
    for p in _logs(out, log):
        old, recs = read_log(p)
        if old is None:
            if recs:
                raise InputFileError(p, "decode log without a header line: cannot tell what it belongs to")
            continue
        diff = [k for k in RESUME_KEYS if old.get(k) != header.get(k)]
        if diff == ["model_fingerprint"] and is_local(model_dir) \
                and old.get("model_fingerprint") == legacy_model_fingerprint(model_dir):
            diff = []  # written by an older iwslt-mc (partial fingerprint) for this model: resume it
        if diff:
            what = ", ".join(f"{k} {old.get(k)!r} vs now {header.get(k)!r}" for k in diff)
            raise InputFileError(p, f"belongs to another decode run ({what}); use another --out or --overwrite")
        done.update(recs)
    dist.barrier()  # every process has read the logs before anyone appends to them
    return done


def _logs(out, log) -> list:
    """The decode logs of ``out`` that exist: its own, then those of data-parallel processes."""
    return [p for p in [log] + sorted(out.parent.glob(out.name + ".rank*.jsonl")) if p.exists()]


class _Run:
    """One process's share of a decode: its segments, its log and the records it wrote."""

    def __init__(self, audio, out, my_log, dist):
        self.audio, self.segs, self.out, self.my_log, self.dist = audio, audio.segments, out, my_log, dist
        self.records_now: list[dict] = []
        self.mine: list[int] = []
        self.bad_idx: set[int] = set()
        self.done: dict[int, dict] = {}
        self.max_seconds = 30.0  # set from the model's family once it is loaded

    def todo(self, done: dict[int, dict]) -> None:
        self.done = done
        self.bad_idx = {i for i, s in enumerate(self.segs) if s.problem}
        todo = [i for i in range(len(self.segs)) if i not in done and i not in self.bad_idx]
        self.mine = todo[self.dist.rank::self.dist.world]

    def write(self, fh, rec: dict) -> None:
        import json

        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        self.records_now.append(rec)

    def decode(self, model_dir, header: dict, *, model, processor, cache, dtype, lang: str, mode: str,
               skip_bad: bool, progress: bool, **kw) -> None:
        """Append this process's records to its log: the bad segments (process 0), then every segment decoded."""
        if self.my_log.exists():
            _drop_torn_tail(self.my_log)
        fresh = not self.my_log.exists() or self.my_log.stat().st_size == 0
        with self.my_log.open("a", encoding="utf-8") as fh:
            if fresh:
                self.write(fh, header)
                self.records_now.clear()
            if self.dist.rank == 0:
                for i in sorted(self.bad_idx - set(self.done)):
                    self.write(fh, dict(type="segment", index=i, **self.segs[i].record(), text="", n_tokens=0,
                                        seconds=0.0, error=self.segs[i].problem))
            if self.mine:
                model, processor = _load(model_dir, model, processor, cache, dtype, self.dist.device)
                from ..families import family_of_config

                self.max_seconds = family_of_config(model.config).max_segment_seconds(model.config)
                units = _Units(self.segs, self.mine, self.max_seconds, skip_bad)
                self._translate(fh, model, processor, units, lang=lang, mode=mode, progress=progress, **kw)

    def _translate(self, fh, model, processor, units: "_Units", *, lang: str, mode: str, progress: bool,
                   **kw) -> None:
        """Decode the units and write one record per segment once all its pieces are back."""
        joiner = target_joiner(lang)
        pending: dict[int, dict[int, Hyp]] = {}
        name = self.audio.name
        what = f"decoding {name} ({mode})" if name else f"decoding ({mode})"
        bar = DecodeProgress(len(self.mine), sum(units.lengths), description=what) if progress and self.dist.main \
            else None
        try:
            for j, hyp in core.iter_translate(model, processor, units.waves, lang, mode=mode, lengths=units.lengths,
                                              **kw):
                i, k = units.units[j]
                got = pending.setdefault(i, {})
                got[k] = hyp
                if len(got) < len(units.spans.get(i, [None])):
                    continue  # more pieces of this segment to come
                del pending[i]
                parts = [got[k] for k in sorted(got)]
                text = joiner.join(h.text for h in parts if h.text)
                rec = dict(type="segment", index=i, **self.segs[i].record(), text=text,
                           n_tokens=sum(h.n_tokens for h in parts), seconds=round(sum(h.seconds for h in parts), 4))
                if i in units.spans:
                    rec["pieces"] = [dict(start=a, duration=d, text=h.text, n_tokens=h.n_tokens)
                                     for (a, d), h in zip(units.spans[i], parts)]
                if i in units.runtime_bad:
                    rec.update(text="", n_tokens=0, error=units.runtime_bad[i])
                self.write(fh, rec)
                if bar:
                    bar.advance(1, rec["n_tokens"])
        finally:
            if bar:
                bar.close()


def _load(model_dir, model, processor, cache: dict | None, dtype: str | None, device: str):
    """The model and processor: given, kept in ``cache`` by an earlier call, or loaded (and kept)."""
    if model is None and cache:
        model, processor = cache["model"], cache["processor"]
    if model is None:
        from ..modelio import load_model, load_processor, runtime_dtype

        model = load_model(model_dir, dtype=dtype or runtime_dtype(model_dir, device), device=device)
        processor = load_processor(model_dir)
        if cache is not None:
            cache.update(model=model, processor=processor)
    return model, processor


class _Units:
    """Decoding units: a segment, or the pieces of a segment longer than the model family's longest audio
    piece (Qwen2-Audio: the encoder's 30 s window; Family.max_segment_seconds). Audio loads when decoded;
    with ``skip_bad`` a segment that cannot be read is decoded as silence and blanked (``runtime_bad``)."""

    def __init__(self, segs, mine: list[int], max_seconds: float, skip_bad: bool):
        from ..errors import InputFileError
        from .inputs import split_long

        self.skip_bad = skip_bad
        self.runtime_bad: dict[int, str] = {}
        self.units: list[tuple[int, int]] = []  # (segment index, piece number)
        self.waves, self.lengths = [], []
        self.spans: dict[int, list[tuple[float, float]]] = {}
        for i in mine:
            s = segs[i]
            cut = None
            if (s.duration or 0.0) > max_seconds:
                try:
                    cut = split_long(s, max_seconds)
                except InputFileError as e:
                    if not skip_bad:
                        raise
                    self.runtime_bad[i] = str(e)
            if cut:
                self.spans[i] = cut
                for k, (a, d) in enumerate(cut):
                    self.units.append((i, k))
                    self.waves.append(self._guarded(i, s.piece(a, d)))
                    self.lengths.append(d)
            else:
                self.units.append((i, 0))
                self.waves.append(self._guarded(i, s.waveform))
                self.lengths.append(min(s.duration or max_seconds, max_seconds))

    def _guarded(self, i: int, load):
        from ..errors import InputFileError

        def run():
            import numpy as np

            try:
                return load()
            except InputFileError as e:
                if not self.skip_bad:
                    raise
                self.runtime_bad[i] = str(e)
                return np.zeros(SAMPLE_RATE // 10, dtype=np.float32)  # decoded, then blanked

        return run


def _finish(run: _Run, header: dict, done: dict[int, dict], log, *, mode: str, wall: float) -> DecodeSummary:
    """Process 0: merge every log into the final log and write the hypothesis file (atomically); the summary."""
    import json

    from ..errors import UserError
    from ..fsutil import atomic_write_text

    out, segs, dist, audio = run.out, run.segs, run.dist, run.audio
    n = len(segs)
    if dist.rank != 0:
        recs = run.records_now
        return DecodeSummary(out=str(out), log=str(run.my_log), segments=len(run.mine),
                             decoded=sum(1 for r in recs if "error" not in r), resumed=0,
                             bad=[], audio_seconds=0.0, decode_seconds=sum(r["seconds"] for r in recs),
                             wall_seconds=wall, tokens=sum(r["n_tokens"] for r in recs), mode=mode,
                             device=dist.device, world_size=dist.world, name=audio.name)
    all_recs = dict(done)
    for p in [log] + sorted(out.parent.glob(out.name + ".rank*.jsonl")):
        if p.exists():
            all_recs.update(read_log(p)[1])
    missing = [i for i in range(n) if i not in all_recs]
    if missing:
        raise UserError(f"{log}: {len(missing)} of {n} segments were not decoded (first: {segs[missing[0]].id}); "
                        "rerun with --resume")
    ordered = [all_recs[i] for i in range(n)]
    split = [r for r in ordered if r.get("pieces")]
    summary = DecodeSummary(out=str(out), log=str(log), segments=n,
                            decoded=sum(1 for i in range(n) if i not in done and not all_recs[i].get("error")),
                            resumed=len(done), bad=[r["error"] for r in ordered if r.get("error")],
                            audio_seconds=sum(r.get("duration") or 0.0 for r in ordered if not r.get("error")),
                            decode_seconds=sum(r["seconds"] for r in ordered), wall_seconds=wall,
                            tokens=sum(r["n_tokens"] for r in ordered), mode=mode, device=dist.device,
                            world_size=dist.world, name=audio.name, split_segments=[r["id"] for r in split],
                            pieces=sum(len(r["pieces"]) for r in split), max_segment_seconds=run.max_seconds)
    tail = {"type": "summary", **summary.to_json()}
    atomic_write_text(log, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [header] + ordered + [tail]))
    for p in out.parent.glob(out.name + ".rank*.jsonl"):
        p.unlink()
    atomic_write_text(out, "".join(one_line(r["text"]) + "\n" for r in ordered))
    return summary
