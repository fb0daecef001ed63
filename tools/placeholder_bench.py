"""What tools/bench_fingerprint.py and tools/bench_size.py share: the command line of a benchmark on a full-size
Qwen2-Audio-7B-Instruct placeholder (``planner.write_placeholder``: real safetensors headers, data regions left
as holes) and the planner's prediction it is written from. Importing it puts the repository first on
``sys.path`` and the hub offline (run as ``python tools/bench_*.py``, the tool's folder is on the path already)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser(doc: str) -> argparse.ArgumentParser:
    """The benchmark's parser (``doc``: its module docstring) with ``--precision`` and ``--shards``; the tool adds
    its own options, then ``--json`` (:func:`add_json`)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="bf16", help="precision of the placeholder model (default bf16)")
    ap.add_argument("--shards", type=int, default=1, help="number of safetensors files (default 1)")
    return ap


def prediction(args):
    """The planner's prediction of the full-size model at ``args.precision`` (what the placeholder is written from)."""
    from iwslt_mc.planning import planner

    return planner.predict(planner.Spec(precision=args.precision))


def add_json(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
