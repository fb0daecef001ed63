#!/usr/bin/env python3
"""Benchmark one round of the iterative layer-pruning search: the naive loop against the fast engines.

Same run, same model, same held-out segments, same candidates:

- naive: the published loop. For every candidate layer, every held-out segment is run through the
  processor and the audio encoder again and decoded alone (batch 1, ``generate``).
- cached: audio encoded once (prompt embeddings cached, timed separately as "setup": it is paid once
  per search, not per round), candidates applied by moving layers out of the decoder's ModuleList,
  greedy decoding in left-padded batches, one candidate at a time.
- shared (the stage's default): the whole round in one batched loop, a row per (candidate, segment);
  the prompt prefill below each candidate's layer is the full model's and computed once. Timed as a
  whole round (it cannot be split per candidate).
- teacher-forced: the cached engine's cheaper score (one forward pass per candidate; a different
  criterion, it may choose differently).

Per candidate the naive, cached and shared scores must be equal (the same hypotheses in fp32); the
tool checks that and reports each engine's choice. Exit status 1 if they differ.

    python tools/bench_prune_search.py                          # the kit model (4 LLM layers: 2 candidates)
    python tools/bench_prune_search.py --arch deep              # kit dimensions, 32 LLM layers: 30 candidates
    python tools/bench_prune_search.py --arch full --device cuda --candidates 4   # Qwen2-Audio-7B shapes, random
                                                                                  # bf16 weights (GPU only)
    python tools/bench_prune_search.py --toy-search 4           # + a 4-round search on the toy teacher, naive vs shared

``--candidates K`` times only the first K candidates of the round with the per-candidate engines and
extrapolates their full round from the mean time per candidate (the shared engine always runs the
full round). Random weights rarely emit an end token, so every segment decodes ``--max-new-tokens``
tokens; that is the cost a real model has on long outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Qwen2-Audio-7B-Instruct's config.json values (see ../shared/reference/qwen2-audio.md): 8,397,094,912 parameters.
FULL_AUDIO = dict(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
                  max_source_positions=1500, activation_function="gelu")
FULL_TEXT = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=156032, rope_theta=10000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=8192, tie_word_embeddings=False, hidden_act="silu")


def arch_config(arch: str, kit_model_dir: Path):
    """The model config for ``arch``: kit (as built), deep (kit dims, 32 LLM layers), full (7B shapes)."""
    from transformers import AutoConfig, Qwen2AudioConfig

    kit_cfg = AutoConfig.from_pretrained(str(kit_model_dir))
    if arch == "kit":
        return kit_cfg
    if arch == "deep":
        cfg = AutoConfig.from_pretrained(str(kit_model_dir))
        cfg.text_config.num_hidden_layers = 32
        cfg.text_config.layer_types = ["full_attention"] * 32
        return cfg
    t = kit_cfg.text_config
    text = dict(FULL_TEXT, model_type="qwen2", bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                pad_token_id=t.pad_token_id)
    return Qwen2AudioConfig(audio_config=dict(FULL_AUDIO, model_type="qwen2_audio_encoder"), text_config=text,
                            audio_token_index=kit_cfg.audio_token_index)


def build_model(arch: str, kit_model_dir: Path, device: str, seed: int):
    import torch
    from transformers import GenerationConfig, Qwen2AudioForConditionalGeneration

    from iwslt_mc import modelio

    if arch == "kit":
        return modelio.load_model(kit_model_dir, device=device)
    cfg = arch_config(arch, kit_model_dir)
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if arch == "full" else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2AudioForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(old)
    model.generation_config = GenerationConfig.from_pretrained(str(kit_model_dir))
    return model.eval()


def load_segments(kit_dir: Path, n: int, lang: str):
    from iwslt_mc.data import load_examples
    from iwslt_mc.stages.importance import heldout_segments

    return heldout_segments(load_examples(str(kit_dir / "data"), seed=0)[:n], lang)


def time_candidates(scorers: dict, candidates, sync, repeats: int) -> dict:
    """Per engine: score and (min over repeats) wall and CPU seconds of each candidate.

    Engines are interleaved candidate by candidate and the minimum of ``repeats`` runs is kept, so
    load from other processes on a shared machine inflates both sides alike and mostly drops out.
    """
    out = {name: {"scores": {}, "wall": {}, "cpu": {}} for name in scorers}
    for _ in range(repeats):
        for c in candidates:
            for name, scorer in scorers.items():
                w0, c0 = time.perf_counter(), time.process_time()
                score = scorer(removed_llm=(c,))
                sync()
                w, cp = time.perf_counter() - w0, time.process_time() - c0
                r = out[name]
                r["scores"][c] = score
                r["wall"][c] = min(w, r["wall"].get(c, w))
                r["cpu"][c] = min(cp, r["cpu"].get(c, cp))
    return out


def time_round(engine, removed, cands, sync, repeats: int) -> dict:
    """The shared engine's whole round: hypotheses, and (min over repeats) wall and CPU seconds."""
    best_w = best_c = None
    stats: dict = {}
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        st: dict = {}
        hyps = engine.translate_round(removed, cands, stats=st)
        sync()
        w, cp = time.perf_counter() - w0, time.process_time() - c0
        if best_c is None or cp < best_c:
            stats = st
        best_w = w if best_w is None else min(best_w, w)
        best_c = cp if best_c is None else min(best_c, cp)
    return {"hyps": hyps, "wall": best_w, "cpu": best_c, "stats": stats}


TOY = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "toy"


def toy_search(rounds: int, heldout: int, max_new_tokens: int, protect: bool) -> dict:
    """A full ``rounds``-round LLM-layer search on the toy teacher with the naive and the shared engine."""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.data import load_examples
    from iwslt_mc.stages import importance as imp

    model = modelio.load_model(TOY / "teacher", dtype=torch.float32, device="cpu")
    proc = modelio.load_processor(TOY / "teacher")
    segs = imp.heldout_segments(load_examples(str(TOY / "data"), split="test", seed=0)[:heldout], "en-de")
    n = len(model.model.language_model.layers)
    out = {"heldout": len(segs), "rounds": rounds, "llm_layers": n, "protect_first_last": protect,
           "max_new_tokens": max_new_tokens}
    with tempfile.TemporaryDirectory(prefix="toy-search-") as tmp:
        for name in ("naive", "shared"):
            eng = imp.ENGINES[name](model, proc, segs, "en-de", max_new_tokens=max_new_tokens, max_length=1024)
            scorer = imp.CandidateScorer(eng)
            log = imp.SearchLog(Path(tmp) / f"{name}.jsonl", {"engine": name}, log=lambda *a: None)
            w0, c0 = time.perf_counter(), time.process_time()
            chosen = imp.iterative_search(scorer, kind="llm", n_layers=n, remove=rounds, protect_first_last=protect,
                                          log=log, progress=lambda *a: None)
            out[name] = {"chosen": chosen, "seconds": round(time.perf_counter() - w0, 2),
                         "cpu_seconds": round(time.process_time() - c0, 2),
                         "scores": {f"{r['removed']}+{r['candidate']}": r["score"] for r in log.lines
                                    if r["type"] == "candidate"}}
    out["same_choice"] = out["naive"]["chosen"] == out["shared"]["chosen"]
    out["same_scores"] = out["naive"]["scores"] == out["shared"]["scores"]
    out["naive_over_shared"] = round(out["naive"]["seconds"] / out["shared"]["seconds"], 2)
    out["naive_over_shared_cpu"] = round(out["naive"]["cpu_seconds"] / out["shared"]["cpu_seconds"], 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit", help="a built kit directory (default: build one in a temporary directory)")
    ap.add_argument("--arch", default="kit", choices=["kit", "deep", "full"])
    ap.add_argument("--heldout", type=int, default=8, help="held-out segments (default %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=0, help="time only the first K candidates (0: all)")
    ap.add_argument("--lang", default="en-de")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per candidate; the minimum is kept (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--round-rows", type=int, default=256, help="shared engine: rows decoded together (default %(default)s)")
    ap.add_argument("--no-cached", action="store_true", help="skip the per-candidate cached engine")
    ap.add_argument("--toy-search", type=int, default=0, metavar="ROUNDS",
                    help="also run a ROUNDS-round search on the toy teacher with the naive and the shared engine")
    ap.add_argument("--toy-heldout", type=int, default=8, help="toy search: held-out segments (default %(default)s)")
    ap.add_argument("--toy-protect", action="store_true", help="toy search: protect the first and last layer")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from iwslt_mc import modelio
    from iwslt_mc.stages import importance as imp

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.arch == "full" and not device.startswith("cuda"):
        print("--arch full needs a GPU (16.8 GB of bf16 weights)", file=sys.stderr)
        return 2
    tmp = None
    if args.kit:
        kit = Path(args.kit)
    else:
        from iwslt_mc.kit import build_kit

        tmp = tempfile.TemporaryDirectory(prefix="bench-prune-")
        kit = Path(tmp.name) / "kit"
        build_kit(kit, seed=0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    t0 = time.perf_counter()
    model = build_model(args.arch, kit / "model", device, args.seed)
    processor = modelio.load_processor(kit / "model")
    load_s = time.perf_counter() - t0
    n_layers = len(model.model.language_model.layers)
    segments = load_segments(kit, args.heldout, args.lang)
    allowed = list(range(1, n_layers - 1))  # protect the first and last layer, as published
    cands = allowed[: args.candidates] if args.candidates else allowed
    kw = dict(max_new_tokens=args.max_new_tokens, max_length=1024)

    naive = imp.CandidateScorer(imp.NaiveEngine(model, processor, segments, args.lang, **kw))
    cached_engine = imp.CachedEngine(model, processor, segments, args.lang, batch_size=args.batch_size, **kw)
    cached = imp.CandidateScorer(cached_engine)
    tf = imp.CandidateScorer(cached_engine, scoring="teacher-forced")
    shared_engine = imp.SharedEngine(model, processor, segments, args.lang, batch_size=args.batch_size,
                                     round_rows=args.round_rows, **kw)
    if shared_engine.fallback:
        print(f"the shared engine cannot run this model: {shared_engine.fallback}", file=sys.stderr)
        return 2

    # warm-up: first calls pay one-off costs (kernels, allocator) that are not per-candidate work
    with torch.inference_mode():
        imp.NaiveEngine(model, processor, segments[:1], args.lang, **kw).translate(())
        sync()
    t0 = time.perf_counter()
    cached_engine.embeds(())
    sync()
    setup_s = time.perf_counter() - t0
    cached_engine.translate(())  # warm-up of batched generate
    shared_engine.embeds(())
    shared_engine.translate_round([], allowed[:2])  # warm-up of the round loop
    sync()

    per_cand = {"naive": naive, "cached": cached, "teacher-forced": tf}
    if args.no_cached:
        del per_cand["cached"]
    timed = time_candidates(per_cand, cands, sync, args.repeats)
    results = {}
    for name, r in timed.items():
        wall, cpu = sum(r["wall"].values()), sum(r["cpu"].values())
        per = wall / len(cands)
        results[name] = {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), "per_candidate": round(per, 4),
                         "cpu_per_candidate": round(cpu / len(cands), 4), "round_estimate": round(per * len(allowed), 2),
                         "cpu_round_estimate": round(cpu / len(cands) * len(allowed), 2),
                         "chosen": max(cands, key=lambda c: (r["scores"][c], -c)), "scores": r["scores"]}
    # the shared engine: the whole round in one loop, scored per candidate with the same metric
    rr = time_round(shared_engine, [], allowed, sync, args.repeats)
    metric = imp.get_metric("auto")
    refs, srcs = [s.reference for s in segments], [s.source for s in segments]
    sh_scores = {c: float(metric(rr["hyps"][c], refs, srcs, args.lang)) for c in allowed}
    results["shared"] = {"seconds": round(rr["wall"], 3), "cpu_seconds": round(rr["cpu"], 3),
                         "per_candidate": round(rr["wall"] / len(allowed), 4),
                         "cpu_per_candidate": round(rr["cpu"] / len(allowed), 4),
                         "round_estimate": round(rr["wall"], 2), "cpu_round_estimate": round(rr["cpu"], 2),
                         "chosen": max(cands, key=lambda c: (sh_scores[c], -c)),
                         "chosen_full_round": max(allowed, key=lambda c: (sh_scores[c], -c)), "scores": sh_scores,
                         "where": {k: round(v, 3) if isinstance(v, float) else v for k, v in rr["stats"].items()}}
    others = [n for n in ("cached", "shared") if n in results]
    same = all(results["naive"]["scores"][c] == results[n]["scores"][c] for n in others for c in cands)
    same_choice = all(results[n]["chosen"] == results["naive"]["chosen"] for n in others)
    base = results["naive"]["round_estimate"]
    base_cpu = results["naive"]["cpu_round_estimate"]
    ratios = {n: round(base / r["round_estimate"], 2) for n, r in results.items() if n != "naive"}
    ratios_cpu = {n: round(base_cpu / r["cpu_round_estimate"], 2) for n, r in results.items() if n != "naive"}
    report = {
        "arch": args.arch, "device": device, "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "llm_layers": n_layers, "params": sum(p.numel() for p in model.parameters()),
        "heldout": len(segments), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "candidates_per_round": len(allowed), "candidates_timed": len(cands), "model_load_s": round(load_s, 2),
        "cached_setup_s": round(setup_s, 3), "engines": results,
        "repeats": args.repeats, "round_rows": args.round_rows,
        "naive_over": ratios, "naive_over_cpu": ratios_cpu,
        "scores_equal_to_naive": same, "same_choice_as_naive": same_choice,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    if args.toy_search:
        report["toy_search"] = toy_search(args.toy_search, args.toy_heldout, 64, args.toy_protect)
    ok = same and same_choice and (not args.toy_search or (report["toy_search"]["same_choice"]
                                                           and report["toy_search"]["same_scores"]))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"{args.arch} model ({n_layers} LLM layers, {report['params']:,} params) on {device}"
              f"{' (' + report['gpu'] + ')' if report['gpu'] else ''}, {len(segments)} held-out segments, "
              f"{args.max_new_tokens} new tokens, {len(cands)}/{len(allowed)} candidates timed per candidate, "
              f"torch threads {torch.get_num_threads()}")
        print(f"audio encoded once per search (cached/shared setup): {setup_s:.3f} s")
        print(f"times: minimum of {args.repeats} runs (per-candidate engines interleaved candidate by candidate)")
        print(f"{'engine':<16}{'timed s':>10}{'cpu s':>10}{'round s':>10}{'round cpu s':>13}{'x naive':>9}"
              f"{'x cpu':>8}  chosen")
        for name, r in results.items():
            print(f"{name:<16}{r['seconds']:>10.3f}{r['cpu_seconds']:>10.3f}{r['round_estimate']:>10.2f}"
                  f"{r['cpu_round_estimate']:>13.2f}{ratios.get(name, 1.0):>9.1f}{ratios_cpu.get(name, 1.0):>8.1f}"
                  f"  {r['chosen']}")
        w = results["shared"]["where"]
        print(f"shared engine CPU: prefill {w.get('prefill_s', 0):.2f} s ({w.get('prefill_rows', 0):,} token-layers), "
              f"decoding {w.get('decode_s', 0):.2f} s ({w.get('decode_rows', 0):,} token-layers)")
        print(f"scores equal to naive (cached, shared): {same}; same choice: {same_choice}"
              f" (shared over the full round: layer {results['shared']['chosen_full_round']})")
        if args.toy_search:
            t = report["toy_search"]
            print(f"toy teacher, {t['rounds']}-round search, {t['heldout']} segments: naive {t['naive']['chosen']} "
                  f"in {t['naive']['seconds']} s, shared {t['shared']['chosen']} in {t['shared']['seconds']} s "
                  f"({t['naive_over_shared']}x wall, {t['naive_over_shared_cpu']}x CPU); same choice "
                  f"{t['same_choice']}, same scores {t['same_scores']}")
    if tmp:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
