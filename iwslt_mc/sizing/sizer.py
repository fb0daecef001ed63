"""Exact storage size, logical parameter count and size bin of a model directory.

Reads safetensors headers only, with the standard library (``struct``, ``json``): never torch or
numpy, never tensor data, with one exception: the few hundred bytes of a bitsandbytes 4-bit
``quant_state`` tensor, which is JSON that carries the shape of the weight the packed bytes stand for.

Storage size S is the total size in bytes of the safetensors weight files, the measure of the 2025
track ("storage size of the model", decimal units). Beside it, the organizers' 2027 measure: the bytes
of ``torch.save(model.state_dict())`` of the model loaded with transformers, computed exactly from the
same headers and config.json by :mod:`iwslt_mc.sizing.torchsave` (pure Python too). Parameters are *logical*: a bitsandbytes 4-bit weight
counts as the number of elements of the weight it replaces (as ``model.num_parameters()`` does in
transformers 5), and its quantization state (absmax, quant_map, nested statistics, the 8-bit ``SCB``
row scales, ...) is reported as overhead, not as parameters.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON header
(``{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then the data
buffer; offsets are relative to the start of the buffer.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from . import torchsave
from ..errors import InputFileError
from ..floor.modeldir import read_config_or_none, read_header, read_model_type, weight_files
from ..floor.statedict import ct_loads_packed, ct_quantization_config
from .track import GB, GiB, MB, format_size, get_edition, size_bin, size_bin_binary

# Bits per element of every safetensors dtype (sub-byte float formats included).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

# Suffixes that bitsandbytes appends to a 4-bit weight's key for its quantization state.
_BNB4_STATE_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
_BNB4_QS_MARK = ".quant_state.bitsandbytes__"


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str
    offset: int  # absolute offset of the data in the file


@dataclass
class SizeReport:
    """What :func:`measure` found. ``bytes`` is the storage size S, ``params`` the logical count."""

    model_dir: str
    edition: str
    bytes: int
    params: int
    bin: str | None
    bin_binary: str | None  # the bin if sizes were read as GiB/MiB (only to warn)
    components: dict[str, dict[str, int]]  # component -> {"params", "bytes"}
    dtypes: dict[str, dict[str, int]]  # safetensors dtype -> {"tensors", "elements", "bytes"}
    overhead: int  # bytes of quantization state (absmax, quant_map, SCB, ...), not parameters
    header_bytes: int  # bytes of safetensors headers (8-byte length + JSON), part of S
    files: list[str]  # weight files counted, relative to model_dir
    file_bytes: dict[str, int]
    quantized: dict[str, int]  # format -> number of quantized weights ("bnb-nf4", "bnb-int8", ...)
    tensors: int
    signature: str
    warnings: list[str] = field(default_factory=list)
    torch_save: torchsave.TorchSaveSize | None = None  # the organizers' measure; None when not exact from metadata
    torch_save_note: str | None = None  # why torch_save is None

    def to_json(self) -> dict:
        return {
            "bytes": self.bytes,
            "gb": round(self.bytes / GB, 6),
            "gib": round(self.bytes / GiB, 6),
            "params": self.params,
            "bin": self.bin,
            "edition": self.edition,
            "components": self.components,
            "dtypes": self.dtypes,
            "overhead_bytes": self.overhead,
            "header_bytes": self.header_bytes,
            "quantized": self.quantized,
            "tensors": self.tensors,
            "files": self.files,
            "file_bytes": self.file_bytes,
            "bin_binary_units": self.bin_binary,
            "warnings": self.warnings,
            "signature": self.signature,
            "torch_save": self.torch_save.to_json() if self.torch_save else None,
            "torch_save_note": self.torch_save_note,
        }


# ----------------------------------------------------------------------------- header reading

def _tensors_of(path: Path, rel: str) -> tuple[list[TensorInfo], int, int]:
    """Tensors of one file, header bytes, and the file size; validates offsets against the file."""
    header, hbytes = read_header(path)
    size = path.stat().st_size
    out: list[TensorInfo] = []
    end_max = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = meta["dtype"]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise InputFileError(path, f"corrupt safetensors header (bad entry for tensor {name!r})") from None
        if dtype not in DTYPE_BITS:
            raise InputFileError(path, f"unknown safetensors dtype {dtype!r} for tensor {name!r}")
        nbytes = end - begin
        expected = math.ceil(math.prod(shape) * DTYPE_BITS[dtype] / 8)
        if begin < 0 or nbytes != expected:
            raise InputFileError(path, f"corrupt safetensors header (tensor {name!r}: {nbytes} bytes for {dtype} {list(shape)}, expected {expected})")
        end_max = max(end_max, end)
        out.append(TensorInfo(name, dtype, shape, nbytes, rel, hbytes + begin))
    if hbytes + end_max > size:
        raise InputFileError(path, f"truncated safetensors file (header describes {hbytes + end_max} bytes, file has {size})")
    return out, hbytes, size


# ----------------------------------------------------------------------------- bitsandbytes

class _QuantStateReader:
    """Reads the JSON of bitsandbytes 4-bit ``quant_state`` tensors (shape, dtype, blocksize, ...), one open file each."""

    def __init__(self, base: Path):
        self.base = base
        self.handles: dict[str, object] = {}

    def __call__(self, ti: TensorInfo) -> dict | None:
        if ti.dtype != "U8":
            return None
        data = self.raw(ti, limit=64 * 1024)
        try:
            return None if data is None else json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None

    def raw(self, ti: TensorInfo, limit: int = 64) -> bytes | None:
        """The data bytes of a small tensor (at most ``limit`` bytes: a compressed-tensors ``weight_shape``,
        a quant_state record), or None."""
        if ti.nbytes > limit:
            return None
        try:
            f = self.handles.get(ti.file)
            if f is None:
                f = self.handles[ti.file] = open(self.base / ti.file, "rb")
            f.seek(ti.offset)
            data = f.read(ti.nbytes)
        except OSError:
            return None
        return data if len(data) == ti.nbytes else None

    def close(self) -> None:
        for f in self.handles.values():
            f.close()


def _classify(tensors: list[TensorInfo], base: Path, warnings: list[str],
              ct_shapes: dict | None = None) -> tuple[dict[str, int], set[str], dict[str, int]]:
    """Logical element counts of quantized weights, the names that are quant state, and formats seen
    (``ct_shapes``, when given, receives the compressed-tensors weight shapes: ``"X."`` -> (out, in))."""
    read_quant_state = _QuantStateReader(base)
    try:
        return _classify_with(tensors, read_quant_state, warnings, ct_shapes)
    finally:
        read_quant_state.close()


def _classify_with(tensors, read_quant_state, warnings, ct_shapes=None):
    names = {t.name: t for t in tensors}
    logical: dict[str, int] = {}
    state: set[str] = set()
    formats: dict[str, int] = {}
    for t in tensors:
        i = t.name.find(_BNB4_QS_MARK)
        if i < 0:
            continue
        wname = t.name[:i]
        fmt = t.name[i + len(_BNB4_QS_MARK):]
        if wname not in names:
            continue
        state.add(t.name)
        for suf in _BNB4_STATE_SUFFIXES:
            if wname + suf in names:
                state.add(wname + suf)
        qs = read_quant_state(t)
        packed = names[wname]
        if qs and isinstance(qs.get("shape"), list):
            logical[wname] = math.prod(int(d) for d in qs["shape"])
        else:
            # bitsandbytes packs two 4-bit values per byte of the quant storage dtype
            logical[wname] = math.prod(packed.shape) * DTYPE_BITS[packed.dtype] // 4
            warnings.append(f"{t.file}: unreadable quant_state for {wname}; its parameter count is estimated from the packed size")
        formats[f"bnb-{fmt}"] = formats.get(f"bnb-{fmt}", 0) + 1
    # LLM.int8(): int8 weight with per-row scales SCB (and a weight_format byte) beside it
    for t in tensors:
        if t.name.endswith(".SCB"):
            mod = t.name[: -len(".SCB")]
            w = names.get(mod + ".weight")
            if w is not None and w.dtype == "I8":
                state.add(t.name)
                for extra in (mod + ".weight_format", mod + ".weight.weight_format"):
                    if extra in names:
                        state.add(extra)
                formats["bnb-int8"] = formats.get("bnb-int8", 0) + 1
    _classify_compressed_tensors(names, read_quant_state, logical, state, formats, warnings, ct_shapes)
    # compressed-tensors int-quantized 8-bit (int8 embeddings): int8 weight with a float scale per row beside it
    for t in tensors:
        if t.name.endswith(".weight_scale") and t.name not in state:
            base = t.name[: -len("weight_scale")]
            w = names.get(base + "weight")
            if w is not None and w.dtype == "I8" and base + "SCB" not in names:
                state.add(t.name)
                formats["ct-int8-rows"] = formats.get("ct-int8-rows", 0) + 1
    return logical, state, formats


def _classify_compressed_tensors(names, reader, logical, state, formats, warnings, ct_shapes=None) -> None:
    """compressed-tensors pack-quantized: ``X.weight_packed`` (int32, ``bits`` values per word along
    the input width) with ``X.weight_shape`` (int64 [out, in]), ``X.weight_scale`` and, if asymmetric,
    ``X.weight_zero_point`` beside it. The logical count is the product of ``weight_shape``."""
    for name, t in names.items():
        if not name.endswith(".weight_packed") or t.dtype != "I32" or len(t.shape) != 2:
            continue
        base = name[: -len("weight_packed")]
        shape_t = names.get(base + "weight_shape")
        if shape_t is None or base + "weight_scale" not in names:
            continue
        raw = reader.raw(shape_t) if hasattr(reader, "raw") else None
        dims = None
        if raw is not None and shape_t.dtype == "I64" and len(raw) == 16:
            dims = struct.unpack("<2q", raw)
        if dims and dims[0] == t.shape[0] and dims[1] > 0:
            logical[name] = dims[0] * dims[1]
            if ct_shapes is not None:
                ct_shapes[base] = (dims[0], dims[1])
            bits = next((b for b in range(1, 9) if math.ceil(dims[1] * b / 32) == t.shape[1]), None)
        else:
            logical[name] = t.shape[0] * t.shape[1] * 8  # as if 4-bit
            bits = None
            warnings.append(f"{t.file}: unreadable weight_shape for {base}weight_packed; its parameter count is estimated as 4-bit")
        for suf in ("weight_scale", "weight_shape", "weight_zero_point"):
            if base + suf in names:
                state.add(base + suf)
        key = f"ct-int{bits}" if bits else "ct-int?"
        formats[key] = formats.get(key, 0) + 1


# ----------------------------------------------------------------------------- measure

def measure(model_dir: str | os.PathLike, edition: str | None = "2025", *, torch_save: bool = True) -> SizeReport:
    """Size a model directory (or one .safetensors file) from its safetensors headers.

    Refuses a directory whose config.json names another architecture (before reading any weight).
    ``torch_save``: also compute the organizers' torch.save measure (pure Python, from the same headers).
    """
    ed = get_edition(edition)
    base, files, warnings = weight_files(model_dir)
    config = _read_config(base)
    tensors: list[TensorInfo] = []
    file_bytes: dict[str, int] = {}
    header_bytes = 0
    seen: dict[str, str] = {}
    for rel in files:
        ts, hb, size = _tensors_of(base / rel, rel)
        file_bytes[rel] = size
        header_bytes += hb
        used = hb + sum(t.nbytes for t in ts)
        if size > used:
            warnings.append(f"{rel}: {size - used} bytes beyond the tensors described in its header (counted: they are stored)")
        for t in ts:
            if t.name in seen:
                raise InputFileError(base / rel, f"tensor {t.name!r} is also in {seen[t.name]}")
            seen[t.name] = rel
        tensors.extend(ts)

    ct_shapes: dict[str, tuple[int, int]] = {}
    logical, state, formats = _classify(tensors, base, warnings, ct_shapes)
    from ..families import key_mapping_for

    comp_names, component_for_key = key_mapping_for(base)
    components = {c: {"params": 0, "bytes": 0} for c in comp_names}
    dtypes: dict[str, dict[str, int]] = {}
    params = overhead = 0
    for t in tensors:
        comp = components[component_for_key(t.name)]
        comp["bytes"] += t.nbytes
        d = dtypes.setdefault(t.dtype, {"tensors": 0, "elements": 0, "bytes": 0})
        d["tensors"] += 1
        d["elements"] += math.prod(t.shape)
        d["bytes"] += t.nbytes
        if t.name in state:
            overhead += t.nbytes
            continue
        n = logical.get(t.name, math.prod(t.shape))
        comp["params"] += n
        params += n
    components = {c: v for c, v in components.items() if v["bytes"] or c != "other"}

    _check_config(base, formats, warnings)
    total = sum(file_bytes.values())
    ts = ts_note = None
    if torch_save:
        if config is None:
            ts_note = "no readable config.json: the in-memory state dict cannot be laid out"
        else:
            try:
                ts = torchsave.compute([(t.name, t.dtype, t.shape) for t in tensors], config,
                                       version=f"iwslt-mc-{__version__}", ct_shapes=ct_shapes)
            except torchsave.NotExact as e:
                ts_note = f"not computable from metadata: {e}"
        if config is not None and any(k.startswith("ct-") for k in formats) and ct_quantization_config(config) \
                and not ct_loads_packed(config):
            warnings.append("compressed-tensors saved with dequantize: true: from_pretrained unpacks the weights to floats, "
                            "so the torch.save measure counts them at float size")
    bin_name = size_bin(total, ed)
    bin_bin = size_bin_binary(total, ed)
    if ed.has_bins:
        if bin_name != bin_bin:
            warnings.append(
                f"reading the bin boundaries in binary units (GiB/MiB) would give {bin_bin or 'no bin'} instead of "
                f"{bin_name or 'no bin'}; the track uses decimal units (1 GB = 10^9 bytes)")
        if bin_name is None:
            top = max(b.high for b in ed.bins if b.high is not None)
            warnings.append(f"{format_size(total)} is not below {format_size(top)}: the model fits no {ed.key} bin and is not eligible")
    signature = (f"edition:{ed.key}|measure:safetensors-file-bytes|units:bytes,GB=10^9,GiB=2^30|files:{len(files)}"
                 f"|params:logical-bnb|version:iwslt-mc-{__version__}")
    return SizeReport(
        model_dir=str(model_dir), edition=ed.key, bytes=total, params=params, bin=bin_name, bin_binary=bin_bin,
        components=components, dtypes=dict(sorted(dtypes.items())), overhead=overhead, header_bytes=header_bytes,
        files=files, file_bytes=file_bytes, quantized=formats, tensors=len(tensors), signature=signature,
        warnings=warnings, torch_save=ts, torch_save_note=ts_note,
    )


def _read_config(base: Path) -> dict | None:
    """config.json of the model directory (None without one); refuses another architecture."""
    if not (base / "config.json").is_file():
        return None
    from ..modelio import require_supported_model  # modelio imports torch only inside functions

    if read_model_type(base) is not None:  # a config naming no model_type is sized, without the torch.save measure
        require_supported_model(base)
    return read_config_or_none(base)


def _check_config(base: Path, formats: dict[str, int], warnings: list[str]) -> None:
    cfg = base / "config.json"
    if not cfg.exists():
        warnings.append("no config.json: components are assigned from tensor names only")
        return
    raw = read_config_or_none(base)
    if raw is None:
        warnings.append(f"{cfg}: unreadable config.json; components are assigned from tensor names only")
        return
    qc = raw.get("quantization_config") or {}
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    if method and method not in ("bitsandbytes", "compressed-tensors"):
        warnings.append(f"quantization method {method!r} is not understood: its packed tensors are counted by stored elements, "
                        "so the parameter count may be too low")


def bin_explanation(nbytes: int, edition: str = "2025") -> str:
    """One line: the bin and the boundary rule that put the size there."""
    ed = get_edition(edition)
    if not ed.has_bins:
        return f"edition {ed.key} has no size bins ({ed.boundary_rule})"
    name = size_bin(nbytes, ed)
    if name is None:
        top = max(b.high for b in ed.bins if b.high is not None)
        return f"no bin: S = {nbytes:,} bytes >= {_boundary(top)} (not eligible in {ed.key})"
    b = next(b for b in ed.bins if b.name == name)
    lo = f"{_boundary(b.low)} <= " if b.low else ""
    hi = f" < {_boundary(b.high)}" if b.high else ""
    return f"{name} ({lo}S{hi}, decimal units; a size on a boundary goes to the larger bin)"


def _boundary(n: int) -> str:
    return f"{n // GB} GB" if n % GB == 0 else f"{n // MB} MB" if n % MB == 0 else f"{n:,} bytes"
