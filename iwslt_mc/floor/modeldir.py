"""A model directory as files, read without torch or transformers, in one place: its ``config.json`` (a dict:
:func:`read_config`, :func:`read_config_or_none`; or a :class:`PlainConfig`), the model type it names, its
weight files (one ``.safetensors`` file or a sharded index; pickles are refused, never loaded), their
safetensors headers, and the fingerprint of its content (sha256 of every weight byte, cached beside the
weights). The family seam (:func:`iwslt_mc.families.family_for`), the planner, the sizer, the stages, the
build, the decoder and the packager read it here.

:class:`PlainConfig`: a model's ``config.json`` as a plain object, attribute access without transformers.
The planner reads a base's widths, layer counts and vocabulary from its config and changes them (fewer
layers, narrower widths) to predict sizes. A transformers config object costs importing transformers
(seconds); :class:`PlainConfig` holds the same values read from the JSON, with the fields a family leaves
to its config class's defaults filled in by the family (:meth:`iwslt_mc.families.Family.plain_config`),
and offers what the planner uses of a transformers config: attributes (``getattr(cfg, "head_dim", None)``),
``copy.deepcopy``, ``to_dict()`` and ``to_json_string()``. Nested ``*_config`` objects (``text_config``,
``audio_config``) are PlainConfigs too.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from types import SimpleNamespace

from ..errors import InputFileError, UserError

# Weight files in a pickle format: refused by the sizer and the loaders (pickles are never loaded).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"
# A header larger than this is not a real model header (the full 7B model's is ~110 kB); refusing it
# keeps a corrupt length field from making us read gigabytes.
MAX_HEADER_BYTES = 100 * 10**6


# ----------------------------------------------------------------------------- config.json

def read_model_type(model_dir: str | os.PathLike) -> str | None:
    """``model_type`` from a model directory's config.json (None when it has none)."""
    f = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputFileError(f, "not UTF-8 text") from None
    except ValueError as e:
        raise InputFileError(f, f"not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise InputFileError(f, "not a JSON object")
    mt = cfg.get("model_type")
    return mt if isinstance(mt, str) else None


def read_config(model_dir: str | os.PathLike) -> dict:
    """A model directory's config.json as a dict; a one-line error naming the file when it is missing or not JSON."""
    p = Path(model_dir) / "config.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: not found (not a model directory)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: invalid JSON ({e})") from None


def read_config_or_none(model_dir: str | os.PathLike) -> dict | None:
    """A model directory's config.json as a dict, or None when it has none or it is unreadable or not a JSON
    object (for what only reads a hint from it: the runtime dtype, the model type in words, the sizer's
    torch.save measure)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


class PlainConfig(SimpleNamespace):
    """A config.json dict as attributes (see the module docstring)."""

    @classmethod
    def from_dict(cls, d: dict, defaults: dict | None = None) -> "PlainConfig":
        """``d`` with ``defaults`` (same nesting) filled in where ``d`` has no value or None for a sub-config."""
        out = {}
        defaults = defaults or {}
        for k in set(d) | set(defaults):
            v = d.get(k, defaults.get(k))
            if k.endswith("_config") and (isinstance(v, dict) or (v is None and isinstance(defaults.get(k), dict))):
                v = cls.from_dict(v or {}, defaults.get(k) if isinstance(defaults.get(k), dict) else None)
            out[k] = v
        return cls(**out)

    def require_positive(self, fields: dict[str, tuple[str, ...]], optional: dict[str, tuple[str, ...]] | None = None):
        """``self``, after checking that every ``fields`` (sub-config -> names) value is a positive integer, and
        every ``optional`` one too where it is set; ValueError naming the first that is not."""
        for group, must in ((fields, True), (optional or {}, False)):
            for sub, names in group.items():
                c = getattr(self, sub)
                for n in names:
                    v = getattr(c, n, None)
                    if v is None and not must:
                        continue
                    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                        raise ValueError(f"{sub}.{n} is {v!r}, not a positive integer")
        return self

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, PlainConfig) else json.loads(json.dumps(v)))
                for k, v in sorted(vars(self).items())}

    def to_json_string(self, use_diff: bool = False) -> str:
        """The JSON (sorted keys, indent 2); ``use_diff`` is accepted for transformers' signature and ignored."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def get_text_config(self):
        return getattr(self, "text_config", None) or self


# ----------------------------------------------------------------------------- weight files and headers

def weight_files(model_dir: str | os.PathLike) -> tuple[Path, list[str], list[str]]:
    """(base directory, weight files relative to it, warnings). Accepts a directory or one .safetensors file."""
    p = Path(model_dir)
    warnings: list[str] = []
    if not p.exists():
        raise InputFileError(p, "no such file or directory")
    if p.is_file():
        if p.suffix == ".safetensors":
            return p.parent, [p.name], warnings
        if p.suffix in PICKLE_SUFFIXES:
            raise InputFileError(p, _pickle_message())
        if p.name == INDEX_NAME or p.name.endswith(".safetensors.index.json"):
            return _from_index(p.parent, p, warnings)
        raise InputFileError(p, "not a model directory or a .safetensors file")
    index = p / INDEX_NAME
    if not index.exists():
        other = sorted(p.glob("*.safetensors.index.json"))
        other = [q for q in other if not q.name.startswith("adapter")]
        index = other[0] if len(other) == 1 else index
    if index.exists():
        return _from_index(p, index, warnings)
    files = sorted(q.name for q in p.glob("*.safetensors") if q.is_file())
    pickles = sorted(q.name for q in p.iterdir() if q.is_file() and q.suffix in PICKLE_SUFFIXES and q.name != "training_args.bin")
    if not files:
        if pickles:
            raise InputFileError(p / pickles[0], _pickle_message())
        raise InputFileError(p, "no weight files (*.safetensors) in this directory")
    if pickles:
        warnings.append(f"pickle checkpoint files not counted (convert to safetensors or delete them before upload): {', '.join(pickles)}")
    if any(f.startswith("adapter_model") for f in files):
        warnings.append("adapter weights (adapter_model*.safetensors) are counted: merge the adapter into the model before sizing a submission")
    return p, files, warnings


def _from_index(base: Path, index: Path, warnings: list[str]) -> tuple[Path, list[str], list[str]]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InputFileError(index, f"corrupt safetensors index ({type(e).__name__}: {e})") from None
    for f in files:
        if not (base / f).is_file():
            raise InputFileError(base / f, f"shard listed in {index.name} is missing")
    unlisted = sorted(q.name for q in base.glob("*.safetensors") if q.name not in files)
    if unlisted:
        warnings.append(f"safetensors files not listed in {index.name} are not counted: {', '.join(unlisted)}")
    return base, files, warnings


def _pickle_message() -> str:
    return ("pickle checkpoint: iwslt-mc never unpickles weights (unpickling runs arbitrary code); "
            "convert to safetensors, e.g. load the model and call save_pretrained(dir, safe_serialization=True)")


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Parse the JSON header of one safetensors file; returns (header, bytes of length field + header).

    Raises :class:`InputFileError` naming the file when it is truncated or not safetensors.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputFileError(path, f"truncated safetensors file ({size} bytes, not even the 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise InputFileError(path, f"truncated or corrupt safetensors header (header length field says {n} bytes, file has {size})")
            raw = f.read(n)
    except OSError as e:
        raise InputFileError(path, f"cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(path, f"corrupt safetensors header (not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise InputFileError(path, "corrupt safetensors header (not a JSON object)")
    return header, 8 + n


# ----------------------------------------------------------------------------- fingerprint

FINGERPRINT_CACHE = ".iwslt-mc-fingerprint"  # beside the weights; no .json suffix: not one of the model's files
_FINGERPRINT_CACHE_FORMAT = 1
# A weight file modified this recently may change again within its mtime's granularity (the racy case
# git knows): its digest is used but not cached.
_RACY_SECONDS = 2.0


def model_fingerprint(model_dir) -> str:
    """Identity of a model directory's content: its JSON and template files (minus provenance) and the
    sha256 of every byte of every weight file (any changed byte changes it, even at the same size).
    Used to refuse resuming or packaging against another model.

    Each weight file is hashed once: its digest is cached beside the weights (``.iwslt-mc-fingerprint``),
    keyed by the file's name, size and mtime, and reused while those match; a read-only model directory
    keeps the cache under ``$XDG_CACHE_HOME/iwslt-mc/fingerprints/`` instead, or nowhere (never an error).
    """
    import hashlib

    d = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(d.glob("*.json")) + sorted(d.glob("*.jinja")):
        if f.name != "provenance.json":
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    for name, size, digest in weight_digests(d):
        h.update(f"{name}\0{size}\0{digest}\0".encode())
    return h.hexdigest()[:16]


def legacy_model_fingerprint(model_dir) -> str:
    """The fingerprint iwslt-mc wrote before the full-content one: JSON files and, per weight file, its size
    and first and last MiB. Only to recognize logs, builds and manifests written then (a change in the middle
    of a weight file does not show in it)."""
    import hashlib

    d = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(d.glob("*.json")) + sorted(d.glob("*.jinja")):
        if f.name != "provenance.json":
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    for f in sorted(d.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _sha256_of_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])  # hashlib releases the GIL: files hash in parallel threads
    return h.hexdigest()


def _fingerprint_cache_paths(d: Path) -> list[Path]:
    """Where a directory's digest cache may live: beside the weights, else under the user's cache."""
    import hashlib

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iwslt-mc" / "fingerprints"
    key = hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:32]
    return [d / FINGERPRINT_CACHE, base / f"{key}.json"]


def _read_fingerprint_cache(paths: list[Path]) -> list[dict]:
    found = []
    for p in paths:
        try:
            c = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(c, dict) and c.get("format") == _FINGERPRINT_CACHE_FORMAT and isinstance(c.get("files"), dict):
            found.append(c["files"])
    return found


def _write_fingerprint_cache(paths: list[Path], d: Path, files: dict) -> None:
    from ..fsutil import atomic_write_json

    obj = {"format": _FINGERPRINT_CACHE_FORMAT, "dir": str(d.resolve()), "files": files,
           "what": "sha256 of each weight file, valid while its size and mtime match (iwslt-mc model_fingerprint)"}
    for p in paths:
        try:
            atomic_write_json(p, obj)
            return
        except OSError:  # read-only model directory, full disk, ...: try the next place, else no cache
            continue


def weight_digests(model_dir) -> list[tuple[str, int, str]]:
    """``(file name, size, sha256)`` of each ``*.safetensors`` file of a model directory, sorted by name;
    digests come from the cache while a file's size and mtime match it (see :func:`model_fingerprint`)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    stats = {f.name: f.stat() for f in files}
    paths = _fingerprint_cache_paths(d)
    caches = _read_fingerprint_cache(paths)

    def valid(name: str) -> str | None:
        st = stats[name]
        for cached in caches:
            c = cached.get(name)
            if isinstance(c, dict) and c.get("size") == st.st_size and c.get("mtime_ns") == st.st_mtime_ns \
                    and isinstance(c.get("sha256"), str):
                return c["sha256"]
        return None

    digests = {f.name: valid(f.name) for f in files}
    todo = [f for f in files if digests[f.name] is None]
    if todo:
        started = time.time()
        with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
            for f, digest in zip(todo, pool.map(_sha256_of_file, todo)):
                digests[f.name] = digest
        now = {f.name: f.stat() for f in todo}
        keep = {n: {"size": stats[n].st_size, "mtime_ns": stats[n].st_mtime_ns, "sha256": digests[n]}
                for n in stats if n not in {f.name for f in todo}}
        for f in todo:
            st = now[f.name]
            if (st.st_size, st.st_mtime_ns) != (stats[f.name].st_size, stats[f.name].st_mtime_ns):
                continue  # changed while being read
            if st.st_mtime_ns / 1e9 > started - _RACY_SECONDS:
                continue  # too recent to trust its mtime (may change again within the same tick)
            keep[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digests[f.name]}
        if keep or caches:  # remember what is new, forget what is stale
            _write_fingerprint_cache(paths, d, keep)
    return [(f.name, stats[f.name].st_size, digests[f.name]) for f in files]
