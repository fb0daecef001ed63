"""One output layer: tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import json
import sys


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def print_table(rows: list[list], headers: list[str], title: str | None = None) -> None:
    """Print a table with rich (imported lazily; it is light, but keeps --help minimal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in headers:
        table.add_column(str(h))
    for r in rows:
        table.add_row(*[str(c) for c in r])
    Console().print(table)


def info(msg: str) -> None:
    """Progress/info messages go to stderr so stdout stays clean for --json."""
    print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)
