#!/usr/bin/env python3
"""Replay the layer search's screen (``screen: segments``) on exact hypotheses: does the race keep the
exact search's choice, and how much of the exact round does it decode?

Each round is decoded once, exactly, with the shared engine (every candidate on every held-out segment);
then the real :meth:`iwslt_mc.pruning.importance.CandidateScorer.screen_round` runs on an engine that
serves those hypotheses (a segment's hypothesis does not depend on which others are decoded with it), once
per seeded segment order. Reported per round and order: the exact winner, the race's choice, whether the
fallback fired, the survivors after each look and the share of (candidate, segment) rows the race decodes.
No timing: `tools/bench_prune_search.py` times the race itself.

    python tools/replay_screen.py --arch deep --model-seeds 4,5,6 --orders 0,1,2 \\
        --heldout 100 --heldout-data kit --heldout-data tests/fixtures/toy/data
    python tools/replay_screen.py --toy --toy-data /tmp/toyw/corpus-tiny --toy-split dev --offset 0 --rounds 4

The toy search follows the exact winners (round r's removed layers are the exact rounds' choices).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class ReplayEngine:
    """A shared engine's interface over hypotheses decoded once: ``{(removed, candidate): [hyp per segment]}``."""

    fallback = None

    def __init__(self, engine, hyps: dict):
        self.segments, self.lang, self.hyps = engine.segments, engine.lang, hyps
        self.rows = 0

    def translate_round(self, removed, candidates, stats=None, segments=None):
        idx = list(range(len(self.segments))) if segments is None else list(segments)
        self.rows += len(candidates) * len(idx)
        return {c: [self.hyps[(tuple(sorted(removed)), c)][i] for i in idx] for c in candidates}


def replay_round(engine, removed, cands, orders, plan_kw) -> list[dict]:
    from iwslt_mc.scoring import metrics
    from iwslt_mc.pruning import importance as imp

    hyps = engine.translate_round(list(removed), list(cands))
    metric = metrics.get_metric("auto")  # the metric CandidateScorer uses by default
    refs = [s.reference for s in engine.segments]
    exact = {c: float(metric(hyps[c], refs, [], engine.lang)) for c in cands}
    winner = max(cands, key=lambda c: (exact[c], -c))
    key = tuple(sorted(removed))
    out = []
    for seed in orders:
        rep = ReplayEngine(engine, {(key, c): hyps[c] for c in cands})
        scorer = imp.CandidateScorer(rep)
        info = scorer.screen_round(list(removed), list(cands), imp.ScreenPlan(seed=seed, **plan_kw))
        got = {c: scorer(removed_llm=tuple(removed) + (c,)) for c in info["finalists"]}
        chosen = max(got, key=lambda c: (got[c], -c))
        out.append({"removed": list(removed), "candidates": len(cands), "order_seed": seed, "exact_winner": winner,
                    "race_choice": chosen, "same": chosen == winner, "fallback": info["fallback"],
                    "kept": [len(st["kept"]) for st in info["stages"]],
                    "rows_share": round(rep.rows / (len(cands) * len(refs)), 3),
                    "exact_rank_of_choice": sorted(cands, key=lambda c: (-exact[c], c)).index(chosen) + 1})
    return out, winner


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="deep", choices=["kit", "deep"])
    ap.add_argument("--model-seeds", default="0", help="random-weight models, comma-separated seeds")
    ap.add_argument("--toy", action="store_true", help="the trained toy teacher instead of random-weight models")
    ap.add_argument("--toy-data", default=None, help="toy: held-out data spec (default: the test fixture)")
    ap.add_argument("--toy-split", default="test")
    ap.add_argument("--offset", type=int, default=0, help="toy: first held-out utterance of the split")
    ap.add_argument("--rounds", type=int, default=4, help="toy: search rounds")
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--heldout-data", action="append", default=None, metavar="SPEC")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 16 (kits), 64 (toy)")
    ap.add_argument("--orders", default="0,1,2", help="seeds of the screen's segment order, comma-separated")
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--z", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import tempfile

    import torch

    from iwslt_mc import modelio
    from iwslt_mc.pruning import importance as imp
    from iwslt_mc.training.calibration import heldout_segments

    torch.set_num_threads(args.threads)
    orders = [int(x) for x in args.orders.split(",")]
    plan_kw = {"every": args.every, "z": args.z}
    rows = []
    if args.toy:
        from bench_prune_search import TOY

        from iwslt_mc.training.data import load_examples

        model = modelio.load_model(TOY / "teacher", dtype=torch.float32, device="cpu")
        proc = modelio.load_processor(TOY / "teacher")
        ex = load_examples(args.toy_data or str(TOY / "data"), split=args.toy_split, seed=0)
        segs = heldout_segments(ex[args.offset:args.offset + args.heldout], "en-de")
        eng = imp.SharedEngine(model, proc, segs, "en-de", max_new_tokens=args.max_new_tokens or 64, max_length=1024)
        n = len(model.model.language_model.layers)
        removed: list = []
        for r in range(args.rounds):
            cands = [c for c in range(n) if c not in removed]
            got, winner = replay_round(eng, removed, cands, orders, plan_kw)
            rows += [{"model": f"toy {args.toy_split}[{args.offset}:{args.offset + len(segs)}]", "round": r + 1, **g}
                     for g in got]
            removed.append(winner)
    else:
        from bench_prune_search import build_model, load_segments

        from iwslt_mc.families.qwen2_audio.kit import build_kit

        with tempfile.TemporaryDirectory(prefix="replay-screen-") as tmp:
            kit = Path(tmp) / "kit"
            build_kit(kit, seed=0)
            proc = modelio.load_processor(kit / "model")
            segs = load_segments(kit, args.heldout, "en-de", args.heldout_data)
            for ms in [int(x) for x in args.model_seeds.split(",")]:
                model = build_model(args.arch, kit / "model", "cpu", ms)
                n = len(model.model.language_model.layers)
                eng = imp.SharedEngine(model, proc, segs, "en-de", max_new_tokens=args.max_new_tokens or 16,
                                       max_length=1024)
                got, _ = replay_round(eng, [], list(range(1, n - 1)), orders, plan_kw)
                rows += [{"model": f"{args.arch} seed {ms}", "round": 1, **g} for g in got]
    for r in rows:
        print(json.dumps(r))
    same = sum(r["same"] for r in rows)
    print(json.dumps({"rounds_replayed": len(rows), "same_choice": same,
                      "mean_rows_share": round(sum(r["rows_share"] for r in rows) / len(rows), 3)}))
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
