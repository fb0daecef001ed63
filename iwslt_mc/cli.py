"""The ``iwslt-mc`` command line.

Each subcommand lives in ``iwslt_mc/commands/<name>.py`` with two functions:
``add_parser(subparsers)`` (stdlib only at import time, so ``--help`` is instant and never imports
torch) and ``run(args) -> int``. Heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import UserError
from .output import silence_library_noise

# Order here is the order in --help: the pipeline from kit to report.
COMMANDS = [
    "kit",
    "ls",
    "cp",
    "plan",
    "build",
    "stage",
    "size",
    "decode",
    "package",
    "check",
    "score",
    "setup_comet",
    "report",
    "demo",
]

EPILOG = """examples:
  iwslt-mc demo                                   # whole job on the built-in tiny kit (offline)
  iwslt-mc kit /tmp/kit                           # write the tiny Qwen2-Audio kit and speech data
  iwslt-mc size path/to/model --json              # exact storage size, parameters, bin
  iwslt-mc plan --llm-layers 24 --precision nf4   # predict size before spending GPU days
  iwslt-mc build recipe-b --lang en-de --base path/to/Qwen2-Audio-7B-Instruct

run 'iwslt-mc COMMAND --help' for a command's options and examples.
set IWSLT_MC_DEBUG=1 to see tracebacks (and the libraries' info lines);
IWSLT_MC_LIBRARY_LOG=warning|info|debug shows the libraries' lines from that level (default: errors only)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iwslt-mc",
        description="Build, size, decode, package and score IWSLT model-compression submissions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"iwslt-mc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:  # command not written yet in this checkout
            if e.name == f"{__package__}.commands.{name}":
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        silence_library_noise()  # before any command imports a library it quiets
        return int(args._run(args) or 0)
    except UserError as e:
        if os.environ.get("IWSLT_MC_DEBUG"):
            raise
        print(f"iwslt-mc {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"iwslt-mc {args.command}: interrupted (outputs written so far are kept; rerun with --resume where supported)",
              file=sys.stderr)
        return 130


def add_command(sub, name: str, *, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """Create a subcommand parser with an examples block in its --help."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


if __name__ == "__main__":
    sys.exit(main())
