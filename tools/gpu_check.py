#!/usr/bin/env python
"""The 7B model on one GPU, in parts that each fit one device call: figures for the README's GPU table.

    python tools/gpu_check.py --report $OUT/gpu_check.md                 # every part, full size, cuda
    python tools/gpu_check.py --only decode --report $OUT/gpu_check.md   # the most valuable part alone
    python tools/gpu_check.py --reduced --device cpu --report /tmp/gc.md # the CPU rehearsal (small widths)

Parts, in this order (``--only`` takes a comma list of them, or ``all``):
  decode     two tools/bench_decode.py --arch full runs of the full-size random Qwen2-Audio: (1) fp32, TF32 off,
             reference vs fast on 8 clips x 32 tokens: PASS needs every first token equal and a mean common
             prefix >= --min-agreement; (2) bf16: fast vs reference vs ``generate()`` tokens/s, batch-1 rate
             against the roofline of the GPU's measured copy bandwidth, and the bf16 agreement figures as
             information (a random model's near-ties flip under bf16 kernels). Needs no file on disk.
  quantize   NF4 (bitsandbytes, double quant) and ct (compressed-tensors pack-quantized 4-bit): quantize the
             random bf16 base, measure torch.save of the reloaded model on the device against the planner, and
             decode the kit's eval utterances with it (reload + decode); each output deleted after its rows.
  torchsave  torch.save of the bf16 base loaded on the device (a real torch.save into a pipe) vs the planner.
  train      one QLoRA step (unmerged adapter) and one KD step (8.4 B student, NF4 teacher) at 7B: peak GPU memory.
  search     one round of the iterative layer search (remove 1 layer, 16 segments).
Every part but decode needs the random bf16 base on disk (built once by the first part that needs it). With
``--work DIR`` the base is kept in DIR for a later call on the same warm machine (which reuses it) unless
``--no-keep``; without ``--work`` the temporary work folder, base included, is deleted at the end. So the calls
can run in any order: the first that needs the base builds it, the others reuse it.

Report: Markdown at ``--report`` (default ``$OUT/gpu_check.md`` when OUT is set) and JSON beside it, rewritten
atomically after every step, so a killed run keeps every row that finished. ``result: PASS`` only when every
selected part ran and every step passed; an empty part list, an unknown part or a crash is FAIL (exit 1).
Before any work: the per-part time estimates (H200) and the disk plan (planner bytes), whose peak must stay
under ``--disk-limit-gib`` (default 55; the machine has 64 GiB).

The device command (wheels from tools/gpu_prepare.sh in .whl, carried): see the README's "GPU check".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fullwidth import REDUCED_AUDIO_WIDTHS, REDUCED_TEXT_WIDTHS, ROOT, Run, Step, _watch_peak_rss  # noqa: E402

PARTS = ("decode", "quantize", "torchsave", "train", "search")
DISK_LIMIT_GIB = 55.0
PART_LIMIT_S = 8 * 60  # each part must fit a 10-minute device call with margin

# Wall seconds per part on one H200 at full size: measured where the H200 lent on 2026-12-04 ran it (issue 34,
# docs/bench/gpu_check_h200.md: torch 2.11.0+cu130, transformers 5.17.0), estimated elsewhere (figures: the H100
# measurements in shared/reference/qwen2-audio.md and KINDS.md's H200 copy bandwidth; assumptions: local disk
# writes ~1 GB/s, reads of a file written in the same call from the page cache (128 GiB RAM) ~3 GB/s, ~15 s of
# Python/torch/transformers start-up per child process). docs/bench/gpu_check_plan.md has the table.
MEASURED_H200_S = {"decode bf16": 137, "torchsave": 55, "base build on the CPU": 288}
# Estimate: the base drawn on the GPU (a CUDA generator: 8.4 B values in well under a second; on the CPU this was
# ~264 s of the measured 288) + copied to host memory and written (16.8 GB, ~9 s measured) + start-up, the real
# tokenizer and measuring the file (~15-20 s): ~30 s, with margin
BASE_BUILD_S = 40
# Estimate: the fp32 agreement child: start-up and the 33.6 GB fp32 model drawn on the GPU ~15 s; warm-ups incl.
# the static-cache compile ~40 s (bf16 measured 38.3 s); reference on 8 clips x 32 tokens at ~25 tok/s (half the
# bf16 47.5 tok/s measured: twice the bytes per token) incl. fp32 prefills ~20 s; fast (one batch of 8) ~5 s
DECODE_FP32_S = 90
ESTIMATE_S = {
    # measured: the bf16 speeds child 137 s; + the fp32 agreement child (estimate)
    "decode": MEASURED_H200_S["decode bf16"] + DECODE_FP32_S,
    # estimate, not run (call 3's base had been deleted by call 2, and rebuilding it on the CPU ran out of the
    # call): per method: quantize (16.8 GB read + quantize on the GPU + write 6.2 GB: ~40 s; ct's minmax groups
    # ~60 s), torch.save stream of the reload (~25 s), decode of 8 utterances x 32 tokens incl. a compile (~60 s),
    # 3 start-ups: nf4 ~170 s + ct ~190 s
    "quantize": 360,
    # measured: one load of 16.8 GB to the GPU + a 16.8 GB torch.save into a pipe + start-up
    "torchsave": MEASURED_H200_S["torchsave"],
    # estimate, not run: QLoRA: load + NF4 on load (~40 s), 1 step, adapter save: ~70 s; KD: student 16.8 GB +
    # NF4 teacher (~50 s), 1 step, 16.8 GB student written (~20 s): ~100 s
    "train": 170,
    # estimate, not run: 32 candidates x 16 segments x <= 32 tokens with the shared engine, batched (~1/50 of the
    # README's 8-round, 100-segment estimate of 1-3 h: 72-216 s), load 16.8 GB, write the 31-layer model (~17 s)
    "search": 260,
}


def parse_only(text: str | None) -> list[str]:
    """``all`` (or None) -> every part; else a comma list of part names, in PARTS order. Unknown names: ValueError."""
    if text is None or text.strip() == "all":
        return list(PARTS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in PARTS]
    if bad:
        raise ValueError(f"unknown part {bad[0]!r} (parts: {', '.join(PARTS)}, or all)")
    return [p for p in PARTS if p in names]


def keep_base(a) -> bool:
    """Keep the base at the end? ``--keep``/``--no-keep`` if given, else yes exactly when ``--work`` was given
    (a temporary work folder goes whole)."""
    return a.work is not None and (a.keep if a.keep is not None else True)


def needs_base(parts: list[str]) -> bool:
    return any(p != "decode" for p in parts)


def estimates(parts: list[str], *, base_ready: bool = False) -> dict[str, int]:
    """Estimated H200 seconds per selected part; the base's build is charged to the first part that needs it."""
    out, built = {}, base_ready
    for p in parts:
        s = ESTIMATE_S[p]
        if p != "decode" and not built:
            s, built = s + BASE_BUILD_S, True
        out[p] = s
    return out


@dataclass
class Sizes:
    """Planner bytes of everything the parts write (``from_config``: the base's config.json or the real 7B)."""

    base: int
    nf4: int
    ct: int
    pruned: int
    adapter: int
    data: int = 16 << 20  # the kit's 16 utterances as parquet (~1 MB) and hypotheses, generously

    @classmethod
    def from_config(cls, cfg, *, lora_r: int = 64) -> "Sizes":
        from iwslt_mc.planning.planner import Spec, base_dims, predict

        dims = base_dims(cfg)
        p = lambda **kw: predict(Spec(**kw), cfg).bytes  # noqa: E731
        t, a = cfg.text_config, cfg.audio_config
        h, f, ad, af = t.hidden_size, t.intermediate_size, a.d_model, a.encoder_ffn_dim
        # LoRA on every linear layer (target all-linear), fp32 A and B: r x (in + out) x 4 bytes per layer
        llm = 4 * (h + h) + 3 * (h + f)  # q, k, v, o; gate, up, down
        audio = 4 * (ad + ad) + 2 * (ad + af)
        adapter = lora_r * 4 * (dims["llm_layers"] * llm + dims["audio_layers"] * audio)
        return cls(base=p(), nf4=p(precision="nf4-dq"), ct=p(precision="ct4"),
                   pruned=p(llm_layers=dims["llm_layers"] - 1), adapter=adapter)


def disk_plan(parts: list[str], sizes: Sizes) -> list[tuple[str, int]]:
    """(moment, bytes on disk then) for each point of the run where the footprint is largest, in order.
    Each output is deleted once the rows that need it are written; the base stays until the end."""
    plan, base = [], 0
    for p in parts:
        if p == "decode":
            plan.append(("decode (models in GPU memory only)", sizes.data))
            continue
        if not base:
            base = sizes.base
            plan.append(("base built", base + sizes.data))
        d = base + sizes.data
        if p == "quantize":
            plan += [("quantize: base + nf4", d + sizes.nf4), ("quantize: base + ct", d + sizes.ct)]
        elif p == "torchsave":
            plan.append(("torchsave (a pipe, nothing written)", d))
        elif p == "train":
            plan += [("train: base + QLoRA adapter", d + sizes.adapter), ("train: base + KD student", d + sizes.base)]
        elif p == "search":
            plan.append(("search: base + pruned", d + sizes.pruned))
    return plan


class Report:
    """Markdown + JSON, rewritten atomically after each step: a killed run keeps what finished."""

    def __init__(self, path: Path | None, meta: dict):
        self.path, self.meta = path, dict(meta)
        self.rows: list[tuple[str, Step]] = []
        self.part = ""
        self.parts_done: list[str] = []
        self.figures: dict[str, dict] = {}
        self.result = "FAIL (incomplete: not every selected part has finished)"
        self.write()

    def add(self, st: Step) -> None:
        self.rows.append((self.part, st))
        self.write()

    def text(self) -> str:
        head = ["part", "step", "status", "wall s", "peak RSS GiB", "peak GPU GiB", "predicted bytes",
                "measured bytes", "measured - predicted", "note"]
        lines = [f"# {self.meta.get('title', 'GPU check')}", ""]
        lines += [f"- {k}: {v}" for k, v in self.meta.items() if k != "title"]
        lines += [f"- result: {self.result}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([p, *(c.replace("|", "/") for c in s.row())]) + " |" for p, s in self.rows]
        for name, figs in self.figures.items():
            lines += ["", f"## {name}", "", "```json", json.dumps(figs, indent=1), "```"]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.path is None:
            return
        from iwslt_mc.fsutil import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, self.text())
        atomic_write_text(self.path.with_suffix(".json"), json.dumps(
            {"meta": self.meta, "result": self.result, "parts_done": self.parts_done, "figures": self.figures,
             "steps": [dict(part=p, **s.__dict__) for p, s in self.rows]}, indent=1, default=str) + "\n")

    def finish(self, selected: list[str]) -> bool:
        ok = bool(selected) and self.parts_done == selected and all(s.ok for _, s in self.rows)
        if ok:
            self.result = "PASS"
        elif not selected:
            self.result = "FAIL (no part selected)"
        else:
            missing = [p for p in selected if p not in self.parts_done]
            failed = [f"{p}: {s.name}" for p, s in self.rows if not s.ok]
            self.result = "FAIL (" + "; ".join(
                ([f"not run: {', '.join(missing)}"] if missing else []) + ([f"failed: {', '.join(failed)}"] if failed else [])) + ")"
        sized = [s for _, s in self.rows if s.predicted is not None and s.measured is not None]
        if sized:
            self.meta["planner vs measured"] = (f"{sum(s.predicted == s.measured for s in sized)} of {len(sized)} rows "
                                                "exact (a difference is a finding, not a failure)")
        self.write()
        print(self.text().split("\n## ")[0], flush=True)  # the table and result (figures: in the files)
        if self.path:
            print(f"gpu_check: report {self.path} (+ {self.path.with_suffix('.json').name})", flush=True)
        return ok


class _LiveSteps(list):
    """Run.steps that hands each new step to the report at once."""

    def __init__(self, report: Report):
        super().__init__()
        self.report = report

    def append(self, st) -> None:  # Run.cli and Run.add append here
        super().append(st)
        self.report.add(st)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="all", help=f"comma list of parts ({', '.join(PARTS)}) or all (default)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reduced", action="store_true",
                    help="small widths (hidden 256, FFN 768, 4 LLM + 2 audio layers), real vocabulary: the CPU rehearsal")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, deleted at the end); a complete "
                                              "base in it is reused, and a base built in it is kept")
    ap.add_argument("--keep", action=argparse.BooleanOptionalAction, default=None,
                    help="keep the base in --work for a later call (default: yes with --work; --no-keep deletes it; "
                         "a temporary work folder is always deleted)")
    ap.add_argument("--report", type=Path, default=Path(os.environ["OUT"]) / "gpu_check.md" if os.environ.get("OUT") else None,
                    help="Markdown report (+ .json beside it; default $OUT/gpu_check.md when OUT is set)")
    ap.add_argument("--segments", type=int, default=None, help="decode part: clips (default 32 on cuda, 4 reduced)")
    ap.add_argument("--min-agreement", type=float, default=0.95,
                    help="decode part: least mean common-prefix fraction of fast vs reference outputs in fp32 (TF32 "
                         "off) to pass, with every first token equal (default 0.95: one late near-tie flip in 8 "
                         "clips still passes; a fast-path bug differs from the first tokens). The bf16 run's "
                         "agreement is reported, not judged: bf16 kernels flip a random model's near-ties")
    ap.add_argument("--disk-limit-gib", type=float, default=DISK_LIMIT_GIB)
    a = ap.parse_args(argv)
    cuda = a.device.startswith("cuda")
    meta = {"title": "GPU check" if cuda and not a.reduced else "GPU check, CPU rehearsal" if a.reduced else "GPU check",
            "command": "python tools/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        parts = parse_only(a.only)
    except ValueError as e:
        print(f"gpu_check: --only: {e}", file=sys.stderr)
        Report(a.report, meta).finish([])
        return 2
    report = Report(a.report, dict(meta, parts=",".join(parts) or "(none)"))
    try:
        ok = _run(parts, a, report, cuda)
    except Exception:  # a crash of the driver itself: FAIL with what finished, and the traceback
        traceback.print_exc()
        report.meta["driver error"] = traceback.format_exc().strip().splitlines()[-1]
        report.finish(parts)
        return 1
    return 0 if ok else 1


def _run(parts: list[str], a, report: Report, cuda: bool) -> bool:
    if not parts:
        print("gpu_check: no part selected: FAIL", file=sys.stderr)
        return report.finish(parts)
    import torch

    if cuda and not torch.cuda.is_available():
        report.meta["driver error"] = "no CUDA device (use --device cpu --reduced for the CPU rehearsal)"
        print(f"gpu_check: {report.meta['driver error']}", file=sys.stderr)
        return report.finish(parts)
    work = a.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base"
    base_ready = (base / ".complete").exists()
    est = estimates(parts, base_ready=base_ready)
    import transformers

    from iwslt_mc.families.qwen2_audio.plan import disk_prefixes

    report.meta.update(device=torch.cuda.get_device_name(0) if cuda else "cpu", torch=torch.__version__,
                       transformers=transformers.__version__,
                       # what the planner predicts the names as (this transformers' own, asked of a meta model)
                       **{"Qwen2-Audio LLM saved as": disk_prefixes()["model.language_model."] + "*"},
                       model="reduced (hidden 256, FFN 768, 4+2 layers, real vocabulary)" if a.reduced
                       else "Qwen2-Audio-7B-Instruct architecture, random bf16 weights",
                       **{"H200 s (measured 2026-12-04 where run, else estimated)": ", ".join(f"{p} {s}" for p, s in est.items()) + f" (total {sum(est.values())})"})
    print(f"gpu_check: parts {', '.join(parts)}; H200 times (measured or estimated): "
          + ", ".join(f"{p} ~{s} s" for p, s in est.items()) + f"; total ~{sum(est.values())} s", flush=True)
    over = [p for p, s in est.items() if s > PART_LIMIT_S]
    if over:  # a bug in the table, not a runtime condition
        raise AssertionError(f"estimate of part(s) {', '.join(over)} over {PART_LIMIT_S} s")
    if needs_base(parts):
        from iwslt_mc.planning.planner import load_base_config
        from iwslt_mc.families.qwen2_audio.plan import qwen2_audio_7b_config

        cfg = load_base_config(base) if base_ready else (_reduced_config() if a.reduced else qwen2_audio_7b_config())
        plan = disk_plan(parts, Sizes.from_config(cfg))
        peak = max(b for _, b in plan)
        report.meta["disk plan"] = "; ".join(f"{m} {b / 2**30:.1f} GiB" for m, b in plan) + f"; peak {peak / 2**30:.1f} GiB"
        print("gpu_check: disk plan (planner bytes): " + report.meta["disk plan"], flush=True)
        if peak / 2**30 >= a.disk_limit_gib:
            report.meta["driver error"] = f"disk plan peak {peak / 2**30:.1f} GiB is not under {a.disk_limit_gib:g} GiB"
            print(f"gpu_check: {report.meta['driver error']}", file=sys.stderr)
            return report.finish(parts)
        free = shutil.disk_usage(work).free
        report.meta["free disk at start GiB"] = f"{free / 2**30:.1f}"
    report.write()
    # the steps' output next to the report (it comes back from the device even when the call is killed)
    log = report.path.with_name(report.path.stem + "_steps.log") if report.path else work / "steps.log"
    run = Run(work=work, device=a.device, log=log)
    run.steps = _LiveSteps(report)
    ctx = _Ctx(run=run, work=work, base=base, a=a, cuda=cuda, report=report)
    try:
        for p in parts:
            report.part = p
            print(f"gpu_check: part {p} (~{est[p]} s on an H200)", flush=True)
            t0 = time.time()
            if p != "decode":
                ctx.ensure_base()
            PART_FUNCS[p](ctx)
            report.parts_done.append(p)
            report.meta[f"{p} wall s"] = f"{time.time() - t0:.0f}"
            report.write()
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
        elif not keep_base(a):
            shutil.rmtree(base, ignore_errors=True)
    return report.finish(parts)


def _reduced_config():
    """The config --reduced builds (for the disk plan before the base exists)."""
    from transformers import Qwen2AudioConfig

    from fullwidth import REAL_AUDIO, REAL_TEXT

    text, audio = dict(REAL_TEXT, **REDUCED_TEXT), dict(REAL_AUDIO, **REDUCED_AUDIO)
    text.pop("rope_theta")
    return Qwen2AudioConfig(audio_config=dict(audio, model_type="qwen2_audio_encoder"),
                            text_config=dict(text, model_type="qwen2"))


REDUCED_TEXT = dict(REDUCED_TEXT_WIDTHS, num_hidden_layers=4)
REDUCED_AUDIO = dict(REDUCED_AUDIO_WIDTHS, encoder_layers=2)


@dataclass
class _Ctx:
    run: Run
    work: Path
    base: Path
    a: object
    cuda: bool
    report: Report
    data: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def dev(self) -> list[str]:
        return ["--device", self.a.device]

    def ensure_data(self) -> Path:
        if self.data is None:
            self.data = self.work / "data"
            if not (self.data / "eval.parquet").exists():
                write_kit_parquet(self.data)
        return self.data

    def ensure_base(self) -> None:
        if (self.base / ".complete").exists():
            return
        shutil.rmtree(self.base, ignore_errors=True)
        L, A = (REDUCED_TEXT["num_hidden_layers"], REDUCED_AUDIO["encoder_layers"]) if self.a.reduced else (32, 32)
        st = self.run.build(self.base, llm_layers=L, audio_layers=A,
                            **({"widths": "reduced"} if self.a.reduced else {}))
        self.report.write()  # the planner's figure, set on the row after it was added
        if not st.ok:
            raise RuntimeError(f"building the base failed (see {self.run.log})")
        (self.base / ".complete").write_text("ok\n")

    def predict(self, **kw) -> int:
        from fullwidth import predict

        return predict(self.base, **kw)


def write_kit_parquet(out: Path) -> None:
    """The kit's utterances as dev.parquet / eval.parquet through the project's own writer (pyarrow and the
    shipped FLAC bytes: no ``datasets``, no audio re-encoding)."""
    from iwslt_mc.training.data import Example, write_parquet
    from iwslt_mc.kit import _audio_path, utterances

    rows = utterances()
    for split in sorted({r["split"] for r in rows}):
        exs = [Example(id=f"{r['index']:03d}", audio=_audio_path(r["index"]).read_bytes(), text_en=r["text_en"],
                       text_de=r["text_de"], text_zh=r["text_zh"]) for r in rows if r["split"] == split]
        write_parquet(exs, out / f"{split}.parquet")


# ------------------------------------------------------------------------------------------------ parts

def _agree_text(d: dict) -> str:
    return (f"identical sequences {d['sequences']:.0%}, first token {d['first_token']:.0%}, mean common prefix "
            f"{d['prefix']:.1%}, equal positions {d['positions']:.1%} ({d['clips']} clips)")


def part_decode(c: _Ctx) -> None:
    """Two bench_decode children: fp32 reference vs fast on a few clips (the PASS criterion: the same outputs),
    then the bf16 speeds (their agreement figures are information: bf16 near-ties of a random model flip)."""
    n32, t32 = (4, 8) if c.a.reduced else (8, 32)
    js = c.work / "bench_decode_fp32.json"
    js.unlink(missing_ok=True)  # a --work folder reused from an earlier call must not lend its figures
    st = _child(c, f"bench_decode fp32 agreement ({n32} clips x {t32} tokens: reference vs fast, TF32 off)",
                ["tools/bench_decode.py", "--arch", "full", "--device", c.a.device, "--dtype", "fp32", "--agreement-only",
                 "--segments", str(n32), "--batch-size", str(n32), "--max-new-tokens", str(t32), "--json", str(js),
                 *(["--reduced"] if c.a.reduced else [])])
    if st.ok and js.exists():
        b = json.loads(js.read_text())
        c.report.figures["decode fp32 agreement"] = b
        d = b["agreement_detail"]["fast_vs_reference"]
        st.note = "fast vs reference in fp32: " + _agree_text(d)
        if d["first_token"] < 1.0 or d["prefix"] < c.a.min_agreement:
            st.ok = False
            st.note = (f"fp32 fast vs reference: first token {d['first_token']} (needs 1.0), mean common prefix "
                       f"{d['prefix']} (needs >= {c.a.min_agreement}); " + st.note)
    elif st.ok:
        st.ok, st.note = False, "no JSON written"
    c.run.add(st)

    segs = c.a.segments or (32 if not c.a.reduced else 4)
    js = c.work / "bench_decode.json"
    js.unlink(missing_ok=True)
    cmd = ["tools/bench_decode.py", "--arch", "full", "--device", c.a.device, "--segments", str(segs),
           "--baseline-segments", str(min(8, segs)), "--json", str(js)]
    cmd += ["--reduced", "--max-new-tokens", "8", "--repeats", "1"] if c.a.reduced else ["--max-new-tokens", "64"]
    st = _child(c, f"bench_decode bf16 speeds ({segs} clips: generate() baseline, reference, fast)", cmd)
    if st.ok and js.exists():
        b = json.loads(js.read_text())
        c.report.figures["decode"] = b
        runs, roof = b["runs"], b.get("batch1_decode", {})
        st.note = (f"tok/s baseline {runs['baseline']['tokens_per_s']}, reference {runs['reference']['tokens_per_s']}, "
                   f"fast {runs['fast']['tokens_per_s']}; batch 1: fast "
                   f"{roof.get('fast_tokens_per_s')} tok/s = {roof.get('fast_fraction_of_limit')} of the "
                   f"{roof.get('limit_tokens_per_s')} tok/s roofline ({roof.get('copy_bandwidth_GBps')} GB/s copy); "
                   "bf16 fast vs reference (information, not a criterion): "
                   + _agree_text(b["agreement_detail"]["fast_vs_reference"]))
    elif st.ok:
        st.ok, st.note = False, "no JSON written"
    c.run.add(st)


def part_quantize(c: _Ctx) -> None:
    data = c.ensure_data()
    for method, precision, sets in (("nf4", "nf4-dq", []),
                                    ("ct", "ct4", ["--set", "bits=4", "--set", "scales=minmax"])):
        out = c.work / method
        st = c.run.cli(f"quantize {method} ({precision})", ["stage", "quantize", "--in", str(c.base), "--out", str(out),
                                                          *c.dev, "--set", f"method={method}", *sets],
                       model_out=out, predicted=c.predict(precision=precision))
        if st.ok:
            _torchsave(c, out, f"torch.save of {method} loaded on {c.a.device} vs planner", precision=precision)
            hyp = c.work / f"hyp-{method}.de"
            d = c.run.cli(f"reload {method} + decode fast (eval utterances, 32 tokens)",
                          ["decode", str(out), "--lang", "en-de", "--audio", f"{data}?split=eval", "--out", str(hyp),
                           "--max-new-tokens", "32", "--overwrite", *c.dev])  # --overwrite: a reused --work
            if d.ok:
                lines = hyp.read_text(encoding="utf-8").splitlines() if hyp.exists() else []
                d.note = f"{len(lines)} lines"
                if not lines:
                    d.ok, d.note = False, "no hypothesis lines"
                    c.report.write()
        shutil.rmtree(out, ignore_errors=True)


def part_torchsave(c: _Ctx) -> None:
    _torchsave(c, c.base, f"torch.save of the bf16 base loaded on {c.a.device} vs planner", precision="bf16")


def _torchsave(c: _Ctx, model: Path, name: str, *, precision: str) -> Step:
    """measure_streamed (a real torch.save of the model as the organizers load it) against the planner's figure
    (the figure for a model on one GPU: cuda:0 storages; on the CPU the CPU-located one)."""
    from iwslt_mc.planning.planner import Spec, load_base_config, predict

    pred = predict(Spec(precision=precision), load_base_config(c.base)).torch_save
    expected = None if pred is None else (pred.bytes if c.cuda else pred.bytes_cpu)
    js = c.work / "torchsave.json"
    js.unlink(missing_ok=True)
    st = _child(c, name, ["tools/gpu_check.py", "--child-torchsave", str(model), str(js), c.a.device])
    st.predicted = expected
    if st.ok:
        st.measured = json.loads(js.read_text())["bytes"]
        st.note = "planner: " + ("no figure (" + str(predict(Spec(precision=precision), load_base_config(c.base)).torch_save_note) + ")"
                                 if expected is None else "exact" if st.measured == expected else "differs")
    c.run.add(st)
    return st


def part_train(c: _Ctx) -> None:
    d = ["--data", str(c.ensure_data()), "--lang", "en-de", *c.dev]
    one = ["--set", "max_steps=1", "--set", "batch_size=1", "--set", "save_steps=1000", "--set", "gradient_checkpointing=true"]
    ql = c.work / "qlora"
    c.run.cli("finetune qlora, 1 step, adapter unmerged", ["stage", "finetune", "--in", str(c.base), "--out", str(ql),
                                                           *d, *one, "--set", "mode=qlora", "--set", "merge=false"])
    shutil.rmtree(ql, ignore_errors=True)
    kd = c.work / "kd"
    c.run.cli("kd, 1 step (student: the bf16 base, full; teacher: the base in NF4)",
              ["stage", "kd", "--in", str(c.base), "--out", str(kd), *d, *one, "--set", f"teacher={c.base}",
               "--set", "teacher_dtype=nf4"], model_out=kd, predicted=c.predict())
    shutil.rmtree(kd, ignore_errors=True)


def part_search(c: _Ctx) -> None:
    from iwslt_mc.planning.planner import base_dims, load_base_config

    L = base_dims(load_base_config(c.base))["llm_layers"]
    pl = c.work / "pruned"
    c.run.cli("prune-layers, 1 round of the iterative search (remove 1 of "
              f"{L}), 16 segments", ["stage", "prune-layers", "--in", str(c.base), "--out", str(pl),
                                     "--data", str(c.ensure_data()), "--lang", "en-de", *c.dev, "--set", "strategy=iterative",
                                     "--set", "remove=1", "--set", "heldout=16", "--set", "split=none",
                                     "--set", "max_new_tokens=32"], model_out=pl, predicted=c.predict(llm_layers=L - 1))
    shutil.rmtree(pl, ignore_errors=True)


PART_FUNCS = {"decode": part_decode, "quantize": part_quantize, "torchsave": part_torchsave, "train": part_train,
              "search": part_search}
assert tuple(PART_FUNCS) == PARTS


# Runs a tool of this repo as __main__ and writes its peak GPU memory to GPU_CHECK_PEAK, whatever its exit.
_WRAP = r"""
import json, os, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        json.dump({"gpu_peak": sys.modules["torch"].cuda.max_memory_allocated()}, open(os.environ["GPU_CHECK_PEAK"], "w"))
"""


def _child(c: _Ctx, name: str, script: list[str]) -> Step:
    """A Python child (a tool of this repo) with the log, wall time, peak RSS and peak GPU memory of a CLI step."""
    st = Step(name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", GPU_CHECK_PEAK=str(c.work / ".peak.json"),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    peak = c.work / ".peak.json"
    peak.unlink(missing_ok=True)
    with open(c.run.log, "a") as logf:
        logf.write(f"\n$ python {' '.join(script)}\n")
        logf.flush()
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-c", _WRAP, *script], cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
        st.peak_rss = _watch_peak_rss(proc)
    st.seconds = time.time() - t0
    st.ok = proc.returncode == 0
    if peak.exists():
        st.gpu_peak = json.loads(peak.read_text()).get("gpu_peak")
    if not st.ok:
        st.note = f"exit {proc.returncode} (see the steps log)"
    return st


def _child_torchsave(model: str, out: str, device: str) -> int:
    from iwslt_mc import __version__
    from iwslt_mc.sizing.torchsave import measure_streamed

    ts = measure_streamed(model, device=device, version=f"iwslt-mc-{__version__}")
    Path(out).write_text(json.dumps({"bytes": ts.bytes, "signature": ts.signature}))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child-torchsave"]:
        raise SystemExit(_child_torchsave(*sys.argv[2:5]))
    raise SystemExit(main())
