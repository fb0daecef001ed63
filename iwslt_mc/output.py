"""One output layer: tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings


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


# The libraries whose log records and Python warnings go through :func:`silence_library_noise`: their
# informational lines and warnings (a kernel hint, a deprecation inside the library, a trust-check note
# that a new release adds) would bury our own messages, and they change with every release. Their
# errors still show.
LIBRARIES = ("transformers", "bitsandbytes", "kernels", "peft", "accelerate", "compressed_tensors", "huggingface_hub")
# The switch: a level name (debug, info, warning, error); IWSLT_MC_DEBUG=1 alone means info.
LIBRARY_LOG_ENV = "IWSLT_MC_LIBRARY_LOG"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


def library_log_level() -> int:
    """The level from which the :data:`LIBRARIES`' records show: ``$IWSLT_MC_LIBRARY_LOG``, else info with
    ``IWSLT_MC_DEBUG``, else error. An unknown name is an error naming the variable."""
    from .errors import UserError

    name = os.environ.get(LIBRARY_LOG_ENV, "").strip().lower()
    if not name:
        return logging.INFO if os.environ.get("IWSLT_MC_DEBUG") else logging.ERROR
    if name not in _LEVELS:
        raise UserError(f"{LIBRARY_LOG_ENV}={name!r}: not a level (use one of {', '.join(_LEVELS)})")
    return _LEVELS[name]


def _library_of(filename: str) -> str | None:
    """The :data:`LIBRARIES` package a source file belongs to (it is imported, as it warned), or None."""
    for name in LIBRARIES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and filename.startswith(os.path.dirname(path) + os.sep):
            return name
    return None


_shown_by_python = warnings.showwarning


def _showwarning(message, category, filename, lineno, file=None, line=None):
    lib = _library_of(str(filename))
    if lib is None:  # ours, or another library's: as Python shows it
        return _shown_by_python(message, category, filename, lineno, file, line)
    logging.getLogger(lib).warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)


def silence_library_noise() -> None:
    """Route the :data:`LIBRARIES`' logging and Python warnings through one level (stdlib only: call it
    before the libraries are imported; again after is harmless).

    Their loggers get :func:`library_log_level` (error unless the switch says otherwise), transformers
    through its own ``TRANSFORMERS_VERBOSITY`` as well (it resets its logger's level when imported), and a
    ``warnings.warn`` raised in their source files becomes a warning record of their logger, so it obeys
    the same level. Errors always show; so do warnings raised in our own code or in any other package.
    """
    global _shown_by_python
    level = library_log_level()
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(level)
    os.environ["TRANSFORMERS_VERBOSITY"] = logging.getLevelName(level).lower()
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is not None:
        tf_logging.set_verbosity(level)
    if warnings.showwarning is not _showwarning:
        _shown_by_python = warnings.showwarning
        warnings.showwarning = _showwarning


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
