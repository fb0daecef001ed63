"""Predict the storage size, parameters and bin of a compressed model before building it.

The base architecture (a model directory's ``config.json``, or the built-in Qwen2-Audio-7B-Instruct)
gives every tensor the real model has, with its exact shape and whether it is a Linear weight: its
family computes them from the config's widths (:meth:`iwslt_mc.families.base.Family.plan_inventory`, on a
plain config, no transformers import), else the model is instantiated on the meta device (one audio and
one LLM layer), without allocating weights; a family may predict on its own
(:meth:`iwslt_mc.families.base.Family.predict`: Gemma 4 builds its meta model once per config and keeps
what it says in :mod:`iwslt_mc.plancache`).
The compression spec (layers kept, FFN widths, vocabulary, per-component precision) is then applied
with the on-disk arithmetic of each format, and the safetensors file is laid out exactly as
``safetensors`` writes it (tensors sorted by dtype then name, JSON header padded to 8 bytes):

- float (bf16/fp16/fp32): one tensor of ``numel * itemsize`` bytes.
- bitsandbytes int8 (LLM.int8): int8 ``weight`` of the full shape, float32 ``SCB`` per output row and
  a one-byte ``weight_format``.
- compressed-tensors pack-quantized (``ctB[-gG][-sym]``: B = 2-8 bits, groups of G input weights,
  default 128, asymmetric unless ``-sym``): int32 ``weight_packed`` (B values per word), a
  ``weight_scale`` per group in the float dtype, an int64 ``weight_shape`` and, if asymmetric, int32
  ``weight_zero_point`` packed along the output rows (:func:`iwslt_mc.floor.sizes.ct_disk_entries`).
  These quantize embeddings too.
- bitsandbytes nf4/fp4: ``weight`` packed two values per byte (uint8 ``[ceil(n/2), 1]``), float32
  ``absmax`` per 64-element block, float32 ``quant_map`` (16 values), and a uint8 ``quant_state``
  tensor holding JSON (shape, dtype, blocksize, ...). With double quantization ("-dq") ``absmax`` is
  uint8 and two more tensors hold its statistics: float32 ``nested_absmax`` per 256 blocks and a
  256-value float32 ``nested_quant_map``.

Only Linear weights are quantized (bitsandbytes via transformers replaces ``nn.Linear``); biases,
norms, convolutions and position embeddings stay in the float dtype. Embeddings and ``lm_head`` stay
float unless asked (``quantize_embeddings`` or an explicit per-component precision), as
transformers does by default. Predictions are for one file written by ``save_pretrained`` (its default
shard size, 50 GB, holds even the full model in fp32).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..sizing import torchsave
from ..errors import InputFileError, UserError
from ..floor.sizes import BNB_BLOCKSIZE, FLOAT_PRECISIONS, _FLOAT_DTYPE, Prediction, check_components, check_precision, disk_tensors, is_quant_precision, parse_ct_precision, precision_bits, safetensors_header, safetensors_header_bytes
from ..quantization.formats import planned_quantization_config, shapes_of_entries
from ..sizing.track import get_edition, size_bin

# compressed-tensors precisions `plan --target` searches (groups of 128, asymmetric: quantize method ct's defaults)
TARGET_CT_PRECISIONS = ("ct4", "ct3", "ct2")
# "embeddings" (both embed_tokens and lm_head) is expanded where precisions are set.
COMPONENT_ALIASES = {"audio": "audio_encoder", "audio_tower": "audio_encoder", "llm": "llm_layers",
                     "decoder": "llm_layers", "embed": "embed_tokens", "vision": "vision_encoder",
                     "vision_tower": "vision_encoder", "ple": "per_layer_embeddings"}
DEFAULT_MAX_SHARD_BYTES = 50 * 10**9


# ----------------------------------------------------------------------------- the base architecture

def reference_config(plain: bool = False):
    """The default family's built-in full-size reference architecture (``plain``: a
    :class:`~iwslt_mc.configjson.PlainConfig`, no transformers import; else a transformers config)."""
    from ..families import default_family

    return default_family().reference_config(plain=plain)


def reference_label() -> str:
    """How plan output names :func:`reference_config` (``built-in ...``)."""
    from ..families import default_family

    return default_family().reference_label()


def load_base_config(model_dir: str | Path, *, plain: bool = False):
    """The transformers config of a model directory (``config.json`` only; no weights are read).

    ``plain``: a :class:`~iwslt_mc.configjson.PlainConfig` instead where the directory's family reads its
    config without transformers (:meth:`iwslt_mc.families.Family.plain_config`; Qwen2-Audio, Gemma 4), for the
    planner's arithmetic (``plan`` starts in well under a second that way)."""
    p = Path(model_dir)
    cfg_path = p / "config.json" if p.is_dir() else p
    if not cfg_path.is_file():
        raise InputFileError(cfg_path, "no config.json: --base needs a model directory with its config")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(cfg_path, f"unreadable config ({e})") from None
    from ..families import family_of_model_type, supported_text
    from ..modelio import require_supported_model

    if p.is_dir():
        require_supported_model(p)
    else:
        mt = raw.get("model_type") if isinstance(raw, dict) else None
        if family_of_model_type(mt) is None:
            raise InputFileError(cfg_path, f"not a Qwen2-Audio model (model_type {mt!r}; "
                                           f"supported families: {supported_text()})")
    if plain:
        try:
            cfg = family_of_model_type(raw.get("model_type")).plain_config(raw)
        except (ValueError, TypeError, AttributeError) as e:
            raise InputFileError(cfg_path, f"not a usable config ({e})") from None
        if cfg is not None:
            return cfg
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(cfg_path.parent), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise InputFileError(cfg_path, f"not a config transformers understands ({e})") from None


def _text_config(cfg):
    return getattr(cfg, "text_config", None) or cfg


def _audio_config(cfg):
    return getattr(cfg, "audio_config", None)


def base_dims(cfg) -> dict:
    """Layer counts, FFN widths and vocabulary of a base config (the values a Spec defaults to)."""
    from ..families import family_of_config

    own = family_of_config(cfg).base_dims(cfg)  # a family that reads its own (Gemma 4)
    if own is not None:
        return own
    t, a = _text_config(cfg), _audio_config(cfg)
    return {
        "llm_layers": t.num_hidden_layers,
        "audio_layers": getattr(a, "encoder_layers", None) if a is not None else None,
        "ffn_dim": t.intermediate_size,
        "audio_ffn_dim": getattr(a, "encoder_ffn_dim", None) if a is not None else None,
        "vocab": t.vocab_size,
        **hidden_base_dims(cfg),
    }


# ----------------------------------------------------------------------------- the spec

@dataclass
class Spec:
    """A compression to predict. ``None`` fields keep the base model's value."""

    llm_layers: int | None = None  # LLM decoder layers kept
    audio_layers: int | None = None  # audio encoder layers kept
    ffn_dim: int | None = None  # LLM MLP width (intermediate_size)
    audio_ffn_dim: int | None = None  # audio encoder MLP width (encoder_ffn_dim)
    vocab: int | None = None  # vocabulary size (embed_tokens and lm_head rows)
    precision: str = "bf16"  # default precision of every component (see PRECISIONS)
    component_precision: dict[str, str] = field(default_factory=dict)  # component -> precision override
    quantize_embeddings: bool = False  # a quantized default also applies to embed_tokens and lm_head
    float_dtype: str | None = None  # dtype of tensors not quantized; None: precision if float, else bf16
    # prune-hidden (see hidden_base_dims / apply_hidden_dims below)
    hidden: int | None = None  # LLM residual width (hidden_size)
    heads: int | None = None  # LLM query heads kept (key/value heads follow the GQA group size; head size kept)
    audio_hidden: int | None = None  # audio encoder width (d_model; heads = d_model / head size)
    drop_vision: bool = False  # the vision encoder removed (drop-vision; bases that have one: Gemma 4)
    # which LLM layers stay (indices of the base) where layers differ in size (Gemma 4: sliding and global
    # layers); None: the planner's choice (Gemma 4: the valid block nearest the middle)
    llm_kept: list[int] | None = None

    def __post_init__(self):
        per = {}
        for c, p in dict(self.component_precision).items():
            for comp in (("embed_tokens", "lm_head") if c == "embeddings" else (normalize_component(c),)):
                per[comp] = check_precision(p)
        self.component_precision = per
        check_precision(self.precision)
        if self.float_dtype is not None and self.float_dtype not in FLOAT_PRECISIONS:
            raise UserError(f"float dtype {self.float_dtype!r} must be one of {', '.join(FLOAT_PRECISIONS)}")
        for name in ("llm_layers", "audio_layers", "ffn_dim", "audio_ffn_dim", "vocab", "hidden", "heads", "audio_hidden"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer (got {v!r})")

    @property
    def storage_float(self) -> str:
        if self.float_dtype:
            return self.float_dtype
        return self.precision if self.precision in FLOAT_PRECISIONS else "bf16"

    def precision_of(self, component: str) -> str:
        """Precision of the quantizable weights of ``component``."""
        if component in self.component_precision:
            return self.component_precision[component]
        if is_quant_precision(self.precision):
            if component in ("embed_tokens", "lm_head") and not self.quantize_embeddings:
                return self.storage_float
            if component == "other":
                return self.storage_float
        return self.precision

    def label(self) -> str:
        """``nf4-dq``, ``nf4-dq+lm_head`` (lm_head quantized too), ``nf4-dq+emb`` (embeddings too), overrides."""
        parts = [self.precision + self.quantized_extra()]
        parts += [f"{c}={p}" for c, p in sorted(self.component_precision.items())
                  if not (c == "embed_tokens" and parts[0].endswith("+lm_head"))]
        return " ".join(parts)

    def quantized_extra(self) -> str:
        if not (self.quantize_embeddings and is_quant_precision(self.precision)):
            return ""
        return "+emb" if is_quant_precision(self.precision_of("embed_tokens")) else "+lm_head"

    def to_json(self) -> dict:
        return asdict(self)


def all_components() -> tuple[str, ...]:
    """Every component any family names (Qwen2-Audio's first), in report order."""
    from ..families import default_family, families

    out = list(default_family().components)
    for fam in families():
        out += [c for c in fam.components if c not in out]
    return tuple(out)


def normalize_component(c: str) -> str:
    c = COMPONENT_ALIASES.get(c, c)
    if c not in all_components():
        raise UserError(f"unknown component {c!r} (use one of {', '.join(all_components())}, "
                        "or audio/llm/embeddings/vision/ple)")
    return c


def predicted_torch_save(entries, config_dict: dict, fdt: str):
    """The organizers' torch.save measure of a planned checkpoint (``entries``: name, dtype, shape, bytes),
    laid out from its tensors and config: (result, None), or (None, why it is not predictable)."""
    qc = planned_quantization_config(entries)  # compressed-tensors: saved as the quantize stage saves it
    if qc is not None:
        config_dict = {**config_dict, "quantization_config": qc}
    try:
        ts = torchsave.compute([(e[0], e[1], e[2]) for e in entries], config_dict,
                               float_dtype=_FLOAT_DTYPE[fdt][0], version=f"iwslt-mc-{__version__}",
                               ct_shapes=shapes_of_entries(entries))
    except torchsave.NotExact as e:
        return None, f"not predictable: {e}"
    ts.signature = "predicted|" + ts.signature
    return ts, None


# ----------------------------------------------------------------------------- tensor inventory

@dataclass(frozen=True)
class _Tensor:
    key: str  # on-disk (safetensors) name
    shape: tuple[int, ...]
    component: str
    linear: bool  # the weight of an nn.Linear (what bitsandbytes replaces)
    embedding: bool  # the weight of the token embedding
    llm_layer: int | None
    audio_layer: int | None


_INVENTORY_CACHE: dict[tuple, tuple] = {}


def _inventory_for(cfg, ffn_dim, audio_ffn_dim, vocab) -> tuple:
    """Cached :func:`_inventory`; the key is the config's JSON, so equal configs share one entry."""
    key = (cfg.to_json_string(use_diff=False), ffn_dim, audio_ffn_dim, vocab)
    if key not in _INVENTORY_CACHE:
        if len(_INVENTORY_CACHE) > 32:
            _INVENTORY_CACHE.clear()
        _INVENTORY_CACHE[key] = _inventory(cfg, ffn_dim, audio_ffn_dim, vocab)
    return _INVENTORY_CACHE[key]


def _inventory(cfg, ffn_dim, audio_ffn_dim, vocab) -> tuple:
    """Tensors of the model with one LLM and one audio layer (the templates), on-disk names: computed by
    the base's family from the config's widths (:meth:`iwslt_mc.families.Family.plan_inventory`), else
    enumerated from the model built on the meta device (:func:`_meta_inventory`)."""
    from ..families import family_of_config

    fam = family_of_config(cfg)
    shapes = fam.plan_inventory(cfg, ffn_dim=ffn_dim, audio_ffn_dim=audio_ffn_dim, vocab=vocab)
    if shapes is None:
        return _meta_inventory(cfg, ffn_dim, audio_ffn_dim, vocab)
    return tuple(_Tensor(key, shape, fam.component_for_key(key), linear, emb, fam.llm_layer_index(key),
                         fam.audio_layer_index(key)) for key, shape, linear, emb in shapes)


def _meta_inventory(cfg, ffn_dim, audio_ffn_dim, vocab) -> tuple:
    """:func:`_inventory` from the model transformers builds for ``cfg`` on the meta device (seconds: the
    import and the build); the reference the families' arithmetic is tested against."""
    import copy

    import torch
    import transformers
    from torch import nn

    cfg = copy.deepcopy(cfg)
    t, a = _text_config(cfg), _audio_config(cfg)
    t.num_hidden_layers = 1
    if getattr(t, "layer_types", None):
        t.layer_types = list(t.layer_types[:1])
    if ffn_dim:
        t.intermediate_size = ffn_dim
    if vocab:
        _set_vocab(cfg, vocab)
    if a is not None:
        a.encoder_layers = 1
        if audio_ffn_dim:
            a.encoder_ffn_dim = audio_ffn_dim
    from ..families import family_of_config

    fam = family_of_config(cfg)
    arch = (getattr(cfg, "architectures", None) or [fam.loader_class().__name__])[0]
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise UserError(f"model class {arch!r} (from the base config's architectures) is not in transformers {transformers.__version__}")
    with torch.device("meta"):
        model = cls(cfg)
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embed = model.get_input_embeddings()
    embed_id = id(embed.weight) if embed is not None else None
    # state_dict() detaches meta tensors; map names back to the parameter objects to learn their kind
    kind = {}
    for name, _ in model.state_dict().items():
        try:
            obj = model.get_parameter_or_buffer(name)
        except AttributeError:
            obj = None
        kind[name] = (id(obj) in linear_ids, id(obj) == embed_id)
    sd = model.state_dict()
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    sd = remove_tied_weights_from_state_dict(sd, model)
    marked = {id(v): k for k, v in sd.items()}
    try:
        from transformers.core_model_loading import revert_weight_conversion

        disk = revert_weight_conversion(model, dict(sd))
    except ImportError:  # transformers < 5 writes in-memory names
        disk = sd
    out = []
    for key, tensor in disk.items():
        orig = marked.get(id(tensor), key)
        linear, emb = kind.get(orig, (len(tensor.shape) == 2 and key.endswith(".weight"), False))
        out.append(_Tensor(key, tuple(tensor.shape), fam.component_for_key(key), linear, emb,
                           fam.llm_layer_index(key), fam.audio_layer_index(key)))
    return tuple(out)


def _set_vocab(cfg, vocab: int) -> None:
    t = _text_config(cfg)
    t.vocab_size = vocab
    if cfg is not t and getattr(cfg, "vocab_size", None) is not None:
        cfg.vocab_size = vocab
    # A trimmed vocabulary renumbers tokens; an id past its end would make nn.Embedding refuse to build.
    for c in {id(cfg): cfg, id(t): t}.values():
        if isinstance(getattr(c, "pad_token_id", None), int) and c.pad_token_id >= vocab:
            c.pad_token_id = None


def _layer_key(key: str, index: int, rx: re.Pattern) -> str:
    return rx.sub(lambda m: f"{m.group(1)}{index}.", key, count=1)


_LLM_LAYER_RX = re.compile(r"((?:^|\.)language_model\.(?:model\.)?layers\.)\d+\.")
_AUDIO_LAYER_RX = re.compile(r"((?:^|\.)audio_tower\.layers\.)\d+\.")


def _expand(templates, llm_layers: int, audio_layers: int):
    for t in templates:
        if t.llm_layer is not None:
            head, tail = _layer_key_parts(t.key, _LLM_LAYER_RX)
            for i in range(llm_layers):
                yield t, f"{head}{i}.{tail}"
        elif t.audio_layer is not None:
            head, tail = _layer_key_parts(t.key, _AUDIO_LAYER_RX)
            for i in range(audio_layers):
                yield t, f"{head}{i}.{tail}"
        else:
            yield t, t.key


@functools.lru_cache(maxsize=1024)
def _layer_key_parts(key: str, rx: re.Pattern) -> tuple[str, str]:
    """``key`` split around its layer index: ``_layer_key(key, i, rx) == f"{head}{i}.{tail}"``."""
    m = rx.search(key)
    return key[:m.end(1)], key[m.end():]


# ----------------------------------------------------------------------------- on-disk arithmetic


# ----------------------------------------------------------------------------- prediction


def resolve_dims(spec: Spec, base_config) -> dict:
    base = base_dims(base_config)
    dims = {k: (getattr(spec, k, None) if getattr(spec, k, None) is not None else v) for k, v in base.items()}
    if "vision" in base:
        dims["vision"] = base["vision"] and not spec.drop_vision
    for k in ("llm_layers", "audio_layers"):
        if base[k] is not None and dims[k] > base[k]:
            raise UserError(f"--{k.replace('_', '-')} {dims[k]}: the base model has only {base[k]}")
    return dims


def predict(spec: Spec, base_config=None, edition: str = "2025", *, base_name: str | None = None,
            torch_save: bool = True) -> Prediction:
    """Predict bytes, parameters and bin of ``spec`` applied to ``base_config`` (default: the default family's
    built-in reference, Qwen2-Audio-7B): the base family's own prediction (:meth:`Family.predict`), else
    this generic one from its inventory.

    ``torch_save=False`` leaves the torch.save measure out (``--target`` sizes many candidates and shows a
    few: :func:`with_torch_save` adds it to those)."""
    ed = get_edition(edition)
    if base_config is None:
        base_config = reference_config()
        base_name = base_name or reference_label()
    from ..families import families, family_of_config

    fam = family_of_config(base_config)
    own = fam.predict(spec, base_config, ed.key, base_name=base_name)
    if own is not None:  # the family's own prediction; the torch.save measure is the planner's
        return with_torch_save(own)
    check_components(spec, fam.components, fam.label)
    if spec.drop_vision:
        having = " or ".join(f.label for f in families() if f.supports("drop-vision"))
        raise UserError(f"a {fam.label} model has no vision encoder to remove (drop-vision is for {having})")
    dims = resolve_dims(spec, base_config)
    templates = _inventory_for(apply_hidden_dims(base_config, dims), spec.ffn_dim, spec.audio_ffn_dim, spec.vocab)
    fdt = spec.storage_float
    entries = []
    components = {c: {"params": 0, "bytes": 0} for c in fam.components}
    params = overhead = 0
    for t, key in _expand(templates, dims["llm_layers"], dims["audio_layers"] or 0):
        prec = spec.precision_of(t.component)
        quantizable = t.linear or (t.embedding and t.component == "embed_tokens")
        if is_quant_precision(prec) and not quantizable:
            prec = fdt  # biases, norms, convolutions, position embeddings stay float
        ents, n, ovh = disk_tensors(key, t.shape, prec, fdt)
        entries.extend(ents)
        comp = components[t.component]
        comp["params"] += n
        comp["bytes"] += sum(e[3] for e in ents)
        params += n
        overhead += ovh
    header = safetensors_header_bytes(entries, {"format": "pt"})
    total = header + sum(e[3] for e in entries)
    components = {c: v for c, v in components.items() if v["bytes"] or c != "other"}
    signature = (f"predicted|edition:{ed.key}|format:safetensors-1-file|bnb-blocksize:{BNB_BLOCKSIZE}"
                 f"|units:bytes,GB=10^9,GiB=2^30|version:iwslt-mc-{__version__}")
    config = _apply_dims(base_config, dims)
    pred = Prediction(spec=spec, edition=ed.key, bytes=total, params=params, bin=size_bin(total, ed),
                      components=components, overhead=overhead, header_bytes=header, tensors=len(entries),
                      dims=dims, base=base_name or "config", signature=signature, entries=entries, config=config)
    return with_torch_save(pred) if torch_save else pred


def with_torch_save(pred: Prediction) -> Prediction:
    """``pred`` with its torch.save measure (or the note why there is none), computed once."""
    if pred.torch_save is None and pred.torch_save_note is None:
        pred.torch_save, pred.torch_save_note = predicted_torch_save(pred.entries, pred.config.to_dict(),
                                                                     pred.spec.storage_float)
    return pred


def _apply_dims(cfg, dims: dict):
    import copy

    cfg = copy.deepcopy(cfg)
    t, a = _text_config(cfg), _audio_config(cfg)
    t.num_hidden_layers = dims["llm_layers"]
    if getattr(t, "layer_types", None):
        t.layer_types = list(t.layer_types[: dims["llm_layers"]])
    t.intermediate_size = dims["ffn_dim"]
    if dims["vocab"] != t.vocab_size:
        _set_vocab(cfg, dims["vocab"])
    if a is not None:
        a.encoder_layers = dims["audio_layers"]
        a.encoder_ffn_dim = dims["audio_ffn_dim"]
    return apply_hidden_dims(cfg, dims)


def write_placeholder(out_dir: str | Path, prediction: Prediction, *, config: bool = True, shards: int = 1) -> list[Path]:
    """Write the predicted checkpoint with real safetensors headers and sparse (all-zero) data.

    For testing sizers, upload limits and benchmarks at full size without the disk space: the data
    regions are holes (``truncate``), except the small 4-bit ``quant_state`` JSON tensors. Not a usable
    model (the weights are zeros). ``shards > 1`` splits the tensors into that many files plus a
    ``model.safetensors.index.json``, as hub checkpoints are.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = _split(prediction.entries, shards)
    paths = []
    for i, group in enumerate(groups):
        name = "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        header, order = safetensors_header(group, {"format": "pt"})
        path = out / name
        with open(path, "wb") as f:
            f.write(header)
            off = len(header)
            for _, _, _, nb, content in order:
                if content is not None:
                    f.seek(off)
                    f.write(content)
                off += nb
            f.truncate(off)
        paths.append(path)
    if len(groups) > 1:
        weight_map = {e[0]: p.name for group, p in zip(groups, paths) for e in group}
        index = {"metadata": {"total_size": sum(e[3] for e in prediction.entries)}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    if config and prediction.config is not None:
        (out / "config.json").write_text(prediction.config.to_json_string(use_diff=False), encoding="utf-8")
    return paths


def _split(entries: list, shards: int) -> list[list]:
    """Consecutive groups (by name) of about equal bytes."""
    if shards <= 1:
        return [list(entries)]
    order = sorted(entries, key=lambda e: e[0])
    per = sum(e[3] for e in order) / shards
    groups, cur, acc = [], [], 0
    for e in order:
        if cur and acc + e[3] > per * (len(groups) + 1) and len(groups) < shards - 1:
            groups.append(cur)
            cur = []
        cur.append(e)
        acc += e[3]
    groups.append(cur)
    return groups


# ----------------------------------------------------------------------------- the inverse: --target

def _digits_sum(n: int) -> int:
    """Total number of decimal digits of 0, 1, ..., n-1."""
    total, lo, d = 0, 0, 1
    while lo < n:
        hi = min(n, 10**d)
        total += (hi - lo) * d
        lo, d = hi, d + 1
    return total


def estimate_bytes(spec: Spec, base_config) -> int:
    """An upper bound of :func:`predict`'s bytes, exact for the data and within a few kB for the header.

    Costs one pass over the per-layer templates instead of every tensor, for searching many specs.
    """
    dims = resolve_dims(spec, base_config)
    templates = _inventory_for(apply_hidden_dims(base_config, dims), spec.ffn_dim, spec.audio_ffn_dim, spec.vocab)
    fdt = spec.storage_float
    data = text = entries = 0
    for t in templates:
        count = dims["llm_layers"] if t.llm_layer is not None else (dims["audio_layers"] or 0) if t.audio_layer is not None else 1
        if count == 0:
            continue
        extra_digits = _digits_sum(count) - count if (t.llm_layer is not None or t.audio_layer is not None) else 0
        prec = spec.precision_of(t.component)
        if is_quant_precision(prec) and not (t.linear or (t.embedding and t.component == "embed_tokens")):
            prec = fdt
        for name, dt, shape, nb, _ in disk_tensors(t.key, t.shape, prec, fdt)[0]:
            data += nb * count
            # '"name":{"dtype":"DT","shape":[S],"data_offsets":[A,B]},' has 44 fixed characters
            entry = len(json.dumps(name)) + len(dt) + len(",".join(map(str, shape))) + 44
            text += entry * count + extra_digits
            entries += count
    text += entries * 2 * len(str(data)) + 40
    return 8 + text + 8 + data


def specs_for_bin(target: str, base_config=None, edition: str = "2025", *, llm_layers: int | None = None,
                  audio_layers: int | None = None, vocab: int | None = None, precision: str | None = None,
                  quantize_embeddings: bool | None = None, ffn_dim: int | None = None,
                  audio_ffn_dim: int | None = None, component_precision: dict | None = None,
                  limit: int = 8) -> list[Prediction]:
    """Specs whose predicted size lands in bin ``target``, least to most aggressive.

    Only specs the stages can build are returned (see :func:`build_plan`; each row's ``plan``).
    Arguments left ``None`` are varied over a small grid (precision: the base's float, int8, nf4-dq and
    compressed-tensors ct4/ct3/ct2 (``TARGET_CT_PRECISIONS``); bitsandbytes with lm_head quantized or not,
    ct with the token embeddings and lm_head quantized or not; vocabulary full/64k/32k/16k, audio layers
    100/75/50/25/12.5%); for each combination the most LLM layers that fit are kept (all of them when
    ``llm_layers`` is given, which then must fit). ``quantize_embeddings``: False (neither), True or
    ``"lm_head"`` (lm_head only), ``"all"`` (embed_tokens and lm_head: ct precisions only). Aggressiveness:
    fractions of LLM and audio layers removed, plus a quarter of the fraction of vocabulary removed, plus
    the precision's step away from 16 bits; at equal aggressiveness a bitsandbytes spec comes before a ct
    one (the shipped recipes use it, and it stays 4-bit in memory where ct unpacks to floats at load).
    """
    ed = get_edition(edition)
    names = {b.name: b for b in ed.bins}
    if not names:
        raise UserError(f"edition {ed.key} has no size bins: --target needs an edition with bins (e.g. 2025)")
    key = target if target in names else target.capitalize()
    if key not in names:
        raise UserError(f"unknown bin {target!r} for edition {ed.key} (use one of {', '.join(names)})")
    b = names[key]
    if base_config is None:
        base_config = reference_config()
    from ..families import families, family_of_config

    fam = family_of_config(base_config)
    if not fam.target_search:
        searched = " or ".join(f.label for f in families() if f.target_search)
        raise UserError(f"--target searches {searched} bases only for now; plan a {fam.label} spec by hand")
    base = base_dims(base_config)
    if quantize_embeddings is True:
        quantize_embeddings = "lm_head"
    if quantize_embeddings not in (None, False, "lm_head", "all"):
        raise UserError(f"quantize_embeddings {quantize_embeddings!r}: False, 'lm_head' or 'all'")
    if quantize_embeddings == "all" and precision and parse_ct_precision(precision) is None:
        raise UserError(f"quantized token embeddings need a ct precision (compressed-tensors); {precision} "
                        "(bitsandbytes) leaves nn.Embedding in float: quantize lm_head only")
    precisions = ([precision] if precision else
                  [_config_float(base_config), "int8", "nf4-dq", *TARGET_CT_PRECISIONS])
    if quantize_embeddings == "all":
        precisions = [p for p in precisions if parse_ct_precision(p) is not None]
    vocabs = [vocab] if vocab else _grid(base["vocab"], (65536, 32768, 16384))
    na = base["audio_layers"]
    audios = [audio_layers] if audio_layers else (sorted({max(1, na * k // 8) for k in (8, 6, 4, 2, 1)}, reverse=True) if na else [None])
    top = llm_layers or base["llm_layers"]
    bottom = llm_layers or 1
    # Narrower MLPs only when nothing else fits (width pruning needs the most retraining).
    widths = [(ffn_dim, audio_ffn_dim)]
    if ffn_dim is None and audio_ffn_dim is None and base.get("audio_ffn_dim"):
        widths += [(base["ffn_dim"] // k, base["audio_ffn_dim"] // k) for k in (2, 4)]
    found: dict[tuple, Prediction] = {}
    skipped: dict[str, str] = {}
    for ffn, affn in widths:
        if len(found) >= limit:
            break
        _search(found, b, base_config, edition, precisions, vocabs, audios, quantize_embeddings, ffn, affn,
                component_precision, bottom, top, skipped)
    if precision and not found and precision in skipped:
        raise UserError(f"--target {target} with precision {precision}: {skipped[precision]}")
    if len(found) < limit or (b.high is not None and b.high <= HIDDEN_SEARCH_BELOW):
        found.update(_search_hidden(b, base_config, edition, vocab=vocab, audio_layers=audio_layers, limit=limit,
                                    precision=precision, embeddings=quantize_embeddings == "all"))
    ranked = sorted(found.values(), key=lambda p: (aggressiveness(p, base), parse_ct_precision(p.spec.precision) is not None,
                                                   -p.bytes))
    seen, out = set(), []
    for p in ranked:
        dims = tuple(p.dims.get(k) for k in ("llm_layers", "audio_layers", "vocab", "ffn_dim", "audio_ffn_dim", "hidden", "audio_hidden"))
        if dims not in seen:  # the same shape at a smaller precision adds nothing to the table
            seen.add(dims)
            out.append(p)
    out = _keep_hidden_rows(out, base, limit)
    for p in out:
        p.plan = build_plan(p.spec, base_config)
        with_torch_save(p)
    return out


def _search(found, b, base_config, edition, precisions, vocabs, audios, quantize_embeddings, ffn_dim, audio_ffn_dim,
            component_precision, bottom, top, skipped: dict):
    """Add the specs of the grid that land in bin ``b`` to ``found``; ``skipped``: precision -> why none could be built."""
    fdt = _config_float(base_config)
    for prec in precisions:
        if quantize_embeddings is not None:
            embs = [quantize_embeddings]
        elif not is_quant_precision(prec):
            embs = [False]
        else:  # bitsandbytes quantizes Linear layers only (lm_head); compressed-tensors the embeddings too
            embs = [False, "all"] if parse_ct_precision(prec) is not None else [False, "lm_head"]
        for emb in embs:
            for v in vocabs:
                for al in audios:
                    def make(n, prec=prec, emb=emb, v=v, al=al):
                        # emb "lm_head": lm_head quantized too, embed_tokens stays float; "all": both quantized
                        per = dict(component_precision or {})
                        if emb == "lm_head":
                            per.setdefault("embed_tokens", fdt)
                        return Spec(llm_layers=n, audio_layers=al, ffn_dim=ffn_dim, audio_ffn_dim=audio_ffn_dim, vocab=v,
                                    precision=prec, component_precision=per, quantize_embeddings=bool(emb),
                                    float_dtype=None if prec in FLOAT_PRECISIONS else fdt)
                    try:  # only what the stages can build (and a ct group size that divides every width)
                        build_plan(make(top), base_config, match_recipe=False)
                        estimate_bytes(make(top), base_config)
                    except UserError as e:
                        skipped.setdefault(prec, str(e))
                        continue
                    n = _most_layers_below(lambda n: estimate_bytes(make(n), base_config), b.high, bottom, top)
                    if n is None:
                        continue
                    pred = predict(make(n), base_config, edition, torch_save=False)
                    # the estimate is an upper bound: one more layer may still fit
                    if n < top and b.high is not None:
                        nxt = predict(make(n + 1), base_config, edition, torch_save=False)
                        if nxt.bytes < b.high:
                            pred = nxt
                    if pred.bytes >= b.low and (b.high is None or pred.bytes < b.high):
                        found[tuple(pred.dims.values()) + (prec, emb)] = pred


def aggressiveness(p: Prediction, base: dict) -> float:
    """A rough, documented ordering of how much a spec takes away (0 = nothing)."""
    def removed(k):
        return 1.0 - p.dims[k] / base[k] if base.get(k) else 0.0
    # Quantization costs far less quality than removing layers (the published 4-bit models lose about
    # a point where removing a quarter of the layers loses several), hence the small weights.
    # 2 bits (ct2, round-to-nearest without calibration) weighs like removing most of the layers: on the
    # toy teacher its KL to the teacher is 0.09-0.17 against ct3's 0.014-0.02 and ct4's 0.007
    # (docs/bench/quantization.md), and calibration-free 2-bit weights are known to break 7B LLMs.
    quant = {32: 0.0, 16: 0.0, 8: 0.05, 7: 0.07, 6: 0.1, 5: 0.12, 4: 0.15, 3: 0.25, 2: 0.8}[precision_bits(p.spec.precision)]
    if p.spec.quantize_embeddings and is_quant_precision(p.spec.precision):
        quant += 0.05  # lm_head quantized too
    if is_quant_precision(p.spec.precision_of("embed_tokens")):
        quant += 0.05  # and the token embeddings (ct4+emb: KL to the toy teacher 0.014, between ct4's 0.007 and ct3's 0.02)
    widths = sum(removed(k) for k in ("ffn_dim", "audio_ffn_dim", "hidden", "audio_hidden"))
    return removed("llm_layers") + removed("audio_layers") + 0.25 * removed("vocab") + widths + quant


def _grid(base: int, options) -> list[int]:
    return [base] + [v for v in options if v < base]


def _most_layers_below(size_of, high: int | None, lo: int, hi: int) -> int | None:
    """Largest layer count in [lo, hi] whose size is below ``high`` (size grows with layers), or None."""
    if high is None:
        return hi
    if size_of(lo) >= high:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size_of(mid) < high:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------- distillation stages (kd, replace-layers)
# Kept apart from the rest of the planner: build.spec_for_stages and build.scaled_stages call these for
# the stages they do not know themselves.

def dims_after_distillation_stage(stage: str, options: dict, dims: dict) -> dict | None:
    """``dims`` after a ``kd`` (shapes and dtype unchanged) or ``replace-layers`` stage (a block of N
    layers becomes one: N - 1 fewer); None when ``stage`` is neither."""
    if stage == "kd":
        return dims
    if stage != "replace-layers":
        return None
    key = "llm_layers" if options.get("component", "llm") == "llm" else "audio_layers"
    n = len(options.get("layers") or []) or int(options.get("count") or 0)
    if dims.get(key) is None or n < 2:
        return dims
    if n > dims[key]:
        what = "LLM" if key == "llm_layers" else "audio-encoder"
        raise UserError(f"stage replace-layers replaces a block of {n} {what} layers, but the model has only {dims[key]} "
                        "there at that point")
    return {**dims, key: dims[key] - (n - 1)}


def scale_distillation_stages(stages: list, base: dict) -> list:
    """``--smoke`` on a base smaller than the 7B model: a ``replace-layers`` block becomes 2 layers (first
    and last no longer protected), and a replacement the small model has no 2 layers left for is left
    out. ``stages`` are build StageEntry objects after the other stages were scaled; ``base`` the base's
    dims (llm_layers, audio_layers)."""
    import dataclasses

    left = {"llm_layers": base.get("llm_layers") or 0, "audio_layers": base.get("audio_layers") or 0}
    out = []
    for e in stages:
        o = dict(e.options)
        if e.stage == "prune-layers":
            left["llm_layers"] -= len(o.get("llm_layers") or []) + int(o.get("remove") or 0)
            left["audio_layers"] -= len(o.get("audio_layers") or []) + int(o.get("audio_remove") or 0)
        elif e.stage == "replace-layers":
            key = "llm_layers" if o.get("component", "llm") == "llm" else "audio_layers"
            if left[key] < 2:
                continue
            if o.get("layers"):
                o["layers"] = [0, 1]
            else:
                o["count"] = 2
            o["protect_first_last"] = False
            left[key] -= 1
            e = dataclasses.replace(e, options=o)
        out.append(e)
    return out


# ----------------------------------------------------------------------------- how to build a spec

# Components a quantize stage can leave unquantized, and the skip name that does it.
# the components a build plan gives precisions to (what the quantize stage can tell apart)
_BUILD_COMPONENTS = ("audio_encoder", "projector", "llm_layers", "embed_tokens", "lm_head")
_SKIP_NAMES = {"lm_head": "lm_head", "audio_encoder": "audio_tower", "projector": "multi_modal_projector"}
# Stages that change a model's size; the training stages of a recipe do not.
SIZE_STAGES = ("drop-vision", "prune-layers", "prune-hidden", "prune-ffn", "trim-vocab", "quantize")


@dataclass
class BuildStep:
    """One stage of the chain that builds a spec: ``iwslt-mc stage STAGE --set key=value ...``."""

    stage: str
    options: dict
    note: str = ""

    def sets(self) -> list[str]:
        return [f"{k}={_yaml_value(v)}" for k, v in self.options.items()]

    def text(self, notes: bool = True) -> str:
        opts = " ".join(self.sets())
        return f"{self.stage}{' ' + opts if opts else ''}{f' ({self.note})' if self.note and notes else ''}"


@dataclass
class BuildPlan:
    """How to build a spec: the stage chain, and a shipped recipe with ``--set`` overrides when one fits."""

    steps: list[BuildStep]
    recipe: str | None = None
    overrides: list[str] = field(default_factory=list)

    def recipe_command(self) -> str | None:
        if self.recipe is None:
            return None
        return " ".join([f"iwslt-mc build {self.recipe} --lang LP --base BASE --data ACL"] + [f"--set {s}" for s in self.overrides])

    def chain(self, notes: bool = True) -> str:
        return " -> ".join(s.text(notes) for s in self.steps) if self.steps else "nothing to do (the base model as it is)"

    def to_json(self) -> dict:
        return {"stages": [{"stage": s.stage, "options": s.options, "note": s.note} for s in self.steps],
                "recipe": self.recipe, "overrides": self.overrides, "command": self.recipe_command()}


def _yaml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_yaml_value(x) for x in v) + "]"
    return str(v)


def build_plan(spec: Spec, base_config=None, *, match_recipe: bool = True) -> BuildPlan:
    """The stages (and options) that build ``spec`` from the base model; :class:`UserError` saying why
    when no stage can (e.g. 4-bit token embeddings: bitsandbytes leaves ``nn.Embedding`` in float)."""
    if base_config is None:
        base_config = reference_config()
    base = base_dims(base_config)
    dims = resolve_dims(spec, base_config)
    base_float = _config_float(base_config)
    from ..families import family_of_config

    family = family_of_config(base_config)
    steps: list[BuildStep] = []
    if spec.drop_vision:
        steps.append(BuildStep("drop-vision", {}))
    remove = {k: base[k] - dims[k] for k in ("llm_layers", "audio_layers") if base.get(k)}
    if remove.get("llm_layers") or remove.get("audio_layers"):
        # a family without the iterative search (Gemma 4): the planner's block (the valid one nearest the
        # middle) is what strategy middle removes
        search = family.supports("prune-layers", "iterative")
        o = {"strategy": "iterative" if search else "middle"}
        if remove.get("llm_layers"):
            o["remove"] = remove["llm_layers"]
        if remove.get("audio_layers"):
            o["audio_remove"] = remove["audio_layers"]
        if search and any(remove.get(k, 0) > base[k] - 2 for k in remove):
            o["protect_first_last"] = False  # keeping one layer: the search may remove the first or last too
        steps.append(BuildStep("prune-layers", o, "importance search on held-out data: needs --data" if search else ""))
    narrow = {opt: dims[k] for k, opt in (("hidden", "llm_hidden"), ("heads", "llm_heads"), ("audio_hidden", "audio_hidden"))
              if base.get(k) and dims.get(k) is not None and dims[k] != base[k]}
    if narrow:
        if "llm_heads" in narrow and "llm_hidden" not in narrow:
            narrow["llm_hidden"] = dims["hidden"]
        steps.append(BuildStep("prune-hidden", narrow, "residual width: activation importance needs --data"))
    widths = {opt: dims[k] for k, opt in (("ffn_dim", "llm_width"), ("audio_ffn_dim", "audio_width"))
              if base.get(k) and dims[k] != base[k]}
    if widths:
        steps.append(BuildStep("prune-ffn", widths))
    if dims["vocab"] != base["vocab"]:
        steps.append(BuildStep("trim-vocab", {"use_data": True},
                               f"keeps the tokens of your data; planned with {dims['vocab']:,}, "
                               "`build --dry-run` counts yours"))
    fdt = spec.storage_float
    if fdt != base_float:
        raise UserError(f"not buildable: unquantized weights in {fdt} (the base stores {base_float}; "
                        "no size stage casts a model without quantizing it)")
    comps = list(_BUILD_COMPONENTS)
    quant = {c: spec.precision_of(c) for c in comps if is_quant_precision(spec.precision_of(c))}
    if quant.get("embed_tokens") and parse_ct_precision(quant["embed_tokens"]) is None:
        raise UserError("not buildable: 4-bit/8-bit token embeddings (embed_tokens): bitsandbytes quantizes "
                        "Linear layers only, the embedding stays in float; quantize lm_head instead")
    methods = set(quant.values())
    if len(methods) > 1:
        raise UserError(f"not buildable: several quantization formats in one model ({', '.join(sorted(methods))}); "
                        "the quantize stage applies one")
    if methods:
        (prec,) = methods
        floats = {c: p for c, p in ((c, spec.precision_of(c)) for c in comps) if c not in quant}
        for c, p in floats.items():
            if p != fdt:
                raise UserError(f"not buildable: {c} in {p} while the other unquantized weights are {fdt}")
        skip = [_SKIP_NAMES[c] for c in ("lm_head", "audio_encoder", "projector") if c in floats]
        ct = parse_ct_precision(prec)
        if ct is not None:  # compressed-tensors (quantize method ct): token embeddings can be quantized too
            bits, group, sym = ct
            o = {"method": "ct", "bits": bits, "group_size": group, "symmetric": sym,
                 "quantize_embeddings": "embed_tokens" in quant}
        else:
            o = {"method": prec.split("-")[0]}
            if prec != "int8":
                o["double_quant"] = prec.endswith("-dq")
        o["skip"] = skip
        steps.append(BuildStep("quantize", o))
    else:
        for c in comps:
            if spec.precision_of(c) != fdt:
                raise UserError(f"not buildable: {c} in {spec.precision_of(c)} while the model is in {fdt}")
    plan = BuildPlan(steps)
    if match_recipe:
        _match_recipe(plan, family)
    return plan


def _config_float(cfg) -> str:
    dt = str(getattr(cfg, "dtype", None) or "bfloat16").replace("torch.", "")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dt, "bf16")


def _match_recipe(plan: BuildPlan, family=None) -> None:
    """Set ``plan.recipe``/``overrides`` to the first shipped recipe of the base's ``family`` (a Family;
    default: the default family) whose size-changing stages, with ``--set`` overrides, are exactly
    ``plan.steps`` (training stages do not change the size); recipes in the family's
    :attr:`~iwslt_mc.families.base.Family.recipe_preference` order."""
    from ..families import default_family

    family = family or default_family()
    need = {s.stage: s.options for s in plan.steps}
    for name in family.recipe_preference:
        recipe = _recipe(name)
        if recipe is None or recipe.family != family.name:
            continue
        overrides = _overrides_for(recipe, need)
        if overrides is not None:
            plan.recipe, plan.overrides = name, overrides
            return


_RECIPE_CACHE: dict = {}


def _recipe(name: str):
    if name not in _RECIPE_CACHE:
        from ..recipes import load_recipe

        try:
            _RECIPE_CACHE[name] = load_recipe(name)
        except UserError:
            _RECIPE_CACHE[name] = None
    return _RECIPE_CACHE[name]


def _overrides_for(recipe, need: dict) -> list[str] | None:
    size = [e for e in recipe.stages if e.stage in SIZE_STAGES and e.when is None]
    if {e.stage for e in size} != set(need) or "prune-hidden" in need:
        return None  # prune-hidden: shown as its stage chain (recipes give ratios, suggestions widths)
    sets: list[str] = []

    def setv(e, key, value, default=None):
        if e.options.get(key, default) != value:
            sets.append(f"{e.id}.{key}={_yaml_value(value)}")

    prunes = [e for e in size if e.stage == "prune-layers"]
    if prunes:
        want = need["prune-layers"]
        counts = {"remove": want.get("remove", 0), "audio_remove": want.get("audio_remove", 0)}
        if len(prunes) == 1:
            e = prunes[0]
            if e.options.get("llm_layers") or e.options.get("audio_layers"):
                return None
            # non-zero counts first: --set is validated one item at a time, and a prune stage must remove something
            for k, v in sorted(counts.items(), key=lambda kv: kv[1] == 0):
                setv(e, k, v, 0)
            setv(e, "protect_first_last", want.get("protect_first_last", True), True)
        else:
            owner = {}
            for e in prunes:
                keys = [k for k in counts if e.options.get(k)]
                if len(keys) != 1 or keys[0] in owner:
                    return None
                owner[keys[0]] = e
            if set(owner) != set(counts) or not all(counts.values()):
                return None
            for k, e in owner.items():
                setv(e, k, counts[k])
                if e.options.get("strategy") == "iterative":
                    setv(e, "protect_first_last", want.get("protect_first_last", True), True)
    for e in size:
        if e.stage == "prune-ffn":
            want = need["prune-ffn"]
            if {k for k in ("llm_width", "audio_width") if e.options.get(k)} != set(want):
                return None
            for k, v in want.items():
                setv(e, k, v)
        elif e.stage == "trim-vocab":
            if e.options.get("corpora") or e.options.get("keep_tokens") or e.options.get("keep_ids"):
                return None
        elif e.stage == "quantize":
            _quantize_sets(e, need["quantize"], setv, sets)
    return sets


_CT_OPTION_DEFAULTS = {"group_size": 128, "symmetric": False, "scales": "auto", "quantize_embeddings": False}


def _quantize_sets(e, want: dict, setv, sets: list) -> None:
    """``--set`` items turning recipe quantize stage ``e`` into ``want`` (bitsandbytes or ct, either way).

    Each item is validated as it is applied, so the order keeps every intermediate state valid: a ct
    stage's own options go back to their defaults (and bits to the bitsandbytes width) before the method
    changes to bitsandbytes; the method changes to ct before the ct options are set."""
    have_ct = e.options.get("method", "nf4") == "ct"
    if want["method"] == "ct":
        setv(e, "method", "ct", "nf4")
        setv(e, "bits", want["bits"], None if not have_ct else 4)
        for k in ("group_size", "symmetric", "quantize_embeddings"):
            setv(e, k, want[k], _CT_OPTION_DEFAULTS[k])
    else:
        if have_ct:
            for k, default in _CT_OPTION_DEFAULTS.items():
                setv(e, k, default, default)
            setv(e, "bits", 8 if want["method"] == "int8" else 4, 4)
        setv(e, "method", want["method"], "nf4")
        if "double_quant" in want:
            setv(e, "double_quant", want["double_quant"], True)
    if list(e.options.get("skip", ["lm_head"])) != want["skip"]:
        sets.append(f"{e.id}.skip={_yaml_value(want['skip'])}")


# ----------------------------------------------------------------------------- prune-hidden
# Everything the planner knows about narrowing the residual width (the prune-hidden stage): the base
# widths, the narrowed config (so the meta-device inventory has every shape exactly: embeddings,
# q/k/v/o, gate/up/down, norms, projector, lm_head, convolutions and position embeddings of the audio
# encoder), and the buildable width specs that ``--target`` adds for the small bins.

# Bins whose upper edge is at most this (Bin4, Bin5) are searched with narrower widths too: there,
# removing layers alone leaves one LLM layer or none.
HIDDEN_SEARCH_BELOW = 500 * 10**6
HIDDEN_RATIOS = (0.75, 0.5, 0.375, 0.25)


def _keep_hidden_rows(ranked: list, base: dict, limit: int) -> list:
    """The first ``limit`` of ``ranked``, with up to half of them narrow (prune-hidden) specs when there are
    any: the aggressiveness order counts every narrowed width as a whole removed component, so without
    this a one-layer full-width spec would always push them off the table."""
    narrow = [p for p in ranked if p.dims.get("hidden") != base.get("hidden")]
    if not narrow:
        return ranked[:limit]
    keep = narrow[: max(1, limit // 2)]
    rest = [p for p in ranked if p not in keep][: limit - len(keep)]
    return [p for p in ranked if p in keep or p in rest]


def hidden_base_dims(cfg) -> dict:
    """LLM width and query heads, audio width of a base config (the values a Spec's width fields default to)."""
    t, a = _text_config(cfg), _audio_config(cfg)
    return {"hidden": t.hidden_size, "heads": t.num_attention_heads,
            "audio_hidden": getattr(a, "d_model", None) if a is not None else None}


def apply_hidden_dims(cfg, dims: dict):
    """A copy of ``cfg`` narrowed to ``dims['hidden']``, ``dims['heads']``, ``dims['audio_hidden']`` as
    prune-hidden narrows a model: whole heads of the original size (``head_dim`` written explicitly),
    key/value heads following the GQA group size, audio heads = d_model / head size. ``cfg`` itself
    when nothing changes."""
    import copy

    t, a = _text_config(cfg), _audio_config(cfg)
    base = hidden_base_dims(cfg)
    want = {k: dims.get(k) or base[k] for k in base}
    if want == base:
        return cfg
    heads, kv = t.num_attention_heads, getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // heads
    group = heads // kv
    if want["hidden"] > base["hidden"] or want["heads"] > heads or want["heads"] % group:
        raise UserError(f"--hidden {want['hidden']} / --heads {want['heads']}: at most {base['hidden']} and {heads} heads, "
                        f"heads a multiple of the GQA group size {group}")
    cfg = copy.deepcopy(cfg)
    t, a = _text_config(cfg), _audio_config(cfg)
    t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim = (
        want["hidden"], want["heads"], want["heads"] // group, head_dim)
    if a is not None and want["audio_hidden"] != base["audio_hidden"]:
        a_hd = a.d_model // a.encoder_attention_heads
        if want["audio_hidden"] > base["audio_hidden"] or want["audio_hidden"] % a_hd:
            raise UserError(f"--audio-hidden {want['audio_hidden']}: at most {base['audio_hidden']} and a multiple of "
                            f"the audio head size {a_hd}")
        a.d_model, a.encoder_attention_heads = want["audio_hidden"], want["audio_hidden"] // a_hd
    return cfg


def hidden_dims_for_ratio(cfg, ratio: float, *, audio_ratio: float | None = None) -> dict:
    """``hidden``/``heads``/``audio_hidden`` of prune-hidden with ``llm_ratio``/``audio_ratio`` (its defaults
    for the heads): the shared rule is :func:`iwslt_mc.stages.prune_hidden.target_shape`."""
    from ..stages.prune_hidden import PruneHiddenOptions, target_shape

    d = json.loads(cfg.to_json_string(use_diff=False))
    shape = target_shape(d, PruneHiddenOptions(llm_ratio=ratio, audio_ratio=ratio if audio_ratio is None else audio_ratio))
    return {"hidden": shape["hidden"], "heads": shape["heads"], "audio_hidden": shape["audio_hidden"]}


def _round_width(n: float, multiple: int = 64) -> int:
    return max(multiple, int(n) // multiple * multiple)


def _search_hidden(b, base_config, edition, *, vocab=None, audio_layers=None, limit=8, precision=None,
                   embeddings=False) -> dict:
    """Buildable narrow specs in bin ``b``: widths (LLM, audio, both FFNs) scaled by each of HIDDEN_RATIOS,
    NF4 with double quantization (or ``precision`` when it is a quantized one) of every linear layer
    including lm_head (embed_tokens stays in the float dtype, as bitsandbytes leaves nn.Embedding, unless
    ``embeddings`` with a ct precision), trimmed vocabularies, fewer audio layers; the most LLM layers
    that fit. Widths a ct group size does not divide are left out."""
    prec = precision if precision and is_quant_precision(precision) else "nf4-dq"
    if precision and not is_quant_precision(precision):
        return {}
    base = base_dims(base_config)
    stored = str(getattr(base_config, "dtype", None) or "bfloat16")
    fdt = {"float16": "fp16", "float32": "fp32"}.get(stored.replace("torch.", ""), "bf16")  # as saved: the base's dtype
    found = {}
    vocabs = [vocab] if vocab else _grid(base["vocab"], (32768, 16384))
    na = base["audio_layers"]
    audios = [audio_layers] if audio_layers else (sorted({max(1, na * k // 8) for k in (8, 4, 2)}, reverse=True) if na else [None])
    for r in HIDDEN_RATIOS:
        widths = hidden_dims_for_ratio(base_config, r)
        ffn = _round_width(base["ffn_dim"] * r)
        affn = _round_width(base["audio_ffn_dim"] * r) if base.get("audio_ffn_dim") else None
        for v in vocabs:
            for al in audios:
                def make(n, v=v, al=al):
                    return Spec(llm_layers=n, audio_layers=al, ffn_dim=ffn, audio_ffn_dim=affn, vocab=v, precision=prec,
                                component_precision={} if embeddings else {"embed_tokens": fdt}, quantize_embeddings=True,
                                float_dtype=fdt, **widths)
                try:
                    build_plan(make(1), base_config, match_recipe=False)
                    estimate_bytes(make(1), base_config)
                except UserError:
                    continue
                n = _most_layers_below(lambda n: estimate_bytes(make(n), base_config), b.high, 1, base["llm_layers"])
                if n is None:
                    continue
                pred = predict(make(n), base_config, edition, torch_save=False)
                if n < base["llm_layers"] and b.high is not None:
                    nxt = predict(make(n + 1), base_config, edition, torch_save=False)
                    if nxt.bytes < b.high:
                        pred = nxt
                # a narrow model with one or two layers is not worth listing: wider and shallower is not the point
                if pred.dims["llm_layers"] >= 4 and pred.bytes >= b.low and (b.high is None or pred.bytes < b.high):
                    found[tuple(pred.dims.values()) + (prec, "hidden")] = pred
    return found
