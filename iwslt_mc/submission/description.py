"""description.txt: the mandatory description fields, written by the packager and read by the checker; and the
size measures it states."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from .. import __version__
from ..floor.modeldir import read_config_or_none
from ..sizing import track

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
# size measures


def torch_save_bytes(model_dir: str | Path, report=None) -> tuple[int, str]:
    """The organizers' 2027 measure: bytes of ``torch.save(model.state_dict())`` of the model loaded as
    their script loads it (one GPU), and its signature.

    From the sizer (:mod:`iwslt_mc.sizing.torchsave`: computed exactly from the safetensors headers and
    config, no weights read); where a checkpoint cannot be laid out exactly, the model is loaded once
    and a real ``torch.save`` is counted through a pipe (``torchsave.measure_streamed``).
    """
    from ..sizing import sizer, torchsave

    rep = report if report is not None else sizer.measure(model_dir, None)
    ts = rep.torch_save
    if ts is None:
        from ..output import hf_progress_bars_off

        with hf_progress_bars_off():
            ts = torchsave.measure_streamed(model_dir)
    return ts.bytes, ts.signature


def measure_sizes(model_dir: str | Path, ed: track.Edition):
    """(sizer report, {measure id: bytes}, {measure id: signature}) for every size measure of ``ed``."""
    from ..sizing import sizer

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


def model_base(model_dir: Path, prov: dict, ed: track.Edition) -> str:
    """The base model in words, never a local path: the recorded base when its folder is named as a
    hub model id of the model's family (``Qwen2-Audio-7B-Instruct``, ``gemma-4-12B-it``), else the
    edition's base model, else the family and model type."""
    from ..families import family_of_model_type

    mt = (read_config_or_none(model_dir) or {}).get("model_type")
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


def split_list(value) -> list[str]:
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


def parse_int(text: str) -> int | None:
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
