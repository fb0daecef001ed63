"""``provenance.json`` in every model directory the tool writes: the full stage history.

Format::

    {"format": 1, "base": {...}, "stages": [ {record}, ... ]}

A record: ``stage``, ``options``, ``params_before``, ``params_after``, ``bytes_before``,
``bytes_after``, ``data`` (list of dataset descriptions), ``techniques`` (human-readable, used by
the packager's description), ``versions``, ``started``, ``seconds``, plus stage-specific extras.
A stage copies the provenance of its input directory and appends its own record, so a chain
prune -> fine-tune -> quantize leaves its whole history (as llm-compressor does with recipes).
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import atomic_write_json

FILENAME = "provenance.json"


def read(model_dir: str | Path) -> dict:
    p = Path(model_dir) / FILENAME
    if not p.exists():
        return {"format": 1, "base": {"path": str(model_dir)}, "stages": []}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        from ..errors import InputFileError

        raise InputFileError(p, f"not valid JSON ({e})") from None


def versions() -> dict:
    """Versions of the libraries that change results (only those already imported, to stay cheap)."""
    import sys

    from .. import __version__

    out = {"iwslt-mc": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "sacrebleu"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def absolute_data(records: list | None) -> list:
    """Data records with each local path made absolute (resolved against the current directory), so that the
    record means the same whatever directory it is read from later; hub ids and missing paths stay as written."""
    out = []
    for r in records or []:
        if isinstance(r, dict) and isinstance(r.get("path"), str):
            r = dict(r, path=_absolute_spec(r["path"]))
        elif isinstance(r, str):
            r = _absolute_spec(r)
        out.append(r)
    return out


def _absolute_spec(spec: str) -> str:
    path, q, query = spec.partition("?")
    p = os.path.expanduser(path)
    if not p or os.path.isabs(p) or not os.path.exists(p):
        return spec
    return str(Path(p).resolve()) + q + query


def make_record(stage: str, options: dict, *, techniques: list[str] | None = None, data: list | None = None,
                started: float | None = None, **extra) -> dict:
    rec = {
        "stage": stage,
        "options": options,
        "techniques": techniques or [],
        "data": absolute_data(data),
        "cwd": os.getcwd(),  # what relative paths in this record (if any) were relative to
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started or time.time())),
        "seconds": round(time.time() - started, 3) if started else None,
    }
    rec.update(extra)
    return rec


def append(in_dir: str | Path | None, out_dir: str | Path, record: dict) -> dict:
    """Write ``out_dir/provenance.json`` = provenance of ``in_dir`` + ``record``. Returns it."""
    prov = read(in_dir) if in_dir is not None else {"format": 1, "base": {}, "stages": []}
    if in_dir is not None and not prov.get("base"):
        prov["base"] = {"path": str(in_dir)}
    prov["stages"] = list(prov.get("stages", [])) + [record]
    atomic_write_json(Path(out_dir) / FILENAME, prov)
    return prov


def techniques(prov: dict) -> list[str]:
    """All techniques in stage order, de-duplicated."""
    seen, out = set(), []
    for rec in prov.get("stages", []):
        for t in rec.get("techniques", []):
            if t not in seen:
                seen.add(t)
                out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# Datasets, by name
#
# A stage records the data it read as loader specs ({"path": ..., "split": ..., "size": ...}), which
# hold local paths. A description names datasets, never paths: a spec is recognized as a public
# dataset (ACL 60/60 by its hub id or the build's ``acl6060`` name, CoVoST 2 by its tsv or the
# ``covost2`` name), as data derived by an earlier stage (a distillation output names its own
# sources and teacher), or by the name the user gave it in ``build --data NAME=PATH``; a spec none
# of these names is "an unnamed local dataset" (its folder's name only).

ACL6060 = "ACL 60/60"
COVOST2 = "CoVoST 2"
_ACL_HUB_IDS = {"ymoslem/acl-6060", "acl6060"}
_ACL_NAME_RE = re.compile(r"acl[-_ ]?60[-_ /]?60", re.I)
_COVOST_TSV_RE = re.compile(r"covost_v2\.(\w+)_(\w+)\.(\w+)\.tsv$", re.I)


@dataclass(frozen=True)
class DatasetUse:
    """A dataset a model was trained or compressed with, as a description names it.

    ``origin``: "acl6060" (the constrained condition's data), "derived" (made by an earlier stage
    from the sources in ``sources``), "outside" (any other data) or "unknown" (a derived dataset
    whose record is gone: its sources cannot be verified).
    """

    name: str
    origin: str
    sources: tuple[str, ...] = ()

    @property
    def constrained_ok(self) -> bool:
        """Allowed under the constrained condition: ACL 60/60, or data derived only from it."""
        if self.origin == "acl6060":
            return True
        return self.origin == "derived" and bool(self.sources) and all(s == "acl6060" for s in self.sources)


def _spec_path(spec: str) -> str:
    return os.path.expanduser(str(spec).partition("?")[0])


def _same_path(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def build_data_names(model_dir: str | Path | None) -> dict[str, str]:
    """``{path: name}`` from the ``build.json`` of the build a model directory belongs to (RUN/model or
    RUN/stages/NN-ID), i.e. the names given to ``build --data NAME=PATH``; empty when there is none."""
    if model_dir is None:
        return {}
    d = Path(model_dir).resolve()
    for cand in (d.parent / "build.json", d.parent.parent / "build.json"):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text(encoding="utf-8")).get("data") or {}
            except (OSError, ValueError, AttributeError):
                return {}
            anchors = anchors_of(cand.parent)
            return {_anchored(_spec_path(v), anchors): str(k) for k, v in data.items() if isinstance(v, str)}
    return {}


def _covost_name(path: str, size) -> str:
    m = _COVOST_TSV_RE.search(Path(path).name)
    name = COVOST2 + (f" {m.group(1)}-{m.group(2)} {m.group(3)}" if m else "")
    if isinstance(size, int):
        name += f" {size // 1000}k" if size % 1000 == 0 else f" {size:,}"
    return name


def _teacher_words(teacher: dict) -> str:
    stages = [s for s in teacher.get("stages") or [] if s]
    if not stages:
        return "the base model as teacher"
    if "finetune" in stages:
        return "the fine-tuned teacher"
    return "a compressed teacher (" + " > ".join(stages) + ")"


def _anchored(path: str, anchors) -> str:
    """A relative ``path`` of a record written before paths were stored absolute: resolved against the first
    anchor directory (the record's ``cwd``, then the model directory and its parents) under which it exists;
    unchanged when absolute or found under none (then it is read relative to the current directory)."""
    p = os.path.expanduser(path)
    if not p or os.path.isabs(p):
        return path
    for a in anchors:
        try:
            cand = Path(a) / p
            if cand.exists():
                return str(cand.resolve())
        except (OSError, TypeError):
            continue
    return path


def anchors_of(model_dir: str | Path | None, record: dict | None = None) -> list[Path]:
    """Directories a relative path of ``record`` may be relative to: its recorded ``cwd``, then ``model_dir``
    and each of its parents (a build run from PROJECT wrote PROJECT-relative paths; its models live below)."""
    out: list[Path] = []
    if isinstance(record, dict) and isinstance(record.get("cwd"), str):
        out.append(Path(record["cwd"]))
    if model_dir is not None:
        try:
            d = Path(model_dir).resolve()
        except OSError:
            return out
        out += [d, *d.parents]
    return out


def describe_dataset(record, names: dict[str, str] | None = None, _depth: int = 0, anchors=()) -> DatasetUse:
    """The :class:`DatasetUse` of one provenance data record (a loader spec dict or a string). ``anchors``:
    directories a relative path in it may be relative to (:func:`anchors_of`)."""
    names = names or {}
    if isinstance(record, str):
        if "/" not in record and os.sep not in record and not Path(record).exists():
            if record in _ACL_HUB_IDS or _ACL_NAME_RE.search(record):
                return DatasetUse(ACL6060, "acl6060")
            if record.lower().replace(" ", "").startswith("covost"):
                return DatasetUse(COVOST2 if record.lower() in ("covost2", "covost") else record, "outside")
            return DatasetUse(record, "outside")  # a name already
        record = {"path": record}
    if not isinstance(record, dict):
        return DatasetUse("an unrecognized data record", "outside")
    path = str(record.get("name") or record.get("path") or "")
    if not record.get("name") and path:
        path = _anchored(path, anchors)
    size = record.get("size")
    # Derived: a distillation output (its own provenance says what it was made from).
    dprov = Path(path) / FILENAME
    if _depth < 4 and dprov.is_file():
        try:
            inner = json.loads(dprov.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            inner = {}
        if isinstance(inner, dict) and inner.get("kind") == "distillation data":
            inner_anchors = anchors_of(Path(path), None) + list(anchors)
            srcs = [describe_dataset(r, names, _depth + 1, inner_anchors) for r in inner.get("data") or []]
            words = " + ".join(dict.fromkeys(s.name for s in srcs)) or "unrecorded data"
            origins = tuple(o for s in srcs for o in ((s.origin,) if s.origin != "derived" else s.sources))
            return DatasetUse(f"{words} translated by {_teacher_words(inner.get('teacher') or {})}", "derived",
                              origins)
    if Path(path).name == "distill_data":
        return DatasetUse("distillation output of an earlier stage (its record is no longer available)", "unknown")
    # Named in the build: --data NAME=PATH.
    for p, n in names.items():
        if _same_path(p, path):
            if n == "acl6060":
                return DatasetUse(ACL6060, "acl6060")
            if n.lower().startswith("covost"):
                return DatasetUse(_covost_name(path, size), "outside")
            return DatasetUse(n + (f" ({size:,} examples)" if isinstance(size, int) else ""), "outside")
    # Public datasets recognized by hub id or file name.
    if path in _ACL_HUB_IDS or _ACL_NAME_RE.search(Path(path).name or path):
        return DatasetUse(ACL6060, "acl6060")
    if record.get("format") == "covost2" or "covost" in path.lower():
        return DatasetUse(_covost_name(path, size), "outside")
    if path.count("/") == 1 and not Path(path).exists() and not path.startswith((".", "/", "~")):
        return DatasetUse(path, "outside")  # a hub id is a dataset's public name
    return DatasetUse(f"an unnamed local dataset ('{Path(path).name or 'data'}')", "outside")


def dataset_uses(prov: dict, model_dir: str | Path | None = None) -> list[DatasetUse]:
    """Every dataset in the stage history, by name, in order, de-duplicated."""
    names = build_data_names(model_dir)
    seen, out = set(), []
    for rec in prov.get("stages", []):
        anchors = anchors_of(model_dir, rec)
        for d in rec.get("data", []):
            use = describe_dataset(d, names, anchors=anchors)
            if use.name not in seen:
                seen.add(use.name)
                out.append(use)
    return out


def datasets_used(prov: dict, model_dir: str | Path | None = None) -> list[str]:
    """Names of the datasets in the stage history (never local paths)."""
    return [u.name for u in dataset_uses(prov, model_dir)]
