"""Print the recipe catalogue's table (recipes/README.md) from the planner, for Qwen2-Audio-7B-Instruct.

Every shipped recipe's stages are turned into a planner spec by the same code ``build --dry-run``
uses (:func:`iwslt_mc.build.spec_for_stages`), under the constrained condition. A recipe that trims
the vocabulary is predicted for a 16,000-token trimmed vocabulary, and for 32,000 in brackets (the
real count depends on the data; ``build`` counts it before it starts).

    python tools/recipe_catalogue.py            # the Markdown rows
    python tools/recipe_catalogue.py --json     # the numbers
    python tools/recipe_catalogue.py --family gemma4   # the Gemma 4 recipes on the gemma-4-12B-it layout
    python tools/recipe_catalogue.py --family qwen2_5_omni   # Qwen2.5-Omni's thinker recipes at 7B

tests/planning/test_recipe_ladder.py checks that recipes/README.md carries exactly these rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

VOCABS = (16000, 32000)


def predictions(condition: str = "constrained", family: str = "qwen2_audio") -> list[dict]:
    """The shipped recipes of ``family``, predicted on its reference: Qwen2-Audio-7B-Instruct (built in), or
    gemma-4-12B-it (iwslt_mc.families.gemma4.gemma4_12b_config, the layout tools/gemma4_12b_config.py writes)."""
    from iwslt_mc.build import spec_for_stages
    from iwslt_mc.planning.planner import predict
    from iwslt_mc.families.qwen2_audio.plan import qwen2_audio_7b_config
    from iwslt_mc.recipes import RECIPES, load_recipe

    if family == "gemma4":
        from iwslt_mc.families.gemma4 import gemma4_12b_config

        cfg = gemma4_12b_config()
    elif family == "qwen2_audio":
        cfg = qwen2_audio_7b_config()
    else:  # any other family: its built-in reference architecture
        from iwslt_mc.families import family_named

        cfg = family_named(family).reference_config()
    out = []
    for name, _ in RECIPES:
        recipe = load_recipe(name)
        if recipe.family != family:
            continue
        stages = recipe.active_stages(condition)
        trims = any(e.stage == "trim-vocab" for e in stages)
        spec, _ = spec_for_stages([e for e in stages if e.stage != "trim-vocab"], cfg, base="", lang="en-de",
                                  data={}, condition=condition)
        preds = [predict(dataclasses.replace(spec, vocab=v), cfg) for v in VOCABS] if trims else [predict(spec, cfg)]
        out.append({"recipe": name, "trims_vocab": trims,
                    "bytes": [p.bytes for p in preds], "params": [p.params for p in preds], "bin": [p.bin for p in preds],
                    "torch_save": [p.torch_save.bytes if p.torch_save else None for p in preds]})
    return out


def gemma4_rows(preds: list[dict]) -> list[str]:
    """The Gemma 4 table: the 2027 edition's measure (torch.save bytes, GiB) first, then safetensors bytes."""
    lines = ["| recipe | torch.save GiB (2027 measure) | torch.save bytes | safetensors bytes | parameters |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for p in preds:
        def fmt(values, f):
            return f(values[0]) + (f" ({f(values[1])})" if len(values) > 1 else "")
        lines.append(f"| `{p['recipe']}` | {fmt(p['torch_save'], lambda n: f'{n / 2**30:.3f}')} | "
                     f"{fmt(p['torch_save'], lambda n: f'{n:,}')} | {fmt(p['bytes'], lambda n: f'{n:,}')} | "
                     f"{fmt(p['params'], lambda n: f'{n:,}')} |")
    return lines


def rows(preds: list[dict]) -> list[str]:
    lines = ["| recipe | predicted bytes | parameters | 2025 bin | torch.save GiB (2027 measure) |",
             "| --- | ---: | ---: | --- | ---: |"]
    for p in preds:
        def fmt(values, f):
            return f(values[0]) + (f" ({f(values[1])})" if len(values) > 1 else "")
        bins = fmt(p["bin"], lambda b: b or "**none** (>= 4 GB)")
        ts = fmt(p["torch_save"], lambda n: f"{n / 2**30:.3f}" if n is not None else "not predictable")
        lines.append(f"| `{p['recipe']}` | {fmt(p['bytes'], lambda n: f'{n:,}')} | {fmt(p['params'], lambda n: f'{n:,}')} | "
                     f"{bins} | {ts} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    from iwslt_mc.families import family_names

    ap.add_argument("--family", choices=family_names(), default="qwen2_audio",
                    help="which recipes (and reference model): qwen2_audio (default; Qwen2-Audio-7B-Instruct), gemma4 "
                         "(the gemma-4-12B-it layout), or another family on its built-in reference")
    args = ap.parse_args()
    preds = predictions(family=args.family)
    table = rows(preds) if args.family == "qwen2_audio" else gemma4_rows(preds)
    print(json.dumps(preds, indent=2) if args.json else "\n".join(table))


if __name__ == "__main__":
    main()
