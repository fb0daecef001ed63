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

import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..sizing import track
from ..errors import InputFileError, UserError
from ..fsutil import atomic_directory, atomic_write_bytes, atomic_write_json, sha256_file
from . import provenance
from .description import describe, exact_unit, measure_sizes, model_base, split_list
from .files import (DESCRIPTION, MANIFEST, MANIFEST_FORMAT, Hypothesis, count_lines, find_decoder_log,
                    legacy_fingerprint, read_decode_log, read_hypothesis, read_manifest)
from .names import existing_submissions, hypothesis_filename, no_primary_warning, primary_key, resolve_test_sets


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
    from ..floor.modeldir import model_fingerprint

    warnings: list[str] = []
    ed = track.get_edition(edition)
    hyps, segments, logs, missing = _check_request(ed, team=team, lp=lp, condition=condition,
                                                   submission_type=submission_type, hyps=hyps, segments=segments,
                                                   logs=logs, partial=partial, warnings=warnings)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputFileError(model_dir, "model directory does not exist" if not model_dir.exists() else "not a directory")
    fingerprint = model_fingerprint(model_dir)
    hyp_list, unverified, checks = _read_hypotheses(hyps, segments, logs, model_dir, fingerprint, lp=lp,
                                                    auto_logs=auto_logs, allow_unlogged=allow_unlogged,
                                                    warnings=warnings)
    _warn_test_sets(ed, lp, hyp_list, warnings)
    facts = _description_facts(model_dir, condition, techniques, datasets, warnings)
    report, sizes, size_sigs = measure_sizes(model_dir, ed)
    nbytes, params, bin_name = sizes[ed.primary_size_measure], int(report.params), report.bin
    warnings.extend(f"{model_dir}: {w}" for w in getattr(report, "warnings", []) if "fits no" not in w)
    name, final = _name_and_place(ed, model_dir, nbytes, bin_name, team=team, lp=lp, condition=condition,
                                  submission_type=submission_type, out=Path(out), force=force, warnings=warnings)
    description = describe(name=name, team=team, edition=ed, lp=lp, condition=condition,
                           submission_type=submission_type, sizes=sizes, params=params, bin_name=bin_name,
                           techniques=facts.tech, datasets=facts.data,
                           test_sets={h.test_set: h.lines for h in hyp_list},
                           base_model=model_base(model_dir, facts.prov, ed), signatures=size_sigs, notes=notes,
                           missing=missing, unverified=unverified)
    manifest = {
        "format": MANIFEST_FORMAT, "name": name, "edition": ed.key, "team": team, "lp": lp, "condition": condition,
        "type": submission_type, "bin": bin_name, "bytes": nbytes, "size_measure": ed.primary_size_measure,
        "sizes": sizes, "size_signatures": size_sigs, "params": params, "size_unit": ed.size_unit,
        "size": report.to_json(), "model_dir": str(model_dir.resolve()), "model_fingerprint": fingerprint,
        "techniques": facts.tech, "techniques_from": "provenance" if facts.prov_tech else "--techniques",
        "datasets": facts.data,
        "datasets_from": "provenance" if facts.prov_data else ("--datasets" if facts.user_data else None),
        "partial": {"missing": missing, "deliberate": True} if missing else None,
        "allow_unlogged": bool(allow_unlogged), "unverified_hypotheses": unverified, "test_sets": {}, "files": {},
        "warnings": warnings, "tool": "iwslt-mc", "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    labels = {t.key: t.label for t in ed.test_sets.get(lp, ())}
    _write(final, name, manifest, description, hyp_list, checks, labels=labels, force=force)
    return PackageResult(dir=final, name=name, manifest=manifest, description=description, warnings=warnings)


def _check_request(ed: track.Edition, *, team: str, lp: str, condition: str, submission_type: str, hyps: dict,
                   segments: dict | None, logs: dict | None, partial: bool, warnings: list[str]):
    """The options, before any file is read: team, name parts, test sets (every one of the pair unless
    ``partial``). Returns (hyps, segments, logs) by test-set key, and the test sets missing."""
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
    return hyps, segments, logs, missing


def _read_hypotheses(hyps: dict, segments: dict, logs: dict, model_dir: Path, fingerprint: str, *, lp: str,
                     auto_logs: bool, allow_unlogged: bool, warnings: list[str]):
    """Hypotheses read, normalized, counted, compared with the known number of segments and with the model
    that decoded them. Returns (hypotheses, test sets packaged unverified, model check per test set)."""
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
        legacy = _check_decoder(h, log, model_dir, fingerprint, lp, warnings)
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
    return hyp_list, unverified, checks


def _check_decoder(h: Hypothesis, log, model_dir: Path, fingerprint: str, lp: str, warnings: list[str]) -> bool:
    """Refuse hypotheses whose decode log names another model or language pair. True when the log carries an
    older iwslt-mc's partial fingerprint of this model (accepted, with a warning)."""
    legacy = False
    if log is not None and log.model_fingerprint is not None and log.model_fingerprint != fingerprint:
        legacy = log.model_fingerprint == legacy_fingerprint(model_dir)
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
    return legacy


def _warn_test_sets(ed: track.Edition, lp: str, hyp_list: list[Hypothesis], warnings: list[str]) -> None:
    """Fewer test sets than the edition publishes; two test sets with identical hypotheses."""
    named = ed.test_set_keys(lp)
    published = ed.published_test_set_counts.get(lp)
    if not named and published and len(hyp_list) < published:
        warnings.append(f"edition {ed.key} publishes {published} {lp} test set(s); this submission has {len(hyp_list)}")
    digests = {}
    for h in hyp_list:
        if h.data and h.data in digests:
            warnings.append(f"{h.source}: identical to the hypotheses of test set {digests[h.data]!r}")
        digests.setdefault(h.data, h.test_set)


@dataclass
class _Facts:
    prov: dict
    tech: list[str]
    data: list[str]
    prov_tech: list[str]
    prov_data: list[str]
    user_data: list[str]


def _description_facts(model_dir: Path, condition: str, techniques, datasets, warnings: list[str]) -> _Facts:
    """Techniques and datasets for the description: provenance first; the user's words only where it has none."""
    prov = provenance.read(model_dir)
    uses = provenance.dataset_uses(prov, model_dir)
    prov_tech, prov_data = provenance.techniques(prov), [u.name for u in uses]
    user_tech, user_data = split_list(techniques), split_list(datasets)
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
    return _Facts(prov, tech, data, prov_tech, prov_data, user_data)


def _name_and_place(ed: track.Edition, model_dir: Path, nbytes: int, bin_name, *, team: str, lp: str,
                    condition: str, submission_type: str, out: Path, force: bool, warnings: list[str]):
    """The model name (with its size bin) and the folder it goes to; one primary per pair and condition.
    Returns (name, final folder)."""
    if ed.has_bins and bin_name is None:
        top = max(b.high for b in ed.bins if b.high is not None)
        raise UserError(f"{model_dir}: storage size {nbytes:,} bytes ({exact_unit(nbytes, ed.size_unit)}) fits no "
                        f"size bin of edition {ed.key} (the largest bin ends below {exact_unit(top, ed.size_unit)}): "
                        "it cannot be submitted to this edition; compress it further")
    name = track.model_name(team=team, lp=lp, condition=condition, submission_type=submission_type, edition=ed,
                            bin_name=bin_name)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a directory")
    final = out / name
    if final.exists() and not force:
        raise UserError(f"{final}: a submission with this name already exists (use --force to replace it)")
    if final.exists():
        _replaceable(final)
    me = {"edition": ed.key, "team": team, "lp": lp, "condition": condition}
    others = [(d, ident) for d, ident in existing_submissions(out)
              if d.name != name and primary_key(ident) == primary_key(me)]
    if submission_type == "primary":
        for d, ident in others:
            if ident.get("type") == "primary":
                raise UserError(f"{d}: already a primary submission for {team} {lp} {condition} (edition {ed.key}); "
                                "only one primary per language pair and condition: package this one with "
                                f"--type contrastive, or remove {d}")
    elif not any(ident.get("type") == "primary" for _, ident in others):
        warnings.append(no_primary_warning(team, lp, condition, ed.key))
    return name, final


def _write(final: Path, name: str, manifest: dict, description: str, hyp_list: list[Hypothesis],
           checks: dict[str, str], *, labels: dict, force: bool) -> None:
    """The hypothesis files, description.txt and manifest.json (with every file's checksum), written to a
    temporary folder renamed into place."""
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


