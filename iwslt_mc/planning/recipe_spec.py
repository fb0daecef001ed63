"""From a spec to a recipe: the size stages (and options) that build a planned model, the shipped recipe
that matches them (with ``--set`` overrides), and how the distillation stages change the dims (kd,
replace-layers) for ``build``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..floor.options import set_value_text
from ..floor.sizes import CT_INT8_ROWS, is_quant_precision, parse_ct_precision
from .planner import Spec, base_dims, reference_config, resolve_dims

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


def scale_distillation_stages(stages: list, base: dict, cfg=None) -> list:
    """``--smoke`` on a base smaller than the 7B model: a ``replace-layers`` block becomes 2 layers (first
    and last no longer protected), and a replacement the small model has no 2 layers left for is left
    out. ``stages`` are build StageEntry objects after the other stages were scaled; ``base`` the base's
    dims (llm_layers, audio_layers). A given LLM block becomes the one the family's rules allow on the model
    as the earlier stages leave it (:meth:`~iwslt_mc.families.base.Family.smoke_replace_block`, from the base
    config ``cfg``; without it the first two layers)."""
    import dataclasses

    left = {"llm_layers": base.get("llm_layers") or 0, "audio_layers": base.get("audio_layers") or 0}
    fam = None
    kept = None  # the base's LLM layers still there (None: not known, e.g. after a layer search)
    if cfg is not None:
        from ..families import family_of_config

        fam = family_of_config(cfg)
        kept = list(range(left["llm_layers"]))
    out = []
    for e in stages:
        o = dict(e.options)
        if e.stage == "prune-layers":
            left["llm_layers"] -= len(o.get("llm_layers") or []) + int(o.get("remove") or 0)
            left["audio_layers"] -= len(o.get("audio_layers") or []) + int(o.get("audio_remove") or 0)
            if kept is not None:
                kept = _kept_after(fam, cfg, kept, o)
        elif e.stage == "replace-layers":
            key = "llm_layers" if o.get("component", "llm") == "llm" else "audio_layers"
            if left[key] < 2:
                continue
            if o.get("layers"):
                o["layers"] = [0, 1]
                if key == "llm_layers" and kept is not None:
                    o["layers"] = fam.smoke_replace_block(cfg, kept, 2, 0 if str(o.get("init", "last")) == "first" else 1)
            else:
                o["count"] = 2
            o["protect_first_last"] = False
            left[key] -= 1
            if key == "llm_layers" and kept is not None:
                if o.get("layers"):
                    gone = o["layers"][1:] if str(o.get("init", "last")) == "first" else o["layers"][:-1]
                    kept = [k for i, k in enumerate(kept) if i not in gone]
                else:
                    kept = None  # chosen during the build
            e = dataclasses.replace(e, options=o)
        out.append(e)
    return out


def _kept_after(fam, cfg, kept: list[int], options: dict) -> list[int] | None:
    """The base's LLM layers left after a prune-layers stage with ``options`` (explicit or middle/top blocks), or
    None when not known before the build."""
    if fam.tracks_kept_layers:
        return fam.kept_after_prune(cfg, kept, options)
    if options.get("llm_layers"):
        return [k for i, k in enumerate(kept) if i not in set(options["llm_layers"])]
    return kept if not options.get("remove") else None


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
        return [f"{k}={set_value_text(v)}" for k, v in self.options.items()]

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
        # a family without the iterative search, or whose layers differ in size (Gemma 4: which ones go is part
        # of the prediction): the planner's block (the valid one nearest the middle) is what strategy middle
        # removes, so the recipe builds what was planned
        search = family.supports("prune-layers", "iterative") and not family.tracks_kept_layers
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
    int8_emb = quant.get("embed_tokens") == CT_INT8_ROWS
    if int8_emb:  # quantize method ct's int8_embeddings: beside symmetric ct layers only
        del quant["embed_tokens"]
        rest = set(quant.values())
        if len(rest) != 1 or not (parse_ct_precision(next(iter(rest))) or (0, 0, False))[2]:
            raise UserError(f"not buildable: embed_tokens={CT_INT8_ROWS} goes with symmetric ct layers (ctB-sym, "
                            f"quantize int8_embeddings), not {', '.join(sorted(rest)) or 'float ones'}")
    if quant.get("embed_tokens") and parse_ct_precision(quant["embed_tokens"]) is None:
        raise UserError("not buildable: 4-bit/8-bit token embeddings (embed_tokens): bitsandbytes quantizes "
                        "Linear layers only, the embedding stays in float; quantize lm_head instead")
    methods = set(quant.values())
    if len(methods) > 1:
        raise UserError(f"not buildable: several quantization formats in one model ({', '.join(sorted(methods))}); "
                        "the quantize stage applies one")
    if methods:
        (prec,) = methods
        floats = {c: p for c, p in ((c, spec.precision_of(c)) for c in comps)
                  if c not in quant and not (int8_emb and c == "embed_tokens")}
        for c, p in floats.items():
            if p != fdt:
                raise UserError(f"not buildable: {c} in {p} while the other unquantized weights are {fdt}")
        skip = [_SKIP_NAMES[c] for c in ("lm_head", "audio_encoder", "projector") if c in floats]
        ct = parse_ct_precision(prec)
        if ct is not None:  # compressed-tensors (quantize method ct): token embeddings can be quantized too
            bits, group, sym = ct
            o = {"method": "ct", "bits": bits, "group_size": group, "symmetric": sym,
                 "quantize_embeddings": "embed_tokens" in quant}
            if int8_emb:
                o["int8_embeddings"] = True
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
            sets.append(f"{e.id}.{key}={set_value_text(value)}")

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


# int8_embeddings first: it is valid only while symmetric is on, so it goes back to its default before symmetric
_CT_OPTION_DEFAULTS = {"int8_embeddings": False, "group_size": 128, "symmetric": False, "scales": "auto",
                       "quantize_embeddings": False}


def _quantize_sets(e, want: dict, setv, sets: list) -> None:
    """``--set`` items turning recipe quantize stage ``e`` into ``want`` (bitsandbytes or ct, either way).

    Each item is validated as it is applied, so the order keeps every intermediate state valid: a ct
    stage's own options go back to their defaults (and bits to the bitsandbytes width) before the method
    changes to bitsandbytes; the method changes to ct before the ct options are set."""
    have_ct = e.options.get("method", "nf4") == "ct"
    if want["method"] == "ct":
        setv(e, "method", "ct", "nf4")
        setv(e, "bits", want["bits"], None if not have_ct else 4)
        int8 = bool(want.get("int8_embeddings"))  # off before symmetric may go off, on after it is on
        if not int8:
            setv(e, "int8_embeddings", False, False)
        for k in ("group_size", "symmetric", "quantize_embeddings"):
            setv(e, k, want[k], _CT_OPTION_DEFAULTS[k])
        if int8:
            setv(e, "int8_embeddings", True, False)
    else:
        if have_ct:
            for k, default in _CT_OPTION_DEFAULTS.items():
                setv(e, k, default, default)
            setv(e, "bits", 8 if want["method"] == "int8" else 4, 4)
        setv(e, "method", want["method"], "nf4")
        if "double_quant" in want:
            setv(e, "double_quant", want["double_quant"], True)
    if list(e.options.get("skip", ["lm_head"])) != want["skip"]:
        sets.append(f"{e.id}.skip={set_value_text(want['skip'])}")
