"""Packager and checker: upload-ready submission folders whose name, sizes and lines are computed.

A submission folder ``<out>/<model name>/`` holds:

- one hypothesis file per test set, ``<model name>.<test set>.txt``: UTF-8 without byte-order mark,
  LF line ends, one segment per line, final newline, the line count of the input preserved exactly
  (an empty hypothesis stays an empty line);
- ``description.txt``: the mandatory description fields (exact storage size in bytes and in the
  edition's unit, number of parameters, compression techniques, datasets), ready to paste;
- ``manifest.json``: edition, name, sizes (every measure of the edition), parameter count, the
  model's fingerprint, sha256 / bytes / line count of every other file, the model directory, tool
  version and time. :func:`check` re-verifies all of it.

Editions with named test sets (2026, 2027: 6 en-de, 5 en-zh) need a hypothesis file for every one
of them, unless a partial upload is asked for (recorded in the manifest and the description).
Every hypothesis file must come with the decode log that made it (``FILE.jsonl``), whose model
fingerprint must be the packaged model's: hypotheses of another model are refused, and hypotheses
without such a log need ``allow_unlogged`` (recorded as unverified). Hypotheses are never altered
beyond the file format (encoding, line ends): no tag or word is removed.

Sizes come from :func:`iwslt_mc.sizing.sizer.measure` (safetensors bytes) and :func:`torch_save_bytes`
(the organizers' 2027 measure), techniques and datasets from the model's ``provenance.json``
(datasets by name, never by path); the user types them only where the provenance lacks them.
Everything is validated before anything is written, and the folder is written to a temporary
directory and renamed into place.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from . import __version__, provenance
from .sizing import track
from .errors import InputFileError, UserError
from .fsutil import atomic_directory, atomic_write_bytes, atomic_write_json, sha256_file

MANIFEST = "manifest.json"
DESCRIPTION = "description.txt"
MANIFEST_FORMAT = 2
READABLE_MANIFEST_FORMATS = (1, 2)  # 1: before editions had named test sets and fingerprints

# Test-set names become part of a file name: no separators, no leading dot.
_TEST_SET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

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

# description.txt labels, shared by the writer and the checker.
D_NAME = "Model name"
D_STORAGE = "Storage size"
D_PARAMS = "Number of parameters"
D_TECHNIQUES = "Compression techniques"
D_DATASETS = "Datasets used"
D_BIN = "Size bin"
D_OTHER_SIZES = "Other size measures"
D_PARTIAL = "Partial upload"
D_UNVERIFIED = "Unverified hypotheses"


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
# names and options


def validate_test_set(name: str) -> str:
    if not _TEST_SET_RE.match(name or ""):
        raise UserError(f"test set name {name!r} must start with a letter or digit and contain only letters, digits, "
                        "'.', '-', '_' (it becomes part of a file name)")
    return name


def parse_assignments(values: list[str] | None, option: str, what: str = "FILE") -> dict[str, str]:
    """``["tst=a.txt", ...]`` -> ``{"tst": "a.txt"}``; each test set once."""
    out: dict[str, str] = {}
    for v in values or []:
        test_set, sep, value = v.partition("=")
        if not sep or not value:
            raise UserError(f"{option} {v!r}: expected TESTSET={what}")
        validate_test_set(test_set)
        if test_set in out:
            raise UserError(f"{option}: test set {test_set!r} given twice")
        out[test_set] = value
    return out


def hypothesis_filename(name: str, test_set: str) -> str:
    """File name of a test set's hypotheses inside the submission: ``<model name>.<test set>.txt``."""
    return f"{name}.{validate_test_set(test_set)}.txt"


def _name_regex(ed: track.Edition) -> re.Pattern:
    alt = lambda xs: "(?:" + "|".join(re.escape(x) for x in xs) + ")"  # noqa: E731
    parts = {
        "team": "(?P<team>[A-Za-z0-9][A-Za-z0-9-]*)",
        "tag": re.escape(ed.tag),
        "lp": f"(?P<lp>{alt(ed.language_pairs)})",
        "bin": f"(?P<bin>{alt([b.name for b in ed.bins])})",
        "condition": f"(?P<condition>{alt(ed.conditions)})",
        "type": f"(?P<type>{alt(ed.submission_types)})",
    }
    rx, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", ed.name_pattern):
        rx += re.escape(ed.name_pattern[pos:m.start()]) + parts[m.group(1)]
        pos = m.end()
    rx += re.escape(ed.name_pattern[pos:])
    return re.compile("^" + rx + "$")


def parse_name(name: str) -> dict | None:
    """Fields of a standardized model name (any edition), or None when it is not one."""
    for key, ed in track.EDITIONS.items():
        m = _name_regex(ed).match(name)
        if m:
            d = m.groupdict()
            return {"edition": key, "team": d["team"], "lp": d["lp"], "condition": d["condition"],
                    "type": d["type"], "bin": d.get("bin")}
    return None


def resolve_test_sets(ed: track.Edition, lp: str, hyps: dict[str, str | Path]) -> dict[str, str | Path]:
    """``--hyp`` names -> the edition's test-set keys (named editions), or the names as given (2025).

    A test set may be named by its key (``tvseries``) or by the name on its upload label
    (``TVSERIES``), in any case; an unknown name is an error listing the edition's test sets.
    """
    sets = ed.test_sets.get(lp) or ()
    if not sets:
        for t in hyps:
            validate_test_set(t)
        return dict(hyps)
    lookup = {}
    for ts in sets:
        lookup[ts.key.lower()] = ts.key
        lookup[ts.label.split("/")[0].strip().lower()] = ts.key
    out: dict[str, str | Path] = {}
    for name, f in hyps.items():
        key = lookup.get(str(name).lower())
        if key is None:
            raise UserError(f"test set {name!r} is not one of edition {ed.key}'s {lp} test sets: "
                            + ", ".join(f"{t.key} ({t.label})" for t in sets))
        if key in out:
            raise UserError(f"test set {key!r} given twice (as {name!r} too)")
        out[key] = f
    return out


def find_hypotheses(hyp_dir: str | Path, ed: track.Edition, lp: str) -> dict[str, Path]:
    """Hypothesis files in ``hyp_dir`` named after the edition's test sets (``<TESTSET>.<de|zh>``,
    as ``iwslt-mc decode`` names them; the test set by key or label name, in any case)."""
    d = Path(hyp_dir)
    if not d.is_dir():
        raise InputFileError(d, "--hyp-dir is not a directory" if d.exists() else "--hyp-dir does not exist")
    sets = ed.test_sets.get(lp) or ()
    if not sets:
        raise UserError(f"edition {ed.key} names no {lp} test sets: give each file with --hyp TESTSET=FILE")
    tgt = lp.split("-")[1]
    found: dict[str, Path] = {}
    for ts in sets:
        names = {ts.key.lower(), ts.label.split("/")[0].strip().lower()}
        hits = [f for f in sorted(d.iterdir()) if f.is_file() and f.suffix == f".{tgt}" and f.stem.lower() in names]
        if len(hits) > 1:
            raise UserError(f"{d}: several files for test set {ts.key}: {', '.join(f.name for f in hits)}")
        if hits:
            found[ts.key] = hits[0]
    if not found:
        raise InputFileError(d, f"no hypothesis file named after a test set of edition {ed.key} {lp} "
                                f"(expected e.g. {sets[0].key}.{tgt})")
    return found


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
# size measures


def torch_save_bytes(model_dir: str | Path, report=None) -> tuple[int, str]:
    """The organizers' 2027 measure: bytes of ``torch.save(model.state_dict())`` of the model loaded as
    their script loads it (one GPU), and its signature.

    From the sizer (:mod:`iwslt_mc.sizing.torchsave`: computed exactly from the safetensors headers and
    config, no weights read); where a checkpoint cannot be laid out exactly, the model is loaded once
    and a real ``torch.save`` is counted through a pipe (``torchsave.measure_streamed``).
    """
    from .sizing import sizer, torchsave

    rep = report if report is not None else sizer.measure(model_dir, None)
    ts = rep.torch_save
    if ts is None:
        from .output import hf_progress_bars_off

        with hf_progress_bars_off():
            ts = torchsave.measure_streamed(model_dir)
    return ts.bytes, ts.signature


def measure_sizes(model_dir: str | Path, ed: track.Edition):
    """(sizer report, {measure id: bytes}, {measure id: signature}) for every size measure of ``ed``."""
    from .sizing import sizer

    report = sizer.measure(model_dir, ed.key)
    sizes = {"safetensors_bytes": int(report.bytes)}
    sigs = {"safetensors_bytes": report.signature}
    if "torch_save_bytes" in ed.size_measures:
        sizes["torch_save_bytes"], sigs["torch_save_bytes"] = torch_save_bytes(model_dir, report)
    return report, {m: sizes[m] for m in ed.size_measures}, {m: sigs[m] for m in ed.size_measures}


_MEASURE_WORDS = {"safetensors_bytes": "safetensors files", "torch_save_bytes": "torch.save(model.state_dict())"}


def _size_text(nbytes: int, measure: str, unit: str) -> str:
    return f"{nbytes:,} bytes = {exact_unit(nbytes, unit)} ({_MEASURE_WORDS[measure]})"


def _other_unit(unit: str) -> str:
    return {"GB": "GiB", "GiB": "GB", "MB": "MiB", "MiB": "MB"}.get(unit, unit)


def _model_base(model_dir: Path, prov: dict, ed: track.Edition) -> str:
    """The base model in words, never a local path: the recorded base when its folder is named as a
    hub model id of the model's family (``Qwen2-Audio-7B-Instruct``, ``gemma-4-12B-it``), else the
    edition's base model, else the family and model type."""
    from .families import family_of_model_type

    try:
        mt = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        mt = None
    fam = family_of_model_type(mt)
    label = fam.label if fam is not None else "Qwen2-Audio"
    base = (prov.get("base") or {}).get("path") or ""
    stages = [s.get("stage") for s in prov.get("stages", [])]
    if stages[:1] == ["kit"]:
        return f"tiny random {label} (the iwslt-mc demo kit)"
    hub_id = fam.hub_id(Path(str(base)).name) if fam is not None else None
    if hub_id:
        return hub_id
    if ed.base_model:
        return ed.base_model
    return f"a {label} model (model_type {mt})" if mt else "not recorded"


def _split_list(value) -> list[str]:
    """``--techniques "a; b"`` or a list -> ``["a", "b"]`` (';' or newlines separate; commas stay)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else re.split(r"[;\n]", str(value))
    return [s.strip() for s in items if s and s.strip()]


def exact_unit(nbytes: int, unit: str) -> str:
    """``nbytes`` in ``unit``: decimal units without rounding (200000000 -> '0.2 GB', 199999999 ->
    '0.199999999 GB'); binary units to 9 decimals (1e-9 GiB is about one byte), '≈' when rounded."""
    div = {"GB": track.GB, "MB": track.MB, "KB": track.KB, "GiB": track.GiB, "MiB": track.MiB}[unit]
    q = Decimal(nbytes) / Decimal(div)
    approx = ""
    if unit in ("GiB", "MiB"):
        r = round(q, 9)
        approx, q = ("" if r == q else "≈"), r
    s = format(q, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return f"{approx}{s} {unit}"


def _human_params(n: int) -> str:
    for div, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return str(n)


def _parse_int(text: str) -> int | None:
    m = re.match(r"\s*([\d,]+)", text or "")
    return int(m.group(1).replace(",", "")) if m else None


# ----------------------------------------------------------------------------------------------
# description.txt


def describe(*, name: str, team: str, edition: track.Edition, lp: str, condition: str, submission_type: str,
             sizes: dict[str, int], params: int, bin_name: str | None, techniques: list[str], datasets: list[str],
             test_sets: dict[str, int], base_model: str, signatures: dict[str, str] | None = None,
             notes: list[str] | None = None, missing: list[str] | None = None,
             unverified: list[str] | None = None) -> str:
    """The text of ``description.txt``: mandatory fields first, one ``Label: value`` per line.

    ``sizes``: measure id -> bytes, the edition's primary measure first. ``test_sets``: key -> lines.
    """
    ed = edition
    primary = ed.primary_size_measure
    nbytes = sizes[primary]
    lines = [
        f"{D_NAME}: {name}",
        f"Team: {team}",
        f"Edition: {ed.tag} ({ed.key})",
        f"Language pair: {lp}",
        f"Condition: {condition}",
        f"Submission type: {submission_type}",
    ]
    if ed.has_bins:
        lines.append(f"{D_BIN}: {bin_name}")
    lines += [
        f"{D_STORAGE}: {_size_text(nbytes, primary, ed.size_unit)}",
        f"{D_PARAMS}: {params:,} ({_human_params(params)})",
        f"{D_TECHNIQUES}: {'; '.join(techniques)}",
        f"{D_DATASETS}: {'; '.join(datasets) if datasets else 'none recorded'}",
    ]
    others = [m for m in ed.size_measures if m != primary]
    if others:
        lines.append(f"{D_OTHER_SIZES}: " + "; ".join(
            f"{_size_text(sizes[m], m, ed.size_unit)} = {exact_unit(sizes[m], _other_unit(ed.size_unit))}"
            for m in others))
    lines.append(f"Base model: {base_model}")
    labels = {t.key: t.label for t in ed.test_sets.get(lp, ())}
    lines.append("Test sets: " + ", ".join(f"{labels.get(t, t)} ({n:,} segments)" for t, n in test_sets.items()))
    if missing:
        lines.append(f"{D_PARTIAL}: {len(test_sets)} of {len(test_sets) + len(missing)} test sets; not included: "
                     + ", ".join(labels.get(t, t) for t in missing))
    if unverified:
        lines.append(f"{D_UNVERIFIED}: {', '.join(labels.get(t, t) for t in unverified)} (no decode log recording "
                     "the model; packaged with --allow-unlogged)")
    for m, sig in (signatures or {}).items():
        lines.append(f"Size measurement ({_MEASURE_WORDS[m]}): {sig}")
    lines.append(f"Size rule ({ed.key}): {ed.size_rule}; {ed.boundary_rule}")
    for n in notes or []:
        lines.append(f"Other details: {n}")
    lines.append(f"Packaged by: iwslt-mc {__version__}")
    return "\n".join(lines) + "\n"


def parse_description(text: str) -> dict[str, str]:
    """``Label: value`` lines of a description (first occurrence of each label)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep and label.strip() and label.strip() not in out:
            out[label.strip()] = value.strip()
    return out


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


def _identity(sub_dir: Path) -> dict | None:
    """edition/team/lp/condition/type of a submission folder, from its manifest or else its name."""
    try:
        m = read_manifest(sub_dir)
        return {k: m.get(k) for k in ("edition", "team", "lp", "condition", "type")} | {"name": m.get("name")}
    except UserError:
        d = parse_name(sub_dir.name)
        return None if d is None else d | {"name": sub_dir.name}


def existing_submissions(out_dir: str | Path) -> list[tuple[Path, dict]]:
    """Submission folders under ``out_dir`` (hidden/partial folders skipped) with their identity."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for d in sorted(out_dir.iterdir()):
        if d.is_dir() and not d.name.startswith("."):
            ident = _identity(d)
            if ident is not None:
                found.append((d, ident))
    return found


def _primary_key(ident: dict) -> tuple:
    return (str(ident.get("edition")), ident.get("team"), ident.get("lp"), ident.get("condition"))


# ----------------------------------------------------------------------------------------------
# package


@dataclass
class PackageResult:
    dir: Path
    name: str
    manifest: dict
    description: str
    warnings: list[str]


def package(model_dir: str | Path, *, team: str, lp: str, condition: str, submission_type: str,
            hyps: dict[str, str | Path], edition: str = track.DEFAULT_EDITION, techniques=None, datasets=None,
            segments: dict[str, int] | None = None, logs: dict[str, str | Path] | None = None,
            out: str | Path = "submissions", force: bool = False, notes: list[str] | None = None,
            auto_logs: bool = True, partial: bool = False, allow_unlogged: bool = False) -> PackageResult:
    """Validate everything, then write ``out/<model name>/`` atomically. Raises UserError on any problem.

    ``hyps``: test set -> hypothesis file (for editions with named test sets, by key or label name,
    and every test set of the pair unless ``partial``). ``segments``: test set -> known number of
    segments; ``logs``: test set -> decode JSONL log. Without either, the log next to the hypothesis
    file (``FILE.jsonl``) is used when ``auto_logs``. A log recording another model's fingerprint is
    refused; a hypothesis without a log recording the model needs ``allow_unlogged``.
    """
    from .modelio import model_fingerprint

    warnings: list[str] = []
    ed = track.get_edition(edition)
    track.validate_team(team)
    # Name parts first (bin filled in after sizing) so option mistakes surface before any reading.
    track.model_name(team=team, lp=lp, condition=condition, submission_type=submission_type, edition=ed,
                     bin_name=ed.bins[0].name if ed.has_bins else None)
    if not hyps:
        raise UserError("no hypothesis files: give --hyp TESTSET=FILE for each test set (or --hyp-dir DIR)")
    hyps = resolve_test_sets(ed, lp, hyps)
    segments = resolve_test_sets(ed, lp, dict(segments or {})) if segments else {}
    logs = resolve_test_sets(ed, lp, dict(logs or {})) if logs else {}
    for opt, d in (("--segments", segments), ("--log", logs)):
        for t in d:
            if t not in hyps:
                raise UserError(f"{opt} names test set {t!r}, which has no --hyp (test sets: {', '.join(hyps)})")
    for t in set(segments) & set(logs):
        raise UserError(f"test set {t!r}: give either --segments or --log, not both")
    named = ed.test_set_keys(lp)
    missing = [k for k in named if k not in hyps]
    if missing and not partial:
        labels = {t.key: t.label for t in ed.test_sets[lp]}
        raise UserError(f"edition {ed.key} {lp} has {len(named)} test sets and this submission misses "
                        f"{len(missing)}: " + ", ".join(f"{k} ({labels[k]})" for k in missing)
                        + "; decode them too, or pass --partial for a deliberate partial upload")
    if partial and not missing:
        if named:
            warnings.append("--partial given, but every test set of the pair is included: packaged as complete")
        else:
            raise UserError(f"--partial: edition {ed.key} names no {lp} test sets, so no upload can be partial")

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputFileError(model_dir, "model directory does not exist" if not model_dir.exists() else "not a directory")
    fingerprint = model_fingerprint(model_dir)

    # Hypotheses: read, normalize, count, compare with the known number of segments and the model.
    hyp_list: list[Hypothesis] = []
    unverified: list[str] = []
    checks: dict[str, str] = {}
    for t, f in hyps.items():
        h = read_hypothesis(f, t)
        if h.lines == 0:
            raise InputFileError(h.source, f"empty: 0 lines for test set {t!r} (did decoding fail?); "
                                           "a hypothesis file has one line per segment")
        log_path = Path(logs[t]) if t in logs else (find_decoder_log(h.source) if auto_logs else None)
        log = read_decode_log(log_path) if log_path is not None else None
        legacy = False
        if log is not None and log.model_fingerprint is not None and log.model_fingerprint != fingerprint:
            legacy = log.model_fingerprint == _legacy_fingerprint(model_dir)
        if legacy:
            warnings.append(f"{h.source}: its log {log.path} was written by an older iwslt-mc, whose model fingerprint "
                            "covers only the first and last MiB of each weight file (it matches); decode again for a "
                            "full-content check")
        elif log is not None and log.model_fingerprint is not None and log.model_fingerprint != fingerprint:
            raise InputFileError(h.source, f"decoded by another model: its log {log.path} records model "
                                           f"fingerprint {log.model_fingerprint} ({log.model}), but {model_dir} "
                                           f"has {fingerprint}; package the model that decoded it, or decode again")
        if log is not None and log.lang and log.lang != lp:
            raise InputFileError(h.source, f"decoded as {log.lang} (log {log.path}), packaged as {lp}")
        if t in segments:
            n = int(segments[t])
            if n < 0:
                raise UserError(f"--segments {t}={n}: must be >= 0")
            h.expected, h.expected_from = n, "--segments"
        elif log is not None:
            h.expected, h.expected_from = log.segments, str(log.path)
        if h.expected is not None and h.lines != h.expected:
            raise InputFileError(h.source, f"{h.lines:,} lines, but test set {t!r} has {h.expected:,} segments "
                                           f"(from {h.expected_from}); one line per segment is required")
        if legacy:
            checks[t] = f"older partial model fingerprint {log.model_fingerprint} (first and last MiB of each weight file) matches {log.path}"
        elif log is not None and log.model_fingerprint is not None:
            checks[t] = f"model fingerprint {fingerprint} matches {log.path}"
        else:
            why = "no decode log found" if log is None else f"its log {log.path} records no model fingerprint"
            if not allow_unlogged:
                raise InputFileError(h.source, f"cannot tell which model decoded it ({why}); package it with "
                                               f"the log 'iwslt-mc decode' wrote ({h.source.name}.jsonl), or pass "
                                               "--allow-unlogged (recorded in the manifest and description)")
            unverified.append(t)
            checks[t] = f"unverified: {why} (--allow-unlogged)"
            warnings.append(f"{h.source}: packaged without a model check ({why})")
        if h.expected is None:
            warnings.append(f"{h.source}: line count ({h.lines:,}) not verified against the test set: "
                            f"pass --segments {t}=N or --log {t}=LOG.jsonl")
        if not h.data.strip(b"\n"):
            warnings.append(f"{h.source}: every line is empty (did decoding fail?)")
        for c in h.changes:
            warnings.append(f"{h.source}: {c}")
        hyp_list.append(h)
    published = ed.published_test_set_counts.get(lp)
    if not named and published and len(hyp_list) < published:
        warnings.append(f"edition {ed.key} publishes {published} {lp} test set(s); this submission has {len(hyp_list)}")
    digests = {}
    for h in hyp_list:
        if h.data and h.data in digests:
            warnings.append(f"{h.source}: identical to the hypotheses of test set {digests[h.data]!r}")
        digests.setdefault(h.data, h.test_set)

    # Description facts: provenance first; the user's words only where it has none.
    prov = provenance.read(model_dir)
    uses = provenance.dataset_uses(prov, model_dir)
    prov_tech, prov_data = provenance.techniques(prov), [u.name for u in uses]
    user_tech, user_data = _split_list(techniques), _split_list(datasets)
    prov_path = model_dir / provenance.FILENAME
    if user_tech and prov_tech:
        raise UserError(f"{prov_path} already records the techniques ({'; '.join(prov_tech)}); "
                        "--techniques is only for models whose provenance lacks them")
    if user_data and prov_data:
        raise UserError(f"{prov_path} already records the datasets ({'; '.join(prov_data)}); "
                        "--datasets is only for models whose provenance lacks them")
    tech = prov_tech or user_tech
    data = prov_data or user_data
    if not tech:
        raise UserError(f"{model_dir}: compression techniques are mandatory in the description and the model's "
                        f"provenance ({prov_path.name}) records none: pass --techniques \"...\"")
    if condition == "unconstrained" and not data:
        raise UserError(f"{model_dir}: datasets are mandatory for an unconstrained submission and the model's "
                        f"provenance ({prov_path.name}) records none: pass --datasets \"...\"")
    if condition == "constrained":
        if uses:
            odd = [u.name for u in uses if not u.constrained_ok]
        else:  # typed by the user: judged by name
            odd = [d for d in user_data if not provenance.describe_dataset(d).constrained_ok]
        if odd:
            warnings.append(f"constrained condition allows only ACL 60/60 data (and data derived from it), but the "
                            f"description lists: {'; '.join(odd)} (check, or use --condition unconstrained)")

    # Size, bin, name.
    report, sizes, size_sigs = measure_sizes(model_dir, ed)
    nbytes, params, bin_name = sizes[ed.primary_size_measure], int(report.params), report.bin
    warnings.extend(f"{model_dir}: {w}" for w in getattr(report, "warnings", []) if "fits no" not in w)
    if ed.has_bins and bin_name is None:
        top = max(b.high for b in ed.bins if b.high is not None)
        raise UserError(f"{model_dir}: storage size {nbytes:,} bytes ({exact_unit(nbytes, ed.size_unit)}) fits no "
                        f"size bin of edition {ed.key} (the largest bin ends below {exact_unit(top, ed.size_unit)}): "
                        "it cannot be submitted to this edition; compress it further")
    name = track.model_name(team=team, lp=lp, condition=condition, submission_type=submission_type, edition=ed,
                            bin_name=bin_name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory")
    final = out / name
    if final.exists() and not force:
        raise UserError(f"{final}: a submission with this name already exists (use --force to replace it)")
    if final.exists():
        _replaceable(final)
    me = {"edition": ed.key, "team": team, "lp": lp, "condition": condition}
    others = [(d, ident) for d, ident in existing_submissions(out)
              if d.name != name and _primary_key(ident) == _primary_key(me)]
    if submission_type == "primary":
        for d, ident in others:
            if ident.get("type") == "primary":
                raise UserError(f"{d}: already a primary submission for {team} {lp} {condition} (edition {ed.key}); "
                                "only one primary per language pair and condition: package this one with "
                                f"--type contrastive, or remove {d}")
    elif not any(ident.get("type") == "primary" for _, ident in others):
        warnings.append(_no_primary_warning(team, lp, condition, ed.key))

    labels = {t.key: t.label for t in ed.test_sets.get(lp, ())}
    description = describe(name=name, team=team, edition=ed, lp=lp, condition=condition,
                           submission_type=submission_type, sizes=sizes, params=params, bin_name=bin_name,
                           techniques=tech, datasets=data, test_sets={h.test_set: h.lines for h in hyp_list},
                           base_model=_model_base(model_dir, prov, ed), signatures=size_sigs, notes=notes,
                           missing=missing, unverified=unverified)
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "edition": ed.key,
        "team": team,
        "lp": lp,
        "condition": condition,
        "type": submission_type,
        "bin": bin_name,
        "bytes": nbytes,
        "size_measure": ed.primary_size_measure,
        "sizes": sizes,
        "size_signatures": size_sigs,
        "params": params,
        "size_unit": ed.size_unit,
        "size": report.to_json(),
        "model_dir": str(model_dir.resolve()),
        "model_fingerprint": fingerprint,
        "techniques": tech,
        "techniques_from": "provenance" if prov_tech else "--techniques",
        "datasets": data,
        "datasets_from": "provenance" if prov_data else ("--datasets" if user_data else None),
        "partial": {"missing": missing, "deliberate": True} if missing else None,
        "allow_unlogged": bool(allow_unlogged),
        "unverified_hypotheses": unverified,
        "test_sets": {},
        "files": {},
        "warnings": warnings,
        "tool": "iwslt-mc",
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    files = {}
    for h in hyp_list:
        fname = hypothesis_filename(name, h.test_set)
        files[fname] = h.data
        manifest["test_sets"][h.test_set] = {
            "file": fname, "label": labels.get(h.test_set), "lines": h.lines, "source": str(h.source.resolve()),
            "expected_segments": h.expected, "segments_from": h.expected_from, "normalized": h.changes,
            "model_check": checks[h.test_set],
        }
    files[DESCRIPTION] = description.encode("utf-8")

    try:
        with atomic_directory(final, overwrite=force) as tmp:
            for fname, blob in files.items():
                atomic_write_bytes(tmp / fname, blob)
                manifest["files"][fname] = {"sha256": sha256_file(tmp / fname), "bytes": len(blob),
                                            "lines": count_lines(blob)}
            atomic_write_json(tmp / MANIFEST, manifest)
    except FileExistsError:  # appeared between the check above and the rename
        raise UserError(f"{final}: a submission with this name already exists (use --force to replace it)") from None
    return PackageResult(dir=final, name=name, manifest=manifest, description=description, warnings=warnings)


def _replaceable(final: Path) -> None:
    """``--force`` replaces (deletes) only a submission folder iwslt-mc wrote, or an empty folder."""
    if not final.is_dir() or final.is_symlink():
        raise UserError(f"{final}: exists and is not a folder; --force replaces only a submission folder: "
                        "move it away or choose another --out")
    if not any(final.iterdir()):
        return
    try:
        m = read_manifest(final)
    except UserError:
        m = None
    if m is None:
        raise UserError(f"{final}: not a submission folder written by iwslt-mc package (no valid {MANIFEST}); "
                        "--force would delete its files: move it away or choose another --out")


def _legacy_fingerprint(model_dir) -> str | None:
    from .modelio import legacy_model_fingerprint

    try:
        return legacy_model_fingerprint(model_dir)
    except OSError:
        return None


def _no_primary_warning(team: str, lp: str, condition: str, edition: str) -> str:
    return (f"no primary submission for {team} {lp} {condition} (edition {edition}): only contrastive runs, so the "
            "latest upload will count as primary; package one run with --type primary")


# ----------------------------------------------------------------------------------------------
# check


@dataclass
class SubmissionCheck:
    dir: Path
    name: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    identity: dict | None = None

    def to_json(self) -> dict:
        return {"dir": str(self.dir), "name": self.name, "ok": not self.problems, "problems": self.problems,
                "notes": self.notes}


@dataclass
class CheckResult:
    submissions: list[SubmissionCheck]
    problems: list[str]  # across submissions (e.g. two primaries)
    warnings: list[str] = field(default_factory=list)  # across submissions, not failures (no primary)

    @property
    def ok(self) -> bool:
        return not self.problems and all(not s.problems for s in self.submissions)

    def all_problems(self) -> list[str]:
        return [p for s in self.submissions for p in s.problems] + self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "submissions": [s.to_json() for s in self.submissions], "problems": self.problems,
                "warnings": self.warnings}


def check(submission_dirs: list[str | Path], *, model_dir: str | Path | None = None,
          use_recorded_model: bool = True) -> CheckResult:
    """Re-verify packaged submissions; collects every problem instead of stopping at the first.

    The model is re-measured from ``model_dir`` when given, else from the manifest's recorded
    model directory if it still exists (unless ``use_recorded_model`` is False).
    """
    seen, results = set(), []
    for d in submission_dirs:
        d = Path(d)
        key = d.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            results.append(_check_one(d, model_dir, use_recorded_model))
        except (TypeError, AttributeError, KeyError, ValueError) as e:
            # a hand-edited manifest with wrong types: report it, keep checking the other folders
            results.append(SubmissionCheck(dir=d, problems=[f"{d / MANIFEST}: malformed ({type(e).__name__}: {e})"]))
    cross, warns = [], []
    by_key: dict[tuple, list[SubmissionCheck]] = {}
    for r in results:
        if r.identity:
            by_key.setdefault(_primary_key(r.identity), []).append(r)
    for (ed, team, lp, cond), rs in by_key.items():
        primaries = [r for r in rs if r.identity.get("type") == "primary"]
        if len(primaries) > 1:
            cross.append(f"{len(primaries)} primary submissions for {team} {lp} {cond} (edition {ed}): "
                         f"{', '.join(str(r.dir) for r in primaries)}; only one primary per language pair and condition")
        if not primaries:
            warns.append(_no_primary_warning(team, lp, cond, ed))
    return CheckResult(submissions=results, problems=cross, warnings=warns)


def _check_one(d: Path, model_dir, use_recorded_model: bool) -> SubmissionCheck:
    r = SubmissionCheck(dir=d)
    P = r.problems.append
    if not d.is_dir():
        P(f"{d}: not a directory")
        return r
    try:
        m = read_manifest(d)
    except UserError as e:
        P(str(e))
        # Without a manifest, still check what can be checked: the name and the text files.
        r.identity = parse_name(d.name)
        if r.identity is None:
            P(f"{d}: folder name is not a standardized model name")
        for f in sorted(d.iterdir()):
            if f.is_file():
                r.problems.extend(text_file_problems(f, f.read_bytes()))
        return r

    name = m.get("name")
    r.name = name
    r.identity = {k: m.get(k) for k in ("edition", "team", "lp", "condition", "type")}

    # Name: folder, parse, recompute from the recorded fields and size.
    if d.name != name:
        P(f"{d}: folder name differs from the manifest's model name {name!r}")
    try:
        ed = track.get_edition(m.get("edition"))
    except UserError as e:
        P(f"{d / MANIFEST}: {e}")
        return r
    nbytes = m.get("bytes")
    if not isinstance(nbytes, int) or nbytes < 0:
        P(f"{d / MANIFEST}: no valid 'bytes'")
        nbytes = None
    bin_now = track.size_bin(nbytes, ed) if nbytes is not None else None
    if nbytes is not None and ed.has_bins and bin_now is None:
        P(f"{d}: storage size {nbytes:,} bytes fits no size bin of edition {ed.key}: not eligible")
    if nbytes is not None and m.get("bin") != bin_now:
        P(f"{d / MANIFEST}: bin {m.get('bin')!r} but {nbytes:,} bytes is {bin_now!r} in edition {ed.key}")
    try:
        expect_name = track.model_name(team=m.get("team") or "", lp=m.get("lp"), condition=m.get("condition"),
                                       submission_type=m.get("type"), edition=ed,
                                       bin_name=bin_now if ed.has_bins else None)
        if name != expect_name:
            P(f"{d}: name {name!r} does not match its recorded size and fields (expected {expect_name!r})")
    except UserError as e:
        P(f"{d / MANIFEST}: {e}")
    parsed = parse_name(name or "")
    if parsed is None:
        P(f"{d}: {name!r} is not a standardized model name of any edition")

    # Files: checksums, sizes, line counts; nothing missing, nothing extra.
    files = m.get("files") or {}
    present = {f.name for f in d.iterdir() if f.name != MANIFEST}
    for extra in sorted(present - set(files)):
        P(f"{d / extra}: not listed in the manifest (remove it, or package again)")
    for fname, info in files.items():
        f = d / fname
        if Path(fname).name != fname or fname.startswith("."):
            P(f"{d / MANIFEST}: unsafe file name {fname!r}")
            continue
        if not f.is_file():
            P(f"{f}: missing")
            continue
        data = f.read_bytes()
        if sha256_file(f) != info.get("sha256"):
            P(f"{f}: sha256 differs from the manifest (the file changed after packaging)")
        if len(data) != info.get("bytes"):
            P(f"{f}: {len(data):,} bytes, manifest says {info.get('bytes')}")
        if count_lines(data) != info.get("lines"):
            P(f"{f}: {count_lines(data):,} lines, manifest says {info.get('lines')}")
        r.problems.extend(text_file_problems(f, data))

    # Hypothesis files per test set.
    test_sets = m.get("test_sets") or {}
    if not test_sets:
        P(f"{d / MANIFEST}: no test sets")
    lp = m.get("lp")
    named = ed.test_set_keys(lp) if isinstance(lp, str) else ()
    if named:
        unknown = [t for t in test_sets if t not in named]
        if unknown:
            P(f"{d / MANIFEST}: test set(s) {', '.join(map(repr, unknown))} are not test sets of edition {ed.key} {lp} "
              f"({', '.join(named)})")
        missing = [t for t in named if t not in test_sets]
        declared = ((m.get("partial") or {}).get("missing") or []) if isinstance(m.get("partial"), dict) else []
        if missing and sorted(missing) != sorted(declared):
            P(f"{d}: misses {len(missing)} of edition {ed.key}'s {len(named)} {lp} test sets ({', '.join(missing)})"
              + (f", but the manifest declares a partial upload missing {', '.join(declared)}" if declared else
                 " and is not declared a partial upload"))
        elif missing:
            r.notes.append(f"partial upload (declared): {len(named) - len(missing)} of {len(named)} test sets; "
                           f"missing {', '.join(missing)}")
    for t in m.get("unverified_hypotheses") or []:
        r.notes.append(f"test set {t}: hypotheses packaged without a model check (no decode log; --allow-unlogged)")
    for t, info in test_sets.items():
        fname = info.get("file")
        if not _TEST_SET_RE.match(t) or fname != f"{name}.{t}.txt":
            P(f"{d / MANIFEST}: test set {t!r}: unexpected file name {fname!r}")
        if fname not in files:
            P(f"{d / MANIFEST}: test set {t!r}: file {fname!r} has no checksum entry")
        f = d / str(fname)
        if not f.is_file():
            continue
        n = count_lines(f.read_bytes())
        if n == 0:
            P(f"{f}: empty (0 lines): a hypothesis file has one line per segment")
        exp = info.get("expected_segments")
        if exp is not None and n != exp:
            P(f"{f}: {n:,} lines but test set {t!r} has {exp:,} segments (from {info.get('segments_from')})")
        if exp is None:
            r.notes.append(f"{f}: segment count unknown at packaging time; {n:,} lines not verified against the test set")

    # Description: mandatory fields present and agreeing with the manifest.
    desc_path = d / DESCRIPTION
    if desc_path.is_file():
        desc = parse_description(desc_path.read_bytes().decode("utf-8", errors="replace"))
        required = [D_NAME, D_STORAGE, D_PARAMS, D_TECHNIQUES] + ([D_BIN] if ed.has_bins else [])
        if m.get("condition") == "unconstrained":
            required.append(D_DATASETS)
        for label in required:
            v = desc.get(label, "")
            if not v or (label == D_DATASETS and v == "none recorded"):
                P(f"{desc_path}: mandatory field '{label}' is missing or empty")
        if desc.get(D_NAME) and desc[D_NAME] != name:
            P(f"{desc_path}: '{D_NAME}' is {desc[D_NAME]!r}, not {name!r}")
        if desc.get(D_STORAGE) and nbytes is not None:
            if _parse_int(desc[D_STORAGE]) != nbytes:
                P(f"{desc_path}: '{D_STORAGE}' says {desc[D_STORAGE]!r}, manifest has {nbytes:,} bytes")
            elif exact_unit(nbytes, ed.size_unit) not in desc[D_STORAGE]:
                P(f"{desc_path}: '{D_STORAGE}' lacks the exact size in {ed.size_unit} ({exact_unit(nbytes, ed.size_unit)})")
        if desc.get(D_PARAMS) and _parse_int(desc[D_PARAMS]) != m.get("params"):
            P(f"{desc_path}: '{D_PARAMS}' says {desc[D_PARAMS]!r}, manifest has {m.get('params')}")
        if ed.has_bins and desc.get(D_BIN) and desc[D_BIN] != m.get("bin"):
            P(f"{desc_path}: '{D_BIN}' is {desc[D_BIN]!r}, manifest has {m.get('bin')!r}")
    else:
        P(f"{desc_path}: missing")

    # The model itself: re-measure and compare.
    md = Path(model_dir) if model_dir is not None else None
    if md is None and use_recorded_model and m.get("model_dir"):
        if Path(m["model_dir"]).is_dir():
            md = Path(m["model_dir"])
        else:
            r.notes.append(f"model not re-measured: recorded model directory {m['model_dir']} no longer exists "
                           "(pass --model DIR)")
    if md is not None:
        _check_model(r, md, m, ed, nbytes)
    return r


def _check_model(r: SubmissionCheck, md: Path, m: dict, ed: track.Edition, nbytes) -> None:
    from .sizing import sizer
    from .modelio import model_fingerprint

    P = r.problems.append
    if not md.is_dir():
        P(f"{md}: model directory does not exist")
        return
    try:
        rep = sizer.measure(md, ed.key)
    except UserError as e:
        P(f"{md}: cannot measure the model ({e})")
        return
    st_bytes = int(rep.bytes)
    r.notes.append(f"model re-measured from {md}: {st_bytes:,} bytes (safetensors), {int(rep.params):,} parameters"
                   + (f", bin {rep.bin}" if ed.has_bins else ""))
    recorded = m.get("sizes") or ({"safetensors_bytes": nbytes} if nbytes is not None else {})
    if recorded.get("safetensors_bytes") is not None and st_bytes != recorded["safetensors_bytes"]:
        P(f"{md}: model is {st_bytes:,} bytes (safetensors) now, the submission says {recorded['safetensors_bytes']:,}")
    if int(rep.params) != m.get("params"):
        P(f"{md}: model has {int(rep.params):,} parameters now, the submission says {m.get('params')}")
    fp_then = m.get("model_fingerprint")
    if fp_then:
        fp_now = model_fingerprint(md)
        if fp_now != fp_then and fp_then == _legacy_fingerprint(md):
            r.notes.append(f"model fingerprint {fp_then} recorded by an older iwslt-mc (first and last MiB of each weight "
                           "file) matches; package again for a full-content check")
        elif fp_now != fp_then:
            P(f"{md}: model changed after packaging (fingerprint {fp_then} then, {fp_now} now: rebuilt or replaced); "
              "these hypotheses and sizes describe the earlier model: decode and package again")
        elif "torch_save_bytes" in recorded:
            r.notes.append("torch.save measure not re-run: the model's fingerprint (config and every byte of its weight "
                           "files) is unchanged")
    else:
        r.notes.append("no model fingerprint recorded (packaged by an older iwslt-mc): only sizes compared")
    if ed.has_bins and rep.bin != m.get("bin"):
        P(f"{md}: model is in {rep.bin or 'no bin'} now, the submission's name says {m.get('bin')}")
    if ed.has_bins and rep.bin is not None:
        try:
            want = track.model_name(team=m.get("team") or "", lp=m.get("lp"), condition=m.get("condition"),
                                    submission_type=m.get("type"), edition=ed, bin_name=rep.bin)
            if want != m.get("name"):
                P(f"{r.dir}: named {m.get('name')!r} but the model measures as {want!r}")
        except UserError:
            pass  # already reported from the manifest's fields
