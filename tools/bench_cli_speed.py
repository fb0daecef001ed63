"""Benchmark: wall time of CLI commands as a new user runs them, as a ratio to ``iwslt-mc --help``.

    .venv/bin/python tools/bench_cli_speed.py                  # 5 repeats, writes docs/bench/cli_speed.md
    .venv/bin/python tools/bench_cli_speed.py --repeat 9 --model runs/kit/model --out /tmp/cli.md

Each command runs in a fresh Python process (``python -m iwslt_mc``, this checkout first on PYTHONPATH),
``--repeat`` times, interleaved (one round runs every command once), so a machine whose load changes
during the run slows every command alike. Reported: median and best wall time, median CPU time of the
process (user + system, less sensitive to other processes on a shared machine), and the median wall and
CPU as a ratio to ``iwslt-mc --help`` (Python start-up plus the CLI's own imports). The commands:
``plan`` of a spec given by options, ``plan --target Bin4`` (the search over many specs), ``plan`` of a
Gemma 4 recipe on the 12B layout (``tools/gemma4_12b_config.py``) the first time (plan cache off: transformers
builds the config and the meta model) and again (what the first plan stored in ``iwslt_mc.plancache``, here a
temporary folder primed before the rounds), and
``size`` of the demo kit's model (built into a temporary directory unless ``--model`` names one).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _versions() -> str:
    out = []
    for dist in ("iwslt-mc", "transformers", "torch"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        out.append(f"commit {commit}{' (with uncommitted changes)' if dirty else ''}")
    except (OSError, subprocess.CalledProcessError):
        pass
    return ", ".join(out) + f", Python {platform.python_version()}"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _run(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run; exits on a non-zero status."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "iwslt_mc", *argv], capture_output=True, text=True, env=env,
                          cwd=REPO)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bench_cli_speed: `iwslt-mc {' '.join(argv)}` exited {proc.returncode}: "
                 f"{(proc.stderr.strip().splitlines() or [''])[-1]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each command (default 5)")
    ap.add_argument("--model", metavar="DIR", help="model directory for `size` (default: the demo kit's, built here)")
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "cli_speed.md"), help="markdown report to write")
    args = ap.parse_args()
    if args.repeat < 1:
        sys.exit("bench_cli_speed: --repeat must be at least 1")

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench_cli_speed.") as tmp:
        env["IWSLT_MC_PLAN_CACHE"] = str(Path(tmp) / "plan-cache")
        model = args.model
        if model is None:
            print("building the demo kit for `size` ...", file=sys.stderr)
            sys.path.insert(0, str(REPO))
            from iwslt_mc.families.qwen2_audio.kit import build_kit

            build_kit(Path(tmp) / "kit", seed=0)
            model = str(Path(tmp) / "kit" / "model")
        g12 = Path(tmp) / "gemma4-12b"
        subprocess.run([sys.executable, str(REPO / "tools" / "gemma4_12b_config.py"), str(g12)], env=env, check=True,
                       capture_output=True)
        commands = [
            ("iwslt-mc --help", ["--help"]),
            ("plan --llm-layers 24 --precision nf4-dq", ["plan", "--llm-layers", "24", "--precision", "nf4-dq"]),
            ("plan recipe-b-bin1", ["plan", "recipe-b-bin1"]),
            ("plan --target Bin4", ["plan", "--target", "Bin4"]),
            ("plan gemma4-small --base GEMMA4_12B (first)", ["plan", "gemma4-small", "--base", str(g12)]),
            ("plan gemma4-small --base GEMMA4_12B (again)", ["plan", "gemma4-small", "--base", str(g12)]),
            ("size KIT_MODEL", ["size", model]),
        ]
        _run(["plan", "gemma4-small", "--base", str(g12)], env)  # primes the plan cache for the "(again)" row
        _run(["plan", "--llm-layers", "24"], env)  # primes Qwen2-Audio's on-disk names (asked of transformers once)
        cold = {**env, "IWSLT_MC_PLAN_CACHE": "off"}
        load_start = _load()
        walls = {name: [] for name, _ in commands}
        cpus = {name: [] for name, _ in commands}
        for r in range(args.repeat):
            for name, argv in commands:
                w, c = _run(argv, cold if name.endswith("(first)") else env)
                walls[name].append(w)
                cpus[name].append(c)
            print(f"round {r + 1}/{args.repeat} done", file=sys.stderr)
        load_end = _load()

    help_wall = statistics.median(walls["iwslt-mc --help"])
    help_cpu = statistics.median(cpus["iwslt-mc --help"])
    rows = []
    for name, _ in commands:
        mw, mc = statistics.median(walls[name]), statistics.median(cpus[name])
        rows.append(f"| `{name}` | {mw:.2f} | {min(walls[name]):.2f} | {mc:.2f} | {mw / help_wall:.1f}x | "
                    f"{mc / help_cpu:.1f}x |")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        "# CLI speed: `plan` and `size` against `iwslt-mc --help`",
        "",
        f"`tools/bench_cli_speed.py --repeat {args.repeat}`, {when}. Each command is a fresh process "
        "(`python -m iwslt_mc`), run once per round, rounds interleaved; wall and CPU seconds (user + system of "
        "the process), median over the rounds; ratios are medians over the `--help` median.",
        "",
        f"- versions: {_versions()}",
        f"- machine: {_machine()}; load average (1/5/15 min) {load_start} at the start, {load_end} at the end",
        "",
        "| command | wall median s | wall best s | CPU median s | wall / --help | CPU / --help |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "GEMMA4_12B: the config-only directory `tools/gemma4_12b_config.py` writes; KIT_MODEL: the demo kit's model "
        "(`iwslt_mc.families.qwen2_audio.kit.build_kit`, seed 0)" + ("" if args.model is None else f" (here {args.model})") + ".",
        "",
    ])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(out.suffix + ".tmp")
    tmp_out.write_text(text, encoding="utf-8")
    os.replace(tmp_out, out)
    print(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
