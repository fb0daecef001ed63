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
from .errors import UserError, disk_full
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
    except Exception as e:  # a full disk, whichever library noticed it: one line, not a traceback
        full, path = disk_full(e)
        if not full or os.environ.get("IWSLT_MC_DEBUG"):
            raise
        print(f"iwslt-mc {args.command}: error: {_disk_full_line(args, path)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"iwslt-mc {args.command}: interrupted (outputs written so far are kept; rerun with --resume where supported)",
              file=sys.stderr)
        return 130


def _disk_full_line(args, path: str | None) -> str:
    """The one line for a full disk: the path written (else the command's output), what to do next."""
    if path is None:
        out = next((getattr(args, k) for k in ("out", "out_dir", "output") if getattr(args, k, None)), None)
        if out and not os.path.isdir(str(out)):
            path = f"writing {out} (or its log)"
        else:
            path = f"writing under {out or os.getcwd()}"
    again = "rerun with --resume (what finished is kept)" if hasattr(args, "resume") else "rerun"
    return f"{path}: no space left on device; free space (or write elsewhere), then {again}"


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
