#!/usr/bin/env python3
"""Where the toy teacher's bytes go under the 2027 measure at the packed floor, and one lever measured
(issue 31, the <= 15% / >= 95% toy target).

Rows (fixed before measuring; nothing is chosen here): the teacher; ct symmetric packed of every Linear layer,
lm_head too, groups of 128 (``ctB-sym``: the floor of ``quant_mixed.md``); and the lever: the same on a model
whose vocabulary is trimmed (``--trimmed``, e.g. the kd-scale run's teacher trimmed to the toy grammar's
generated sentences, test sentences removed) so the float16 embedding table that does not load packed is
smaller (``trim-ctB-sym``). Each row: torch.save bytes after ``from_pretrained`` (2027, by the sizer), the
planner's prediction, the bytes by part of the model (from the safetensors headers: packed parts are stored as
they load), and chrF++ on the first ``--test-limit`` test utterances decoded once (greedy, float32).

    OMP_NUM_THREADS=1 nice -n 19 python tools/bench_quant_floor.py --corpus /work/toy/corpus-tiny \\
        --trimmed /work/toy/kd-scale/runs/teacher-trim/model --out /tmp/qcal --report docs/bench/quant_floor.md
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: the shared toy_bench module
from toy_bench import DEFAULT_TEACHER, ROOT, finish, tool  # noqa: E402  (puts the repository on sys.path, the hub offline)

G = 128
PARTS = ["token embeddings (float16)", "lm_head", "LLM Linear layers", "LLM norms", "audio Linear layers",
         "audio convolutions", "audio position table", "audio norms and biases", "projector", "other"]
_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "I32": 4, "I64": 8, "I8": 1, "U8": 1}


def part_of(name: str) -> str:
    if "embed_tokens" in name:
        return PARTS[0]
    if "lm_head" in name:
        return PARTS[1]
    if "multi_modal_projector" in name:
        return PARTS[8]
    if "audio_tower" in name:
        if ".conv" in name:
            return PARTS[5]
        if "embed_positions" in name:
            return PARTS[6]
        if any(k in name for k in ("_proj.", "fc1.", "fc2.")) and "bias" not in name:
            return PARTS[4]
        return PARTS[7]
    if "language_model" in name:
        return PARTS[2] if "_proj." in name else PARTS[3]
    return PARTS[9]


def parts(model_dir: Path) -> dict[str, int]:
    """Bytes per part of the model, from the safetensors headers."""
    out = dict.fromkeys(PARTS, 0)
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for k, t in header.items():
            if k == "__metadata__":
                continue
            numel = 1
            for d in t["shape"]:
                numel *= d
            out[part_of(k)] += numel * _BYTES[t["dtype"]]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    ap.add_argument("--trimmed", type=Path, required=True, help="the teacher with a trimmed vocabulary")
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--bits", default="3,2")
    ap.add_argument("--test-limit", type=int, default=100)
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
    teacher, trimmed = args.teacher.resolve(), args.trimmed.resolve()
    runs = args.out / "runs"
    test = data.load_examples(str(args.corpus), "test", lang=args.lang, limit=args.test_limit)
    rows = [{"name": "teacher", "what": "toy teacher (float16)", "dir": teacher}]
    for b in (int(x) for x in args.bits.split(",")):
        o = {"method": "ct", "bits": b, "group_size": G, "symmetric": True, "skip": []}
        rows.append({"name": f"ct{b}-sym", "what": f"ct {b}-bit symmetric packed, groups of {G}, every Linear layer "
                     "and lm_head", "base": teacher, "options": o})
        rows.append({"name": f"trim-ct{b}-sym", "what": f"vocabulary trimmed, then ct {b}-bit symmetric packed, "
                     f"groups of {G}, every Linear layer and lm_head", "base": trimmed, "options": o})
    results = []
    for v in rows:
        run = runs / v["name"]
        d = v.get("dir") or mixed.build(v["base"], run / "model", v["options"], args.lang)
        cached = run / "test.json"
        if not cached.exists():
            print(f"== test once: {v['name']}", flush=True)
            r = fid.evaluate(Path(d), run, args, test)
            r["tokens_per_s"] = round(r["tokens"] / r["decode_seconds"], 1) if r["decode_seconds"] else None
            atomic_write_json(cached, r)
        r = json.loads(cached.read_text())
        r.update(name=v["name"], what=v["what"], torch_save=sizer.measure(d, edition="2027").torch_save.bytes,
                 predicted=mixed.planned_torch_save(v["base"], v["options"]) if "options" in v else None,
                 parts=parts(d), vocab=json.loads((Path(d) / "config.json").read_text()).get("text_config", {}).get(
                     "vocab_size"))
        results.append(r)
        print(f"   {v['name']}: chrF++ {r['chrf']:.2f}  torch.save {r['torch_save']:,}", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "teacher": os.path.relpath(teacher, ROOT),
            "trimmed": str(trimmed), "corpus": str(args.corpus), "test": len(test),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "command": "python tools/bench_quant_floor.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    text = markdown(results, meta)
    return finish(text, args.report)


def markdown(results: list[dict], meta: dict) -> str:
    t = results[0]
    v = meta["versions"]
    lines = ["# Where the bytes go at the packed floor (toy teacher, 2027 measure)", "",
             f"`{meta['command']}` ({meta['date']}, CPU, {meta['threads']} thread(s), shared; torch {v['torch']}, "
             f"transformers {v['transformers']}). Teacher `{meta['teacher']}`; trimmed model `{meta['trimmed']}`. "
             "Rows fixed before measuring, nothing chosen; chrF++ of the first "
             f"{meta['test']} test utterances of `{meta['corpus']}`, decoded once (greedy, float32). torch.save: "
             "bytes of `torch.save(model.state_dict())` after `from_pretrained` (organizers' GPU load) by the sizer; "
             "'predicted': the planner before building.", "",
             "| row | what | vocabulary | chrF++ | % of teacher | torch.save bytes | % of teacher | predicted |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        pred = "" if r.get("predicted") is None else ("=" if r["predicted"] == r["torch_save"] else f"{r['predicted']:,}")
        lines.append(f"| {r['name']} | {r['what']} | {r['vocab'] or ''} | {r['chrf']:.2f} | "
                     f"{100 * r['chrf'] / t['chrf']:.1f} | {r['torch_save']:,} | "
                     f"{100 * r['torch_save'] / t['torch_save']:.1f} | {pred} |")
    lines += ["", "## Bytes by part (safetensors headers; % of the teacher's torch.save bytes)", "",
              "| part | " + " | ".join(r["name"] for r in results) + " |",
              "| --- | " + " | ".join("---:" for _ in results) + " |"]
    for p in PARTS:
        if not any(r["parts"][p] for r in results):
            continue
        lines.append(f"| {p} | " + " | ".join(f"{r['parts'][p]:,} ({100 * r['parts'][p] / t['torch_save']:.1f}%)"
                                               for r in results) + " |")
    cap = 0.15 * t["torch_save"]
    best = min(results[1:], key=lambda r: r["torch_save"])
    lines += ["", "## Target: <= 15% of the teacher's torch.save bytes keeping >= 95% of its chrF++", "",
              f"- 15% is {cap:,.0f} bytes. Smallest row: {best['name']} at {best['torch_save']:,} bytes "
              f"({100 * best['torch_save'] / t['torch_save']:.1f}%) keeping {100 * best['chrf'] / t['chrf']:.1f}% "
              + ("-> met" if best["torch_save"] <= cap and best["chrf"] >= 0.95 * t["chrf"] else
                 f"-> **missed** by {100 * (best['torch_save'] - cap) / t['torch_save']:.1f} points of size")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
