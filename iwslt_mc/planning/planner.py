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
  These quantize embeddings too. ``ct-int8`` (embed_tokens only; quantize ``int8_embeddings``): an int8
  ``weight`` of the full shape and a ``weight_scale`` per row in the float dtype.
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
from ..floor.sizes import (BNB_BLOCKSIZE, CT_INT8_ROWS, FLOAT_PRECISIONS, _FLOAT_DTYPE, Prediction, check_components, check_precision,
                           disk_tensors, is_quant_precision, safetensors_header, safetensors_header_bytes)
from ..quantization.formats import planned_quantization_config, shapes_of_entries
from ..sizing.track import get_edition, size_bin

# "embeddings" (both embed_tokens and lm_head) is expanded where precisions are set.
COMPONENT_ALIASES = {"audio": "audio_encoder", "audio_tower": "audio_encoder", "llm": "llm_layers",
                     "decoder": "llm_layers", "embed": "embed_tokens", "vision": "vision_encoder",
                     "vision_tower": "vision_encoder", "ple": "per_layer_embeddings"}
DEFAULT_MAX_SHARD_BYTES = 50 * 10**9


# ----------------------------------------------------------------------------- the base architecture

def reference_config(plain: bool = False):
    """The default family's built-in full-size reference architecture (``plain``: a
    :class:`~iwslt_mc.floor.modeldir.PlainConfig`, no transformers import; else a transformers config)."""
    from ..families import default_family

    return default_family().reference_config(plain=plain)


def reference_label() -> str:
    """How plan output names :func:`reference_config` (``built-in ...``)."""
    from ..families import default_family

    return default_family().reference_label()


def load_base_config(model_dir: str | Path, *, plain: bool = False):
    """The transformers config of a model directory (``config.json`` only; no weights are read).

    ``plain``: a :class:`~iwslt_mc.floor.modeldir.PlainConfig` instead where the directory's family reads its
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
        wrong = [c for c, p in per.items() if p == CT_INT8_ROWS and c != "embed_tokens"] + (
            ["every component"] if self.precision == CT_INT8_ROWS else [])
        if wrong:
            raise UserError(f"precision {CT_INT8_ROWS} (int8 per row, compressed-tensors int-quantized) is for "
                            f"embed_tokens only, not {wrong[0]} (e.g. --precision ct3-sym --precision "
                            f"embed_tokens={CT_INT8_ROWS})")
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


_LLM_LAYER_RX = re.compile(r"((?:^|\.)language_model\.(?:model\.){0,2}layers\.)\d+\.")
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


# ----------------------------------------------------------------------------- prune-hidden
# Everything the planner knows about narrowing the residual width (the prune-hidden stage): the base
# widths, the narrowed config (so the meta-device inventory has every shape exactly: embeddings,
# q/k/v/o, gate/up/down, norms, projector, lm_head, convolutions and position embeddings of the audio
# encoder); the buildable width specs ``--target`` adds for the small bins are in :mod:`.search`.


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


