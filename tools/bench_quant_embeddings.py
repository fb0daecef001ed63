#!/usr/bin/env python3
"""One lever for the token embeddings under the organizers' measure (issue 31 item 4): compressed-tensors
``int-quantized`` 8-bit embeddings (one int8 per weight, a float scale per row, symmetric) in a checkpoint whose
Linear layers are ``pack-quantized`` (a ``mixed-precision`` config: one config group per format).

Why this one: of the formats the installed libraries offer, it is the one whose embeddings stay quantized after
``from_pretrained(dtype="auto")`` (dequantize: false) *and* whose model runs (measured on the kit, transformers
5.25, compressed-tensors 0.20.1): ``pack-quantized`` embeddings fail the load (compressed-tensors:
``AttributeError: 'Embedding' object has no attribute 'weight'``); ``float-quantized`` FP8 embeddings load as
float8 and run too, but FP8 is 8 bits like int8 with coarser steps; bitsandbytes never converts ``nn.Embedding``
(transformers replaces Linear layers only); torchao is not installed. Caveat found: ``dequantize: true`` loads of
such a mixed checkpoint fail in transformers 5.25 (it decompresses every group with the embeddings' compressor),
so the checkpoint is only usable packed (which is how the organizers and this tool's decoding load it).

The quantize stage writes it (method ct, ``symmetric: true``, ``int8_embeddings: true``; the planner and the sizer
lay it out). For each ``--build NAME=DIR`` (an unquantized model): the stage's ``--build-options`` without and with
``int8_embeddings`` (rows ``NAME``, ``NAME-e8``); for each ``--model NAME=DIR`` (a packed ct / AutoRound checkpoint
the stage did not make): a copy with int8 embeddings made with the stage's own functions (``NAME-e8``). Rows fixed
before measuring, nothing chosen. Of each: the torch.save bytes after ``from_pretrained(dtype="auto")`` (a real
``torch.save`` to a file named as the organizers' temporary file), the dev KL of each to ``--teacher`` (first ``--dev-limit`` dev utterances) and chrF++ of the first
``--test-limit`` test utterances decoded once (greedy, float32).

    OMP_NUM_THREADS=1 nice -n 19 python tools/bench_quant_embeddings.py --teacher TRIMMED --corpus /work/toy/corpus-tiny \\
        --build trim-ct3-sym=TRIMMED --model ar3-all=DIR --out /tmp/qemb --report /tmp/qemb.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: the shared toy_bench module
from toy_bench import finish, tool  # noqa: E402  (puts the repository on sys.path, the hub offline)

GROUP = "embeddings-int8"


def int8_embeddings(src: Path, dst: Path) -> Path:
    """A copy of packed checkpoint ``src`` whose token embeddings are compressed-tensors int-quantized 8-bit, the
    Linear groups unchanged: the quantize stage's own int8 rows and mixed-precision config
    (:func:`iwslt_mc.quantization.formats.int8_rows_tensor`, :func:`~iwslt_mc.quantization.formats.add_int8_rows_group`;
    the stage writes them itself with ``int8_embeddings: true``), applied to a checkpoint the stage did not make
    (e.g. AutoRound's)."""
    from safetensors.torch import load_file, save_file

    from iwslt_mc.quantization.formats import add_int8_rows_group, int8_rows_tensor

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    files = sorted(dst.glob("*.safetensors"))
    if len(files) != 1:
        raise SystemExit(f"{src}: expected one safetensors file, found {len(files)}")
    sd = load_file(str(files[0]))
    key = next(k for k in sd if k.endswith("embed_tokens.weight"))
    sd[key], sd[key[: -len("weight")] + "weight_scale"], _ = int8_rows_tensor(sd[key])
    save_file(sd, str(files[0]), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    add_int8_rows_group(cfg["quantization_config"])
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return dst


def stage_builds(name: str, src: Path, options: dict, runs: Path) -> list[tuple[str, Path]]:
    """``NAME`` and ``NAME-e8``: the quantize stage's ``options`` applied to the unquantized ``src``, without and with
    ``int8_embeddings: true`` (made by the stage, not by :func:`int8_embeddings`); built once."""
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    out = []
    for row, extra in ((name, {}), (f"{name}-e8", {"int8_embeddings": True})):
        d = runs / row / "model"
        if not (d / "config.json").exists():
            run_stage(make_stage("quantize", {**options, **extra}), src, d,
                      StageContext(log=lambda *a: print("   ", *a, flush=True), device="cpu"))
        out.append((row, d))
    return out


def organizers_torch_save(model_dir: Path, work: Path) -> tuple[int, dict]:
    """``from_pretrained(dtype="auto")`` (no forward), ``torch.save`` of the state dict to a file named as the
    organizers' temporary file, with the storage location tags a model on one GPU writes (``cuda:0``, a new string
    per storage: the sizer's 2027 figure; tests/quantization/test_quant_packed.py checks the equivalence); its
    bytes and the embeddings' stored dtypes."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    from iwslt_mc.floor.statedict import ORGANIZERS_ARCHIVE

    model = Qwen2AudioForConditionalGeneration.from_pretrained(str(model_dir), dtype="auto", device_map="cpu")
    sd = model.state_dict()
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{ORGANIZERS_ARCHIVE}.pt"
    orig = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:" + str(0)
    try:
        torch.save(sd, path)
    finally:
        torch.serialization.location_tag = orig
    n = path.stat().st_size
    path.unlink()
    return n, {k: str(v.dtype).replace("torch.", "") for k, v in sd.items() if "embed_tokens" in k}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, required=True, help="the unquantized model the KL and %% are against")
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                    help="a packed checkpoint; row NAME-e8 is a copy with int8 embeddings")
    ap.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                    help="an unquantized model: rows NAME and NAME-e8 are the quantize stage's --build-options "
                         "without and with int8_embeddings: true")
    ap.add_argument("--build-options", type=json.loads, default={"method": "ct", "bits": 3, "symmetric": True,
                                                                   "skip": []},
                    help="the quantize stage's options for --build (JSON; default ct 3-bit symmetric, lm_head too)")
    ap.add_argument("--dev-limit", type=int, default=50)
    ap.add_argument("--test-limit", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--reference-bytes", type=int, help="also give torch.save bytes as %% of this (e.g. the "
                    "untrimmed teacher's 2027 figure)")
    ap.add_argument("--lang", default="en-de")
    args = ap.parse_args(argv)
    import compressed_tensors
    import torch
    import transformers

    from iwslt_mc.fsutil import atomic_write_json
    from iwslt_mc.training import data

    mixed, fid = tool("bench_quant_mixed"), tool("bench_fidelity")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    teacher = args.teacher.resolve()
    runs = args.out / "runs"
    dev = data.load_examples(str(args.corpus), "dev", lang=args.lang, limit=args.dev_limit)
    test = data.load_examples(str(args.corpus), "test", lang=args.lang, limit=args.test_limit)
    batches, reference = mixed.dev_reference(teacher, dev, args.lang)
    if not args.model and not args.build:
        ap.error("give --model or --build")
    rows = [("teacher", teacher, None)]
    for spec in args.build:
        name, d = spec.split("=", 1)
        rows += [(row, d, None) for row, d in stage_builds(name, Path(d), args.build_options, runs)]
    for spec in args.model:
        name, d = spec.split("=", 1)
        rows.append((name, Path(d), None))
        rows.append((f"{name}-e8", runs / f"{name}-e8" / "model", Path(d)))
    results = []
    for name, d, src in rows:
        run = runs / name
        cached = run / "result.json"
        if src is not None and not (d / "config.json").exists():
            int8_embeddings(src, d)
        ts, emb = organizers_torch_save(d, run)  # cheap: measured every run
        if not cached.exists():
            print(f"== {name}", flush=True)
            r = {"name": name, "dir": str(d),
                 "dev_kl": None if name == "teacher" else mixed.dev_kl(d, batches, reference)}
            t = fid.evaluate(d, run, args, test)
            r.update(chrf=t["chrf"], tokens_per_s=round(t["tokens"] / t["decode_seconds"], 1) if t["decode_seconds"]
                     else None)
            atomic_write_json(cached, r)
        results.append({**json.loads(cached.read_text()), "torch_save": ts, "embeddings": emb})
        r = results[-1]
        print(f"   {name}: torch.save {r['torch_save']:,}  dev KL {r['dev_kl']}  chrF++ {r['chrf']:.2f}", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "teacher": str(teacher),
            "reference_bytes": args.reference_bytes,
            "corpus": str(args.corpus), "dev": len(dev), "test": len(test),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "compressed-tensors": compressed_tensors.__version__},
            "command": "python tools/bench_quant_embeddings.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    text = markdown(results, meta)
    return finish(text, args.report)


def markdown(results: list[dict], meta: dict) -> str:
    t = results[0]
    v = meta["versions"]
    lines = [f"`{meta['command']}` ({meta['date']}, CPU, {meta['threads']} thread(s), shared; torch {v['torch']}, "
             f"transformers {v['transformers']}, compressed-tensors {v['compressed-tensors']}). Teacher (the KL and "
             f"the % are against it) `{meta['teacher']}`; dev KL on the first {meta['dev']} dev utterances, chrF++ of "
             f"the first {meta['test']} test utterances decoded once (greedy, float32); rows fixed before measuring. "
             "torch.save: a real `torch.save(model.state_dict())` after `from_pretrained(dtype=\"auto\")`, with a GPU "
             "model's storage tags (the 2027 measure)"
             + (f"; reference: {meta['reference_bytes']:,} bytes" if meta.get("reference_bytes") else "") + ".", "",
             "| row | embeddings after loading | torch.save bytes | % of teacher | "
             + ("% of reference | " if meta.get("reference_bytes") else "") + "dev KL | chrF++ | % of teacher |",
             "| --- | --- | ---: | ---: | " + ("---: | " if meta.get("reference_bytes") else "") + "---: | ---: | ---: |"]
    for r in results:
        emb = ", ".join(f"{k.rsplit('.', 1)[1]} {d}" for k, d in sorted(r["embeddings"].items()))
        kl = "" if r["dev_kl"] is None else f"{r['dev_kl']:.4f}"
        ref = f"{100 * r['torch_save'] / meta['reference_bytes']:.1f} | " if meta.get("reference_bytes") else ""
        lines.append(f"| {r['name']} | {emb} | {r['torch_save']:,} | {100 * r['torch_save'] / t['torch_save']:.1f} | "
                     f"{ref}{kl} | {r['chrf']:.2f} | {100 * r['chrf'] / t['chrf']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
