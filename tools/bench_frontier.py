#!/usr/bin/env python3
"""Quality-size frontier of the toy teacher: depth-only vs width-only vs both, at equal training budget.

The variants are the ``iwslt-mc plan --frontier`` family (:mod:`iwslt_mc.planning.frontier`) of a toy-scale
template recipe: LLM layers removed by the iterative search (teacher-forced scoring on the dev
split), residual width narrowed by ``prune-hidden`` and FFN widths by ``prune-ffn`` (activation
importance on train-split calibration audio), then the same recovery fine-tuning for every variant
(``--steps`` steps, batch 8, on sequence-level distillation data: the teacher's translations of the
train split plus its references, made once; with ``--distill 0`` the train split's references).
Each variant is then also trimmed to the train split's
vocabulary and quantized (NF4, double quantization, every linear layer but lm_head) for a
second, compact point. Every point is scored on the test split (never used for any choice), with
its size, parameters, training steps and build time; the frontier is the report's
(:func:`iwslt_mc.submission.report.pareto_front`).

    python tools/bench_frontier.py --corpus toy/corpus-tiny --out toy/frontier --report docs/bench/frontier.md

The corpus is the teacher's (``tools/train_toy_teacher.py`` has the command that makes it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TEACHER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "toy" / "teacher"
MAX_NEW_TOKENS = 64

# Values in the template are read as Qwen2-Audio-7B values and scaled to the toy where they are
# architecture-dependent (as `build --smoke` does); the frontier family overrides depth and widths.
TEMPLATE = """\
# toy frontier template (tools/bench_frontier.py)
# Run:   iwslt-mc build toy-frontier ... (generated per variant by iwslt_mc.planning.frontier)
name: toy
stages:
  - id: prune-llm
    stage: prune-layers
    data: [acl6060]
    options: {{strategy: iterative, remove: 16, scoring: teacher-forced, split: dev, heldout: 100, batch_size: 16}}
  - id: prune-width
    stage: prune-hidden
    data: [acl6060]
    options: {{llm_ratio: 0.5, audio_ratio: 0.5, importance: activation, calibration: 32, split: train}}
  - id: prune-ffn
    stage: prune-ffn
    data: [acl6060]
    options: {{llm_width: 5504, audio_width: 2560, importance: activation, calibration: 32, split: train}}
  - id: ft
    stage: finetune
    data: [kd]
    options: {{mode: full, dtype: float32, split: {split}, max_steps: {steps}, batch_size: 8, lr: {lr}, warmup_steps: {warmup},
              weight_decay: 0.01, save_steps: {steps}, logging_steps: 50, progress: false, gradient_checkpointing: false}}
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="work dir (runs/, results.json); finished runs are reused")
    ap.add_argument("--report", type=Path, default=None, help="Markdown to write (plot next to it)")
    ap.add_argument("--lang", default="en-de")
    ap.add_argument("--steps", type=int, default=400, help="recovery fine-tuning steps, the same for every variant")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--no-compact", action="store_true", help="skip the trimmed + NF4 point of each variant")
    ap.add_argument("--points", default="1:0.5,1:0.375,0.5:1,0.34:1,0.67:0.75,0.5:0.5",
                    help="depth:width pairs (fractions of LLM layers and widths kept)")
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test utterances")
    ap.add_argument("--rescore-compact", action="store_true",
                    help="decode and score the existing -q4 points again (their builds and build times are kept), "
                         "e.g. after a fix to 4-bit CPU inference; every other point is reused as it is")
    ap.add_argument("--distill", type=int, default=8000,
                    help="train utterances the teacher translates for the distillation data (0: fine-tune on the "
                         "train split's references only)")
    args = ap.parse_args(argv)

    import torch

    import bench_fidelity
    from iwslt_mc import build, recipes
    from iwslt_mc.planning import frontier, planner
    from iwslt_mc.training import data
    from iwslt_mc.fsutil import atomic_write_json, atomic_write_text
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    teacher = args.teacher.resolve()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    log = lambda m: print("   ", m, flush=True)  # noqa: E731
    ctx = lambda work: StageContext(lang=args.lang, data=[str(args.corpus)], device="cpu", work_dir=work, log=log)  # noqa: E731
    examples = data.load_examples(str(args.corpus), "test", limit=args.test_limit, lang=args.lang)
    results_path = args.out / "results.json"
    old = {r["name"]: r for r in json.loads(results_path.read_text())["results"]} if results_path.exists() else {}
    results = []

    # 1. sequence-level distillation data, once: the teacher's translations of the train split + references
    kd = args.out / "distill"
    t0 = time.time()
    if args.distill and not kd.exists():
        run_stage(make_stage("distill", {"split": "train", "batch_size": 16, "max_new_tokens": MAX_NEW_TOKENS,
                                         "keep_references": True, "dedup": True, "limit": args.distill}),
                  teacher, kd, ctx(args.out / "distill.work"))
    kd_seconds = old.get("_kd", {}).get("seconds") or round(time.time() - t0, 1)
    kd_data, kd_split = (str(kd / "distill_data"), "none") if args.distill else (str(args.corpus), "train")

    tmpl = args.out / "toy-template.yaml"
    text = TEMPLATE.format(steps=args.steps, lr=args.lr, warmup=max(1, args.steps // 10), split=kd_split)
    if args.steps == 0:  # pruning alone: no recovery stage
        text = text[: text.index("  - id: ft\n")]
    atomic_write_text(tmpl, text)
    recipe = recipes.load_recipe(str(tmpl))
    cfg = planner.load_base_config(teacher)
    variants = [("teacher", "teacher", 1.0, 1.0, None)]
    for pair in args.points.split(","):
        d, w = (float(x) for x in pair.split(":"))
        var, kind = frontier.make_variant(recipe, cfg, d, w, base=str(teacher))
        variants.append((var.name, kind, d, w, var))

    def record(name, kind, d, w, model_dir, build_s, steps, compact, train_s=0.0):
        prev = old.get(name)
        rescore = compact and args.rescore_compact
        if prev and not rescore and (runs / name / f"scores-{args.lang}.json").exists() \
                and prev.get("examples") == len(examples):
            r = prev
        else:
            if rescore and prev:  # the build is the one timed then: keep its time, note the old score
                build_s = prev["build_seconds"]
            r = {"name": name, "kind": kind, "depth": d, "width": w, "compact": compact, "steps": steps,
                 "examples": len(examples), "build_seconds": round(build_s, 1),
                 **bench_fidelity.evaluate(model_dir, runs / name, args, examples)}
            if rescore and prev:
                r["rescored"] = {"date": time.strftime("%Y-%m-%d"), "chrf_before": prev["chrf"]}
        r["train_seconds"] = round(train_s, 1)  # read from build.json every time: reused rows have it too
        results.append(r)
        print(f"== {name}: chrF++ {r['chrf']:.2f}  {r['bytes'] / 1e6:.3f} MB  ({r['build_seconds']:.0f} s build)", flush=True)
        atomic_write_json(results_path, {"results": results, "_kd": {"seconds": kd_seconds}})

    for name, kind, d, w, var in variants:
        if var is None:
            (runs / name).mkdir(parents=True, exist_ok=True)
            if not (runs / name / "model").exists():
                (runs / name / "model").symlink_to(teacher, target_is_directory=True)
            model, build_s, steps, train_s = teacher, 0.0, 0, 0.0
        else:
            out = runs / name
            t0 = time.time()
            if not (out / "model").exists():
                build.build(var, lang=args.lang, base=str(teacher), data={"acl6060": str(args.corpus), "kd": kd_data},
                            condition="unconstrained", out=out, resume=True, device="cpu", log=log)
            state = json.loads((out / "build.json").read_text())
            build_s = sum(s.get("seconds") or 0 for s in state["stages"]) if state.get("stages") else time.time() - t0
            train_s = sum(s.get("seconds") or 0 for s in state.get("stages", []) if s.get("id") == "ft")
            model, steps = out / "model", args.steps
        record(name, kind, d, w, model, build_s, steps, False, train_s)
        if args.no_compact:
            continue
        # the compact point: trimmed vocabulary + NF4 of every linear layer
        cname = f"{name}-q4"
        cdir = runs / cname / "model"
        t0 = time.time()
        if not cdir.exists():
            trimmed = runs / cname / "trim"
            if not trimmed.exists():
                run_stage(make_stage("trim-vocab", {"use_data": True, "split": "train"}), model, trimmed, ctx(None))
            # lm_head stays float16: bitsandbytes 0.50 4-bit inference on CPUs with AVX512-BF16 asserts that a
            # layer's output rows are a multiple of 32, which a trimmed vocabulary rarely is (qwen2-audio.md)
            run_stage(make_stage("quantize", {"method": "nf4", "double_quant": True, "skip": ["lm_head"],
                                              "compute_dtype": "fp32"}),
                      trimmed, cdir, ctx(None))
        record(cname, kind, d, w, cdir, build_s + (time.time() - t0), steps, True, train_s)

    report = args.report or args.out / "frontier.md"
    write_markdown(report, results, args, kd_seconds, argv)
    print(f"wrote {report}")
    return 0


def write_markdown(report: Path, results: list[dict], args, kd_seconds: float, argv) -> None:
    from iwslt_mc.fsutil import atomic_write_text
    from iwslt_mc.submission.report import pareto_front

    t = next(r for r in results if r["name"] == "teacher")
    front = set(pareto_front([(r["bytes"], r["chrf"]) for r in results]))
    for i, r in enumerate(results):
        r["pareto"] = i in front
    plot = report.with_suffix(".png")
    plot_png(results, plot, t)
    lines = [
        "# Quality-size frontier on the toy teacher: depth vs width",
        "",
        f"The toy teacher (`tests/fixtures/toy/teacher`, {t['bytes'] / 1e6:.2f} MB, {t['params']:,} parameters) "
        f"compressed by the `iwslt-mc plan --frontier` family of a toy-scale template: LLM depth (iterative layer "
        f"search, teacher-forced on the dev split) and/or width (`prune-hidden` residual width and heads + "
        f"`prune-ffn` FFN widths, activation importance on 32 train-split utterances). Recovery, the same for "
        + ("every variant: none (pruning alone, no training; the points show what each criterion keeps before "
           "any recovery)" if not args.steps else
           f"every variant: {args.steps} fine-tuning steps (batch 8, lr {args.lr:g}) on ")
        + ("" if not args.steps else f"sequence-level distillation data (the teacher's translations of {args.distill:,} train utterances plus "
           f"their references; made once in {kd_seconds:.0f} s)" if args.distill else
           "the train split's references (no distillation data: translating the train split with the teacher ran at "
           "~1.4 utterances/s on the shared CPU, over 1.5 hours for 8,000)")
        + ". `-q4` points add vocabulary trimming (train split) and NF4 with double "
        f"quantization of every linear layer but lm_head (float16: bitsandbytes 4-bit inference fails on this CPU "
        f"for output widths that are not a multiple of 32, such as a trimmed vocabulary). Scored on the {t['examples']} test utterances "
        f"(greedy, float32 on CPU); the test split chose nothing. Frontier: `iwslt_mc.submission.report.pareto_front`. "
        f"Made by `python tools/bench_frontier.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({time.strftime('%Y-%m-%d')}, 2 shared CPU cores).",
        "",
        "| variant | kind | LLM layers kept | width kept | chrF++ | % of teacher | size | % of teacher bytes | parameters | "
        "training steps | train s | build s | frontier |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(results, key=lambda r: -r["bytes"]):
        lines.append(f"| {r['name']} | {r['kind']} | {r['depth']:.0%} | {r['width']:.0%} | {r['chrf']:.2f} | "
                     f"{100 * r['chrf'] / t['chrf']:.1f} | {r['bytes'] / 1e6:.3f} MB | {100 * r['bytes'] / t['bytes']:.1f} | "
                     f"{r['params']:,} | {r['steps']} | {r.get('train_seconds', 0):.0f} | {r['build_seconds']:.0f} | {'yes' if r['pareto'] else ''} |")
    small = [r for r in results if r["bytes"] <= 0.10 * t["bytes"]]
    best = max(small, key=lambda r: r["chrf"]) if small else None
    lines += ["", "## Target: at <= 10% of the teacher's bytes keep >= 75% of its chrF++", ""]
    if best is None:
        lines.append("- missed: no variant is at or below 10% of the teacher's bytes")
    else:
        pct = 100 * best["chrf"] / t["chrf"]
        lines.append(f"- best at <= 10% of the bytes: {best['name']} ({100 * best['bytes'] / t['bytes']:.1f}% of the bytes) "
                     f"keeps {pct:.1f}% -> " + ("met" if pct >= 75 else f"missed by {75 - pct:.1f} points"))
    for kind in ("depth", "width", "both"):
        pts = [r for r in results if r["kind"] == kind]
        if pts:
            lines.append(f"- {kind}: " + "; ".join(f"{r['name']} {100 * r['bytes'] / t['bytes']:.1f}% bytes -> "
                                                      f"{100 * r['chrf'] / t['chrf']:.1f}%" for r in sorted(pts, key=lambda r: -r["bytes"])))
    lines += ["", f"![quality against size]({plot.name})", ""]
    atomic_write_text(report, "\n".join(lines))


def plot_png(results, path: Path, t) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iwslt_mc.submission.report import pareto_front

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {"teacher": "black", "depth": "tab:blue", "width": "tab:orange", "both": "tab:green"}
    for kind, c in colours.items():
        for compact, marker in ((False, "o"), (True, "s")):
            pts = [r for r in results if r["kind"] == kind and r["compact"] == compact]
            if pts:
                ax.scatter([100 * r["bytes"] / t["bytes"] for r in pts], [100 * r["chrf"] / t["chrf"] for r in pts], c=c,
                           marker=marker, s=45, zorder=3, label=f"{kind}{' + trim + NF4' if compact else ''}")
    idx = pareto_front([(r["bytes"], r["chrf"]) for r in results])
    ax.plot([100 * results[i]["bytes"] / t["bytes"] for i in idx], [100 * results[i]["chrf"] / t["chrf"] for i in idx],
            color="tab:red", lw=1.2, zorder=2, label="Pareto frontier")
    ax.axvline(10, color="grey", ls=":", lw=1)
    ax.axhline(75, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("size, % of the teacher's bytes (log)")
    ax.set_ylabel("chrF++, % of the teacher's")
    ax.set_title("toy teacher: depth vs width vs both (same training budget)")
    ax.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
