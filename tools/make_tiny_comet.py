#!/usr/bin/env python3
"""Build a tiny random COMET checkpoint offline (tests, demos): tools/make_tiny_comet.py [--qe] OUT_DIR.

``--qe``: a reference-free, COMET-Kiwi-style quality-estimation model (``UnifiedMetric`` fed
[mt, src], sigmoid output) instead of a reference-based regression model.

The work happens in the COMET environment (``iwslt-mc setup-comet``), because the encoder config
and tokenizer must be written by transformers 4; see ``iwslt_mc.scoring.comet_env.make_tiny_checkpoint``.
Layout: OUT_DIR/encoder/ (tiny XLM-R config + SentencePiece tokenizer, the checkpoint's
``pretrained_model``), OUT_DIR/hparams.yaml, OUT_DIR/checkpoints/model.ckpt.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iwslt_mc.scoring.comet_env import create_env, make_tiny_checkpoint  # noqa: E402


def make_tiny_comet(out_dir, *, env_dir=None, seed: int = 0, setup: bool = True, qe: bool = False) -> Path:
    """Create the COMET environment if needed (``setup``), then the tiny checkpoint; returns the .ckpt path."""
    if setup:
        create_env(env_dir)
    return make_tiny_checkpoint(out_dir, env_dir=env_dir, seed=seed, qe=qe)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--env", help="COMET environment (default: as iwslt-mc setup-comet)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qe", action="store_true", help="a reference-free (COMET-Kiwi-style) QE model")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(make_tiny_comet(args.out_dir, env_dir=args.env, seed=args.seed, qe=args.qe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
