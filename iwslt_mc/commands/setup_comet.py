"""iwslt-mc setup-comet: create the separate environment COMET runs in."""

from __future__ import annotations

from .. import cli

EXAMPLES = """
  iwslt-mc setup-comet                          # .venv-comet/ next to .venv/ (or the user cache)
  iwslt-mc setup-comet --env /scratch/comet-venv --json
  IWSLT_MC_TORCH='torch==2.5.1' iwslt-mc setup-comet --force   # rebuild with a chosen torch
  iwslt-mc setup-comet --tiny-checkpoint /tmp/tiny-comet        # also write a tiny offline test model
"""


def add_parser(sub):
    p = cli.add_command(
        sub, "setup-comet",
        help="create the separate environment COMET runs in (unbabel-comet needs transformers<5)",
        description=(
            "Create a virtual environment holding unbabel-comet and the pins it needs "
            "(transformers<5, numpy<2, huggingface-hub<1, torchmetrics<0.11, protobuf<5, "
            "sentencepiece<0.2.1, setuptools<81), used by 'iwslt-mc score --comet' as a separate "
            "process. torch: one importable by the base Python is reused (--system-site-packages); "
            "otherwise the CUDA build on a GPU machine, the CPU build (torch==2.13.0) without one; "
            "$IWSLT_MC_TORCH or --torch names another. Safe to rerun: a finished environment is "
            "kept. Default place: $IWSLT_MC_COMET_ENV, else .venv-comet/ in the source checkout, "
            "else ~/.cache/iwslt-mc/comet-venv."),
        examples=EXAMPLES,
    )
    p.add_argument("--env", metavar="DIR", help="where to create it (default: see above)")
    p.add_argument("--python", metavar="EXE", help="base interpreter for the venv (default: the one running iwslt-mc)")
    p.add_argument("--torch", metavar="REQ", help="pip requirement for torch, e.g. 'torch==2.5.1'")
    p.add_argument("--force", action="store_true", help="rebuild even when a finished environment is there")
    p.add_argument("--tiny-checkpoint", metavar="DIR",
                   help="then write a tiny random COMET checkpoint (offline) to DIR, for trying the pipeline")
    p.add_argument("--json", action="store_true", help="print the environment record as JSON")
    return p


def run(args) -> int:
    from ..scoring import comet_env
    from ..output import info, print_json

    rec = comet_env.create_env(args.env, python=args.python, torch_requirement=args.torch, force=args.force,
                               log=info)
    env = args.env or str(comet_env.default_env_dir())
    rec["env"] = env
    if args.tiny_checkpoint:
        rec["tiny_checkpoint"] = str(comet_env.make_tiny_checkpoint(args.tiny_checkpoint, env_dir=env))
    if args.json:
        print_json(rec)
        return 0
    v = rec["versions"]
    state = "already present" if rec["status"] == "present" else f"created in {rec['seconds']['total']:.0f} s"
    print(f"COMET environment {env}: {state}")
    print(f"  comet {v['comet']}, torch {v['torch']}, transformers {v['transformers']}, numpy {v['numpy']}, "
          f"CUDA {'yes' if v.get('cuda') else 'no'}")
    if args.tiny_checkpoint:
        print(f"  tiny checkpoint: {rec['tiny_checkpoint']}")
    return 0
