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
import platform
import time
from pathlib import Path

from .fsutil import atomic_write_json

FILENAME = "provenance.json"


def read(model_dir: str | Path) -> dict:
    p = Path(model_dir) / FILENAME
    if not p.exists():
        return {"format": 1, "base": {"path": str(model_dir)}, "stages": []}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        from .errors import InputFileError

        raise InputFileError(p, f"not valid JSON ({e})") from None


def versions() -> dict:
    """Versions of the libraries that change results (only those already imported, to stay cheap)."""
    import sys

    from . import __version__

    out = {"iwslt-mc": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "sacrebleu"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def make_record(stage: str, options: dict, *, techniques: list[str] | None = None, data: list | None = None,
                started: float | None = None, **extra) -> dict:
    rec = {
        "stage": stage,
        "options": options,
        "techniques": techniques or [],
        "data": data or [],
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


def datasets_used(prov: dict) -> list[str]:
    seen, out = set(), []
    for rec in prov.get("stages", []):
        for d in rec.get("data", []):
            name = d if isinstance(d, str) else d.get("name") or d.get("path")
            if name and name not in seen:
                seen.add(name)
                out.append(name)
    return out
