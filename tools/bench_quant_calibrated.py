#!/usr/bin/env python3
"""The calibrated method against round-to-nearest on the toy teacher, calibrated on what the model really reads
(issue 31 item 2): AutoRound (``quantize method: autoround``) tuned on audio prompts (``calibration: audio``:
the utterance's audio through the audio encoder, then the reference, as decoding feeds the model) or on text
(``calibration: text``), against the ct symmetric round-to-nearest control of the same scope and bytes (the
Linear layers of the LLM decoder blocks; lm_head, embeddings, audio encoder and projector as stored).

Splits: AutoRound calibrates on the corpus's **train** split (the stage's ``--data``); every choice is made on
the **dev** split (mean KL of the next-token distributions from the teacher's, teacher-forced on the first
``--dev-limit`` dev utterances); the **test** split is decoded once, after the choice, for the dev-chosen variant
of each width and its round-to-nearest control (``--test``). Sizes: the 2027 measure (``torch.save`` of the
state dict after ``from_pretrained``) by the sizer, 'predicted' by the planner before building.

Choice rule (fixed before the run): per width and scope, the variant with the lowest dev KL; AutoRound "wins"
a width when that variant is an AutoRound one. Scope (a name's last part): none = the LLM decoder blocks;
``-lm`` + lm_head (``quantize_lm_head``); ``-enc`` + the audio encoder's Linear layers and the projector
(``quantize_audio``); ``-all`` both (every Linear layer: the round-to-nearest control is ct symmetric with no
skip). ``--teacher`` may be a trimmed-vocabulary model: the KL is then to that model's own distributions.

    OMP_NUM_THREADS=1 nice -n 19 python tools/bench_quant_calibrated.py --corpus /work/toy/corpus-tiny \\
        --out /tmp/qcal --variants rtn2,ar2-audio,... [--reuse ar2-text=DIR ...] [--test] \\
        --report docs/bench/quant_calibrated.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: the shared toy_bench module
from toy_bench import DEFAULT_TEACHER, ROOT, finish, tool  # noqa: E402  (puts the repository on sys.path, the hub offline)

G = 128
SCOPE = ["lm_head", "audio_tower", "multi_modal_projector"]
# name suffix -> (quantize_lm_head, quantize_audio, ct's skip, words)
SCOPES = {"": (False, False, SCOPE, "LLM blocks only"),
          "lm": (True, False, ["audio_tower", "multi_modal_projector"], "LLM blocks and lm_head"),
          "enc": (False, True, ["lm_head"], "LLM blocks, audio encoder Linear layers and projector"),
          "all": (True, True, [], "every Linear layer (LLM blocks, lm_head, audio encoder, projector)")}


def variant(name: str) -> dict:
    """``rtnB`` | ``arB-text`` | ``arB-audio`` with optional ``-iN`` (iterations) and ``-nN`` (samples), then an
    optional scope (``-lm``, ``-enc``, ``-all``)."""
    parts = name.split("-")
    scope = parts.pop() if parts[-1] in SCOPES else ""
    lm, enc, skip, words = SCOPES[scope]
    if name.startswith("rtn"):
        b = int(parts[0][3:])
        return {"name": name, "bits": b, "kind": "rtn", "scope": scope,
                "what": f"ct {b}-bit symmetric packed, groups of {G}, round-to-nearest (scales: auto), {words}",
                "options": {"method": "ct", "bits": b, "group_size": G, "symmetric": True, "skip": skip}}
    b, cal = int(parts[0][2:]), parts[1]
    iters, n = 50, 32
    for p in parts[2:]:
        if p.startswith("i"):
            iters = int(p[1:])
        elif p.startswith("n"):
            n = int(p[1:])
    o = {"method": "autoround", "bits": b, "group_size": G, "iters": iters, "nsamples": n, "calibration": cal}
    o.update(quantize_lm_head=lm, quantize_audio=enc)  # explicit: the stage's defaults changed (audio on)
    if cal == "text":
        o["seqlen"] = 64
        on = f"{n} text samples of 64 tokens"
    else:
        on = f"{n} utterances (audio prompt + reference)"
    return {"name": name, "bits": b, "kind": f"autoround-{cal}", "options": o, "scope": scope,
            "what": f"AutoRound {b}-bit symmetric packed, groups of {G}, {iters} iterations on {on} of the train split"
                    + (f"; {words}" if scope else "")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--dev-limit", type=int, default=50)
    ap.add_argument("--test-limit", type=int, default=100)
    ap.add_argument("--variants", required=True, help="comma-separated: rtn2, ar2-audio, ar2-text-i200-n64, ...")
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=DIR[=WHAT]",
                    help="an already built variant (e.g. an earlier run's text calibration), measured, not rebuilt")
    ap.add_argument("--test", action="store_true", help="decode the test split once for each width's dev choice "
                                                        "and its round-to-nearest control")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--lang", default="en-de")
    args = ap.parse_args(argv)
    import torch
    import transformers

    from iwslt_mc.fsutil import atomic_write_json
    from iwslt_mc.sizing import sizer
    from iwslt_mc.training import data

    mixed, fid = tool("bench_quant_mixed"), tool("bench_fidelity")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    teacher = args.teacher.resolve()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    dev = data.load_examples(str(args.corpus), "dev", lang=args.lang, limit=args.dev_limit)
    batches, reference = mixed.dev_reference(teacher, dev, args.lang)

    vs = [variant(n) for n in args.variants.split(",") if n]
    for spec in args.reuse:
        name, d, *what = spec.split("=", 2)
        v = variant(name)
        v["dir"] = Path(d)
        if what:
            v["what"] = what[0]
        vs = [x for x in vs if x["name"] != name] + [v]
    results = []
    for v in vs:
        run = runs / v["name"]
        cached = run / "dev.json"
        if cached.exists():
            results.append(json.loads(cached.read_text()))
            continue
        print(f"== {v['name']}: {v['what']}", flush=True)
        t = time.time()
        d = v.get("dir") or mixed.build(teacher, run / "model", v["options"], args.lang, [str(args.corpus)])
        r = {"name": v["name"], "bits": v["bits"], "kind": v["kind"], "what": v["what"], "dir": str(d),
             "scope": v["scope"],
             "build_seconds": None if v.get("dir") else round(time.time() - t),
             "torch_save": sizer.measure(d, edition="2027").torch_save.bytes,
             "predicted": mixed.planned_torch_save(teacher, v["options"]),
             "dev_kl": mixed.dev_kl(d, batches, reference), "load_average": round(os.getloadavg()[0], 1)}
        atomic_write_json(cached, r)
        results.append(r)
        print(f"   dev KL {r['dev_kl']}  torch.save {r['torch_save']:,}  build {r['build_seconds']} s", flush=True)

    chosen = choose(results)
    if args.test:
        test = data.load_examples(str(args.corpus), "test", lang=args.lang, limit=args.test_limit)
        todo = [("teacher", str(teacher))]
        for key, best in sorted(chosen.items()):
            todo.append((best["name"], best["dir"]))
            ctl = next((r for r in results if r["name"] == control_name(*key)), None)
            if ctl and ctl is not best:
                todo.append((ctl["name"], ctl["dir"]))
        for name, d in todo:
            cached = runs / name / "test.json"
            if not cached.exists():
                print(f"== test once: {name}", flush=True)
                r = fid.evaluate(Path(d), runs / name, args, test)
                r["tokens_per_s"] = round(r["tokens"] / r["decode_seconds"], 1) if r["decode_seconds"] else None
                r["load_average"] = round(os.getloadavg()[0], 1)
                atomic_write_json(cached, r)
            r = json.loads(cached.read_text())
            print(f"   {name}: chrF++ {r['chrf']:.2f} ({r['tokens_per_s']} tokens/s)", flush=True)
    meta = {"teacher": os.path.relpath(teacher, ROOT), "corpus": str(args.corpus), "dev": len(dev),
            "test_limit": args.test_limit, "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "auto-round": _version("auto_round")},
            "command": "python tools/bench_quant_calibrated.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    text = markdown(results, chosen, runs, meta)
    return finish(text, args.report)


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod.replace("_", "-"))
    except Exception:  # noqa: BLE001 - a report line, not a requirement
        return "?"


def choose(results: list[dict]) -> dict[tuple[int, str], dict]:
    """Per width and scope: the lowest dev KL."""
    out = {}
    for r in results:
        key = (r["bits"], r.get("scope", ""))
        if key not in out or r["dev_kl"] < out[key]["dev_kl"]:
            out[key] = r
    return out


def control_name(bits: int, scope: str) -> str:
    """The round-to-nearest control of a width and scope."""
    return f"rtn{bits}" + (f"-{scope}" if scope else "")


def markdown(results: list[dict], chosen: dict, runs: Path, meta: dict) -> str:
    v = meta["versions"]
    tests = {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/test.json")}
    t = tests.get("teacher")
    lines = ["# The calibrated method, calibrated on audio prompts (toy teacher)", "",
             f"`{meta['command']}` ({meta['date']}, CPU, {meta['threads']} thread(s), shared 2-core machine; torch "
             f"{v['torch']}, transformers {v['transformers']}, auto-round {v['auto-round']}). Teacher "
             f"`{meta['teacher']}`; corpus `{meta['corpus']}`: AutoRound calibrates on its **train** split, every "
             f"choice is made on the first {meta['dev']} **dev** utterances (dev KL: mean KL, nats per reference "
             "token, of the next-token distributions from the teacher's, teacher-forced), and the first "
             f"{meta['test_limit']} **test** utterances are decoded once (greedy, float32), after the choice, for "
             "each width's dev choice and its round-to-nearest control. Bytes: the 2027 measure (torch.save after "
             "from_pretrained), 'predicted' by the planner before building. "
             + ("Scope of every row: the Linear layers of the 6 LLM decoder blocks (lm_head, embeddings, audio "
                "encoder and projector as stored)." if not any(r.get("scope") for r in results) else
                "Scope: the LLM decoder blocks' Linear layers, and what each row's last words add (embeddings and "
                "the audio convolutions and position table are float in every row)."), "",
             "| variant | what | dev KL | torch.save bytes | predicted | build s | test chrF++ | % of teacher | "
             "dev choice |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in sorted(results, key=lambda r: (-r["bits"], r.get("scope", ""), r["name"])):
        te = tests.get(r["name"])
        pred = "" if r.get("predicted") is None else ("=" if r["predicted"] == r["torch_save"] else f"{r['predicted']:,}")
        built = "reused" if r["build_seconds"] is None else r["build_seconds"]
        test = f"{te['chrf']:.2f} | {100 * te['chrf'] / t['chrf']:.1f}" if te and t else " | "
        mark = "**yes**" if chosen.get((r["bits"], r.get("scope", ""))) is r else ""
        lines.append(f"| {r['name']} | {r['what']} | {r['dev_kl']:.4f} | {r['torch_save']:,} | {pred} | {built} | "
                     f"{test} | {mark} |")
    if t:
        lines += ["", f"Teacher on the same test utterances: chrF++ {t['chrf']:.2f}."]
    lines += ["", "## Choice (dev KL, per width" + (" and scope" if any(k[1] for k in chosen) else "") + ")", ""]
    for (b, scope), best in sorted(chosen.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        ctl = next((r for r in results if r["name"] == control_name(b, scope)), None)
        won = best["kind"].startswith("autoround")
        line = f"- {b} bits{', ' + SCOPES[scope][3] if scope else ''}: **{best['name']}** (dev KL {best['dev_kl']:.4f}"
        if ctl is not None and ctl is not best:
            line += f" against round-to-nearest {ctl['dev_kl']:.4f}"
        line += ") -> " + ("AutoRound wins on dev" if won else "round-to-nearest stays")
        te, tc = tests.get(best["name"]), tests.get(control_name(b, scope))
        if te and tc and tc is not te:
            line += f"; test once: chrF++ {te['chrf']:.2f} against {tc['chrf']:.2f}"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
