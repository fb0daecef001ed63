#!/usr/bin/env python3
"""Mixed precision by measured sensitivity on the toy teacher: chrF++ against torch.save bytes (issue 31).

Every choice is made on dev utterances (the toy fixture has no dev split: its **train** split, utterances the
teacher was trained on, disjoint from the test split); the test split is decoded and scored once per variant,
after the choices. Steps:

1. ``scales: auto`` (issue 31 item 5): for ct 4/3/2 bits (groups of 128, asymmetric, lm_head float: the rows
   of docs/bench/quantization.md that chose the default) the KL to the teacher on the dev utterances with
   mse and with minmax ranges; per width the lower one is the dev choice.
2. Variants, sized under the 2027 measure (``torch.save(model.state_dict())`` after ``from_pretrained``) by
   the sizer, predicted by :mod:`iwslt_mc.quantization.allocation` (or the planner), decoded on the test split:
   the teacher, NF4 (lm_head float), ct 4/3/2 symmetric packed (groups of 128, lm_head too), and the mixed
   allocation (``plan --allocate``) at the torch.save bytes of uniform ct3 and of uniform ct2 plus 10%.

    nice -n 10 python tools/bench_quant_mixed.py --corpus tests/fixtures/toy/data --out /tmp/qmixed \\
        --report docs/bench/quant_mixed.md      # ~30 minutes on 2 shared CPU cores (12 dev utterances)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: the shared toy_bench module
from toy_bench import DEFAULT_TEACHER, ROOT, tool  # noqa: E402  (puts the repository on sys.path, the hub offline)

G = 128


def build(teacher: Path, out: Path, options: dict, lang: str, data: list[str] | None = None) -> Path:
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    if not (out / "config.json").exists():
        run_stage(make_stage("quantize", options), teacher, out,
                  StageContext(lang=lang, device="cpu", log=lambda m: print("   ", m, flush=True), data=data or []))
    return out


def planned_torch_save(teacher: Path, options: dict) -> int | None:
    """The planner's 2027 torch.save bytes of one quantize stage on ``teacher`` (before building)."""
    from iwslt_mc.build import spec_for_stages
    from iwslt_mc.planning import planner
    from iwslt_mc.recipes import StageEntry

    cfg = planner.load_base_config(teacher)
    spec, _ = spec_for_stages([StageEntry("q", "quantize", options)], cfg, base=str(teacher), lang="en-de", data={},
                              condition="constrained")
    ts = planner.predict(spec, cfg, "2027").torch_save
    return ts.bytes if ts else None


def calibrated_variants(teacher: Path, iters: int) -> list[dict]:
    """AutoRound (quantize method autoround) at 4/3/2 bits, groups of 128, calibrated on dev texts."""
    out = []
    for b in (4, 3, 2):
        o = {"method": "autoround", "bits": b, "group_size": G, "iters": iters, "nsamples": 32, "seqlen": 64,
             "calibration": "text"}
        out.append({"name": f"ar{b}", "what": f"AutoRound {b}-bit symmetric packed, groups of {G}, {iters} iterations "
                    "on 32 samples of 64 tokens of the 24 dev texts, LLM blocks only (lm_head float)", "options": o, "calibrated": True,
                    "predicted": planned_torch_save(teacher, o)})
        # the control: plain round-to-nearest (ct symmetric, the same scope and bytes) against the calibration
        c = {"method": "ct", "bits": b, "group_size": G, "symmetric": True,
             "skip": ["lm_head", "audio_tower", "multi_modal_projector"]}
        out.append({"name": f"rtn{b}", "what": f"control: ct {b}-bit symmetric packed, groups of {G}, round-to-nearest "
                    "(scales: auto), the ar row's scope (LLM blocks only)", "options": c,
                    "predicted": planned_torch_save(teacher, c)})
    return out


def dev_reference(teacher: Path, examples, lang: str):
    """The teacher-forced batches of ``examples`` and the unquantized ``teacher``'s next-token log-probabilities
    on them (float32), which :func:`dev_kl` compares a quantized model with."""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.quantization.sensitivity import _batches, _logprobs

    batches = _batches(teacher, examples, lang, 8)
    fmodel = modelio.load_model(teacher, dtype=torch.float32, device="cpu")
    fmodel.eval()
    return batches, _logprobs(fmodel, batches)


def dev_kl(model_dir: Path, batches, reference) -> float:
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.quantization.sensitivity import _logprobs, kl

    model = modelio.load_model(model_dir, dtype=torch.float32, device="cpu")
    model.eval()
    return round(kl(reference, _logprobs(model, batches)), 5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--dev-split", default="train", help="split the choices are made on (default train: see above)")
    ap.add_argument("--dev-limit", type=int, default=12, help="dev utterances measured (sensitivity: ~56 modules x 4 widths forwards)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--lang", default="en-de")
    ap.add_argument("--ar-iters", type=int, default=50, help="AutoRound iterations per block (the calibrated rows)")
    ap.add_argument("--only-calibrated", action="store_true",
                    help="run the calibrated rows only and merge them into --report's table, the other rows kept "
                         "and marked as from the earlier run")
    args = ap.parse_args(argv)
    import torch

    import compressed_tensors
    import transformers

    from iwslt_mc.training import data
    from iwslt_mc.fsutil import atomic_write_json
    from iwslt_mc.quantization import allocation as A

    qb = tool("bench_quantization")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    teacher = args.teacher.resolve()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    dev = data.load_examples(str(args.corpus), args.dev_split, lang=args.lang, limit=args.dev_limit)
    test = data.load_examples(str(args.corpus), "test", lang=args.lang)
    t0 = time.time()
    batches, reference = dev_reference(teacher, dev, args.lang)

    if args.only_calibrated:
        return _only_calibrated(args, teacher, runs, dev, test, batches, reference, t0)

    # 1. scales: auto, chosen on dev
    scales = []
    for bits in (4, 3, 2):
        row = {"bits": bits}
        for sc in ("mse", "minmax"):
            name = f"ct{bits}-g{G}-{sc}"
            d = build(teacher, runs / name, {"method": "ct", "bits": bits, "group_size": G, "scales": sc,
                                             "skip": ["lm_head"]}, args.lang)
            row[sc] = dev_kl(d, batches, reference)
            print(f"== {name}: dev KL {row[sc]}", flush=True)
        row["choice"] = "mse" if row["mse"] < row["minmax"] else "minmax"
        scales.append(row)

    # 2. variants on the 2027 measure
    modules = A.allocatable_modules(teacher)
    s27 = A.Sizer(teacher, "2027", G, modules)
    uniform = {b: s27.bytes({m: b for m in modules}) for b in (4, 3, 2)}
    alloc_runs = {"mixed@ct3": uniform[3], "mixed@ct2+10%": int(uniform[2] * 1.10)}
    variants = [{"name": "teacher", "what": "toy teacher (float16)", "dir": teacher},
                {"name": "nf4", "what": "bitsandbytes NF4 + double quant, lm_head float",
                 "options": {"method": "nf4", "double_quant": True, "compute_dtype": "fp32", "skip": ["lm_head"]}}]
    for b in (4, 3, 2):
        variants.append({"name": f"ct{b}-sym", "what": f"ct {b}-bit symmetric packed, groups of {G}, lm_head too",
                         "options": {"method": "ct", "bits": b, "group_size": G, "symmetric": True, "skip": []},
                         "predicted": uniform[b]})
    sens_file = args.out / "sensitivity.json"
    for name, budget in alloc_runs.items():
        path = args.out / f"{name}.json"
        if not path.exists():
            if sens_file.exists():
                losses = {m: {int(b): v for b, v in d.items()} for m, d in json.loads(sens_file.read_text()).items()}
            else:
                from iwslt_mc.quantization import sensitivity

                losses = sensitivity.measure(teacher, dev, args.lang, list(modules), A.DEFAULT_WIDTHS, G)
                atomic_write_json(sens_file, {m: {str(b): v for b, v in d.items()} for m, d in losses.items()})
            bits = A.choose(losses, s27, budget)
            A.write_allocation(path, A.Allocation(
                modules=bits, group_size=G, edition="2027", budget=budget, predicted=s27.bytes(bits),
                predicted_loss=round(A.summed_loss(losses, bits), 6), base=str(teacher),
                data=f"{args.corpus} ({args.dev_split}, {len(dev)} utterances, {args.lang})"))
        alloc = A.read_allocation(path)
        variants.append({"name": name, "what": f"mixed by dev sensitivity, budget {budget:,} ({alloc.summary()})",
                         "options": {"method": "ct", "symmetric": True, "allocation": str(path)},
                         "predicted": alloc.predicted})
    variants += calibrated_variants(teacher, args.ar_iters)
    results = [run_variant(v, teacher, runs, args, test, batches, reference) for v in variants]
    meta = {"teacher": os.path.relpath(teacher, ROOT), "corpus": str(args.corpus), "dev_split": args.dev_split,
            "dev": len(dev), "test": len(test), "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
            "seconds": round(time.time() - t0), "scales": scales,
            "floor": s27.bytes({m: 2 for m in modules}),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "compressed-tensors": compressed_tensors.__version__}}
    qb.write_outputs(args.out, args.report, "quant_mixed.md", results, meta, markdown)
    return 0


def run_variant(v: dict, teacher: Path, runs: Path, args, test, batches, reference) -> dict:
    """Build (if needed), decode the test split once, size under the 2027 measure, dev KL; cached per variant."""
    from iwslt_mc.fsutil import atomic_write_json
    from iwslt_mc.sizing import sizer

    fid = tool("bench_fidelity")
    print(f"== {v['name']}: {v['what']}", flush=True)
    t = time.time()
    data = [str(dev_corpus(args))] if v.get("calibrated") else None  # AutoRound calibrates on the dev texts
    fresh = v.get("dir") is None and not (runs / v["name"] / "model" / "config.json").exists()
    d = v.get("dir") or build(teacher, runs / v["name"] / "model", v["options"], args.lang, data)
    built_s = round(time.time() - t)
    stamp = runs / v["name"] / "build_seconds.txt"  # the build's own time, kept for reruns that find it built
    if fresh:
        stamp.write_text(f"{built_s}\n")
    if stamp.exists():
        built_s = int(stamp.read_text())
    cached = runs / v["name"] / "result.json"
    if cached.exists():
        r = json.loads(cached.read_text())
        if "tokens_per_cpu_s" not in r:
            r.update(cpu_decode(d, test, args.lang))
            atomic_write_json(cached, r)
        if v.get("dir") is None:
            r["build_seconds"] = built_s
        return r
    r = {"name": v["name"], "what": v["what"], **fid.evaluate(d, runs / v["name"], args, test)}
    ts = sizer.measure(d, edition="2027").torch_save
    r["torch_save"] = ts.bytes if ts else None
    r["predicted"] = v.get("predicted")
    r["dev_kl"] = dev_kl(d, batches, reference) if v["name"] != "teacher" else 0.0
    r["tokens_per_s"] = round(r["tokens"] / r["decode_seconds"], 1) if r["decode_seconds"] else None
    r["load_average"] = round(os.getloadavg()[0], 1)  # the machine's 1-minute load when the decode ended
    r.update(cpu_decode(d, test, args.lang))
    if v.get("dir") is None:
        r["build_seconds"] = built_s
    atomic_write_json(cached, r)
    print(f"   chrF++ {r['chrf']:.2f}  torch.save {r['torch_save']:,}  dev KL {r['dev_kl']}  "
          f"{r['tokens_per_s']} tokens/s", flush=True)
    return r


def cpu_decode(model_dir: Path, test, lang: str) -> dict:
    """Decode speed less sensitive to a shared machine's load: the same greedy test decode, timed after a warm-up
    utterance, as tokens per CPU-second of this process (all its threads) beside wall time."""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.decoding import core as decoding

    fid = tool("bench_fidelity")
    model = modelio.load_model(model_dir, dtype=torch.float32, device="cpu")
    processor = modelio.load_processor(model_dir)
    waves = [e.waveform() for e in test]
    decoding.translate(model, processor, waves[:1], lang, mode="fast", batch_size=1, max_new_tokens=8)
    c0, w0 = time.process_time(), time.time()
    hyps = decoding.translate(model, processor, waves, lang, mode="fast", batch_size=16,
                              max_new_tokens=fid.MAX_NEW_TOKENS)
    cpu, wall = time.process_time() - c0, time.time() - w0
    tokens = sum(h.n_tokens for h in hyps)
    return {"tokens_per_cpu_s": round(tokens / cpu, 1), "cpu_decode_wall_tokens_per_s": round(tokens / wall, 1),
            "cpu_decode_load": round(os.getloadavg()[0], 1)}


def dev_corpus(args) -> Path:
    """The dev utterances alone (the first ``--dev-limit`` rows of the ``--dev-split`` parquet), as a corpus whose
    ``train`` split the quantize stage's calibration reads: AutoRound sees the dev texts and nothing else."""
    import pyarrow.parquet as pq

    out = args.out / "dev-corpus"
    if not (out / "train.parquet").exists():
        out.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(args.corpus / f"{args.dev_split}.parquet").slice(0, args.dev_limit)
        pq.write_table(table, out / "train.parquet.tmp")
        os.replace(out / "train.parquet.tmp", out / "train.parquet")
    return out


def _only_calibrated(args, teacher: Path, runs: Path, dev, test, batches, reference, t0) -> int:
    """The calibrated rows alone, merged into the existing report's table (its other rows marked as from the
    earlier run at the commit that last wrote the report)."""
    import subprocess

    import torch

    results = [run_variant(v, teacher, runs, args, test, batches, reference)
               for v in calibrated_variants(teacher, args.ar_iters)]
    # decode speed depends on the machine's load: the teacher decoded again now is the rows' yardstick
    now = run_variant({"name": "teacher", "what": "toy teacher (float16)", "dir": teacher}, teacher, runs, args, test,
                      batches, reference)
    if args.report is None:
        print(json.dumps(results, indent=1))
        return 0
    import re

    text = args.report.read_text(encoding="utf-8")
    earlier = re.search(r"^Rows marked \(earlier run\) are from the run at commit (\w+)", text, re.M)
    commit = earlier.group(1) if earlier else (subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", str(args.report)], cwd=ROOT, capture_output=True,
        text=True).stdout.strip() or "?")
    lines = [ln for ln in text.splitlines() if not ln.startswith("Rows marked (earlier run)")]
    while any(a == b == "" for a, b in zip(lines, lines[1:])):  # the blank line a removed note leaves
        i = next(i for i, (a, b) in enumerate(zip(lines, lines[1:])) if a == b == "")
        del lines[i]
    head = next(i for i, ln in enumerate(lines) if ln.startswith("| variant | what |"))
    end = head + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    old = [ln for ln in lines[head + 2:end] if not ln.startswith(("| ar", "| rtn"))]
    old = [ln if ln.rstrip().endswith("(earlier run) |") else ln[:-2].rstrip() + " (earlier run) |" for ln in old]
    teacher_row = next(ln for ln in old if ln.startswith("| teacher |"))
    cells = [c.strip() for c in teacher_row.strip("|").split("|")]
    t_chrf, t_bytes = float(cells[2]), int(cells[4].replace(",", ""))
    new = []
    for r in results:
        pred = "" if r.get("predicted") is None else ("=" if r["predicted"] == r["torch_save"] else f"{r['predicted']:,}")
        new.append(f"| {r['name']} | {r['what']} | {r['chrf']:.2f} | {100 * r['chrf'] / t_chrf:.1f} | "
                   f"{r['torch_save']:,} | {100 * r['torch_save'] / t_bytes:.1f} | {pred} | {r['dev_kl']:.4f} | "
                   f"{r['tokens_per_s']} |")
    note = (f"Rows marked (earlier run) are from the run at commit {commit} (same script, teacher, splits); the ar "
            f"rows (quantize method autoround) and their rtn controls were run alone on {time.strftime('%Y-%m-%d')} "
            f"({torch.get_num_threads()} threads, shared CPU; AutoRound build "
            + ", ".join(f"{r['name']} {r.get('build_seconds', '?')} s" for r in results) + "; the rtn rows are "
            "round-to-nearest, built in seconds). Decode tokens/s "
            "of the ar and rtn rows are of this run, on a machine shared with other jobs (1-minute load average at the end "
            "of each decode: " + ", ".join(f"{r['name']} {r.get('load_average', '?')}" for r in results)
            + f"); the teacher decoded again in this run gave {now['tokens_per_s']} tokens/s (chrF++ "
            f"{now['chrf']:.2f}; load {now.get('load_average', '?')}), so compare the ar rows with that figure, not "
            "with the earlier run's column. Less load-dependent: tokens per CPU-second of the same decode (warm, "
            "this process's CPU time over its threads) " + ", ".join(f"{r['name']} {r['tokens_per_cpu_s']}"
                                                                    for r in results + [now]) + ".")
    body = lines[:head] + lines[head:head + 2] + old + new + [""] + [note]
    rest = lines[end:]
    if rest and rest[0] == "":
        rest = rest[1:]
    rest = [""] + rest
    args.report.write_text("\n".join(body + rest) + "\n", encoding="utf-8")
    (args.out / "calibrated.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


def markdown(results: list[dict], meta: dict) -> str:
    t = next(r for r in results if r["name"] == "teacher")
    v = meta["versions"]
    lines = ["# Mixed precision by measured sensitivity (toy teacher)", "",
             f"`tools/bench_quant_mixed.py` on `{meta['teacher']}`, {meta['date']}, CPU ({meta['threads']} threads, "
             f"shared), torch {v['torch']}, transformers {v['transformers']}, compressed-tensors "
             f"{v['compressed-tensors']}. **Every choice on dev, test scored once**: the fixture "
             f"`{meta['corpus']}` has no dev split, so the choices (scales, sensitivities, allocations) use the first "
             f"{meta['dev']} utterances of its `{meta['dev_split']}` split (seen by the teacher in training; disjoint "
             f"from test); chrF++ is of the {meta['test']} test utterances, decoded once per variant after all "
             "choices (greedy, float32 compute). Sizes: the 2027 measure, `torch.save(model.state_dict())` after "
             "`from_pretrained(dtype=\"auto\")` (organizers' GPU location), by `iwslt_mc.sizing.sizer`; 'predicted' by "
             "`iwslt_mc.quantization.allocation.Sizer` before building. 'dev KL': mean KL (nats/token) of the "
             "next-token distributions from the teacher's, teacher-forced on the dev references.", "",
             "## `scales: auto`, chosen on dev (issue 31 item 5)", "",
             "ct, groups of 128, asymmetric, lm_head float (the variants `quantization.md` chose the default from, "
             "there on test utterances):", "",
             "| bits | dev KL mse | dev KL minmax | dev choice |", "| ---: | ---: | ---: | --- |"]
    for s in meta["scales"]:
        lines.append(f"| {s['bits']} | {s['mse']:.5f} | {s['minmax']:.5f} | {s['choice']} |")
    lines += ["", "## chrF++ against torch.save bytes", "",
              "| variant | what | chrF++ (test) | % of teacher | torch.save bytes | % of teacher | predicted | dev KL | "
              "decode tokens/s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        pred = "" if r.get("predicted") is None else ("=" if r["predicted"] == r["torch_save"] else f"{r['predicted']:,}")
        lines.append(f"| {r['name']} | {r['what']} | {r['chrf']:.2f} | {100 * r['chrf'] / t['chrf']:.1f} | "
                     f"{r['torch_save']:,} | {100 * r['torch_save'] / t['torch_save']:.1f} | {pred} | "
                     f"{r['dev_kl']:.4f} | {r['tokens_per_s']} |")
    by = {r["name"]: r for r in results}
    lines += ["", "## Targets", ""]
    m3, u3 = by.get("mixed@ct3"), by.get("ct3-sym")
    if m3 and u3:
        ok = m3["torch_save"] <= u3["torch_save"] and m3["dev_kl"] < u3["dev_kl"]
        lines.append(f"- mixed beats uniform 3-bit at equal bytes: mixed {m3['torch_save']:,} bytes, dev KL "
                     f"{m3['dev_kl']:.4f}, chrF++ {m3['chrf']:.2f} against ct3-sym {u3['torch_save']:,} bytes, dev KL "
                     f"{u3['dev_kl']:.4f}, chrF++ {u3['chrf']:.2f} -> " + ("met (dev KL)" if ok else "missed")
                     + ("" if m3["chrf"] >= u3["chrf"] else "; chrF++ on test is lower"))
    cap = 0.15 * t["torch_save"]
    small = [r for r in results if r["torch_save"] <= cap]
    good = [r for r in small if r["chrf"] >= 0.95 * t["chrf"]]
    if good:
        lines.append(f"- a point <= 15% of the teacher's torch.save bytes ({cap:,.0f}) keeping >= 95% chrF++: "
                     f"{good[0]['name']} -> met")
    else:
        lines.append(f"- a point <= 15% of the teacher's torch.save bytes ({cap:,.0f}) keeping >= 95% chrF++ -> "
                     f"**missed**: no variant is that small; every Linear module at 2 bits with the float16 token "
                     f"embeddings, convolutions and position table kept (packed embeddings do not load packed, so "
                     f"under this measure they count at float size) is {meta['floor']:,} bytes = "
                     f"{100 * meta['floor'] / t['torch_save']:.1f}% of the teacher")
    exact = [r for r in results if r.get("predicted") is not None]
    lines.append(f"- predicted == measured torch.save bytes: {sum(r['predicted'] == r['torch_save'] for r in exact)} "
                 f"of {len(exact)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
