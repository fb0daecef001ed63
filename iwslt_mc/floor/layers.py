"""Which layers a layer-removal strategy picks, as index arithmetic (pure): the ``middle`` and ``top``
blocks of prune-layers, and how a list of layer indices is written in logs and provenance."""

from __future__ import annotations


def fmt_layers(idx) -> str:
    return ", ".join(str(i) for i in idx)


def middle_block(n: int, count: int) -> list[int]:
    """A contiguous block of ``count`` layers centred in ``n`` (lower middle when it cannot be exact)."""
    start = (n - count) // 2
    return list(range(start, start + count))


def top_block(n: int, count: int) -> list[int]:
    """The top ``count`` of ``n`` layers."""
    return list(range(n - count, n))
