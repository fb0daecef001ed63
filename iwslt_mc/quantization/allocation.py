"""Mixed precision by measured sensitivity: a bit width per Linear module that meets a byte budget.

The format is compressed-tensors' symmetric pack-quantized integers (:mod:`iwslt_mc.quantization.formats`), one
config group per bit width, so the checkpoint is saved with ``dequantize: false`` and every quantized
module stays packed after the organizers' ``from_pretrained`` (the torch.save measure counts packed bytes).
Widths: 2, 3, 4 and 8 bits, and 16 = the module stays float (listed in ``ignore``). Linear modules only,
``lm_head`` included when it has its own matrix; the token embeddings stay float (packed embeddings do not
load packed, so under the torch.save measure they would count at float size); a tied output projection
follows the embeddings and is not allocatable.

The allocation file (JSON, :data:`FORMAT`) names modules as the loaded model does
(``model.language_model.layers.0.mlp.down_proj``, ``lm_head``)::

    {"format": "iwslt-mc-bit-allocation/1", "group_size": 128, "edition": "2027", "budget": 2684354560,
     "predicted": 2684000000, "measure": "torch_save_bytes", "modules": {"lm_head": 8, ...}, ...}

Bytes (:func:`predict_bytes`) are exact, from the input's safetensors headers and ``config.json`` alone:
each quantized weight becomes the tensors :func:`iwslt_mc.floor.sizes.ct_disk_entries` lays out, then
the edition's measure is computed by the planner's and torchsave's primitives (safetensors file bytes for
2025, ``torch.save(model.state_dict())`` after loading for 2026/2027). The choice (:func:`choose`) is a
greedy multiple-choice knapsack on loss per byte: every module starts at the narrowest width and the
upgrade with the largest loss reduction per added byte that still fits is taken, until none fits; the
loss of a module at a width is its measured sensitivity (:mod:`.sensitivity`: KL to the unquantized
model on dev utterances with that module alone quantized), assumed additive across modules.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputFileError, UserError
from ..floor.sizes import FLOAT_BITS

FORMAT = "iwslt-mc-bit-allocation/1"
WIDTHS = (2, 3, 4, 8, FLOAT_BITS)  # what method ct packs symmetric (2-8 bits) and "kept float"
DEFAULT_WIDTHS = (2, 3, 4, 8, FLOAT_BITS)
_SIZE_RX = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
# torch.save and safetensors costs of one tensor beyond its data (zip entry, alignment, pickle; header
# JSON): only used to rank upgrades, the total is always computed exactly
_PER_TENSOR = 256


def parse_size(text: str, what: str = "--target") -> int:
    """``2.5GiB``, ``900MB``, ``1234567`` -> bytes (GB = 10^9, GiB = 2^30)."""
    m = _SIZE_RX.match(str(text))
    if not m:
        raise UserError(f"{what} {text!r}: expected a size such as 2.5GiB, 900MB or 1234567 (bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "B"])


def parse_widths(text: str) -> tuple[int, ...]:
    """``2,3,4,8,16`` -> (2, 3, 4, 8, 16); each must be a width this format has."""
    try:
        vals = tuple(sorted({int(x) for x in str(text).split(",") if x.strip()}))
    except ValueError:
        raise UserError(f"--bits {text!r}: expected comma-separated bit widths, e.g. 2,3,4,8,16") from None
    bad = [b for b in vals if b not in WIDTHS]
    if not vals or bad:
        raise UserError(f"--bits {text!r}: widths are {', '.join(map(str, WIDTHS))} (16 = kept float), not {bad[0] if bad else 'none'}")
    return vals


# ----------------------------------------------------------------------------- the file

@dataclass
class Allocation:
    modules: dict[str, int]  # module name (as loaded) -> bits; 16 = kept float
    group_size: int
    edition: str = "2027"
    measure: str = "torch_save_bytes"
    budget: int | None = None
    predicted: int | None = None  # the edition's measure of the quantized model
    loss: str = "kl"
    predicted_loss: float | None = None  # sum of the modules' sensitivities (additive estimate)
    base: str = ""
    data: str = ""
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)  # module -> {bits: loss}

    def by_bits(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for name, b in sorted(self.modules.items()):
            out.setdefault(b, []).append(name)
        return dict(sorted(out.items()))

    def summary(self) -> str:
        return ", ".join(f"{len(v)} at {'float' if b == FLOAT_BITS else f'{b}-bit'}" for b, v in self.by_bits().items())

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}


def read_allocation(path: str | Path) -> Allocation:
    """Read and check an allocation file (one-line errors naming the file)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(p, "allocation file not found (make one with iwslt-mc plan --allocate)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(p, f"not a readable allocation file ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputFileError(p, f"not a bit allocation (expected \"format\": \"{FORMAT}\")")
    mods = raw.get("modules")
    if not isinstance(mods, dict) or not mods:
        raise InputFileError(p, "no \"modules\" (module name -> bits)")
    for name, b in mods.items():
        if not isinstance(b, int) or isinstance(b, bool) or b not in WIDTHS:
            raise InputFileError(p, f"module {name!r}: {b!r} bits; method ct packs {', '.join(map(str, WIDTHS[:-1]))} "
                                    "bits symmetric (16 = kept float)")
    g = raw.get("group_size")
    if not isinstance(g, int) or isinstance(g, bool) or g < 1:
        raise InputFileError(p, f"group_size must be a positive integer, not {g!r}")
    known = {f for f in Allocation.__dataclass_fields__}
    return Allocation(**{k: v for k, v in raw.items() if k in known})


def write_allocation(path: str | Path, alloc: Allocation) -> Path:
    from ..fsutil import atomic_write_json

    atomic_write_json(path, alloc.to_json())
    return Path(path)


# ----------------------------------------------------------------------------- the model's modules

def allocatable_modules(model_dir: str | Path, model=None) -> dict[str, tuple[int, int]]:
    """Module name -> (out, in) of every Linear layer whose weight is its own (a tied output projection is
    left out), from the config only (a meta-device model)."""
    from . import formats as quant_formats
    from ..modelio import meta_model

    model = meta_model(model_dir) if model is None else model
    tied = quant_formats.tied_output(model)
    shapes = quant_formats.quantized_module_shapes(model_dir, [], False, model)
    return {n: s for n, s in shapes.items() if n != tied}


def check_allocation(alloc: Allocation, modules: dict[str, tuple[int, int]], where, source) -> None:
    """The allocation fits this model: every name a Linear module of it, the group size divides each quantized
    module's input width."""
    unknown = [n for n in alloc.modules if n not in modules]
    if unknown:
        example = next(iter(modules), "?")
        raise InputFileError(source, f"module {unknown[0]!r} is not a Linear layer of {where} "
                                     f"({len(unknown)} such names; names are as loaded, e.g. {example})")
    bad = [n for n, b in alloc.modules.items() if b != FLOAT_BITS and modules[n][1] % alloc.group_size]
    if bad:
        raise InputFileError(source, f"group_size {alloc.group_size} does not divide the input width "
                                     f"{modules[bad[0]][1]} of {bad[0]} ({where})")


# ----------------------------------------------------------------------------- bytes, exactly

_SAFETENSORS_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


def _disk_tensors(model_dir: Path) -> tuple[list[tuple], dict]:
    """(name, dtype, shape, nbytes) of every stored tensor, and config.json."""
    from ..floor.modeldir import read_header, weight_files

    base, files, _ = weight_files(model_dir)
    out = []
    for rel in files:
        header, _ = read_header(base / rel)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = meta["data_offsets"]
            out.append((name, meta["dtype"], shape, int(end) - int(begin)))
    try:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputFileError(base / "config.json", f"cannot read ({e})") from None
    if config.get("quantization_config"):
        raise InputFileError(base / "config.json", "already quantized: allocate bits on the unquantized model")
    return out, config


def weight_keys(model_dir: str | Path, modules) -> dict[str, str]:
    """Module name -> the checkpoint key of its weight (the family's load-time renames undone)."""
    from ..families import family_for

    tensors, _ = _disk_tensors(Path(model_dir))
    family = family_for(model_dir)
    by_memory = {family.memory_key(t[0]): t[0] for t in tensors}
    out = {}
    for m in modules:
        key = by_memory.get(m + ".weight")
        if key is None:
            raise UserError(f"{model_dir}: no stored weight for module {m}")
        out[m] = key
    return out


class Sizer:
    """The edition's measure of ``model_dir`` quantized per module, computed from headers (no weights read)."""

    def __init__(self, model_dir: str | Path, edition: str, group_size: int, modules):
        from ..sizing.track import get_edition

        self.model_dir = Path(model_dir)
        self.edition = get_edition(edition)
        # 2026/2027: torch.save after from_pretrained (the organizers' measure since 2026); 2025: the files
        self.measure = "torch_save_bytes" if "torch_save_bytes" in self.edition.size_measures else "safetensors_bytes"
        self.group_size = group_size
        self.tensors, self.config = _disk_tensors(self.model_dir)
        self.keys = weight_keys(self.model_dir, modules)
        self._by_key = {t[0]: t for t in self.tensors}

    def entries(self, bits: dict[str, int]) -> list[tuple]:
        from ..floor.sizes import ct_disk_entries

        quant = {self.keys[m]: b for m, b in bits.items() if b != FLOAT_BITS}
        out = []
        for name, dt, shape, nb in self.tensors:
            b = quant.get(name)
            if b is None:
                out.append((name, dt, shape, nb, None))
            else:
                out.extend(ct_disk_entries(name, shape, b, self.group_size, True, dt, _SAFETENSORS_SIZE[dt]))
        return out

    def module_cost(self, module: str, bits: int) -> int:
        """Bytes one module's weight adds at ``bits`` (data plus a flat per-tensor cost): for ranking only."""
        from ..floor.sizes import ct_disk_entries

        name, dt, shape, nb = self._by_key[self.keys[module]]
        if bits == FLOAT_BITS:
            return nb + _PER_TENSOR
        ents = ct_disk_entries(name, shape, bits, self.group_size, True, dt, _SAFETENSORS_SIZE[dt])
        return sum(e[3] for e in ents) + _PER_TENSOR * len(ents)

    def bytes(self, bits: dict[str, int]) -> int:
        """The edition's primary measure of the model quantized as ``bits`` (modules not named stay float)."""
        entries = self.entries(bits)
        if self.measure == "safetensors_bytes":
            from ..planning.planner import safetensors_header_bytes

            return safetensors_header_bytes(entries, {"format": "pt"}) + sum(e[3] for e in entries)
        return self.torch_save(bits).bytes

    def torch_save(self, bits: dict[str, int]):
        """The organizers' torch.save measure (:class:`iwslt_mc.sizing.torchsave.TorchSaveSize`) of the model quantized
        as ``bits``, loaded with from_pretrained (``bytes``: on the GPU they load to; ``bytes_cpu``: on a CPU)."""
        from .. import __version__
        from ..sizing import torchsave
        from ..quantization.formats import planned_quantization_config, shapes_of_entries

        entries = self.entries(bits)
        config = dict(self.config)
        qc = planned_quantization_config(entries)
        if qc is not None:
            config["quantization_config"] = qc
        return torchsave.compute([(e[0], e[1], e[2]) for e in entries], config, version=f"iwslt-mc-{__version__}",
                                 ct_shapes=shapes_of_entries(entries))


# ----------------------------------------------------------------------------- the choice

def choose(losses: dict[str, dict[int, float]], sizer: Sizer, budget: int, widths=DEFAULT_WIDTHS) -> dict[str, int]:
    """The allocation (module -> bits) whose exact bytes are <= ``budget`` with the least summed loss the
    greedy finds: from the narrowest width everywhere, repeatedly the upgrade with the largest loss reduction
    per added byte that fits. ``losses[m][b]``: module m's measured loss at b bits (16: 0)."""
    widths = tuple(sorted(widths))
    low = {m: widths[0] for m in losses}
    floor = sizer.bytes(low)
    if floor > budget:
        raise UserError(f"budget {budget:,} bytes is below the smallest allocation ({floor:,} bytes: every module "
                        f"at {widths[0]} bits, the rest as stored, {sizer.measure})")
    top = {m: widths[-1] for m in losses}
    if sizer.bytes(top) <= budget:
        return top
    cost = {m: {b: sizer.module_cost(m, b) for b in widths} for m in losses}

    def loss(m, b):
        return 0.0 if b == FLOAT_BITS else float(losses[m].get(b, math.inf))

    slack = budget - floor
    for _ in range(12):
        cur, spent = dict(low), 0
        while True:
            best = None
            for m, b in cur.items():
                for nb in widths:
                    if nb <= b:
                        continue
                    extra = cost[m][nb] - cost[m][b]
                    gain = loss(m, b) - loss(m, nb)
                    if gain <= 0 or spent + extra > slack:
                        continue
                    key = (gain / max(extra, 1), -extra)
                    if best is None or key > best[0]:
                        best = (key, m, nb, extra)
            if best is None:
                break
            _, m, nb, extra = best
            cur[m] = nb
            spent += extra
        n = sizer.bytes(cur)
        if n <= budget:
            return cur
        slack -= n - budget  # the per-tensor estimate was short: retry with less room
    raise UserError(f"no allocation within {budget:,} bytes found")  # pragma: no cover - the slack converges


def summed_loss(losses: dict[str, dict[int, float]], bits: dict[str, int]) -> float:
    return sum(0.0 if b == FLOAT_BITS else losses[m][b] for m, b in bits.items())


def default_group_size(modules: dict[str, tuple[int, int]], wanted: int = 128) -> int:
    """``wanted`` if it divides every module's input width, else the largest power of two below it that does."""
    g = wanted
    while g > 1 and any(s[1] % g for s in modules.values()):
        g //= 2
    return g


def plan_allocation(model_dir, data, lang: str, budget: int, *, edition: str = "2027", widths=DEFAULT_WIDTHS,
                    group_size: int | None = None, split: str = "train", limit: int | None = None,
                    device: str = "cpu", batch_size: int = 8, log=print) -> Allocation:
    """Measure each module's sensitivity on ``data``'s ``split`` (never the test split) and choose the
    allocation within ``budget`` bytes of ``edition``'s measure."""
    from ..training import data as datamod
    from . import sensitivity

    if split in ("test", "eval"):
        raise UserError(f"--data split {split!r}: bits are chosen on dev utterances, not on the {split} split "
                        "(the test split is scored once, after every choice)")
    modules = allocatable_modules(model_dir)
    g = group_size or default_group_size(modules)
    bad = [n for n, s in modules.items() if s[1] % g]
    if bad:
        raise UserError(f"--group-size {g} does not divide the input width {modules[bad[0]][1]} of {bad[0]} ({model_dir})")
    sizer = Sizer(model_dir, edition, g, modules)
    examples = datamod.load_examples(data, split, lang=lang, limit=limit)
    if not examples:
        raise UserError(f"--data {data}: no {split} utterances")
    log(f"allocate: {len(modules)} Linear modules of {model_dir}, widths {', '.join(map(str, widths))}, groups of {g}, "
        f"{len(examples)} {split} utterances")
    losses = sensitivity.measure(model_dir, examples, lang, list(modules), widths, g, batch_size=batch_size,
                                 device=device, log=log)
    bits = choose(losses, sizer, budget, widths)
    return Allocation(modules=bits, group_size=g, edition=sizer.edition.key, measure=sizer.measure, budget=budget,
                      predicted=sizer.bytes(bits), loss="kl", predicted_loss=round(summed_loss(losses, bits), 6),
                      base=str(model_dir), data=f"{data} ({split}, {len(examples)} utterances, {lang})",
                      sensitivity={m: {str(b): v for b, v in d.items()} for m, d in losses.items()})
