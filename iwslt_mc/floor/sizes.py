"""Size primitives, pure arithmetic (no torch, no transformers): precision names and their bits, what one
weight becomes on disk at a precision (float, bitsandbytes int8/nf4/fp4, compressed-tensors ``ctB``), the
safetensors header ``save_pretrained`` writes, and the :class:`Prediction` a planner returns. The planner
(:mod:`iwslt_mc.planning.planner`) and each family's own prediction (:meth:`iwslt_mc.families.base.Family.predict`)
build on them.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from dataclasses import dataclass, field

from ..errors import UserError

CT_BITS = (2, 3, 4, 5, 6, 7, 8)
FLOAT_BITS = 16  # "kept float" in a per-module bit allocation

CT_DEFAULT_GROUP = 128

_PRECISION_RX = re.compile(r"^ct([2-8])(?:-g(\d+))?(-sym)?$")
# compressed-tensors ``int-quantized`` 8-bit token embeddings (quantize option int8_embeddings): one int8 per
# weight and a float scale per row, symmetric; they stay int8 after from_pretrained next to packed symmetric
# Linear layers. A precision of embed_tokens only.
CT_INT8_ROWS = "ct-int8"


def ct_precision(bits: int, group_size: int = CT_DEFAULT_GROUP, symmetric: bool = False) -> str:
    """The planner's precision name of a ct quantization: ``ct4``, ``ct3-g64``, ``ct4-sym``, ..."""
    return f"ct{bits}" + (f"-g{group_size}" if group_size != CT_DEFAULT_GROUP else "") + ("-sym" if symmetric else "")


def parse_ct_precision(p: str) -> tuple[int, int, bool] | None:
    """(bits, group_size, symmetric) of a ct precision name, or None if ``p`` is not one."""
    m = _PRECISION_RX.match(p or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or CT_DEFAULT_GROUP), bool(m.group(3))


def ct_precisions() -> tuple[str, ...]:
    """The ct precision names the planner lists: 2/3/4/8 bits, groups of 128/64/32, asymmetric or symmetric."""
    return tuple(ct_precision(b, g, s) for b in (8, 4, 3, 2) for g in (128, 64, 32) for s in (False, True))


def ct_disk_entries(key: str, shape: tuple[int, ...], bits: int, group_size: int, symmetric: bool, float_dt: str,
                    float_size: int):
    """The safetensors entries ``(name, dtype, shape, nbytes, content)`` of one weight ``key`` (``...weight``);
    ``content`` is None except for ``weight_shape``, whose bytes are its two int64 values (out, in)."""
    if len(shape) != 2:
        raise UserError(f"{key}: compressed-tensors quantizes 2-D weights only (shape {list(shape)})")
    out, inp = shape
    if inp % group_size:
        raise UserError(f"{key}: group size {group_size} does not divide its input width {inp}")
    base = key[: -len("weight")] if key.endswith("weight") else key + "."
    groups = inp // group_size
    cols = math.ceil(inp * bits / 32)
    entries = [(base + "weight_packed", "I32", (out, cols), out * cols * 4, None),
               (base + "weight_scale", float_dt, (out, groups), out * groups * float_size, None),
               (base + "weight_shape", "I64", (2,), 16, struct.pack("<2q", out, inp))]
    if not symmetric:
        rows = math.ceil(out * bits / 32)
        entries.append((base + "weight_zero_point", "I32", (rows, groups), rows * groups * 4, None))
    return entries


def ct_int8_rows_entries(key: str, shape: tuple[int, ...], float_dt: str, float_size: int):
    """The safetensors entries of an ``int-quantized`` 8-bit table ``key`` (:data:`CT_INT8_ROWS`): the int8
    ``weight`` of the full shape and a ``weight_scale`` [rows, 1] in the float dtype."""
    if len(shape) != 2:
        raise UserError(f"{key}: {CT_INT8_ROWS} quantizes 2-D weights only (shape {list(shape)})")
    out, inp = shape
    scale = (key[: -len("weight")] if key.endswith("weight") else key + ".") + "weight_scale"
    return [(key, "I8", (out, inp), out * inp, None), (scale, float_dt, (out, 1), out * float_size, None)]


# ----------------------------------------------------------------------------- precisions

FLOAT_PRECISIONS = ("bf16", "fp16", "fp32")
QUANT_PRECISIONS = ("int8", "nf4", "nf4-dq", "fp4", "fp4-dq")
PRECISIONS = FLOAT_PRECISIONS + QUANT_PRECISIONS
# Less to more aggressive; used to order --target tables.
PRECISION_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "nf4": 4, "fp4": 4, "nf4-dq": 4, "fp4-dq": 4,
                  CT_INT8_ROWS: 8}
_FLOAT_DTYPE = {"bf16": ("BF16", 2, "bfloat16"), "fp16": ("F16", 2, "float16"), "fp32": ("F32", 4, "float32")}
# safetensors writes tensors sorted by dtype (its enum order, descending) and then by name.
_DTYPE_RANK = {d: i for i, d in enumerate(
    ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16",
     "BF16", "I32", "U32", "F32", "F64", "I64", "U64"])}
BNB_BLOCKSIZE = 64  # bitsandbytes 4-bit block size used by transformers
BNB_NESTED_BLOCKSIZE = 256
# A float32 value as Python prints it: the nested offset in a double-quantized quant_state varies in
# length by a few characters, which is the only byte of a prediction that is not exact.
_TYPICAL_NESTED_OFFSET = 0.0498809814453125


def check_components(spec, components, family_label: str) -> None:
    """Refuse per-component precisions for components the base's family does not have."""
    extra = [c for c in spec.component_precision if c not in components]
    if extra:
        raise UserError(f"--precision {extra[0]}=...: a {family_label} model has no {extra[0]} "
                        f"(its components: {', '.join(c for c in components if c != 'other')})")


def check_precision(p: str) -> str:
    if p not in PRECISIONS and p != CT_INT8_ROWS and parse_ct_precision(p) is None:
        raise UserError(f"unknown precision {p!r} (use one of {', '.join(PRECISIONS)}, "
                        "or ctB[-gG][-sym]: compressed-tensors B = 2-8 bits, groups of G (default 128), e.g. ct4, ct3-g64; "
                        f"embed_tokens also {CT_INT8_ROWS}: int8 per row)")
    return p


def is_quant_precision(p: str) -> bool:
    """A quantized precision: bitsandbytes (``QUANT_PRECISIONS``) or compressed-tensors (``ct4``, ``ct3-g64``, ...)."""
    return p in QUANT_PRECISIONS or p == CT_INT8_ROWS or _ct_precision(p) is not None


# parse_ct_precision, remembered: --target sizes hundreds of specs of hundreds of tensors each
_ct_precision = functools.lru_cache(maxsize=256)(parse_ct_precision)


def precision_bits(p: str) -> int:
    ct = parse_ct_precision(p)
    return ct[0] if ct else PRECISION_BITS[p]


def disk_tensors(key: str, shape: tuple[int, ...], precision: str, float_dtype: str = "bf16"):
    """The safetensors entries ``(name, dtype, shape, nbytes, content)`` one weight becomes at ``precision``.

    ``content`` is None except for a 4-bit ``quant_state`` tensor, whose bytes are its JSON, and a ct
    ``weight_shape`` (its two int64 values).

    Returns (entries, logical parameters, overhead bytes).
    """
    n = math.prod(shape)
    if precision in FLOAT_PRECISIONS:
        dt, size, _ = _FLOAT_DTYPE[precision]
        return [(key, dt, shape, n * size, None)], n, 0
    ct = _ct_precision(precision)
    if ct is not None:
        dt, size, _ = _FLOAT_DTYPE[float_dtype]
        entries = ct_disk_entries(key, shape, *ct, dt, size)
        return entries, n, sum(e[3] for e in entries[1:])
    if precision == CT_INT8_ROWS:
        dt, size, _ = _FLOAT_DTYPE[float_dtype]
        entries = ct_int8_rows_entries(key, shape, dt, size)
        return entries, n, entries[1][3]
    if precision == "int8":
        rows = shape[0] if shape else 1
        mod = key[: -len(".weight")] if key.endswith(".weight") else key
        scb = [(mod + ".SCB", "F32", (rows,), 4 * rows, None), (mod + ".weight_format", "U8", (), 1, None)]
        return [(key, "I8", shape, n, None)] + scb, n, 4 * rows + 1
    quant_type = precision.split("-")[0]
    double = precision.endswith("-dq")
    blocks = -(-n // BNB_BLOCKSIZE)
    packed = (n + 1) // 2
    state = {"quant_type": quant_type, "blocksize": BNB_BLOCKSIZE, "dtype": _FLOAT_DTYPE[float_dtype][2],
             "shape": list(shape)}
    entries = [(key, "U8", (packed, 1), packed, None)]
    if double:
        nested = -(-blocks // BNB_NESTED_BLOCKSIZE)
        state.update(nested_blocksize=BNB_NESTED_BLOCKSIZE, nested_dtype="float32", nested_offset=_TYPICAL_NESTED_OFFSET)
        entries += [(key + ".absmax", "U8", (blocks,), blocks, None),
                    (key + ".nested_absmax", "F32", (nested,), 4 * nested, None),
                    (key + ".nested_quant_map", "F32", (256,), 1024, None)]
    else:
        entries.append((key + ".absmax", "F32", (blocks,), 4 * blocks, None))
    entries.append((key + ".quant_map", "F32", (16,), 64, None))
    qs = json.dumps(state).encode()  # bitsandbytes stores json.dumps of the packed state as uint8
    entries.append((f"{key}.quant_state.bitsandbytes__{quant_type}", "U8", (len(qs),), len(qs), qs))
    return entries, n, sum(e[3] for e in entries[1:])


def safetensors_header(entries, metadata: dict | None = None) -> tuple[bytes, list]:
    """The header bytes (8-byte length + padded JSON) safetensors writes for ``entries``, and their order."""
    order = sorted(entries, key=lambda e: (-_DTYPE_RANK[e[1]], e[0]))
    parts = []
    if metadata is not None:
        parts.append('"__metadata__":' + json.dumps(metadata, separators=(",", ":")))
    off = 0
    for name, dt, shape, nb, *_ in order:
        parts.append(f'{json.dumps(name)}:{{"dtype":"{dt}","shape":[{",".join(map(str, shape))}],"data_offsets":[{off},{off + nb}]}}')
        off += nb
    text = ("{" + ",".join(parts) + "}").encode()
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text, order


def safetensors_header_bytes(entries, metadata: dict | None = None) -> int:
    """Bytes of the 8-byte length plus the JSON header safetensors writes for ``entries``: the length of
    :func:`safetensors_header`, counted without writing the text (tests/planning/test_plan_fast.py compares them)."""
    order = sorted(entries, key=lambda e: (-_DTYPE_RANK[e[1]], e[0]))
    n = 2 + max(0, len(order) - 1 + (metadata is not None))  # braces and the commas between entries
    if metadata is not None:
        n += len('"__metadata__":' + json.dumps(metadata, separators=(",", ":")))
    off = 0
    for name, dt, shape, nb, *_ in order:
        # '"NAME":{"dtype":"DT","shape":[S],"data_offsets":[A,B]}': 43 characters besides NAME, DT, S, A and B
        quoted = len(name) + 2 if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name \
            else len(json.dumps(name))
        n += quoted + 43 + len(dt) + len(",".join(map(str, shape))) + len(str(off)) + len(str(off + nb))
        off += nb
    return 8 + n + (-n) % 8


@dataclass
class Prediction:
    """Predicted size of a spec: ``bytes`` (storage size S), ``params`` (logical), ``bin``."""

    spec: object  # the planner's Spec
    edition: str
    bytes: int
    params: int
    bin: str | None
    components: dict[str, dict[str, int]]
    overhead: int
    header_bytes: int
    tensors: int
    dims: dict  # the resolved llm_layers, audio_layers, ffn_dim, audio_ffn_dim, vocab
    base: str
    signature: str
    entries: list = field(default_factory=list, repr=False)  # (name, dtype, shape, nbytes, content)
    config: object = field(default=None, repr=False)  # the base config with the spec's dims applied
    torch_save: object = None  # torchsave.TorchSaveSize: the organizers' torch.save measure of the built model
    torch_save_note: str | None = None  # why torch_save is None
    plan: object = None  # BuildPlan: how to build it (set for --target suggestions)

    def to_json(self) -> dict:
        return {
            "bytes": self.bytes, "params": self.params, "bin": self.bin, "edition": self.edition,
            "torch_save": self.torch_save.to_json() if self.torch_save else None,
            "torch_save_note": self.torch_save_note,
            "build": self.plan.to_json() if self.plan else None,
            "components": self.components, "overhead_bytes": self.overhead, "header_bytes": self.header_bytes,
            "tensors": self.tensors, "dims": self.dims, "spec": self.spec.to_json(), "base": self.base,
            "signature": self.signature,
        }
