"""Which process this is under ``accelerate launch`` / ``torchrun`` (one process otherwise).

Read from the environment the launchers set, so asking costs no import of torch or accelerate.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """Global rank (0 outside a launcher)."""
    if world_size() <= 1:
        return 0
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    return rank() == 0
