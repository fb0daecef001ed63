"""What the toy-teacher quantization benchmarks (bench_quantization, bench_quant_mixed, bench_quant_small,
bench_quant_calibrated, bench_quant_floor, bench_quant_embeddings) share. Importing it puts the repository first on
``sys.path`` and the hub offline, as each tool's own preamble did (run as ``python tools/bench_*.py``, the tool's
folder is on the path already; a tool loaded by file puts it there first)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TEACHER = ROOT / "tests" / "fixtures" / "toy" / "teacher"


def tool(name: str):
    """Another script of tools/ (``name`` without .py) loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def finish(text: str, report: Path | None) -> int:
    """A benchmark's last step: the Markdown ``text`` written to ``report`` (if given) and printed; exit status 0."""
    if report:
        report.write_text(text, encoding="utf-8")
    print(text)
    return 0
