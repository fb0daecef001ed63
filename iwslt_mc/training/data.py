"""Speech translation data for training and evaluation: readers, the published split, mixing, checks.

A *data spec* names one source, optionally with options after ``?`` (URL query style)::

    kit/data                                   # save_to_disk dir, parquet dir, or the kit's data dir
    ymoslem/acl-6060                           # a hub id (online, or cached with HF_HUB_OFFLINE=1); alias acl6060
    acl/dev.parquet                            # one parquet file
    lists/talks.tsv                            # a local list: audio path + text_en/text_de/text_zh
    cv/covost_v2.en_de.train.tsv?clips=cv/clips&size=100000   # CoVoST 2 (tsv + clips dir), sampled
    run1/distill_data?repeat=10                # oversample a source 10 times

Options: ``split`` (overrides the ``split`` argument for this source), ``size`` (random sample of
this many examples, by ``seed``), ``repeat`` (oversampling factor), ``holdout`` (size of the
held-out test split, see below), ``format`` (``hf``, ``parquet``, ``covost2``, ``list``; detected
when left out), ``clips`` (CoVoST 2 clips directory; default ``clips/`` next to the tsv), ``lang``
(CoVoST 2 target language code ``de``/``zh``; default from the file name ``covost_v2.en_de...``).
A spec may also be a dict with the same keys plus ``path``. A list of specs mixes the sources
(each with its own size and repeat), concatenated in order.

Splits. Each source has named splits (a DatasetDict's names; ``{split}.parquet`` or
``{split}-00000-of-00001.parquet`` file names; otherwise ``train``). ``split=None`` takes all of
them in order. A source with neither ``train`` nor ``test`` (ACL 60/60 has ``dev`` and ``eval``)
gets both from :func:`heldout_split`, the published recipe: merge all splits in order, hold out
100 examples with ``seed`` 0 exactly as ``datasets.Dataset.train_test_split(test_size=100,
seed=0)`` does (a quarter of the data when there are fewer than 400 examples).

Audio is kept encoded (bytes or a path) and decoded on demand by ``Example.waveform()`` to 16 kHz
mono float32 with :func:`iwslt_mc.decoding.audio.load_audio`; clips over 30 s are truncated (the Whisper
feature extractor sees 30 s at most), or over the model family's ``max_segment_seconds`` where the caller
passes it (gemma4_unified: 18 s, see :meth:`iwslt_mc.families.Family.max_segment_seconds`). ``datasets`` 5
decodes Audio columns with torchcodec, which does not load here, so the audio column is always read undecoded.

Bad data becomes one ``InputFileError`` naming the file and row: :func:`load_examples` checks
columns, :func:`validate_examples` checks texts and audio of every row before training starts.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import parse_qsl

import numpy as np

from ..errors import InputFileError, UserError

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0
MAX_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)
PUBLISHED_HOLDOUT = 100
TEXT_CODES = ("en", "de", "zh", "ar")
# Split names in the order they are merged when a source has several (dev before eval, as published).
SPLIT_ORDER = ("train", "dev", "validation", "valid", "eval", "test")
SPEC_OPTIONS = ("path", "split", "size", "repeat", "holdout", "format", "clips", "lang")
# Short names for public datasets (used when no local path of that name exists).
ALIASES = {"acl6060": "ymoslem/acl-6060"}


@dataclass
class Example:
    """One utterance: encoded audio (bytes, a path or an array) plus its texts, and where it came from."""

    id: str
    audio: Any  # bytes | str (path) | np.ndarray (16 kHz mono) | callable returning one of these
    text_en: str | None = None
    text_de: str | None = None
    text_zh: str | None = None
    source: str = ""  # "file: row N" for error messages
    texts: dict = field(default_factory=dict)  # other target languages by code ("ar": ...)
    meta: dict = field(default_factory=dict)  # e.g. origin/score of distilled pairs

    def waveform(self, max_seconds: float = MAX_SECONDS) -> np.ndarray:
        """16 kHz mono float32, truncated to ``max_seconds`` (30 s unless the model's family says less)."""
        return decode_audio(self)[:int(max_seconds * SAMPLE_RATE)]

    def text(self, code: str) -> str | None:
        if code in ("en", "de", "zh"):
            return getattr(self, f"text_{code}")
        return self.texts.get(code)


def target_code(lang: str) -> str:
    from ..floor.languages import TARGET_CODE, check_lang

    return TARGET_CODE[check_lang(lang)]


def target_text(example: Example, lang: str) -> str | None:
    """The reference translation of ``example`` for language pair ``lang`` (``en-de`` -> ``text_de``)."""
    return example.text(target_code(lang))


def decode_audio(example: Example) -> np.ndarray:
    """Decode the example's audio to 16 kHz mono float32 (not truncated). Errors name file and row."""
    from ..decoding.audio import load_audio

    src = example.audio() if callable(example.audio) else example.audio
    if isinstance(src, np.ndarray):
        return np.asarray(src, dtype=np.float32)
    try:
        return load_audio(src, name=example.source)
    except InputFileError as e:
        if isinstance(src, (bytes, bytearray)):
            raise
        raise InputFileError(example.source, f"audio {src}: {e.problem}") from None


# ---------------------------------------------------------------- specs

@dataclass
class DataSpec:
    path: str
    split: str | None = None
    size: int | None = None
    repeat: int = 1
    holdout: int | None = None
    format: str | None = None
    clips: str | None = None
    lang: str | None = None

    def describe(self) -> dict:
        """For provenance: the spec without defaults."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, 1) or k == "path"}


def parse_spec(spec) -> DataSpec:
    """A spec string (``path?key=value&...``), dict or DataSpec -> DataSpec (UserError on bad keys)."""
    if isinstance(spec, DataSpec):
        return spec
    if isinstance(spec, os.PathLike):
        spec = str(spec)
    if isinstance(spec, str):
        path, _, query = spec.partition("?")
        raw = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
        if query and not raw:
            raise UserError(f"data spec {spec!r}: cannot read options after '?' (expected key=value&key=value)")
        raw["path"] = path
    elif isinstance(spec, dict):
        raw = dict(spec)
    else:
        raise UserError(f"data spec {spec!r}: expected a path, hub id or mapping")
    unknown = [k for k in raw if k not in SPEC_OPTIONS]
    if unknown:
        raise UserError(f"data spec {spec!r}: unknown option {unknown[0]!r} (known: {', '.join(SPEC_OPTIONS[1:])})")
    if not raw.get("path"):
        raise UserError(f"data spec {spec!r}: no path or hub id")
    path = os.path.expanduser(str(raw["path"]))
    if path in ALIASES and not os.path.exists(path):
        path = ALIASES[path]
    out = DataSpec(path=path)
    for k in ("size", "repeat", "holdout"):
        if raw.get(k) not in (None, ""):
            try:
                v = int(str(raw[k]).replace("_", ""))
            except ValueError:
                raise UserError(f"data spec {spec!r}: {k} must be an integer, not {raw[k]!r}") from None
            if v < 1:
                raise UserError(f"data spec {spec!r}: {k} must be at least 1")
            setattr(out, k, v)
    for k in ("split", "format", "clips", "lang"):
        if raw.get(k) not in (None, ""):
            setattr(out, k, str(raw[k]))
    if out.clips:
        out.clips = os.path.expanduser(out.clips)
    if out.format and out.format not in ("hf", "parquet", "covost2", "list"):
        raise UserError(f"data spec {spec!r}: format must be one of hf, parquet, covost2, list")
    return out


def _as_spec_list(spec) -> list:
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise UserError("no data given (expected at least one data spec)")
        return list(spec)
    return [spec]


# ---------------------------------------------------------------- public API

def load_examples(spec, split: str | None = None, *, limit: int | None = None, seed: int = 0,
                  lang: str | None = None) -> list[Example]:
    """Read a data spec (or a list of specs, mixed) into Examples.

    ``split``: a split name of the source, ``train``/``test`` of the published held-out split, or
    None for everything. ``seed`` drives the held-out split and ``size`` sampling. ``limit`` keeps
    the first N examples. ``lang`` (e.g. ``en-de``) checks that the target text column exists.
    """
    out: list[Example] = []
    for s in _as_spec_list(spec):
        ds = parse_spec(s)
        exs = _load_one(ds, ds.split or split, seed=seed)
        if lang is not None:
            _check_target_column(exs, ds, lang)
        if ds.size is not None and ds.size < len(exs):
            idx = np.random.default_rng(seed).permutation(len(exs))[: ds.size]
            exs = [exs[i] for i in sorted(idx)]
        out.extend(exs * ds.repeat)
    if limit is not None:
        out = out[:limit]
    return out


def heldout_split(examples: Sequence, n: int | None = None, seed: int = 0) -> tuple[list, list]:
    """(train, test): the published split, identical to ``Dataset.train_test_split(test_size=n, seed=seed)``.

    ``n`` defaults to 100, or a quarter of the data when there are fewer than 400 examples.
    """
    total = len(examples)
    if n is None:
        n = default_holdout(total)
    if not 0 < n < total:
        raise UserError(f"cannot hold out {n} of {total} examples")
    perm = np.random.default_rng(seed).permutation(total)
    return [examples[i] for i in perm[n:]], [examples[i] for i in perm[:n]]


def default_holdout(total: int) -> int:
    return PUBLISHED_HOLDOUT if total >= 4 * PUBLISHED_HOLDOUT else max(1, total // 4)


def describe_data(spec, split: str | None = None) -> list[dict]:
    """Dataset descriptions for provenance (what was used, with which split/size/repeat)."""
    out = []
    for s in _as_spec_list(spec):
        d = parse_spec(s).describe()
        if split and "split" not in d:
            d["split"] = split
        out.append(d)
    return out


@dataclass
class DataReport:
    examples: int
    truncated: int  # clips over max_seconds (30 s unless told; truncated when read)
    seconds: float  # total audio duration
    decoded: bool  # whether every clip was fully decoded (otherwise headers were checked)


def validate_examples(examples: Sequence[Example], lang: str | None = None, *, decode: bool | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      max_seconds: float = MAX_SECONDS) -> DataReport:
    """Check every example before training: non-empty English and target text, readable non-empty audio.

    ``decode`` None decodes every clip for small sets (<= 2000) and reads only headers
    (``soundfile.info``) for larger ones. Raises a one-line InputFileError naming file and row.
    """
    if not examples:
        raise UserError("no examples to train on (the data spec selected nothing)")
    code = target_code(lang) if lang else None
    if decode is None:
        decode = len(examples) <= 2000
    seen: set[int] = set()
    truncated, seconds = 0, 0.0
    for i, ex in enumerate(examples):
        for c in ("en",) + ((code,) if code else ()):
            t = ex.text(c)
            if t is None:
                raise InputFileError(ex.source, f"no text_{c} value")
            if not str(t).strip():
                raise InputFileError(ex.source, f"empty text_{c}")
        if id(ex) in seen:  # repeated (oversampled) examples are checked once
            continue
        seen.add(id(ex))
        n = decode_audio(ex).shape[0] if decode else _header_samples(ex)
        seconds += n / SAMPLE_RATE
        truncated += n > int(max_seconds * SAMPLE_RATE)
        if progress:
            progress(i + 1, len(examples))
    return DataReport(len(examples), int(truncated), round(seconds, 3), bool(decode))


def duration(ex: Example) -> float:
    """Seconds of audio, from the file header (no decoding)."""
    return _header_samples(ex) / SAMPLE_RATE


def audio_key(ex: Example) -> str:
    """Identity of the example's audio (sha1 of encoded bytes or samples; the resolved path for files)."""
    import hashlib

    src = ex.audio() if callable(ex.audio) else ex.audio
    if isinstance(src, np.ndarray):
        return "sha1:" + hashlib.sha1(np.ascontiguousarray(src, dtype=np.float32).tobytes()).hexdigest()
    if isinstance(src, (bytes, bytearray)):
        return "sha1:" + hashlib.sha1(src).hexdigest()
    return "path:" + str(Path(src).resolve())


def _header_samples(ex: Example) -> int:
    """Length in 16 kHz samples from the file header only (cheap check for large sets)."""
    import io

    import soundfile as sf

    src = ex.audio() if callable(ex.audio) else ex.audio
    if isinstance(src, np.ndarray):
        return src.shape[0]
    try:
        info = sf.info(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src))
    except Exception as e:
        what = "" if isinstance(src, (bytes, bytearray)) else f"audio {src}: "
        if not isinstance(src, (bytes, bytearray)) and not Path(src).exists():
            raise InputFileError(ex.source, f"{what}audio file not found") from None
        raise InputFileError(ex.source, f"{what}cannot decode audio ({str(e).strip() or type(e).__name__})") from None
    if info.frames <= 0:
        raise InputFileError(ex.source, "audio is empty (0 samples)")
    return int(round(info.frames * SAMPLE_RATE / info.samplerate))


# ---------------------------------------------------------------- sources

def _check_target_column(exs: list[Example], ds: DataSpec, lang: str) -> None:
    code = target_code(lang)
    if exs and all(ex.text(code) is None for ex in exs):
        raise InputFileError(ds.path, f"no text_{code} column: cannot train or score {lang}")


def _load_one(ds: DataSpec, split: str | None, *, seed: int) -> list[Example]:
    splits = _read_source(ds)
    if not splits:
        raise InputFileError(ds.path, "no data found")
    return _select_split(splits, split, ds, seed=seed)


def _select_split(splits: dict[str, list], split: str | None, ds: DataSpec, *, seed: int) -> list:
    if split is None:
        return [ex for name in _ordered(splits) for ex in splits[name]]
    if split in splits:
        return list(splits[split])
    if split in ("train", "test") and "train" not in splits and "test" not in splits:
        present = [s for s in PUBLISHED_MERGE if s in splits]
        if present and len(present) < len(PUBLISHED_MERGE):
            missing = next(s for s in PUBLISHED_MERGE if s not in splits)
            _warn(f"{ds.path}: no {missing!r} split: training and held-out examples come from "
                  f"{' and '.join(repr(s) for s in present)} alone ({len(splits[present[0]])} examples; "
                  f"ACL 60/60's published split merges dev and eval)")
        merged = [ex for name in _ordered(splits) for ex in splits[name]]
        train, test = heldout_split(merged, ds.holdout, seed)
        return train if split == "train" else test
    raise InputFileError(ds.path, f"no split {split!r} (available: {', '.join(_ordered(splits))})")


# ACL 60/60's two splits, merged before holding out the published test split. A source with only
# one of them (a partial download, or eval kept back on purpose) still works, with a warning: the
# user may mean it, but training silently on half the data is the surprise we must not give.
PUBLISHED_MERGE = ("dev", "eval")
_WARNING_SINKS: list[Callable[[str], None]] = []
_WARNED: set[str] = set()


def _warn(msg: str) -> None:
    """A data warning: to every collector (a running stage: its log and provenance), else once to stderr."""
    if _WARNING_SINKS:
        for sink in list(_WARNING_SINKS):
            sink(msg)
    elif msg not in _WARNED:
        from ..output import warn

        _WARNED.add(msg)
        warn(msg)


@contextlib.contextmanager
def collect_warnings(log: Callable[[str], None] | None = None):
    """Within the block, data warnings are logged once each (``warning: ...``) and collected in the yielded list."""
    seen: list[str] = []

    def sink(msg: str) -> None:
        if msg not in seen:
            seen.append(msg)
            if log is not None:
                log(f"warning: {msg}")

    _WARNING_SINKS.append(sink)
    try:
        yield seen
    finally:
        _WARNING_SINKS.remove(sink)


def _ordered(splits: dict) -> list[str]:
    known = [s for s in SPLIT_ORDER if s in splits]
    return known + [s for s in splits if s not in known]


def _read_source(ds: DataSpec) -> dict[str, list[Example]]:
    p = Path(ds.path)
    fmt = ds.format
    if fmt is None:
        fmt = _detect_format(p, ds.path)
    if fmt == "covost2":
        return _read_covost2(p, ds)
    if fmt == "list":
        return _read_list(p)
    if fmt == "parquet":
        return _read_parquet(p)
    return _read_hf(ds.path)


def _detect_format(p: Path, raw: str) -> str:
    from ..modelio import is_local

    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            return "parquet"
        if suffix in (".tsv", ".csv", ".jsonl", ".json"):
            if suffix == ".tsv":
                header = p.open(encoding="utf-8", errors="replace").readline().rstrip("\n").split("\t")
                if "translation" in header and "path" in header:
                    return "covost2"
            return "list"
        raise InputFileError(p, "unknown data file type (expected .parquet, .tsv, .csv or .jsonl)")
    if p.is_dir():
        if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            return "hf"
        if _parquet_files(p):
            return "parquet"
        raise InputFileError(p, "not a dataset directory (no dataset_dict.json/state.json from save_to_disk, no parquet files)")
    if is_local(raw):
        raise InputFileError(p, "data not found")
    return "hf"  # a hub id


def _parquet_files(d: Path) -> list[Path]:
    return sorted(f for f in d.rglob("*.parquet") if not any(part.startswith(".") for part in f.relative_to(d).parts))


_SHARD = re.compile(r"^(?P<split>.+?)(?:[-_]\d{5}-of-\d{5})?$")


def _split_of_file(f: Path) -> str:
    """HF naming: ``dev.parquet``, ``data/dev-00000-of-00001.parquet``, ``dev/0000.parquet``; else train."""
    name = _SHARD.match(f.stem).group("split")
    if name in SPLIT_ORDER:
        return name
    return f.parent.name if f.parent.name in SPLIT_ORDER else "train"


def _read_parquet(p: Path) -> dict[str, list[Example]]:
    import pyarrow.parquet as pq

    files = [p] if p.is_file() else _parquet_files(p)
    if not files:
        raise InputFileError(p, "no parquet files")
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(_split_of_file(f), []).append(f)
    out: dict[str, list[Example]] = {}
    for name, fs in groups.items():
        exs: list[Example] = []
        for f in fs:
            try:
                table = pq.read_table(f)
            except Exception as e:
                raise InputFileError(f, f"cannot read parquet ({str(e).splitlines()[0]})") from None
            exs.extend(_rows_to_examples(table.to_pylist(), table.column_names, f, name, base=f.parent, start=len(exs)))
        out[name] = exs
    return out


def _read_hf(path: str) -> dict[str, list[Example]]:
    """A save_to_disk directory (Dataset or DatasetDict) or a hub id, audio read undecoded."""
    import datasets

    local = Path(path).is_dir()
    try:
        obj = datasets.load_from_disk(path) if local else datasets.load_dataset(path)
    except FileNotFoundError as e:
        raise InputFileError(path, f"cannot load dataset ({str(e).splitlines()[0] if str(e) else 'not found'})") from None
    except Exception as e:  # hub errors (offline, not cached, no such dataset) come in many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "" if local else " (a hub id needs network access or a cached copy; or give a local path)"
        raise InputFileError(path, f"cannot load dataset: {msg}{hint}") from None
    parts = obj.items() if isinstance(obj, datasets.DatasetDict) else [("train", obj)]
    out = {}
    for name, d in parts:
        if "audio" in d.column_names and isinstance(d.features["audio"], datasets.Audio):
            d = d.cast_column("audio", datasets.Audio(decode=False))
        where = Path(path) / name if local and isinstance(obj, datasets.DatasetDict) else Path(path)
        out[name] = _rows_to_examples(d.to_list() if len(d) else [], d.column_names, where, name,
                                      base=Path(path) if local else None)
    return out


def _rows_to_examples(rows: list[dict], columns: list[str], where: Path, split: str, *, base: Path | None,
                      start: int = 0) -> list[Example]:
    if "audio" not in columns:
        raise InputFileError(where, f"no 'audio' column (columns: {', '.join(columns)})")
    if "text_en" not in columns:
        raise InputFileError(where, f"no 'text_en' column (columns: {', '.join(columns)})")
    id_col = next((c for c in ("id", "index") if c in columns), None)
    out = []
    for i, r in enumerate(rows):
        src = f"{where}: row {i}"
        out.append(Example(
            id=str(r[id_col]) if id_col and r.get(id_col) is not None else f"{split}-{start + i}",
            audio=_audio_ref(r.get("audio"), base, src),
            text_en=r.get("text_en"), text_de=r.get("text_de"), text_zh=r.get("text_zh"),
            source=src, texts={c: r[f"text_{c}"] for c in TEXT_CODES if c not in ("en", "de", "zh") and r.get(f"text_{c}") is not None},
            meta={k: r[k] for k in ("origin", "score", "source_id") if k in columns and r.get(k) is not None}))
    return out


def _audio_ref(value, base: Path | None, src: str):
    """Audio cell -> bytes, an absolute path or an array. HF stores audio as {bytes, path}."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("array") is not None:
            from ..decoding.audio import to_mono_16k

            return to_mono_16k(np.asarray(value["array"], dtype=np.float32), int(value.get("sampling_rate") or SAMPLE_RATE))
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() or base is None else (base / p))
    raise InputFileError(src, "no audio (empty audio cell)")


def _read_list(p: Path) -> dict[str, list[Example]]:
    """TSV/CSV with a header, or JSONL: an ``audio`` column (path, relative to the list) plus text_* columns."""
    rows: list[dict] = []
    try:
        if p.suffix.lower() in (".jsonl", ".json"):
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputFileError(p, f"line {n}: not valid JSON ({e.msg})") from None
            columns = sorted({k for r in rows for k in r})
        else:
            with p.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",", quoting=csv.QUOTE_NONE if p.suffix.lower() == ".tsv" else csv.QUOTE_MINIMAL)
                columns = list(reader.fieldnames or [])
                rows = list(reader)
    except UnicodeDecodeError:
        raise InputFileError(p, "not UTF-8 text") from None
    if "audio" not in columns and "path" in columns:
        rows = [dict(r, audio=r.get("path")) for r in rows]
        columns = columns + ["audio"]
    exs = _rows_to_examples(rows, columns, p, "train", base=p.parent)
    for i, ex in enumerate(exs):  # rows are lines: name them by line number (header is line 1)
        ex.source = f"{p}: line {i + (1 if p.suffix.lower() in ('.jsonl', '.json') else 2)}"
    return {"train": exs}


_COVOST_LANG = re.compile(r"\ben_(?P<lang>[a-z]{2})\b")


def _read_covost2(p: Path, ds: DataSpec) -> dict[str, list[Example]]:
    """CoVoST 2: ``covost_v2.en_XX[.split].tsv`` (path, sentence, translation, client_id) + Common Voice clips."""
    code = ds.lang
    if code is None:
        m = _COVOST_LANG.search(p.name.replace(".", " "))
        if not m:
            raise InputFileError(p, "cannot tell the target language from the file name; add ?lang=de (or zh)")
        code = m.group("lang")
    clips = Path(ds.clips) if ds.clips else p.parent / "clips"
    if not clips.is_dir():
        raise InputFileError(clips, "CoVoST 2 clips directory not found (give it with ?clips=DIR)")
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = list(reader.fieldnames or [])
        for c in ("path", "sentence", "translation"):
            if c not in columns:
                raise InputFileError(p, f"no {c!r} column (columns: {', '.join(columns)})")
        rows = list(reader)
    split = next((s for s in ("train", "dev", "test") if f".{s}." in p.name), "train")
    out = []
    for i, r in enumerate(rows):
        ex = Example(id=Path(r["path"] or f"row{i}").stem, audio=str(clips / (r["path"] or "")),
                     text_en=r["sentence"], source=f"{p}: line {i + 2}")
        if code in ("de", "zh"):
            setattr(ex, f"text_{code}", r["translation"])
        else:
            ex.texts[code] = r["translation"]
        out.append(ex)
    return {split: out}


# ---------------------------------------------------------------- writing

def write_parquet(examples: Iterable[Example], path: str | os.PathLike, *, extra_columns: Sequence[str] = ()) -> Path:
    """Write examples as an HF-style parquet file (audio as ``{bytes, path}``) that load_examples reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for ex in examples:
        a = ex.audio() if callable(ex.audio) else ex.audio
        if isinstance(a, np.ndarray):
            import io

            import soundfile as sf

            buf = io.BytesIO()
            sf.write(buf, a, SAMPLE_RATE, format="FLAC")
            a = buf.getvalue()
        audio = {"bytes": a, "path": None} if isinstance(a, (bytes, bytearray)) else {"bytes": None, "path": str(Path(a).resolve())}
        row = {"id": ex.id, "audio": audio, "text_en": ex.text_en, "text_de": ex.text_de, "text_zh": ex.text_zh}
        for c, t in ex.texts.items():
            row[f"text_{c}"] = t
        for c in extra_columns:
            row[c] = ex.meta.get(c)
        rows.append(row)
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    arrays = {k: (pa.array(v, type=audio_type) if k == "audio" else pa.array(v)) for k, v in cols.items()}
    table = pa.table(arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path
