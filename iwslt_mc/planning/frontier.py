"""A family of recipe variants across sizes (``iwslt-mc plan --frontier``), and which of them are on the
quality-size Pareto frontier once built and scored.

A variant is a template recipe (default ``recipe-bin4``) with two knobs turned:

- **depth** ``d``: the template's prune-layers stage that removes LLM layers keeps ``round(d x L)`` of
  the base's ``L`` layers (dropped at ``d = 1``);
- **width** ``w``: its prune-hidden stage narrows the LLM and the audio encoder by ``w`` (heads with
  them, as the stage does for a ratio) and its prune-ffn stage keeps ``w`` of each FFN width (both
  dropped at ``w = 1``).

Every other stage (audio truncation, vocabulary trimming, training, quantization) is the template's,
scaled to the base's architecture as ``build --smoke`` scales it. A variant is ``depth`` when only the
depth changes, ``width`` when only the width does, ``both`` otherwise. Sizes are the planner's, from
the same stage-to-spec code as ``build --dry-run``.

After the variants are built (``iwslt-mc build DIR/NAME.yaml ... --out RUN``) and scored
(``RUN/scores*.json``), the runs are read with :func:`iwslt_mc.submission.report.collect` and the frontier is
:func:`iwslt_mc.submission.report.pareto_front`, the report's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

DEFAULT_TEMPLATE = "recipe-bin4"
DEFAULT_FRACTIONS = (1.0, 0.75, 0.5, 0.375, 0.25)


@dataclass
class Variant:
    name: str
    kind: str  # base, depth, width, both
    depth: float
    width: float
    recipe: object  # iwslt_mc.recipes.Recipe
    prediction: dict
    measured: dict = field(default_factory=dict)  # (lang, testset) -> {"bytes", "score", "pareto"}

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "depth": self.depth, "width": self.width,
                "prediction": self.prediction,
                "measured": [{"lang": k[0], "testset": k[1], **v} for k, v in sorted(self.measured.items(), key=str)]}


def _label(x: float) -> str:
    return f"{round(x * 100):d}"


def variant_name(template: str, depth: float, width: float) -> str:
    return f"{template}-d{_label(depth)}-w{_label(width)}"


def make_variant(recipe, base_cfg, depth: float, width: float, *, base: str):
    """The template ``recipe`` with its LLM depth and widths set (see the module docstring)."""
    from ..build import scaled_stages
    from .planner import base_dims

    if not (0 < depth <= 1 and 0 < width <= 1):
        raise UserError(f"depth and width fractions must be in (0, 1] (got {depth}, {width})")
    dims = base_dims(base_cfg)
    stages = scaled_stages(recipe, base, smoke=True)  # architecture scaling only (no-op on the 7B)
    llm = [i for i, e in enumerate(stages) if e.stage == "prune-layers" and (e.options.get("remove") or e.options.get("llm_layers"))]
    if depth < 1 and not llm:
        raise UserError(f"{recipe.path}: the template has no prune-layers stage removing LLM layers to vary the depth")
    if width < 1 and not any(e.stage == "prune-hidden" for e in stages):
        raise UserError(f"{recipe.path}: the template has no prune-hidden stage to vary the width")
    out = []
    for i, e in enumerate(stages):
        o = dict(e.options)
        if llm and i == llm[0]:
            keep = max(1, round(depth * dims["llm_layers"]))
            if keep >= dims["llm_layers"]:
                continue
            o.pop("llm_layers", None)
            o["remove"] = dims["llm_layers"] - keep
            if o.get("strategy") is None:
                o["strategy"] = "top"
        elif e.stage == "prune-hidden":
            if width >= 1:
                continue
            for k in ("llm_hidden", "llm_heads", "audio_hidden"):
                o.pop(k, None)
            o.update(llm_ratio=width, audio_ratio=width)
        elif e.stage == "prune-ffn":
            if width >= 1:
                continue
            o["llm_width"] = max(1, round(dims["ffn_dim"] * width))
            if dims.get("audio_ffn_dim"):
                o["audio_width"] = max(1, round(dims["audio_ffn_dim"] * width))
        out.append(dataclasses.replace(e, options=o))
    from ..build import fit_ct_group_sizes  # a ct group size must divide the variant's narrower widths

    out = fit_ct_group_sizes(out, base_cfg)
    kind = "base" if depth == 1 and width == 1 else "depth" if width == 1 else "width" if depth == 1 else "both"
    name = variant_name(recipe.name, depth, width)
    return dataclasses.replace(recipe, name=name, stages=out), kind


def recipe_yaml(recipe, *, template: str, base: str, depth: float, width: float) -> str:
    """The variant as a recipe file (``iwslt-mc build FILE`` runs it)."""
    import yaml

    doc = {"name": recipe.name,
           "description": f"{template} with {_label(depth)}% of the LLM layers and {_label(width)}% of the widths",
           "paper": recipe.paper,
           "stages": [{k: v for k, v in (("id", e.id), ("stage", e.stage), ("data", e.data or None),
                                         ("when", e.when), ("options", e.options)) if v is not None}
                      for e in recipe.stages]}
    head = (f"# {recipe.name}: generated by `iwslt-mc plan --frontier` from {template} for the base {base}\n"
            f"# (depth {depth}: LLM layers kept; width {width}: residual, heads and FFN widths kept).\n"
            f"# Run:   iwslt-mc build {recipe.name}.yaml --lang en-de --base {base} --data ACL --out runs/{recipe.name}\n")
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110)


def plan_family(template: str, base: str, *, depths=DEFAULT_FRACTIONS, widths=DEFAULT_FRACTIONS,
                data: dict | None = None, vocab: int | None = 16000, lang: str = "en-de",
                condition: str = "constrained", edition: str = "2025") -> list[Variant]:
    """Every (depth, width) variant of ``template`` on ``base`` with its predicted size, smallest first.

    Vocabulary trimming is counted on ``data`` when given, else taken as ``vocab`` tokens (capped at the
    base's vocabulary; None: untrimmed)."""
    from ..build import spec_for_stages
    from .planner import base_dims, load_base_config, predict
    from ..sizing.track import get_edition
    from ..recipes import load_recipe

    recipe = load_recipe(template)
    cfg = load_base_config(base)
    base_vocab = base_dims(cfg)["vocab"]
    out = []
    for d in sorted(set(depths), reverse=True):
        for w in sorted(set(widths), reverse=True):
            var, kind = make_variant(recipe, cfg, d, w, base=base)
            stages = var.active_stages(condition)
            trims = any(e.stage == "trim-vocab" for e in stages)
            if data:
                spec, notes = spec_for_stages(stages, cfg, base=base, lang=lang, data=data, condition=condition)
            else:
                spec, notes = spec_for_stages([e for e in stages if e.stage != "trim-vocab"], cfg, base=base, lang=lang,
                                              data={}, condition=condition)
                if trims and vocab:
                    spec = dataclasses.replace(spec, vocab=min(vocab, base_vocab))
                    notes = notes + [f"trim-vocab: assumed {min(vocab, base_vocab):,} tokens kept (give --data to count)"]
            pred = predict(spec, cfg, edition=edition, base_name=str(base)).to_json()
            pred["notes"] = notes
            # sizes in the edition's primary measure, as the report measures built runs (2027: torch.save)
            pred["size_measure"] = get_edition(edition).primary_size_measure
            pred["safetensors_bytes"] = pred["bytes"]
            if pred["size_measure"] == "torch_save_bytes" and pred.get("torch_save"):
                pred["bytes"] = pred["torch_save"]["bytes"]
            out.append(Variant(var.name, kind, d, w, var, pred))
    return sorted(out, key=lambda v: v.prediction["bytes"])


def mark_built(variants: list[Variant], run_dirs: list, *, metric: str = "auto", edition: str = "2025") -> str | None:
    """Attach measured size and score of the built runs to their variants (matched by recipe name) and mark
    the Pareto-optimal ones per (language pair, test set). Returns the metric used (None: nothing scored)."""
    from ..submission.report import choose_metric, collect, pareto_front

    rows, _ = collect(run_dirs, edition=edition)
    by_name = {v.name: v for v in variants}
    unknown = sorted({r.recipe for r in rows if r.recipe not in by_name})
    if unknown:
        raise UserError(f"runs of recipes outside this family: {', '.join(map(str, unknown))} "
                        f"(variants: {', '.join(sorted(by_name)[:4])}, ...)")
    scored = [r for r in rows if r.scores]
    if not scored:
        return None
    metric = choose_metric(rows, metric)
    for key in sorted({(r.lang, r.testset) for r in scored}, key=str):
        group = [r for r in scored if (r.lang, r.testset) == key and metric in r.scores]
        front = set(pareto_front([(r.bytes, r.scores[metric]) for r in group]))
        for i, r in enumerate(group):
            by_name[r.recipe].measured[key] = {"bytes": r.bytes, "bin": r.bin, "score": r.scores[metric],
                                               "metric": metric, "pareto": i in front, "run": r.run}
    return metric


def write_variants(variants: list[Variant], out_dir: str | Path, *, template: str, base: str, force: bool = False) -> list[Path]:
    """Write each variant as ``OUT_DIR/NAME.yaml`` (refuses to overwrite unless ``force``)."""
    from ..fsutil import atomic_write_text

    out = Path(out_dir)
    paths = [out / f"{v.name}.yaml" for v in variants]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]}: already exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    for v, p in zip(variants, paths):
        atomic_write_text(p, recipe_yaml(v.recipe, template=template, base=base, depth=v.depth, width=v.width))
    return paths
