"""Facts the planner learned from a model transformers built on the meta device, kept on disk by config.

Gemma 4's planner enumerates its tensors and the organizers' torch.save layout from the model
transformers builds for a config (seconds: importing transformers and torch, building the model).
What it learns depends only on the config, this package's code and transformers' version: each answer is
stored as JSON under ``$XDG_CACHE_HOME/iwslt-mc/plan/`` (``~/.cache/...``; ``IWSLT_MC_PLAN_CACHE``
overrides the folder, ``off`` turns the cache off) named by the SHA-256 of that key, so the next
``plan`` of the same base reads it instead (no transformers import). A missing, unreadable or
unwritable cache is only slower: nothing here raises.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from . import __version__


def transformers_version() -> str:
    """The installed transformers' version, without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        import transformers

        return transformers.__version__


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """SHA-256 of the code that computes what is stored (the families' modules, torchsave, the floor's state-dict
    layouts, sizes and model-directory reader (PlainConfig), quantization formats, this module): a change to it,
    not only a new release, makes earlier entries misses."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted([*(here / "families").rglob("*.py"), here / "sizing" / "torchsave.py",
                     here / "quantization" / "formats.py", here / "floor" / "statedict.py", here / "floor" / "sizes.py",
                     here / "floor" / "modeldir.py",
                     Path(__file__).resolve()]):
        name = f.relative_to(here).as_posix()  # two families' plan.py are two entries
        try:
            h.update(name.encode() + b"\0" + f.read_bytes())
        except OSError:
            h.update(name.encode() + b"\0?")
    return h.hexdigest()


def _folder() -> Path | None:
    env = os.environ.get("IWSLT_MC_PLAN_CACHE")
    if env == "off":
        return None
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iwslt-mc" / "plan"


def _path(kind: str, key) -> Path | None:
    folder = _folder()
    if folder is None:
        return None
    text = json.dumps([kind, key, __version__, _code_digest(), transformers_version()], sort_keys=True, separators=(",", ":"), default=str)
    return folder / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def get(kind: str, key):
    """The value stored for (``kind``, ``key``), or None."""
    p = _path(kind, key)
    try:
        return json.loads(p.read_text(encoding="utf-8"))["value"] if p is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def put(kind: str, key, value) -> None:
    """Store ``value`` (JSON) for (``kind``, ``key``); silently nothing when the folder is not writable."""
    p = _path(kind, key)
    if p is None:
        return
    from .fsutil import atomic_write_text

    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps({"value": value}, separators=(",", ":")))
    except OSError:
        pass
