"""Submission names, test sets and the options naming them (``--hyp TESTSET=FILE``, ``--hyp-dir``)."""

from __future__ import annotations

import re
from pathlib import Path

from ..sizing import track
from ..errors import InputFileError, UserError
from .files import TEST_SET_RE, read_manifest


# ----------------------------------------------------------------------------------------------
# names and options


def validate_test_set(name: str) -> str:
    if not TEST_SET_RE.match(name or ""):
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


def no_primary_warning(team: str, lp: str, condition: str, edition: str) -> str:
    return (f"no primary submission for {team} {lp} {condition} (edition {edition}): only contrastive runs, so the "
            "latest upload will count as primary; package one run with --type primary")


# ----------------------------------------------------------------------------------------------
# submissions already written


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


def primary_key(ident: dict) -> tuple:
    return (str(ident.get("edition")), ident.get("team"), ident.get("lp"), ident.get("condition"))
