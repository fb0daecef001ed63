"""The checker: re-verify packaged submissions (name, sizes, checksums, lines, description, the model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..sizing import track
from ..errors import UserError
from ..fsutil import sha256_file
from .description import (D_BIN, D_DATASETS, D_NAME, D_PARAMS, D_STORAGE, D_TECHNIQUES, exact_unit,
                          parse_description, parse_int)
from .files import DESCRIPTION, MANIFEST, TEST_SET_RE, count_lines, legacy_fingerprint, read_manifest, text_file_problems
from .names import no_primary_warning, parse_name, primary_key


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
            by_key.setdefault(primary_key(r.identity), []).append(r)
    for (ed, team, lp, cond), rs in by_key.items():
        primaries = [r for r in rs if r.identity.get("type") == "primary"]
        if len(primaries) > 1:
            cross.append(f"{len(primaries)} primary submissions for {team} {lp} {cond} (edition {ed}): "
                         f"{', '.join(str(r.dir) for r in primaries)}; only one primary per language pair and condition")
        if not primaries:
            warns.append(no_primary_warning(team, lp, cond, ed))
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
    got = _check_name(r, d, m, name)
    if got is None:
        return r
    ed, nbytes = got
    files = _check_files(r, d, m)
    _check_test_sets(r, d, m, ed, name, files)
    _check_description(r, d, m, ed, name, nbytes)
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


def _check_name(r: SubmissionCheck, d: Path, m: dict, name):
    """Name: folder, parse, recompute from the recorded fields and size. (edition, bytes), or None when the
    edition is unknown (nothing else can be checked)."""
    P = r.problems.append
    if d.name != name:
        P(f"{d}: folder name differs from the manifest's model name {name!r}")
    try:
        ed = track.get_edition(m.get("edition"))
    except UserError as e:
        P(f"{d / MANIFEST}: {e}")
        return None
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
    return ed, nbytes


def _check_files(r: SubmissionCheck, d: Path, m: dict) -> dict:
    """Files: checksums, sizes, line counts; nothing missing, nothing extra. Returns the manifest's files."""
    P = r.problems.append
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
    return files


def _check_test_sets(r: SubmissionCheck, d: Path, m: dict, ed: track.Edition, name, files: dict) -> None:
    """Hypothesis files per test set: every test set of the edition (or a declared partial upload), lines."""
    P = r.problems.append
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
        if not TEST_SET_RE.match(t) or fname != f"{name}.{t}.txt":
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


def _check_description(r: SubmissionCheck, d: Path, m: dict, ed: track.Edition, name, nbytes) -> None:
    """Description: mandatory fields present and agreeing with the manifest."""
    P = r.problems.append
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
            if parse_int(desc[D_STORAGE]) != nbytes:
                P(f"{desc_path}: '{D_STORAGE}' says {desc[D_STORAGE]!r}, manifest has {nbytes:,} bytes")
            elif exact_unit(nbytes, ed.size_unit) not in desc[D_STORAGE]:
                P(f"{desc_path}: '{D_STORAGE}' lacks the exact size in {ed.size_unit} ({exact_unit(nbytes, ed.size_unit)})")
        if desc.get(D_PARAMS) and parse_int(desc[D_PARAMS]) != m.get("params"):
            P(f"{desc_path}: '{D_PARAMS}' says {desc[D_PARAMS]!r}, manifest has {m.get('params')}")
        if ed.has_bins and desc.get(D_BIN) and desc[D_BIN] != m.get("bin"):
            P(f"{desc_path}: '{D_BIN}' is {desc[D_BIN]!r}, manifest has {m.get('bin')!r}")
    else:
        P(f"{desc_path}: missing")


def _check_model(r: SubmissionCheck, md: Path, m: dict, ed: track.Edition, nbytes) -> None:
    from ..sizing import sizer
    from ..floor.modeldir import model_fingerprint

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
        if fp_now != fp_then and fp_then == legacy_fingerprint(md):
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
