"""iwslt-mc build: run a recipe, the main job."""

from ..cli import add_command

EXAMPLES = """  iwslt-mc build recipe-b --lang en-de --base models/Qwen2-Audio-7B-Instruct --data data/acl6060
  iwslt-mc build recipe-b --lang en-zh --base BASE --data ACL --data covost2=data/covost2 --condition unconstrained
  iwslt-mc build recipe-c --lang en-de --base BASE --data ACL --set prune-layers.remove=20
  iwslt-mc build recipe-b --lang en-de --base /tmp/kit/model --data /tmp/kit/data --smoke   # try it in minutes
  iwslt-mc build recipe-b --lang en-de --base BASE --data ACL --out runs/b --resume         # continue after a crash"""


def add_parser(sub):
    p = add_command(sub, "build", help="build a compressed model from a recipe (the main job)",
                    description="Run a recipe's stages in order from a base model, resumably; print the planner's "
                                "predicted size and bin first and the measured size and bin at the end.",
                    examples=EXAMPLES)
    p.add_argument("recipe", help="recipe name (iwslt-mc ls) or path to a recipe .yaml")
    p.add_argument("--lang", required=True, choices=["en-de", "en-zh"], help="language pair")
    p.add_argument("--base", default="Qwen/Qwen2-Audio-7B-Instruct",
                   help="base model directory (or hub id when online); default %(default)s")
    p.add_argument("--data", action="append", default=[], metavar="[NAME=]PATH",
                   help="training/held-out data: PATH is ACL 60/60 (acl6060); NAME=PATH for others, e.g. covost2=DIR")
    p.add_argument("--condition", default="constrained", choices=["constrained", "unconstrained"])
    p.add_argument("--out", help="build directory (default runs/RECIPE-LANG-CONDITION)")
    p.add_argument("--resume", action="store_true", help="continue a build: skip stages that finished unchanged")
    p.add_argument("--smoke", action="store_true", help="scale training to a few steps and held-out sets to a few segments")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE", help="override a stage option")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--edition", default=None, metavar="YEAR",
                   help="track edition the size is judged by: 2027 (default, the newest: no size bins, a Pareto "
                        "ranking of quality and size, the size being torch.save(model.state_dict()) in GiB), 2026 "
                        "(no bins), 2025 (size bins Bin1-Bin5 on the safetensors bytes, < 4 GB)")
    p.add_argument("--dry-run", action="store_true", help="check every stage against the base's config (the layers, widths and modules each stage "
                        "gets) and the data given, print the plan and the predicted size, run nothing (a build runs "
                        "the same checks before its first stage)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def parse_data(items: list[str]) -> dict:
    from ..errors import UserError
    from ..recipes import BUILTIN_DATA

    out = {}
    for it in items:
        name, path = (it.split("=", 1) if "=" in it and not it.startswith(("/", ".")) else (BUILTIN_DATA, it))
        if name in out:
            raise UserError(f"--data {name} given twice")
        out[name] = path
    return out


def _check_base_config(base: str) -> None:
    """A local --base must be a Qwen2-Audio model, checked from its config.json before anything reads it
    (a dry run needs no weights, so a config-only directory is enough)."""
    from pathlib import Path

    from ..modelio import check_model_dir, is_local, require_supported_model

    if not is_local(base):
        return
    if (Path(base) / "config.json").is_file():
        require_supported_model(base)
    else:
        check_model_dir(base)  # the one-line error for a missing directory or config


def _will_run(b, entry, smoke: bool) -> dict:
    """The recipe's options for ``entry``, plus under ``--smoke`` every option the smoke run changes."""
    options = dict(entry.options)
    if smoke:
        full, scaled = b.schema_options(entry), b.schema_options(entry, smoke=True)
        options.update({k: v for k, v in scaled.items() if v != full[k]})
    return options


def run(args) -> int:
    from pathlib import Path

    from .. import build as b
    from ..output import info, print_json
    from ..recipes import apply_overrides, load_recipe

    from ..sizing.track import get_edition

    edition = get_edition(args.edition).key  # checked before any work
    recipe = apply_overrides(load_recipe(args.recipe), args.set)
    data = parse_data(args.data)
    out = Path(args.out or f"runs/{recipe.name}-{args.lang}-{args.condition}")
    if args.dry_run:
        from ..recipes import check_recipe_family

        _check_base_config(args.base)
        check_recipe_family(recipe, args.base)
        b.check_data_refs(recipe, data, args.condition)
        b.validate_stages(recipe, args.base, condition=args.condition, lang=args.lang, data=data, smoke=args.smoke)
        pred = b.predict_recipe(recipe, args.base, condition=args.condition, lang=args.lang, data=data, edition=edition,
                                smoke=args.smoke)
        stages = [{"id": s.id, "stage": s.stage, "options": _will_run(b, s, args.smoke), "data": s.data}
                  for s in b.scaled_stages(recipe, args.base, smoke=args.smoke) if s.when in (None, args.condition)]
        if args.json:
            print_json({"recipe": recipe.name, "smoke": args.smoke, "stages": stages, "prediction": pred})
        else:
            if args.smoke:
                print("--smoke: options below are those that will run (steps, segments and layer counts scaled down)")
            for i, s in enumerate(stages, 1):
                print(f"{i:2d}. {s['id']} ({s['stage']}) {s['options']} data={s['data']}")
            if pred:
                print(f"predicted: {pred['bytes']:,} bytes, {pred['params']:,} parameters, "
                      f"{b.size_verdict(edition, pred['bin'], pred.get('torch_save'), predicted=True)}")
        return 0
    try:
        res = b.build(recipe, lang=args.lang, base=args.base, data=data, condition=args.condition, out=out,
                      resume=args.resume, smoke=args.smoke, seed=args.seed, device=args.device, edition=edition,
                      log=info)
    except KeyboardInterrupt:
        import sys

        if (out / b.STATE).exists():
            print(f"iwslt-mc build: interrupted; {out} keeps what finished: rerun the same command with --resume "
                  "to continue", file=sys.stderr)
        else:
            print("iwslt-mc build: interrupted before the build started; nothing was written", file=sys.stderr)
        return 130
    s = res.size
    if args.json:
        print_json({"out": str(res.out_dir), "model": str(res.model_dir), "stages": res.stages,
                    "prediction": res.prediction, "size": s, "skipped": res.skipped})
    else:
        print(f"model: {res.model_dir}")
        print(f"size: {s['bytes']:,} bytes, {s['params']:,} parameters, "
              f"{b.size_verdict(s['edition'], s['bin'], s.get('torch_save'))}")
        if res.prediction:
            print(f"planner predicted {res.prediction['bytes']:,} bytes ({100 * s['prediction_error']:+.2f}%)")
    return 0
