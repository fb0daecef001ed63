"""The ``--audio SPEC`` of ``iwslt-mc decode``: which segments to translate, found from one argument.

A SPEC is recognised by itself as one of:

- a **dataset** (ACL 60/60 style): a ``save_to_disk`` directory, a parquet file or directory, a
  ``.tsv``/``.csv``/``.jsonl`` data list, a hub id, with ``?split=...`` options; read with
  :func:`iwslt_mc.training.data.load_examples`; one segment per example;
- an **IWSLT test-set folder** (the organizers' layout): WAVs, a ``FILE_ORDER`` file naming one WAV per
  line, at most one segmentation YAML covering any number of the WAVs, optional references
  (``*.en``, ``*.de``, ``*.zh``). Segments come in the organizers' order: WAVs by their position in
  ``FILE_ORDER``, then segments by their position in the YAML; without a YAML every WAV is one segment,
  in ``FILE_ORDER`` order. The test set is named after the folder. A YAML given by path with a
  ``FILE_ORDER`` beside it is read the same way;
- a **segmentation YAML** (IWSLT test set): ``- {offset: O, duration: D, wav: talk.wav, ...}`` per
  segment, WAV paths relative to the YAML (or in ``wav/`` beside it or beside its folder, as in
  MuST-C); a directory holding exactly one such YAML also works;
- a **text list** of audio paths (one per line, relative to the list; ``#`` starts a comment);
- a **single audio file**.

Files of the list and the single file become one segment when at most 30 s long, and are cut at
pauses by :mod:`iwslt_mc.decoding.segmenter` into several segments (lines) when longer. A segment of a YAML, a
test set or a dataset is one line whatever its length: :func:`split_long` cuts one longer than the
audio encoder's 30 s window at pauses into pieces that the decoder translates and joins. Any sample rate or channel count is read as 16 kHz
mono. :func:`check_segments` reads every header (and YAML offsets against WAV durations) before any
decoding, and names the file and segment of each problem.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import InputFileError, UserError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")
DATASET_SUFFIXES = (".parquet", ".tsv", ".csv", ".jsonl", ".json")
YAML_SUFFIXES = (".yaml", ".yml")
MAX_SECONDS = 30.0
FILE_ORDER = "FILE_ORDER"
REFERENCE_SUFFIXES = (".en", ".de", ".zh", ".ar")
# Slack for a YAML segment's end against its WAV (offsets are written rounded to 10 ms).
END_TOLERANCE = 0.01


@dataclass
class Segment:
    """One unit of decoding (one output line): ``id``, where it comes from (``source``: file, and
    ``offset``/``duration`` in seconds of it when a slice), and a lazy 16 kHz mono waveform."""

    id: str
    source: str
    offset: float | None = None
    duration: float | None = None
    where: str = ""  # how to name it in messages, e.g. "talk.yaml: segment 3"
    load: Callable[[], object] | None = field(default=None, repr=False)
    problem: str | None = None  # set by check_segments when the segment cannot be decoded
    example: object | None = field(default=None, repr=False)  # the dataset Example, for dataset inputs

    def waveform(self):
        """16 kHz mono float32 (decoded now), the whole segment (not cut to 30 s)."""
        return self.load()

    def piece(self, start: float, duration: float) -> Callable[[], object]:
        """A loader for ``duration`` seconds of this segment from ``start`` (seconds into the segment)."""
        a, b = int(round(start * 16000)), int(round((start + duration) * 16000))
        return lambda: self.waveform()[a:b]

    def record(self) -> dict:
        return {"id": self.id, "source": self.source, "offset": self.offset, "duration": self.duration}


@dataclass
class AudioInput:
    """What a SPEC resolved to: its ``kind`` and the segments in output order."""

    spec: str
    kind: str  # testset | dataset | yaml | list | audio
    segments: list[Segment]
    notes: list[str] = field(default_factory=list)
    name: str = ""  # the test set's name (its folder's name; else the file's stem)
    references: dict[str, str] = field(default_factory=dict)  # language code -> reference file of a test set

    def fingerprint(self) -> str:
        """Identity of the segment list (ids, sources, slices), to tell whether a log belongs to it."""
        h = hashlib.sha256()
        for s in self.segments:
            h.update(json.dumps([s.id, Path(s.source).name if s.source else "", s.offset, s.duration]).encode())
        return h.hexdigest()[:16]

    @property
    def seconds(self) -> float:
        return sum(s.duration or 0.0 for s in self.segments)


def _split_query(spec: str) -> tuple[str, str]:
    path, _, query = spec.partition("?")
    return path, query


def detect_kind(spec: str) -> str:
    """``testset``, ``dataset``, ``yaml``, ``list`` or ``audio`` for a SPEC (UserError when it is none of them)."""
    from ..modelio import is_local

    raw, query = _split_query(str(spec))
    p = Path(raw)
    if p.is_dir() and (p / FILE_ORDER).is_file():
        return "testset"
    if p.is_file() and p.suffix.lower() in YAML_SUFFIXES and (p.parent / FILE_ORDER).is_file():
        return "testset"
    if p.is_dir():
        if (p / "dataset_dict.json").exists() or (p / "state.json").exists() or any(p.rglob("*.parquet")):
            return "dataset"
        if len(_yamls_in(p)) == 1:
            return "yaml"
        raise InputFileError(p, "not an audio input: expected a test-set folder (WAVs and FILE_ORDER), a dataset "
                                "(save_to_disk or parquet files) or a directory with exactly one segmentation YAML")
    if p.is_file():
        suffix = p.suffix.lower()
        if query or suffix in DATASET_SUFFIXES:
            return "dataset"
        if suffix in YAML_SUFFIXES:
            return "yaml"
        if suffix in AUDIO_SUFFIXES or _is_audio(p):
            return "audio"
        return "list"
    if not is_local(raw):
        return "dataset"  # a hub id
    raise InputFileError(p, "audio input not found")


def _yamls_in(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.suffix.lower() in YAML_SUFFIXES and f.is_file())


def _is_audio(p: Path) -> bool:
    import soundfile as sf

    try:
        sf.info(str(p))
        return True
    except Exception:
        return False


def resolve_audio(spec: str, *, segment_long: bool = True, max_seconds: float = MAX_SECONDS) -> AudioInput:
    """Turn a SPEC into segments (see the module docstring). Raises a one-line error for an unusable SPEC
    (missing file, malformed YAML or list); per-segment audio problems are left to :func:`check_segments`."""
    kind = detect_kind(spec)
    raw, _ = _split_query(str(spec))
    if kind == "testset":
        return _testset(Path(raw), str(spec))
    if kind == "dataset":
        segs = _dataset_segments(spec)
        notes = []
    elif kind == "yaml":
        p = Path(raw)
        segs = _yaml_segments(p if p.is_file() else _yamls_in(p)[0])
        notes = []
    elif kind == "list":
        segs, notes = _list_segments(Path(raw), segment_long=segment_long, max_seconds=max_seconds)
    else:
        segs, notes = _file_segments(Path(raw), str(raw), segment_long=segment_long, max_seconds=max_seconds)
    if not segs:
        raise UserError(f"{spec}: no segments to decode")
    return AudioInput(str(spec), kind, segs, notes, name=default_name(spec))


def default_name(spec: str) -> str:
    """What an input is called when it names an output: a folder's name, a file's stem, a hub id's last part."""
    raw, _ = _split_query(str(spec))
    p = Path(raw.rstrip("/"))
    if p.is_dir() or not p.suffix:
        return p.name
    return p.stem


# ---------------------------------------------------------------- datasets

def _dataset_segments(spec: str) -> list[Segment]:
    from ..training.data import decode_audio, load_examples

    return [Segment(id=str(ex.id), source=ex.source, where=ex.source, example=ex,
                    load=(lambda ex=ex: decode_audio(ex)))
            for ex in load_examples(spec)]


# ---------------------------------------------------------------- segmentation YAML

def _yaml_segments(path: Path) -> list[Segment]:
    out, per_wav = [], {}
    for k, (name, offset, duration) in enumerate(_yaml_entries(path), start=1):
        wav = _wav_path(path, name)
        n = per_wav[name] = per_wav.get(name, 0) + 1
        out.append(_slice_segment(f"{name}#{n}", wav, offset, duration, f"{path}: segment {k}"))
    return out


def _slice_segment(sid: str, wav: Path, offset: float, duration: float, where: str) -> Segment:
    return Segment(id=sid, source=str(wav), offset=offset, duration=duration, where=where,
                   load=(lambda w=wav, o=offset, d=duration, where=where: _load_slice(w, o, d, where)))


def _yaml_entries(path: Path) -> list[tuple[str, float, float]]:
    """``(wav, offset, duration)`` per segment of a segmentation YAML, in its order (one-line errors)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputFileError(path, "not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise InputFileError(path, f"{at}not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(doc, list):
        raise InputFileError(path, "a segmentation YAML is a list of {offset, duration, wav} entries")
    out = []
    for k, entry in enumerate(doc, start=1):
        if not isinstance(entry, dict):
            raise InputFileError(path, f"segment {k}: expected a mapping with offset, duration, wav")
        missing = [f for f in ("offset", "duration", "wav") if f not in entry]
        if missing:
            raise InputFileError(path, f"segment {k}: missing {', '.join(missing)}")
        try:
            offset, duration = float(entry["offset"]), float(entry["duration"])
        except (TypeError, ValueError):
            raise InputFileError(path, f"segment {k}: offset and duration must be numbers") from None
        if offset < 0 or duration <= 0:
            raise InputFileError(path, f"segment {k}: offset must be >= 0 and duration > 0 (got {offset}, {duration})")
        out.append((str(entry["wav"]), offset, duration))
    return out


def _wav_path(yaml_path: Path, name: str) -> Path:
    """A YAML's WAV: next to the YAML, else in ``wav/`` beside it or beside its folder (the MuST-C
    layout ``txt/x.yaml`` + ``wav/*.wav``). A missing file resolves next to the YAML, for the message."""
    p = Path(name)
    if p.is_absolute():
        return p
    base = yaml_path.parent
    for cand in (base / p, base / "wav" / p, base.parent / "wav" / p, base / "wavs" / p, base.parent / "wavs" / p):
        if cand.exists():
            return cand.resolve()
    return (base / p).resolve()


def _load_slice(wav: Path, offset: float, duration: float, where: str):
    from .audio import load_audio

    try:
        return load_audio(wav, start=offset, duration=duration)
    except InputFileError as e:
        raise InputFileError(where, f"{wav.name}: {e.problem}") from None


# ---------------------------------------------------------------- IWSLT test-set folders

def _testset(path: Path, spec: str) -> AudioInput:
    """A test-set folder (or its YAML, given by path): segments in the organizers' order (module docstring)."""
    folder = path if path.is_dir() else path.parent
    order_file = folder / FILE_ORDER
    order = _read_file_order(order_file)
    wavs = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.suffix.lower() == ".wav" and p.is_file()}
    by_name: dict[str, list[str]] = {}
    for rel in wavs:
        by_name.setdefault(Path(rel).name, []).append(rel)

    def find(entry: str) -> str | None:
        if entry in wavs:
            return entry
        hits = by_name.get(Path(entry).name, [])
        return hits[0] if len(hits) == 1 else None

    listed: list[str] = []  # FILE_ORDER as relative paths of existing WAVs
    for n, entry in enumerate(order, start=1):
        rel = find(entry)
        if rel is None:
            several = by_name.get(Path(entry).name, [])
            if len(several) > 1:
                raise InputFileError(order_file, f"line {n}: {entry} matches {len(several)} WAVs "
                                                 f"({', '.join(several[:3])}): write its path inside {folder}")
            raise InputFileError(order_file, f"line {n}: {entry}: no such WAV in {folder}")
        if rel in listed:
            raise InputFileError(order_file, f"line {n}: {entry} is listed twice")
        listed.append(rel)

    if path.is_file():
        yamls = [path]
    else:
        yamls = sorted(p for p in folder.rglob("*") if p.suffix.lower() in YAML_SUFFIXES and p.is_file())
    if len(yamls) > 1:
        names = ", ".join(p.relative_to(folder).as_posix() for p in yamls)
        raise InputFileError(folder, f"{len(yamls)} segmentation YAMLs ({names}): a test set has one; "
                                     "pass the one to use as --audio FOLDER/NAME.yaml")
    notes: list[str] = []
    rank = {rel: k for k, rel in enumerate(listed)}
    segs: list[Segment] = []
    if yamls:
        yaml_path = yamls[0]
        keyed = []
        per_wav: dict[str, int] = {}
        for k, (name, offset, duration) in enumerate(_yaml_entries(yaml_path), start=1):
            rel = find(name)
            if rel is None or rel not in rank:
                raise InputFileError(yaml_path, f"segment {k}: {name} is not listed in {order_file}")
            n = per_wav[rel] = per_wav.get(rel, 0) + 1
            keyed.append((rank[rel], k, _slice_segment(f"{name}#{n}", wavs[rel], offset, duration,
                                                       f"{yaml_path}: segment {k}")))
        segs = [seg for _, _, seg in sorted(keyed, key=lambda t: t[:2])]
        unused = [rel for rel in listed if rel not in per_wav]
        if unused:
            notes.append(f"{folder.name}: {len(unused)} WAV(s) in FILE_ORDER have no segment in "
                         f"{yaml_path.name} and give no line: {', '.join(unused[:5])}")
    else:
        extra = [rel for rel in wavs if rel not in rank]
        if extra:  # as the organizers' script: after the listed ones
            notes.append(f"{folder.name}: {len(extra)} WAV(s) not in FILE_ORDER are decoded after the listed ones, "
                         f"in name order: {', '.join(extra[:5])}")
        for rel in listed + extra:
            segs.append(Segment(id=rel, source=str(wavs[rel]), where=str(wavs[rel]),
                                load=(lambda a=wavs[rel]: _load_whole(a, str(a)))))
    if not segs:
        raise UserError(f"{spec}: no segments to decode")
    refs = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in REFERENCE_SUFFIXES:
            refs.setdefault(f.suffix[1:], str(f))
    for code, ref in refs.items():
        try:
            count = len(Path(ref).read_bytes().decode("utf-8").splitlines())
        except (OSError, UnicodeDecodeError):
            notes.append(f"{ref}: reference is not readable UTF-8 text")
            continue
        if count != len(segs):
            notes.append(f"{ref}: {count} reference lines for {len(segs)} segments")
    return AudioInput(spec, "testset", segs, notes, name=folder.name, references=refs)


def _read_file_order(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(path, "not UTF-8 text") from None
    except OSError as e:
        raise InputFileError(path, f"cannot read ({e.strerror or e})") from None
    order = [line.strip() for line in text.splitlines() if line.strip()]
    if not order:
        raise InputFileError(path, "empty: it names the test set's WAVs, one per line")
    return order


# ---------------------------------------------------------------- lists and single files

def _list_segments(path: Path, *, segment_long: bool, max_seconds: float) -> tuple[list[Segment], list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputFileError(path, "neither audio nor a UTF-8 list of audio paths") from None
    out, notes = [], []
    for n, line in enumerate(lines, start=1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        audio = Path(item) if Path(item).is_absolute() else path.parent / item
        segs, more = _file_segments(audio, item, segment_long=segment_long, max_seconds=max_seconds,
                                    where=f"{path}: line {n}")
        out.extend(segs)
        notes.extend(more)
    return out, notes


def _file_segments(audio: Path, name: str, *, segment_long: bool, max_seconds: float,
                   where: str | None = None) -> tuple[list[Segment], list[str]]:
    """One segment for a short file (or one that cannot be read: check_segments reports it), else pieces at pauses."""
    import soundfile as sf

    from .audio import load_audio

    where = where or str(audio)
    whole = Segment(id=name, source=str(audio), where=where,
                    load=(lambda a=audio, w=where: _load_whole(a, w)))
    try:
        info = sf.info(str(audio))
    except Exception:
        return [whole], []
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    whole.duration = seconds
    if seconds <= max_seconds or not segment_long or info.frames == 0:
        return [whole], []
    from .segmenter import segment_audio

    try:
        wave = load_audio(audio)
    except InputFileError:
        return [whole], []
    spans = segment_audio(wave, max_seconds=max_seconds)
    segs = [Segment(id=f"{name}#{k}", source=str(audio), offset=sp.start, duration=round(sp.duration, 6),
                    where=f"{where} segment {k} ({sp.start:.2f}s+{sp.duration:.2f}s)",
                    load=(lambda a=audio, o=sp.start, d=sp.duration, w=where: _load_slice(a, o, d, w)))
            for k, sp in enumerate(spans, start=1)]
    note = f"{name}: {seconds:.1f} s of audio cut at pauses into {len(segs)} segments of at most {max_seconds:g} s"
    return segs, [note]


def _load_whole(audio: Path, where: str):
    from .audio import load_audio

    try:
        return load_audio(audio)
    except InputFileError as e:
        if where == str(audio):
            raise
        raise InputFileError(where, f"{audio}: {e.problem}") from None


# ---------------------------------------------------------------- segments longer than the encoder's window

def split_long(seg: Segment, max_seconds: float = MAX_SECONDS) -> list[tuple[float, float]] | None:
    """Pieces ``(start, duration)`` in seconds into ``seg``, cut at pauses by :func:`iwslt_mc.decoding.segmenter.segment_audio`,
    when the segment is longer than ``max_seconds`` (the audio encoder hears 30 s and drops the rest);
    None when it fits. Loads the segment's audio (InputFileError when it cannot be read)."""
    from .segmenter import segment_audio

    wave = seg.waveform()
    if len(wave) <= int(max_seconds * 16000):
        return None
    return [(sp.start, round(sp.duration, 6)) for sp in segment_audio(wave, max_seconds=max_seconds)]


# ---------------------------------------------------------------- checks

def check_segments(inp: AudioInput) -> list[Segment]:
    """Read every segment's header (never the samples, except in-memory dataset audio) and set
    ``Segment.problem`` where decoding would fail: a missing, unreadable or empty file, or a slice past
    the end of its audio. Fills ``duration`` where it was unknown. Returns the bad segments."""
    import soundfile as sf

    infos: dict[str, object] = {}
    bad = []
    for s in inp.segments:
        ex = s.example
        try:
            if ex is not None:
                s.duration = _example_seconds(ex, sf)
                continue
            if s.source not in infos:
                infos[s.source] = _info(Path(s.source), sf)
            info = infos[s.source]
            if isinstance(info, str):
                raise InputFileError(s.where, info if s.where == s.source else f"{Path(s.source).name}: {info}")
            total = info.frames / info.samplerate
            if s.offset is None:
                s.duration = total
            elif s.offset + s.duration > total + END_TOLERANCE:
                raise InputFileError(s.where, f"{Path(s.source).name} {s.offset:.2f}s+{s.duration:.2f}s ends at "
                                              f"{s.offset + s.duration:.2f}s, past the end of the audio ({total:.2f}s)")
        except InputFileError as e:
            s.problem = str(e)
            bad.append(s)
    return bad


def _info(path: Path, sf):
    """soundfile's info, or a problem string."""
    if not path.exists():
        return "audio file not found"
    if path.is_dir():
        return "is a directory, not an audio file"
    try:
        info = sf.info(str(path))
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if path.stat().st_size == 0:
            return "audio file is empty (0 bytes)"
        return f"cannot decode audio ({msg})"
    if info.frames <= 0:
        return "audio is empty (0 samples)"
    from .audio import truncation

    return truncation(info) or info


def _example_seconds(ex, sf) -> float:
    import numpy as np

    src = ex.audio() if callable(ex.audio) else ex.audio
    if isinstance(src, np.ndarray):
        return src.shape[0] / 16000
    if isinstance(src, (bytes, bytearray)):
        try:
            info = sf.info(io.BytesIO(src))
        except Exception as e:
            raise InputFileError(ex.source, f"cannot decode audio ({str(e).strip() or type(e).__name__})") from None
        if info.frames <= 0:
            raise InputFileError(ex.source, "audio is empty (0 samples)")
        return info.frames / info.samplerate
    info = _info(Path(src), sf)
    if isinstance(info, str):
        raise InputFileError(ex.source, f"audio {src}: {info}")
    return info.frames / info.samplerate
