"""``iwslt-mc stage``: run one compression/training stage from a model directory to a new one."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc stage --list                                        # stages and what they do
  iwslt-mc stage prune-layers --help-options                   # a stage's options with help and defaults
  iwslt-mc stage prune-layers --in BASE --out pruned --set llm_layers=[13,3,20]
  iwslt-mc stage prune-layers --in BASE --out pruned --lang en-de --data acl6060 \\
      --set strategy=iterative --set remove=8 --set heldout=100          # resumable importance search
  iwslt-mc stage prune-ffn --in pruned --out narrow --set llm_width=8192 --set audio_width=4096
  iwslt-mc stage trim-vocab --in narrow --out trimmed --lang en-de --data acl6060 --set corpora=[extra.de.txt]
  iwslt-mc stage quantize --in trimmed --out nf4 --set method=nf4 --set skip=[lm_head,audio_tower]
  iwslt-mc stage prune-layers --in /tmp/kit/model --out /tmp/p --lang en-de --data /tmp/kit/data \\
      --set strategy=iterative --set remove=2 --set max_new_tokens=8 --json   # on the demo kit
"""

def stage_summary(name: str) -> str:
    """What stage ``name`` does, in one line: the first paragraph of its module's docstring (``NAME: text``),
    read from the source without importing it (the stage modules import torch). One source for
    ``stage --list``, ``--help-options`` and the docs."""
    import ast
    from pathlib import Path

    from .. import stages

    mod = stages.REGISTRY[name].split(":")[0]
    doc = ast.get_docstring(ast.parse((Path(stages.__file__).parent / f"{mod}.py").read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first[len(name) + 1:].strip() if first.startswith(f"{name}:") else first


def add_parser(sub):
    p = add_command(
        sub, "stage",
        help="run one stage (prune-layers, prune-ffn, trim-vocab, quantize, ...) on a model directory",
        description=("Run one stage from an input model directory into a new output directory (written atomically: "
                     "it appears only when the stage finished). Options are given as --set key=value (YAML values: "
                     "lists as [1,2], true/false); unknown keys and bad values fail before any work. The output holds "
                     "provenance.json with the input's history plus this stage's record (options, sizes and "
                     "parameters before/after, data used, versions, time). Resumable stages keep checkpoints in "
                     "--work-dir (default OUT.work), so rerunning the same command continues."),
        examples=EXAMPLES,
    )
    p.add_argument("name", nargs="?", metavar="STAGE", help="stage name (see --list)")
    p.add_argument("--list", action="store_true", help="list the stages and exit")
    p.add_argument("--help-options", action="store_true", help="print the stage's options with help and defaults, and exit")
    p.add_argument("--in", dest="in_dir", metavar="DIR", help="input model directory")
    p.add_argument("--out", dest="out_dir", metavar="DIR", help="output model directory (must not exist, unless --overwrite)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="stage option (repeatable)")
    p.add_argument("--lang", default="en-de", choices=["en-de", "en-zh"], help="language pair (default %(default)s)")
    p.add_argument("--data", action="append", default=[], metavar="SPEC",
                   help="data spec for stages that read data (held-out scoring, calibration, texts); repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling held-out/calibration data (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--work-dir", metavar="DIR", help="checkpoints for resuming (default OUT.work; removed on success)")
    p.add_argument("--smoke", action="store_true", help="scaled-down run (few held-out segments, few steps)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--json", action="store_true", help="print the provenance record as JSON")
    return p


def _print_options(name: str) -> None:
    from ..stages import get_stage_class

    cls = get_stage_class(name)
    print(f"{name}: {stage_summary(name)}")
    print("options (--set key=value):")
    for key, help_text, default in cls.Options.help():
        print(f"  {key} (default: {default!r})")
        if help_text:
            print(f"      {help_text}")


def run(args) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..output import info, print_json
    from ..stages import REGISTRY, get_stage_class

    if args.list:
        if args.json:
            print_json([{"name": n, "help": stage_summary(n)} for n in REGISTRY])
        else:
            width = max(len(n) for n in REGISTRY)
            for n in REGISTRY:
                print(f"{n:<{width}}  {stage_summary(n)}")
        return 0
    if not args.name:
        raise UserError("give a stage name (iwslt-mc stage --list shows them)")
    if args.help_options:
        if args.json:
            cls = get_stage_class(args.name)
            print_json([{"name": k, "help": h, "default": d} for k, h, d in cls.Options.help()])
        else:
            _print_options(args.name)
        return 0
    if not args.in_dir or not args.out_dir:
        raise UserError("--in DIR and --out DIR are required to run a stage")

    from ..stages import make_stage
    from ..distributed import rank
    from ..floor.options import parse_set
    from ..stages.base import StageContext, run_stage

    stage = make_stage(args.name, parse_set(args.set))
    if args.smoke:
        stage = stage.with_smoke()
    ctx = StageContext(lang=args.lang, data=list(args.data), smoke=args.smoke, seed=args.seed, device=args.device,
                       work_dir=Path(args.work_dir) if args.work_dir else None, log=info)
    try:
        record = run_stage(stage, Path(args.in_dir), Path(args.out_dir), ctx, overwrite=args.overwrite)
    except KeyboardInterrupt:
        import sys

        work = Path(ctx.work_dir or Path(args.out_dir).with_name(Path(args.out_dir).name + ".work"))
        kept = (f"{work} keeps its checkpoints: rerun the same command to continue" if work.is_dir() and any(work.iterdir())
                else f"{args.out_dir} was not written")
        print(f"iwslt-mc stage: interrupted; {kept}", file=sys.stderr)
        return 130
    if rank() > 0:
        return 0  # under accelerate launch / torchrun only process 0 reports (and wrote the output)
    if args.json:
        print_json(record)
    else:
        for t in record.get("techniques", []):
            print(t)
        pb, pa = record.get("params_before"), record.get("params_after")
        bb, ba = record.get("bytes_before"), record.get("bytes_after")
        if pb is not None and pa is not None:
            print(f"parameters: {pb:,} -> {pa:,}")
        if bb is not None and ba is not None:
            print(f"bytes:      {bb:,} -> {ba:,} ({bb - ba:,} saved)")
        print(f"written:    {args.out_dir} ({record.get('seconds')} s)")
    return 0
