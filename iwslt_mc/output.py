"""One output layer: tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import contextlib
import json
import logging
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


# Library log lines that bury our messages, by logger: (logger name, start of the message). Only these
# exact lines are dropped; every other warning or error of those libraries still shows.
LIBRARY_NOISE = (
    # bitsandbytes, at import on AVX512-BF16 CPUs: an optional faster kernel it would fetch from the
    # hub (offline here); the built-in kernel is used instead
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    # bitsandbytes int8: logged on every forward of every Linear8bitLt (hundreds per decoded segment)
    ("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast from"),
    # transformers, when merge/finetune dequantize a 4-bit base on purpose (the dtype is chosen there)
    ("transformers.integrations.bitsandbytes", "The modules are dequantized in"),
)


class _DropLines(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_library_noise() -> None:
    """Drop the known noise lines of :data:`LIBRARY_NOISE` (stdlib only: call it before the library is imported)."""
    for name, prefix in LIBRARY_NOISE:
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) and f.prefix == prefix for f in lg.filters):
            lg.addFilter(_DropLines(prefix))


@contextlib.contextmanager
def hf_progress_bars_off():
    """transformers' own progress bars ("Loading weights", "Writing model shards") off inside the block."""
    from transformers.utils import logging as tf_logging

    was_on = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            tf_logging.enable_progress_bar()
