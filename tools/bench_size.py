"""Benchmark: size a full-size Qwen2-Audio-7B-Instruct model directory (sparse placeholder, real headers).

    .venv/bin/python tools/bench_size.py                       # bf16, one file (16.79 GB apparent size)
    .venv/bin/python tools/bench_size.py --shards 5            # the hub's layout: 5 shards + index
    .venv/bin/python tools/bench_size.py --precision nf4-dq    # 2,961 tensors, 417 quant_state reads

The placeholder is written by ``planner.write_placeholder`` (headers exactly as safetensors writes them,
data regions left as holes), so it takes almost no disk space. Prints the time of ``sizer.measure``
with and without the organizers' torch.save measure (computed from the same headers and config.json;
in-process, wall and CPU time, best and median of --repeat runs) and of the whole ``iwslt-mc size --json``
command (a fresh Python process). The issue's bar: under a second.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import placeholder_bench  # tools/: puts the repository on sys.path and the hub offline

from iwslt_mc import __version__
from iwslt_mc.planning import planner
from iwslt_mc.sizing import sizer


def main() -> int:
    ap = placeholder_bench.parser(__doc__)
    ap.add_argument("--repeat", type=int, default=5, help="in-process measurements (default 5)")
    ap.add_argument("--keep", metavar="DIR", help="write the placeholder here and keep it (default: a temp dir)")
    placeholder_bench.add_json(ap)
    args = ap.parse_args()

    pred = placeholder_bench.prediction(args)
    tmp = None
    if args.keep:
        out = Path(args.keep)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_size.")
        out = Path(tmp.name) / "model"
    try:
        files = planner.write_placeholder(out, pred, shards=args.shards)
        times, cpu, bare = [], [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            rep = sizer.measure(out)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            t0 = time.perf_counter()
            sizer.measure(out, torch_save=False)
            bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "iwslt_mc", "size", str(out), "--json"], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1])
        cli_s = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        cli = json.loads(proc.stdout)
        disk = sum(os.stat(f).st_blocks * 512 for f in files)
    finally:
        if tmp is not None:
            tmp.cleanup()

    result = {
        "precision": args.precision, "files": len(files), "tensors": rep.tensors, "bytes": rep.bytes, "params": rep.params,
        "predicted_bytes": pred.bytes, "disk_used_bytes": disk,
        "torch_save_bytes": rep.torch_save.bytes, "torch_save_bytes_cpu_load": rep.torch_save.bytes_cpu,
        "torch_save_predicted": pred.torch_save.bytes if pred.torch_save else None,
        "measure_best_s": round(min(times), 4), "measure_median_s": round(statistics.median(times), 4),
        "measure_cpu_best_s": round(min(cpu), 4), "safetensors_only_best_s": round(min(bare), 4),
        "cli_process_s": round(cli_s, 3),
        "cli_agrees": cli["bytes"] == rep.bytes and cli["params"] == rep.params
        and cli["torch_save"]["bytes"] == rep.torch_save.bytes,
        "python": sys.version.split()[0], "version": f"iwslt-mc-{__version__}",
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"full-size Qwen2-Audio-7B-Instruct placeholder ({args.precision}, {len(files)} file(s), {rep.tensors:,} tensors, "
              f"{disk / 1e3:,.0f} kB on disk)")
        print(f"  bytes {rep.bytes:,} (predicted {pred.bytes:,}), params {rep.params:,}, bin {rep.bin or 'none'}")
        print(f"  torch.save {rep.torch_save.bytes:,} bytes ({rep.torch_save.bytes / 2**30:.3f} GiB; "
              f"{rep.torch_save.bytes_cpu:,} loaded on a CPU; planner {pred.torch_save.bytes:,})")
        print(f"  sizer.measure with torch.save: best {min(times) * 1e3:.1f} ms (CPU {min(cpu) * 1e3:.1f} ms), "
              f"median {statistics.median(times) * 1e3:.1f} ms over {args.repeat} runs; "
              f"safetensors only: best {min(bare) * 1e3:.1f} ms")
        print(f"  iwslt-mc size --json (new process, incl. interpreter start): {cli_s * 1e3:.0f} ms")
    return 0 if min(times) < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
