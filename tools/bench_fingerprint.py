"""Benchmark: ``model_fingerprint`` (sha256 of every weight byte) on a full-size Qwen2-Audio-7B-Instruct
placeholder, first call (hashing) and second call (digest cache beside the weights).

    .venv/bin/python tools/bench_fingerprint.py                 # bf16, one 16.79 GB file
    .venv/bin/python tools/bench_fingerprint.py --shards 5      # the hub's layout: 5 shards, hashed in parallel
    .venv/bin/python tools/bench_fingerprint.py --real-mb 1024  # also a file of random bytes (page cache)

The placeholder (``planner.write_placeholder``) is sparse: its data regions are holes the kernel reads as
zeros without touching the disk, so its figure is the hashing speed of this CPU (plus the copy out of the
kernel); a real checkpoint on a disk slower than that is read at the disk's speed instead. ``--real-mb``
hashes a file of random bytes of that size, written first (so read from the page cache), for comparison.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import placeholder_bench  # tools/: puts the repository on sys.path and the hub offline

from iwslt_mc import __version__
from iwslt_mc.floor import modeldir
from iwslt_mc.planning import planner


def main() -> int:
    ap = placeholder_bench.parser(__doc__)
    ap.add_argument("--real-mb", type=int, default=0, help="also hash a file of this many MB of random bytes")
    placeholder_bench.add_json(ap)
    args = ap.parse_args()

    pred = placeholder_bench.prediction(args)
    with tempfile.TemporaryDirectory(prefix="bench_fingerprint.") as tmp:
        out = Path(tmp) / "model"
        files = planner.write_placeholder(out, pred, shards=args.shards)
        old = time.time() - 3600  # an old mtime: cacheable (a file written this second is not)
        for f in files:
            os.utime(f, (old, old))
        total = sum(os.stat(f).st_size for f in files)
        t0, c0 = time.perf_counter(), time.process_time()
        fp = modeldir.model_fingerprint(out)
        cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        fp2 = modeldir.model_fingerprint(out)
        warm = time.perf_counter() - t0
        real = None
        if args.real_mb:
            r = Path(tmp) / "random.bin"
            with r.open("wb") as fh:
                for _ in range(args.real_mb):
                    fh.write(os.urandom(1 << 20))
            t0 = time.perf_counter()
            modeldir._sha256_of_file(r)
            dt = time.perf_counter() - t0
            real = {"mb": args.real_mb, "s": round(dt, 3), "mb_per_s": round(args.real_mb * 1.048576 / dt)}
    result = {"precision": args.precision, "files": len(files), "bytes": total, "fingerprint": fp,
              "first_call_s": round(cold, 2), "first_call_cpu_s": round(cold_cpu, 2),
              "mb_per_s": round(total / 1e6 / cold), "cached_call_s": round(warm, 4), "same_fingerprint": fp == fp2,
              "real_file": real, "cpus": os.cpu_count(), "python": sys.version.split()[0],
              "version": f"iwslt-mc-{__version__}"}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"full-size Qwen2-Audio-7B-Instruct placeholder ({args.precision}, {len(files)} file(s), {total / 1e9:.2f} GB)")
        print(f"  first model_fingerprint: {cold:.1f} s wall ({cold_cpu:.1f} s CPU), {total / 1e6 / cold:,.0f} MB/s")
        print(f"  second (digests cached beside the weights): {warm * 1e3:.1f} ms; same fingerprint: {fp == fp2}")
        if real:
            print(f"  {real['mb']} MB of random bytes (page cache): {real['s']} s, {real['mb_per_s']:,} MB/s "
                  f"-> {total / 1e6 / real['mb_per_s']:.1f} s for these {total / 1e9:.2f} GB")
    return 0 if fp == fp2 else 1


if __name__ == "__main__":
    sys.exit(main())
