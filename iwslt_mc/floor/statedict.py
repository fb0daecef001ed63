"""The torch.save state-dict measure's pure parts: the pickle ``torch.save`` writes, the zip container
around it, and the in-memory state-dict layout of a checkpoint from its safetensors metadata and config
(a hand-written module tree, or a meta-device model's skeleton). No torch, no transformers: the sizer
(:mod:`iwslt_mc.sizing.torchsave`) and each family's layout (:meth:`iwslt_mc.families.base.Family.torch_save_layout`)
build on it; see :mod:`iwslt_mc.sizing.torchsave` for the measure and how each piece is laid out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# torch.save's archive name is the file's base name without extension. The organizers save to
# tempfile.NamedTemporaryFile(suffix=".pt"): "tmp" + 8 random characters.
ORGANIZERS_ARCHIVE = "tmpXXXXXXXX"
ORGANIZERS_LOCATION = "cuda:0"
STORAGE_ALIGNMENT = 64
# What the sized layout assumes; part of every signature.
CONTAINER = "torch-zip(format_version 1, storage_alignment 64, zip64 end records)"

# safetensors dtype -> (torch storage class name, itemsize)
STORAGE_TYPES = {
    "F64": ("DoubleStorage", 8), "F32": ("FloatStorage", 4), "F16": ("HalfStorage", 2),
    "BF16": ("BFloat16Storage", 2), "I64": ("LongStorage", 8), "I32": ("IntStorage", 4),
    "I16": ("ShortStorage", 2), "I8": ("CharStorage", 1), "U8": ("ByteStorage", 1), "BOOL": ("BoolStorage", 1),
    "U16": ("UInt16Storage", 2), "U32": ("UInt32Storage", 4), "U64": ("UInt64Storage", 8),
    "F8_E4M3": ("Float8_e4m3fnStorage", 1), "F8_E5M2": ("Float8_e5m2Storage", 1),
}
_FLOATS = {"F64", "F32", "F16", "BF16"}
_CONFIG_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


class NotExact(Exception):
    """The checkpoint cannot be laid out exactly from its metadata; the message says why."""


@dataclass(frozen=True)
class Entry:
    """One tensor of the in-memory state dict."""

    key: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    storage: int  # index of its storage (tensors sharing a storage share the index)
    cpu: bool = False  # created on the CPU even when the model is on a GPU (bitsandbytes' packed state)


# ----------------------------------------------------------------------------- the pickle

class _Pickler:
    """The subset of pickle protocol 2 that torch.save writes for a state dict, opcode for opcode."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.memo: dict[object, int] = {}  # objects referred to again -> memo index
        self.n = 0  # memo entries so far

    def _put(self, token=None) -> None:
        """Memoize the object just written; ``token`` when it is referred to again, else None."""
        i = self.n
        self.n += 1
        if token is not None:
            self.memo[token] = i
        self.out += b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)

    def _get(self, token) -> bool:
        i = self.memo.get(token)
        if i is None:
            return False
        self.out += b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)
        return True

    def global_(self, module: str, name: str) -> None:
        if not self._get(("g", module, name)):
            self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
            self._put(("g", module, name))

    def str_(self, s: str, token=None) -> None:
        """A str; ``token`` identifies one Python object (None: a new object, always written)."""
        if token is not None and self._get(token):
            return
        b = s.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(b)) + b
        self._put(token)

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        elif v > 0:
            n = v.bit_length() // 8 + 1
            self.out += b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)
        else:
            raise NotExact(f"negative integer {v} in a tensor's metadata")

    def tuple_(self, items) -> None:
        if not items:
            self.out += b")"
            return
        if len(items) > 3:
            self.out += b"("
        for v in items:
            v() if callable(v) else self.int_(v)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t")
        self._put()

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"
        self._put()

    def dict_items(self, items: list, save_item) -> None:
        """C pickle's batch_dict over an iterator: MARK ... SETITEMS per 1000, a lone last item as SETITEM."""
        i = 0
        while i < len(items):
            batch = items[i:i + 1000]
            i += len(batch)
            if len(batch) == 1:
                save_item(batch[0])
                self.out += b"s"
                break
            self.out += b"("
            for item in batch:
                save_item(item)
            self.out += b"u"


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


def pickle_state_dict(entries: list[Entry], modules: list[str], location: str = ORGANIZERS_LOCATION) -> bytes:
    """The ``data.pkl`` torch.save writes for this state dict (``modules``: the ``_metadata`` keys)."""
    p = _Pickler()
    p.global_("collections", "OrderedDict")
    p.out += b")R"
    p._put()
    storage_keys: dict[int, str] = {}
    sizes: dict[int, int] = {}

    def save_tensor(e: Entry) -> None:
        p.str_(e.key)
        p.global_("torch._utils", "_rebuild_tensor_v2")
        p.out += b"("  # the args tuple (6 items)
        name, itemsize = STORAGE_TYPES[e.dtype]
        numel = 1
        for d in e.shape:
            numel *= d
        first = e.storage not in storage_keys
        if first:
            storage_keys[e.storage] = str(len(storage_keys))
            sizes[e.storage] = numel * itemsize
        # persistent id: ("storage", storage_type, key, location, numel)
        p.out += b"("
        p.str_("storage", ("s", "storage"))
        p.global_("torch", name)
        p.str_(storage_keys[e.storage], ("k", e.storage))
        if location == "cpu" or e.cpu:
            p.str_("cpu", ("s", "cpu"))
        else:
            p.str_(location)  # "cuda:" + str(index): a new string object per storage
        p.int_(sizes[e.storage] // itemsize)
        p.out += b"t"
        p._put()
        p.out += b"Q"  # BINPERSID
        p.int_(0)  # storage offset
        p.tuple_(e.shape)
        p.tuple_(_contiguous_strides(e.shape))
        p.out += b"\x89"  # requires_grad False
        p.empty_ordered_dict()  # backward hooks
        p.out += b"t"
        p._put()
        p.out += b"R"
        p._put()

    p.dict_items(entries, save_tensor)
    # state: {"_metadata": OrderedDict((prefix, {"version": 1}), ...)}
    p.out += b"}"
    p._put()
    p.str_("_metadata")
    p.global_("collections", "OrderedDict")
    p.out += b")R"
    p._put()

    def save_module(prefix: str) -> None:
        p.str_(prefix)
        p.out += b"}"
        p._put()
        p.str_("version", ("s", "version"))
        p.int_(1)
        p.out += b"s"

    p.dict_items(modules, save_module)
    p.out += b"sb."  # SETITEM (the state dict's one item), BUILD, STOP
    return bytes(p.out)


def storage_sizes(entries: list[Entry]) -> list[int]:
    """Bytes of each storage, in the order torch.save writes them (first use)."""
    seen: dict[int, int] = {}
    for e in entries:
        if e.storage not in seen:
            n = 1
            for d in e.shape:
                n *= d
            seen[e.storage] = n * STORAGE_TYPES[e.dtype][1]
    return list(seen.values())


# ----------------------------------------------------------------------------- the zip container

_U32 = 0xFFFFFFFF


def zip_bytes(pickle_bytes: int, storages: list[int], archive: str = ORGANIZERS_ARCHIVE) -> int:
    """Size of the zip PyTorchStreamWriter writes for a data.pkl and these storages (bytes each)."""
    records = [("data.pkl", pickle_bytes), (".format_version", 1), (".storage_alignment", len(str(STORAGE_ALIGNMENT))),
               ("byteorder", len("little"))]
    records += [(f"data/{i}", n) for i, n in enumerate(storages)]
    records += [("version", 2), (".data/serialization_id", 40)]
    cursor = central = 0
    for name, size in records:
        nl = len(archive) + 1 + len(name)
        z64 = size >= _U32 or cursor >= _U32
        z64_extra = 4 + (16 if size >= _U32 else 0) + (8 if cursor >= _U32 else 0) if z64 else 0
        start = cursor + 30 + nl + 4 + z64_extra  # local header, name, zip64 field, "FB" padding field header
        start += (-start) % STORAGE_ALIGNMENT
        cursor = start + size + ((24 if z64 else 16) if size else 0)  # data descriptor
        central += 46 + nl + z64_extra
    return cursor + central + 56 + 20 + 22  # zip64 end record, zip64 locator, end record


# ----------------------------------------------------------------------------- a module tree in memory

# Linear-like modules and the tensors each may save, in the order they are saved.
_LEAF_ORDER = ("weight", "bias", "weight.absmax", "weight.quant_map", "weight.nested_absmax",
               "weight.nested_quant_map", "weight.quant_state.bitsandbytes__nf4",
               "weight.quant_state.bitsandbytes__fp4", "SCB", "weight_format")
_BNB4 = {"weight.absmax", "weight.quant_map"}
_BNB4_DQ = {"weight.nested_absmax", "weight.nested_quant_map"}
_BNB8 = {"SCB", "weight_format"}

# Leaf kinds: the parameters a module has (quantizable linears may add bitsandbytes state).
LIN, LINB, NORM, RMS, EMB = ("lin", ("weight",)), ("lin", ("weight", "bias")), ("norm", ("weight", "bias")), \
    ("norm", ("weight",)), ("emb", ("weight",))
CONV = ("conv", ("weight", "bias"))
NONE = ("none", ())


class Layers:
    """A ``ModuleList`` of identical layers; ``count`` comes from the config key ``config_path``."""

    def __init__(self, config_path: tuple[str, ...], children):
        self.config_path = config_path
        self.children = children


def _cfg_get(cfg: dict, path: tuple[str, ...]):
    v = cfg
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


# ----------------------------------------------------------------------------- compressed-tensors after loading

# The tensors one packed compressed-tensors weight keeps in memory when it loads packed, in the order the
# module holds them (the float ``weight`` is deleted, so the bias comes first, then these).
CT_PACKED = ("weight_scale", "weight_packed", "weight_shape")
_CT_ALL = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")


def ct_quantization_config(config: dict) -> dict | None:
    """config.json's ``quantization_config`` when it is compressed-tensors', else None."""
    qc = config.get("quantization_config")
    return qc if isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors" else None


def ct_loads_packed(config: dict) -> bool:
    """Whether ``from_pretrained`` keeps compressed-tensors weights packed: ``dequantize`` false (transformers'
    default when the key is absent); ``dequantize: true`` unpacks every weight into the float dtype at load."""
    qc = ct_quantization_config(config)
    return qc is not None and not qc.get("dequantize", False)


# ``dequantize: true`` under a transformers that wraps the modules before loading and decompresses after (5.17):
# the quantization parameters the module keeps beside the float weight, in its order (bias first, weight last).
CT_KEPT = ("weight_scale", "weight_zero_point", "weight_shape")


def int8_rows(by_key, prefix: str) -> bool:
    """Whether module ``prefix`` holds compressed-tensors ``int-quantized`` 8-bit weights (an int8 ``weight`` and a
    ``weight_scale`` per row, no bitsandbytes ``SCB``): the quantize option int8_embeddings. In memory after
    ``from_pretrained`` the module keeps both, the scale registered first (measured: transformers 5.25,
    compressed-tensors 0.20)."""
    w = by_key.get(prefix + "weight")
    return w is not None and w[0] == "I8" and prefix + "weight_scale" in by_key and prefix + "SCB" not in by_key


def ct_in_memory(tensors, config: dict, ct_shapes: dict | None = None, *, keeps_params: bool = False):
    """The checkpoint's tensors as transformers holds them after ``from_pretrained(dtype="auto")`` of a
    compressed-tensors ``pack-quantized`` checkpoint.

    ``dequantize: true``: each packed weight (``X.weight_packed``, ``X.weight_scale``, ``X.weight_shape``,
    ``X.weight_zero_point``) becomes one float ``X.weight`` of its logical shape (``ct_shapes``: ``"X."`` ->
    (out, in), the values of the ``weight_shape`` tensors); with ``keeps_params`` (transformers 5.17: it wraps the
    modules before loading, then decompresses them) the module also keeps ``X.weight_scale``,
    ``X.weight_zero_point`` (int8, one per group, unpacked) and ``X.weight_shape`` (:data:`CT_KEPT`).
    ``dequantize: false``: the packed tensors stay (laid out by the caller: :data:`CT_PACKED` after the module's
    bias); zero points (asymmetric) and packed
    embeddings do not load packed in transformers 5.25 / compressed-tensors 0.20 (a size mismatch; an
    AttributeError), so those raise :class:`NotExact`. Other checkpoints are returned unchanged.
    """
    if ct_quantization_config(config) is None:
        return list(tensors)
    tensors = list(tensors)
    packed = {k[: -len("weight_packed")] for k, _, _ in tensors if k.endswith(".weight_packed")}
    if ct_loads_packed(config):
        zp = next((k for k, _, _ in tensors if k.endswith(".weight_zero_point")), None)
        if zp is not None:
            raise NotExact(f"{zp}: asymmetric compressed-tensors weights do not load packed (dequantize: false): "
                           "transformers fails on the packed zero points")
        emb = next((b for b in packed if b.rstrip(".").endswith("embed_tokens")), None)
        if emb is not None:
            raise NotExact(f"{emb}weight_packed: a packed embedding does not load with dequantize: false "
                           "(compressed-tensors raises AttributeError)")
        return tensors
    out = []
    for key, dtype, shape in tensors:
        base, _, suffix = key.rpartition(".")
        base += "."
        if base not in packed or suffix not in _CT_ALL:
            out.append((key, dtype, shape))
        elif suffix == "weight_packed":
            dims = (ct_shapes or {}).get(base)
            if dims is None:
                raise NotExact(f"{key}: its weight_shape is unknown (the logical shape of the unpacked weight)")
            scale = next((d for k, d, _ in tensors if k == base + "weight_scale"), "F32")
            out.append((base + "weight", scale, tuple(dims)))
        elif keeps_params and suffix == "weight_scale":
            out.append((key, dtype, shape))
        elif keeps_params and suffix == "weight_zero_point":
            scale_shape = next((sh for k, _, sh in tensors if k == base + "weight_scale"), None)
            if scale_shape is None:
                raise NotExact(f"{key}: a zero point without a weight_scale")
            out.append((key, "I8", tuple(scale_shape)))
        elif keeps_params and suffix == "weight_shape":
            out.append((key, dtype, shape))
    return out



def tree_state_dict_layout(tensors: list[tuple[str, str, tuple[int, ...]]], config: dict, float_dtype: str | None,
                           *, tree, memory_key, tied_source: str) -> tuple[list[Entry], list[str]]:
    """:func:`state_dict_layout` from a module tree written out by hand (a family's registration order:
    ``(name, children)`` pairs, leaf kinds such as :data:`LIN`, :class:`Layers` for repeated stacks);
    ``memory_key`` maps an on-disk key to its in-memory name; a tied ``lm_head`` shares ``tied_source``."""
    if float_dtype is None:
        cdt = config.get("dtype") or config.get("torch_dtype")
        float_dtype = _CONFIG_DTYPES.get(str(cdt).replace("torch.", "")) if cdt else None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    by_key: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, dtype, shape in tensors:
        mk = memory_key(key)
        if mk in by_key:
            raise NotExact(f"two checkpoint tensors load as {mk!r}")
        if dtype not in STORAGE_TYPES:
            raise NotExact(f"tensor {key!r} has dtype {dtype}, not sized here")
        by_key[mk] = (dtype, tuple(shape))
    if tied and "lm_head.weight" in by_key:
        raise NotExact("tie_word_embeddings is set but the checkpoint also stores lm_head.weight")

    entries: list[Entry] = []
    modules: list[str] = []
    used: set[str] = set()
    storage_of: dict[str, int] = {}

    def add(key: str, dtype: str, shape, *, quant_state: bool, share: str | None = None) -> None:
        if dtype in _FLOATS and float_dtype and not quant_state:
            dtype = float_dtype
        if share is not None:
            sid = storage_of[share]
        else:
            sid = len(storage_of)
        storage_of[key] = sid
        entries.append(Entry(key, dtype, shape, sid, cpu=".weight.quant_state." in key or key.endswith(".weight_format")))

    def leaf(prefix: str, kind) -> None:
        what, params = kind
        present = [s for s in _LEAF_ORDER if prefix + s in by_key]
        base = [s for s in present if s in ("weight", "bias")]
        extra = set(present) - {"weight", "bias"}
        if prefix == "lm_head." and tied and not present:
            add("lm_head.weight", *_tied_source(by_key), quant_state=False, share=tied_source)
            return
        if what == "lin" and prefix + "weight_shape" in by_key and prefix + "weight" in by_key:
            # compressed-tensors dequantized by a transformers that keeps the parameters (ct_in_memory)
            own = [p for p in params if p != "weight"] + [p for p in CT_KEPT if prefix + p in by_key] + ["weight"]
            for s in own:
                if prefix + s not in by_key:
                    raise NotExact(f"the checkpoint lacks {prefix}{s} (transformers would initialize it)")
                dtype, shape = by_key[prefix + s]
                add(prefix + s, dtype, shape, quant_state=s in ("weight_zero_point", "weight_shape"))
                used.add(prefix + s)
            return
        if what == "lin" and prefix + "weight_packed" in by_key:  # compressed-tensors, loaded packed
            own = [p for p in params if p != "weight"] + list(CT_PACKED)
            missing = [p for p in own if prefix + p not in by_key]
            if missing:
                raise NotExact(f"the checkpoint lacks {prefix}{missing[0]} (a packed compressed-tensors weight)")
            for s in own:
                dtype, shape = by_key[prefix + s]
                add(prefix + s, dtype, shape, quant_state=s in ("weight_packed", "weight_shape"))
                used.add(prefix + s)
            return
        if what == "emb" and int8_rows(by_key, prefix):  # int-quantized 8-bit embeddings: the scale, then the weight
            for s in ("weight_scale", "weight"):
                dtype, shape = by_key[prefix + s]
                add(prefix + s, dtype, shape, quant_state=False)
                used.add(prefix + s)
            return
        if tuple(base) != params:
            missing = [p for p in params if p not in base]
            if missing:
                raise NotExact(f"the checkpoint lacks {prefix}{missing[0]} (transformers would initialize it)")
            raise NotExact(f"the checkpoint has {prefix}{[p for p in base if p not in params][0]}, which the model does not")
        if extra:
            qs = {s for s in extra if s.startswith("weight.quant_state.")}
            ok = what == "lin" and (
                (len(qs) == 1 and extra - qs in (_BNB4, _BNB4 | _BNB4_DQ)) or (not qs and extra == _BNB8))
            if not ok:
                raise NotExact(f"{prefix[:-1]}: quantization state {sorted(extra)} not laid out here")
        for s in present:
            dtype, shape = by_key[prefix + s]
            add(prefix + s, dtype, shape, quant_state=s not in ("weight", "bias"))
            used.add(prefix + s)

    def walk(prefix: str, children) -> None:
        modules.append(prefix[:-1])
        if isinstance(children, tuple) and len(children) == 2 and isinstance(children[0], str):
            leaf(prefix, children)
            return
        for name, sub in children:
            if isinstance(sub, Layers):
                n = _cfg_get(config, sub.config_path)
                if not isinstance(n, int):
                    raise NotExact(f"config.json has no {'.'.join(sub.config_path)}")
                modules.append(prefix + name)
                for i in range(n):
                    walk(f"{prefix}{name}.{i}.", sub.children)
            else:
                walk(f"{prefix}{name}.", sub)

    walk("", tree)
    unused = sorted(set(by_key) - used)
    if unused:
        raise NotExact(f"the checkpoint has {len(unused)} tensor(s) the model does not place, e.g. {unused[0]!r} "
                       "(transformers would drop them)")
    return entries, modules




# ----------------------------------------------------------------------------- any family, from a meta model

def meta_state_dict_layout(tensors: list[tuple[str, str, tuple[int, ...]]], config: dict, float_dtype: str | None,
                           skeleton) -> tuple[list[Entry], list[str]]:
    """The in-memory state dict of a checkpoint, laid out from the model transformers builds for its config
    on the meta device, as ``skeleton(config_dict, float_dtype)`` gives it (that model's
    :func:`iwslt_mc.families.meta.meta_skeleton`, which may come from a cache): the model's own key
    order, ``_metadata`` modules and tied parameters (one storage), float tensors in the load dtype, and
    bitsandbytes state placed as its modules save it (after the module's weight and bias, in
    ``_LEAF_ORDER``). The skeleton needs torch and transformers (Gemma 4: tens of modules types; a
    hand-written tree would have to follow every one); this layout does not. :class:`NotExact` for a tensor the model would drop or create."""
    by_disk: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, dtype, shape in tensors:
        if dtype not in STORAGE_TYPES:
            raise NotExact(f"tensor {key!r} has dtype {dtype}, not sized here")
        by_disk[key] = (dtype, tuple(shape))
    if float_dtype is None:  # dtype="auto": the config's dtype, else the checkpoint's first float dtype
        cdt = config.get("dtype") or config.get("torch_dtype")
        float_dtype = _CONFIG_DTYPES.get(str(cdt).replace("torch.", "")) if cdt else None
        if float_dtype is None:
            float_dtype = next((d for d, _ in by_disk.values() if d in _FLOATS), "F32")
    skel = skeleton(config, float_dtype)
    if not skel["metadata_ok"]:
        raise NotExact("a module saves metadata other than {'version': 1}")
    rows = skel["tensors"]
    sd = {r[0]: r for r in rows}
    seen: set[int] = set()
    mem_to_disk = {}
    for k, _, _, _, tid, names in rows:
        # a tied parameter: its first name in memory stands for the name the checkpoint stores
        mem_to_disk[k] = next((n for n in names if n in by_disk), names[0]) if tid not in seen else k
        seen.add(tid)
    # bitsandbytes state saved beside a module's weight: memory prefix -> extra suffixes present;
    # a compressed-tensors weight loaded packed: its weight replaced by CT_PACKED after the module's bias
    extras: dict[str, list[str]] = {}
    ct_packed: set[str] = set()
    for mk, dk in mem_to_disk.items():
        if mk.endswith(".weight") and dk not in by_disk and dk[: -len("weight")] + "weight_packed" in by_disk:
            extras[mk[: -len("weight")]] = list(CT_PACKED)
            ct_packed.add(mk)
            continue
        if mk.endswith(".weight"):
            found = [s for s in _LEAF_ORDER if s not in ("weight", "bias") and dk[: -len("weight")] + s in by_disk]
            if found:
                extras[mk[: -len("weight")]] = found
    # a compressed-tensors weight dequantized by a transformers that keeps its parameters (ct_in_memory's
    # keeps_params): after the module's bias, CT_KEPT, then the float weight
    ct_kept = {mk for mk, dk in mem_to_disk.items() if mk.endswith(".weight") and dk in by_disk
               and dk[: -len("weight")] + "weight_shape" in by_disk}
    # int-quantized 8-bit weights (int8 embeddings): the scale first, then the int8 weight
    rows8 = {mk for mk, dk in mem_to_disk.items() if mk.endswith(".weight") and int8_rows(by_disk, dk[: -len("weight")])}
    tid_of = {r[0]: r[4] for r in rows}
    last_own: dict[str, str] = {}  # module prefix -> its last own tensor key, where its state follows
    for mk in sd:
        last_own[mk.rsplit(".", 1)[0] + "."] = mk
    entries: list[Entry] = []
    used: set[str] = set()
    storage_of: dict = {}  # tensor (its first row) -> storage index

    def add(key, dtype, shape, sid, *, cpu=False):
        entries.append(Entry(key, dtype, shape, sid, cpu=cpu))

    def _add_extras(mk, prefix):
        dprefix = mem_to_disk[mk].rsplit(".", 1)[0] + "."
        for suf in extras[prefix]:
            edtype, eshape = by_disk[dprefix + suf]
            used.add(dprefix + suf)
            if suf in CT_PACKED:
                used.add(dprefix + "weight_packed")
                if edtype in _FLOATS:
                    edtype = float_dtype
            storage_of[("x", mk, suf)] = len(storage_of)
            add(prefix + suf, edtype, eshape, storage_of[("x", mk, suf)],
                cpu=".weight.quant_state." in "." + suf or suf == "weight_format")

    def _add_kept(mk, prefix):
        dprefix = mem_to_disk[mk][: -len("weight")]
        for suf in [*(s for s in CT_KEPT if dprefix + s in by_disk), "weight"]:
            edtype, eshape = by_disk[dprefix + suf]
            used.add(dprefix + suf)
            if edtype in _FLOATS:
                edtype = float_dtype
            key = ("x", mk, suf) if suf != "weight" else tid_of[mk]
            storage_of[key] = len(storage_of)
            add(prefix + suf, edtype, eshape, storage_of[key])

    for mk, _, t_float, t_dtype, tid, _ in rows:
        dk = mem_to_disk[mk]
        prefix = mk.rsplit(".", 1)[0] + "."
        if mk in ct_kept and tid not in storage_of:
            if last_own[prefix] == mk:
                _add_kept(mk, prefix)
            continue
        if tid in storage_of:  # tied: the same parameter under a second name (lm_head -> embed_tokens)
            if dk in by_disk:
                raise NotExact(f"{dk} is tied to another tensor but the checkpoint also stores it")
            first = next(e for e in entries if e.storage == storage_of[tid])
            add(mk, first.dtype, first.shape, first.storage)
            continue
        if mk in ct_packed:
            if last_own[prefix] == mk:
                _add_extras(mk, prefix)
            continue
        if dk not in by_disk:
            raise NotExact(f"the checkpoint lacks {dk} (transformers would initialize it)")
        if mk in rows8:
            sk = dk[: -len("weight")] + "weight_scale"
            sdtype, sshape = by_disk[sk]
            used.add(sk)
            storage_of[("x", mk, "weight_scale")] = len(storage_of)
            add(prefix + "weight_scale", float_dtype if sdtype in _FLOATS else sdtype, sshape,
                storage_of[("x", mk, "weight_scale")])
        dtype, shape = by_disk[dk]
        used.add(dk)
        quantized = prefix in extras or mk in rows8
        if not quantized and shape != tuple(sd[mk][1]):
            raise NotExact(f"{dk} has shape {list(shape)}, the model built from config.json {list(sd[mk][1])}")
        if dtype in _FLOATS and t_float:
            dtype = float_dtype
        elif not quantized:
            dtype = t_dtype or dtype
        storage_of[tid] = len(storage_of)
        add(mk, dtype, shape, storage_of[tid])
        if prefix in extras and last_own[prefix] == mk:
            _add_extras(mk, prefix)
        if prefix + "weight" in ct_kept and last_own[prefix] == mk:
            _add_kept(prefix + "weight", prefix)
    unused = sorted(set(by_disk) - used)
    if unused:
        raise NotExact(f"the checkpoint has {len(unused)} tensor(s) the model does not place, e.g. {unused[0]!r} "
                       "(transformers would drop them)")
    return entries, list(skel["modules"])


_TORCH_TO_ST = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float64": "F64",
                "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
                "torch.uint8": "U8", "torch.bool": "BOOL"}


def _tied_source(by_key):
    src = by_key.get("model.language_model.embed_tokens.weight")
    if src is None:
        raise NotExact("tied lm_head without embed_tokens")
    return src
