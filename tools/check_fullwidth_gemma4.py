#!/usr/bin/env python
"""The organizers' torch.save measure at gemma-4-12B-it's real widths, on a CPU: planner = sizer = real.

    python tools/check_fullwidth_gemma4.py                     # 2 layers (one sliding, one global)
    python tools/check_fullwidth_gemma4.py --llm-layers 6 --out docs/bench/fullwidth-gemma4.md
    python tools/check_fullwidth_gemma4.py --no-quantize       # bf16 only (no bitsandbytes steps)
    python tools/check_fullwidth_gemma4.py --no-quantize --hidden 2880   # also a prune-hidden model (bf16)

The model: google/gemma-4-12B-it's layout (iwslt_mc.families.gemma4.GEMMA4_12B_TEXT: hidden 3840, MLP
15,360, 16 query heads, 8 key/value heads of width 256 on sliding layers, one shared key/value head of
width 512 and no v_proj on global layers, 262,144 tokens, the vision patch embedder and the raw-frame
audio projector) with only ``--llm-layers`` decoder layers (default 2: one sliding and one global layer,
~1.5 B parameters, 3.0 GB bf16), random bf16 weights built on the meta device and filled in place, and
the unified kit's processor (the sizes do not depend on it). Then, for the bf16 model and for what
``iwslt-mc stage quantize`` makes of it with ``method=nf4`` (NF4 + double quantization, the organizers'
``nf4-2q``) and ``method=int8`` (their bitsandbytes int8), three figures of torch.save bytes, as the
model is loaded on a CPU:

  planned   ``iwslt-mc plan --base BASE --precision P`` (the planner, from config.json alone)
  sized     ``iwslt-mc size MODEL`` (from the safetensors headers and a meta-device model)
  real      a real ``torch.save(model.state_dict())`` of the model loaded with
            ``AutoModelForMultimodalLM.from_pretrained(dtype="auto")`` (iwslt_mc.sizing.torchsave.measure_streamed)

With ``--hidden N`` the bf16 model narrowed to residual width N by ``iwslt-mc stage prune-hidden`` is one more
row, planned as ``plan --base BASE --hidden N`` (from the base's config, not the narrowed one's).
PASS when the three agree to the byte for every model and the planner's parameter count is the model's.
Peak memory: about twice the bf16 model (the quantize step holds it and its quantized copy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def reduced_config(llm_layers: int):
    """gemma-4-12B-it's config keeping its first ``llm_layers - 1`` layers and the next global layer (so that
    both attention kinds are there from 2 layers on), through the family's own layer-removal rule."""
    from iwslt_mc.families.gemma4 import Gemma4Family, gemma4_12b_config

    cfg = gemma4_12b_config()
    types = cfg.text_config.layer_types
    last = next(i for i in range(llm_layers - 1, len(types)) if types[i] == "full_attention")
    return Gemma4Family().config_after_layer_removal(cfg, list(range(llm_layers - 1)) + [last])


def build(out: Path, llm_layers: int, seed: int = 0) -> int:
    """Write the reduced-depth random bf16 model and the unified kit's processor to ``out``; its parameters."""
    import torch
    from transformers import Gemma4UnifiedForConditionalGeneration

    sys.path.insert(0, str(ROOT / "tools"))
    from bench_decode import materialize_random

    from iwslt_mc.families.gemma4.kit import build_processor, save_processor

    cfg = reduced_config(llm_layers)
    with torch.device("meta"):
        model = Gemma4UnifiedForConditionalGeneration(cfg)
    model = model.to(dtype=torch.bfloat16)
    materialize_random(model, "cpu", seed=seed)
    model.tie_weights()  # to_empty made lm_head a parameter of its own: tied again, as the real model is
    if model.lm_head.weight is not model.get_input_embeddings().weight:
        raise RuntimeError("lm_head is not tied to the token embeddings after materializing")
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(1.0)
    model.save_pretrained(out)
    save_processor(build_processor(unified=True), out)
    n = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for k, b in model.state_dict().items() if k.endswith("layer_scalar"))
    return n


def _cli(args: list[str], log: Path) -> tuple[int, float, str]:
    t0 = time.time()
    env_path = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "iwslt_mc", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": env_path, "HF_HUB_OFFLINE": "1"})
    with open(log, "a") as f:
        f.write(f"\n$ iwslt-mc {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    return proc.returncode, time.time() - t0, proc.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm-layers", type=int, default=2)
    ap.add_argument("--work", help="work directory (default: a new temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-quantize", action="store_true", help="the bf16 model only")
    ap.add_argument("--out", type=Path, help="write the table as Markdown (+ JSON beside it)")
    ap.add_argument("--hidden", type=int, help="also narrow the bf16 model to this residual width (prune-hidden)")
    a = ap.parse_args(argv)
    if a.llm_layers < 1:
        print("--llm-layers: at least 1", file=sys.stderr)
        return 2

    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.sizing.torchsave import measure_streamed

    work = Path(a.work or tempfile.mkdtemp(prefix="fullwidth-gemma4-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "steps.log"
    rows, ok, started = [], True, time.time()
    try:
        base = work / "base"
        t0 = time.time()
        n_params = build(base, a.llm_layers)
        print(f"  built {base} ({n_params:,} parameters) in {time.time() - t0:.0f} s", flush=True)
        models = [("bf16", "bf16", base, {})]
        if a.hidden:
            out = work / "hidden"
            rc, s, _ = _cli(["stage", "prune-hidden", "--in", str(base), "--out", str(out), "--set",
                             f"llm_hidden={a.hidden}"], log)
            print(f"  stage prune-hidden llm_hidden={a.hidden}: exit {rc} in {s:.0f} s", flush=True)
            if rc != 0:
                ok = False
                rows.append({"model": f"bf16, hidden {a.hidden}", "error": f"prune-hidden exit {rc} (see {log})"})
            else:
                models.append((f"bf16, hidden {a.hidden}", "bf16", out, {"hidden": a.hidden}))
        if not a.no_quantize:
            for method, prec in (("nf4", "nf4-dq"), ("int8", "int8")):
                out = work / method
                rc, s, _ = _cli(["stage", "quantize", "--in", str(base), "--out", str(out), "--set", f"method={method}"], log)
                print(f"  stage quantize {method}: exit {rc} in {s:.0f} s", flush=True)
                if rc != 0:
                    ok = False
                    rows.append({"model": prec, "error": f"quantize exit {rc} (see {log})"})
                    continue
                models.append((method, prec, out, {}))
        base_cfg = planner.load_base_config(base)
        for label, prec, d, spec in models:
            pred = planner.predict(planner.Spec(precision=prec, **spec), base_cfg, "2027")
            rep = sizer.measure(d, "2027")
            n_model = n_params if not spec else rep.params
            t0 = time.time()
            real = measure_streamed(d, device="cpu").bytes
            row = {"model": prec if not spec else label, "params planned": pred.params, "params model": n_model,
                   "planned": pred.torch_save.bytes_cpu, "sized": rep.torch_save.bytes_cpu, "real": real,
                   "planned (one GPU)": pred.torch_save.bytes, "sized (one GPU)": rep.torch_save.bytes,
                   "safetensors planned": pred.bytes, "safetensors measured": rep.bytes,
                   "real s": round(time.time() - t0, 1)}
            row["ok"] = (row["planned"] == row["sized"] == real and pred.params == n_model
                         and row["planned (one GPU)"] == row["sized (one GPU)"])
            ok &= row["ok"]
            rows.append(row)
            print(f"  {row['model']}: planned {row['planned']:,} sized {row['sized']:,} real {real:,} "
                  f"-> {'ok' if row['ok'] else 'MISMATCH'}", flush=True)
    finally:
        meta = {"command": "python tools/check_fullwidth_gemma4.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "model": f"gemma-4-12B-it widths, {a.llm_layers} decoder layers, 262,144 tokens, random bf16",
                "device": "cpu", "total wall s": f"{time.time() - started:.0f}", "result": "PASS" if ok else "FAIL"}
        _report(rows, meta, a.out)
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _report(rows: list[dict], meta: dict, out_md: Path | None) -> None:
    head = ["model", "params planned", "planned", "sized", "real", "planned (one GPU)", "sized (one GPU)", "ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:,}" if isinstance(r.get(k), int) and not isinstance(r.get(k), bool)
                                        else str(r.get(k, r.get("error", ""))) for k in head) + " |")
    text = ("# Gemma 4 12B widths: torch.save planned, sized and real (CPU)\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in meta.items()) + "\n" + "\n".join(lines) + "\n")
    print(text)
    if out_md:
        out_md.write_text(text, encoding="utf-8")
        out_md.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
