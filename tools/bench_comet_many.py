#!/usr/bin/env python3
"""Time one COMET worker call scoring N candidates (``comet_env.score_many``) against N separate calls.

    tools/bench_comet_many.py CHECKPOINT [--candidates N] [--segments S] [--qe] [--json]

The candidates mimic a layer-pruning search round: each is the same S segments with a few of them
changed, so most (src, mt, ref) triples are shared (score_many scores those once). Prints the wall
time of both ways and checks that they give the same system scores (to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iwslt_mc.scoring import comet_env  # noqa: E402

WORDS = "the model has to fit into less than five hundred megabytes we removed three layers does it work".split()


def make_round(n_candidates: int, n_segments: int):
    src = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(6 + i % 5)) for i in range(n_segments)]
    ref = [s.capitalize() + "." for s in src]
    cands = {}
    for c in range(n_candidates):
        mt = list(ref)
        for j in range(c % 4 + 1):  # a few segments differ per candidate
            i = (c * 7 + j * 3) % n_segments
            mt[i] = " ".join(reversed(ref[i].split())) + f" {c}"
        cands[f"drop-{c}"] = mt
    return src, ref, cands


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--segments", type=int, default=32)
    ap.add_argument("--qe", action="store_true", help="reference-free model: no references")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    src, ref, cands = make_round(args.candidates, args.segments)
    ref_or_none = None if args.qe else ref
    t0 = time.time()
    details: dict = {}
    many = comet_env.score_many(args.checkpoint, src, cands, ref_or_none, qe=args.qe, details=details)
    t_many = time.time() - t0
    t0 = time.time()
    separate = {name: comet_env.run_comet(args.checkpoint, src, mt, ref_or_none, qe=args.qe)["system_score"]
                for name, mt in cands.items()}
    t_sep = time.time() - t0
    worst = max(abs(many[k] - separate[k]) for k in cands)
    rec = {"candidates": args.candidates, "segments": args.segments, "unique_triples": details["unique"],
           "one_call_s": round(t_many, 2), "separate_calls_s": round(t_sep, 2),
           "speedup": round(t_sep / t_many, 2), "worker_seconds": details["seconds"],
           "max_abs_difference": worst, "same": worst < 1e-4}
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        print(f"{args.candidates} candidates x {args.segments} segments ({details['unique']} distinct triples): "
              f"one call {t_many:.1f} s, {args.candidates} calls {t_sep:.1f} s ({t_sep / t_many:.1f}x); "
              f"largest system-score difference {worst:.2e}")
    return 0 if rec["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
