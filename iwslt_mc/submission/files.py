"""Submission files: hypothesis files (read, normalized, counted), decode logs, and the manifests of
submissions already written."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError

MANIFEST = "manifest.json"
DESCRIPTION = "description.txt"
MANIFEST_FORMAT = 2
READABLE_MANIFEST_FORMATS = (1, 2)  # 1: before editions had named test sets and fingerprints

# Test-set names become part of a file name: no separators, no leading dot.
TEST_SET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Characters Python's str.splitlines() (and tools built on it) treat as line breaks, besides \n and
# \r. One inside a hypothesis would shift every later segment for such a tool, so the packager
# replaces them with a space and says so; the checker reports them.
_EXTRA_LINE_BREAKS = {
    "\x0b": "VT", "\x0c": "FF", "\x1c": "FS", "\x1d": "GS", "\x1e": "RS",
    "\x85": "NEL", "\u2028": "LINE SEPARATOR", "\u2029": "PARAGRAPH SEPARATOR",
}
_EXTRA_LINE_BREAKS_RE = re.compile("[" + "".join(_EXTRA_LINE_BREAKS) + "]")

# Keys of records in a decoder's JSONL log that identify a segment (a resumed run must not count
# a segment twice).
_SEGMENT_ID_KEYS = ("segment_id", "seg_id", "id", "index", "idx", "segment")


# ----------------------------------------------------------------------------------------------
# hypothesis files


@dataclass
class Hypothesis:
    """A hypothesis file as it will be packaged."""

    test_set: str
    source: Path
    data: bytes  # normalized bytes
    lines: int
    changes: list[str] = field(default_factory=list)  # what normalization did, for the user
    expected: int | None = None  # known number of segments
    expected_from: str | None = None  # where that number came from


def count_lines(data: bytes) -> int:
    """Lines of normalized text: the number of LF bytes (the file ends with one unless empty)."""
    return data.count(b"\n")


def _line_of_offset(raw: bytes, offset: int) -> int:
    """1-based line of byte ``offset`` in ``raw``, counting LF, CRLF and lone CR as line ends."""
    head = raw[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def decode_utf8(raw: bytes, path: str | Path) -> str:
    """``raw`` as text, or InputFileError naming the line and byte of the first invalid byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = _line_of_offset(raw, e.start)
        col = e.start - (max(raw.rfind(b"\n", 0, e.start), raw.rfind(b"\r", 0, e.start)) + 1) + 1
        raise InputFileError(
            path, f"not valid UTF-8: line {line}, byte {col} of the line (file offset {e.start}): "
                  f"{raw[e.start:e.start + 1].hex()!s} ({e.reason}); re-encode the file as UTF-8") from None


def normalize_hypothesis_bytes(raw: bytes, path: str | Path) -> tuple[bytes, list[str]]:
    """UTF-8 check, BOM removed, CRLF/CR -> LF, final newline added; line count kept exactly."""
    changes = []
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
        changes.append("removed byte-order mark")
    text = decode_utf8(raw, path)
    if text.startswith("\ufeff"):  # a second BOM would be a zero-width char in the first segment
        text = text.lstrip("\ufeff")
        changes.append("removed byte-order mark")
    n_crlf = text.count("\r\n")
    n_cr = text.count("\r") - n_crlf
    if n_crlf or n_cr:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        changes.append(f"converted line ends to LF ({n_crlf} CRLF, {n_cr} CR)")
    extra = _EXTRA_LINE_BREAKS_RE.findall(text)
    if extra:
        text = _EXTRA_LINE_BREAKS_RE.sub(" ", text)
        kinds = sorted({_EXTRA_LINE_BREAKS[c] for c in extra})
        changes.append(f"replaced {len(extra)} in-line break character(s) ({', '.join(kinds)}) with spaces")
    if text and not text.endswith("\n"):
        text += "\n"
        changes.append("added final newline")
    return text.encode("utf-8"), changes


def read_hypothesis(path: str | Path, test_set: str) -> Hypothesis:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, f"hypothesis file for test set {test_set!r} does not exist" if not path.exists()
                             else f"hypothesis file for test set {test_set!r} is not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputFileError(path, f"cannot read ({e.strerror or e})") from None
    data, changes = normalize_hypothesis_bytes(raw, path)
    return Hypothesis(test_set=test_set, source=path, data=data, lines=count_lines(data), changes=changes)


def text_file_problems(path: Path, data: bytes) -> list[str]:
    """What is wrong with an already packaged text file (empty list: nothing)."""
    problems = []
    if data.startswith(b"\xef\xbb\xbf"):
        problems.append(f"{path}: starts with a byte-order mark")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not valid UTF-8 at line {_line_of_offset(data, e.start)} (file offset {e.start})")
        text = data.decode("utf-8", errors="replace")
    if "\r" in text:
        cr_line = _line_of_offset(data, data.index(b"\r"))
        problems.append(f"{path}: has CR line ends at line {cr_line} (must be LF)")
    m = _EXTRA_LINE_BREAKS_RE.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        problems.append(f"{path}: line {line} contains {_EXTRA_LINE_BREAKS[m.group()]} (U+{ord(m.group()):04X}), "
                        "which some tools read as a line break")
    if data and not data.endswith(b"\n"):
        problems.append(f"{path}: no final newline")
    return problems


# ----------------------------------------------------------------------------------------------
# segment counts


def count_log_segments(path: str | Path) -> int:
    """Segments of the test set according to a decoder's JSONL log.

    An ``iwslt-mc decode`` log's header states the input's segment count; otherwise one JSON
    object per segment is counted (header/summary records of other types ignored).

    When every record names its segment (``segment_id``/``id``/``index``...), distinct ids are
    counted, so a log that repeats a segment after a resume does not inflate the count.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "decoder log does not exist")
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputFileError(path, f"line {n}: not a JSON object ({e.msg}); expected one JSON object per segment") from None
                if not isinstance(rec, dict):
                    raise InputFileError(path, f"line {n}: not a JSON object; expected one JSON object per segment")
                records.append(rec)
    except UnicodeDecodeError:
        raise InputFileError(path, "decoder log is not valid UTF-8") from None
    # iwslt-mc decode logs start with a header giving the input's segment count, then one
    # {"type": "segment"} record per decoded segment, and end with a summary.
    headers = [r for r in records if r.get("type") == "header" and isinstance(r.get("segments"), int)]
    if headers:
        return headers[-1]["segments"]
    records = [r for r in records if r.get("type", "segment") == "segment"]
    for key in _SEGMENT_ID_KEYS:
        if records and all(key in r for r in records):
            return len({json.dumps(r[key], sort_keys=True) for r in records})
    return len(records)


def find_decoder_log(hyp_path: str | Path) -> Path | None:
    """The decoder's JSONL log next to a hypothesis file (``FILE.jsonl`` or ``FILE`` with suffix .jsonl)."""
    hyp_path = Path(hyp_path)
    for cand in (hyp_path.with_name(hyp_path.name + ".jsonl"), hyp_path.with_suffix(".jsonl")):
        if cand != hyp_path and cand.is_file():
            return cand
    return None


# ----------------------------------------------------------------------------------------------
# decode logs


@dataclass
class DecodeLog:
    """What a hypothesis file's decode log says about it."""

    path: Path
    segments: int
    model_fingerprint: str | None  # None: a log of another tool, which does not record the model
    model: str | None
    lang: str | None


def read_decode_log(path: str | Path) -> DecodeLog:
    """The segment count, and (for an ``iwslt-mc decode`` log) the model fingerprint and language."""
    path = Path(path)
    n = count_log_segments(path)
    header = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break
                if isinstance(rec, dict) and rec.get("type") == "header":
                    header = rec
                break
    h = header or {}
    fp = h.get("model_fingerprint")
    return DecodeLog(path=path, segments=n, model_fingerprint=fp if isinstance(fp, str) and fp else None,
                     model=h.get("model"), lang=h.get("lang"))


# ----------------------------------------------------------------------------------------------
# existing submissions


def read_manifest(sub_dir: str | Path) -> dict:
    p = Path(sub_dir) / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(p, "missing (not a submission packaged by iwslt-mc package)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(p, f"not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") not in READABLE_MANIFEST_FORMATS:
        raise InputFileError(p, f"not a manifest of format {' or '.join(map(str, READABLE_MANIFEST_FORMATS))}")
    return m


def legacy_fingerprint(model_dir) -> str | None:
    from ..floor.modeldir import legacy_model_fingerprint

    try:
        return legacy_model_fingerprint(model_dir)
    except OSError:
        return None
