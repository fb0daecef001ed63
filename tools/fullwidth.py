"""Shared engine of tools/check_fullwidth.py (CPU) and tools/gpu_check.py (one GPU).

Builds a Qwen2-Audio with the real widths (hidden 4096, FFN 11008, audio 1280/5120, 32 heads, 156,032
padded vocabulary), the real tokenizer (iwslt_mc.families.qwen2_audio.vocab) and random bf16 weights, at a chosen
depth, then runs every stage and the decoders through the CLI, one subprocess per step, exactly as a
user types them. Per step: wall time, peak RSS of the step's process (os.wait4), peak GPU memory
(torch.cuda.max_memory_allocated, reported by the child), and for steps that write a model its
measured size next to the planner's prediction. Any failing step makes the run exit non-zero.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

REAL_AUDIO = dict(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                  d_model=1280, max_source_positions=1500, activation_function="gelu")
REAL_TEXT = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=156032, rope_theta=10000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=8192, tie_word_embeddings=False)
# tools/gpu_check.py --reduced (its CPU rehearsal): real vocabulary, small widths that keep bitsandbytes' CPU
# path (input width % 64, output width % 32) and compressed-tensors' groups of 128 valid
REDUCED_TEXT_WIDTHS = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, intermediate_size=768)
REDUCED_AUDIO_WIDTHS = dict(d_model=128, encoder_attention_heads=4, encoder_ffn_dim=512)

# The child wrapper: runs the CLI in-process and reports peak GPU memory to a JSON file.
_CHILD = r"""
import json, sys, runpy
out = sys.argv[1]; sys.argv = ["iwslt-mc"] + sys.argv[2:]
rc = 0
try:
    from iwslt_mc.cli import main
    rc = main(sys.argv[1:]) or 0
except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else 1
finally:
    peak = None
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated()
    json.dump({"gpu_peak": peak}, open(out, "w"))
sys.exit(rc)
"""


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    peak_rss: int = 0
    gpu_peak: int | None = None
    predicted: int | None = None
    measured: int | None = None
    ok: bool = True
    note: str = ""

    def row(self) -> list[str]:
        diff = ""
        if self.predicted is not None and self.measured is not None:
            diff = f"{self.measured - self.predicted:+,}"
        return [self.name, "ok" if self.ok else "FAILED", f"{self.seconds:.1f}", f"{self.peak_rss / 2**30:.2f}",
                "" if self.gpu_peak is None else f"{self.gpu_peak / 2**30:.2f}",
                "" if self.predicted is None else f"{self.predicted:,}",
                "" if self.measured is None else f"{self.measured:,}", diff, self.note]


@dataclass
class Run:
    work: Path
    device: str
    threads: int | None = None
    steps: list[Step] = field(default_factory=list)
    log: Path | None = None

    def cli(self, name: str, args: list[str], *, model_out: Path | None = None, predicted: int | None = None,
            allow_fail: bool = False, script: list[str] | None = None) -> Step:
        """Run ``iwslt-mc ARGS`` in a child process; record time, peak RSS, GPU peak, sizes."""
        st = Step(name, predicted=predicted)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        rep = self.work / f".{len(self.steps):02d}.json"
        cmd = ([sys.executable, str(Path(__file__).resolve()), *script] if script
               else [sys.executable, "-c", _CHILD, str(rep), *args])
        if script:
            env["FULLWIDTH_PEAK"] = str(rep)  # the script's peak GPU memory, as _CHILD reports it
        with open(self.log, "a") as logf:
            logf.write(f"\n$ {'fullwidth.py ' + shlex.join(script) if script else 'iwslt-mc ' + shlex.join(args)}\n")
            logf.flush()
            t0 = time.time()
            proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
            st.peak_rss = _watch_peak_rss(proc)
        st.seconds = time.time() - t0
        if rep.exists():
            st.gpu_peak = json.loads(rep.read_text()).get("gpu_peak")
        st.ok = proc.returncode == 0
        if not st.ok:
            st.note = f"exit {proc.returncode} (see {self.log})"
        elif model_out is not None:
            from iwslt_mc.sizing.sizer import measure

            st.measured = measure(model_out).bytes
        self.steps.append(st)
        print(f"  {name}: {'ok' if st.ok else 'FAILED'} in {st.seconds:.1f} s", flush=True)
        if not st.ok and not allow_fail:
            st.note = st.note or "failed"
        return st

    def build(self, out: Path, *, llm_layers: int, audio_layers: int, predicted_from_base: bool = True,
              widths: str = "real") -> Step:
        """build_fullwidth in a child process (its memory is then measured like every other step's), the random
        values drawn on this run's device (a GPU draws the 8.4 B values in well under a second; one CPU generator
        took ~264 s of the H200 machine's 288 s build). ``widths="reduced"``: tools/gpu_check.py's small widths
        (its CPU rehearsal)."""
        st = self.cli(f"build random bf16 model ({llm_layers} LLM + {audio_layers} audio layers, "
                      f"{'reduced widths, ' if widths == 'reduced' else ''}real tokenizer, drawn on {self.device})",
                      [], model_out=out, script=["build", str(out), str(llm_layers), str(audio_layers),
                                                 *([widths] if widths != "real" else []), "--device", self.device])
        if st.ok and predicted_from_base:
            st.predicted = predict(out)
        return st

    def add(self, st: Step) -> None:
        self.steps.append(st)
        print(f"  {st.name}: {'ok' if st.ok else 'FAILED'} in {st.seconds:.1f} s", flush=True)

    def table(self) -> str:
        head = ["step", "status", "wall s", "peak RSS GiB", "peak GPU GiB", "predicted bytes", "measured bytes",
                "measured - predicted", "note"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(s.row()) + " |" for s in self.steps]
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


def _watch_peak_rss(proc) -> int:
    """Wait for ``proc``; return the peak resident set size of its own address space (VmHWM), polled."""
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.2)
    return peak


def build_fullwidth(out: Path, *, llm_layers: int, audio_layers: int, device: str = "cpu", seed: int = 0,
                    text_widths: dict | None = None, audio_widths: dict | None = None) -> Step:
    """A random bf16 Qwen2-Audio at the real widths and vocabulary with the given depth, saved to ``out``
    with the real tokenizer and the kit's processor settings. Built on the meta device and filled in
    place on ``device`` (one copy in memory; on a GPU the random values are drawn there, then saved)."""
    import resource

    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from bench_decode import materialize_random
    from iwslt_mc.families.qwen2_audio.kit import build_processor
    from iwslt_mc.families.qwen2_audio.vocab import SPECIAL_TOKEN_IDS

    t0 = time.time()
    processor = build_processor("real")
    ids = SPECIAL_TOKEN_IDS
    text = dict(REAL_TEXT, **(text_widths or {}), num_hidden_layers=llm_layers)
    rope = text.pop("rope_theta")
    text.update(model_type="qwen2", bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], rope_parameters={"rope_type": "default", "rope_theta": rope})
    config = Qwen2AudioConfig(audio_config=dict(REAL_AUDIO, **(audio_widths or {}), encoder_layers=audio_layers, model_type="qwen2_audio_encoder"),
                              text_config=text, audio_token_index=ids["<|AUDIO|>"], dtype="bfloat16")
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    model = model.to(dtype=torch.bfloat16)
    materialize_random(model, device, seed=seed)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False, num_beams=1, repetition_penalty=1.0, max_new_tokens=16)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    st = Step(f"build random bf16 model ({llm_layers} LLM + {audio_layers} audio layers)")
    st.seconds = time.time() - t0
    st.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    from iwslt_mc.sizing.sizer import measure

    st.measured = measure(out).bytes
    return st


def predict(base: Path, **kw) -> int:
    """The planner's bytes for ``base`` changed by ``kw`` (llm_layers, ffn_dim, vocab, precision, ...)."""
    from iwslt_mc.planning.planner import Spec, load_base_config, predict as plan

    return plan(Spec(**kw), load_base_config(base)).bytes


def write_report(run: Run, out_md: Path | None, title: str, meta: dict) -> None:
    text = f"# {title}\n\n" + "".join(f"- {k}: {v}\n" for k, v in meta.items()) + "\n" + run.table() + "\n"
    print(text)
    if out_md:
        out_md.write_text(text, encoding="utf-8")
        out_md.with_suffix(".json").write_text(json.dumps(
            {"meta": meta, "steps": [s.__dict__ for s in run.steps]}, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":  # the build step, run in its own process by Run.build
    if sys.argv[1:2] == ["build"]:  # build OUT LLM_LAYERS AUDIO_LAYERS [reduced] [--device DEV]
        _, _, out, llm, audio, *rest = sys.argv
        device = "cpu"
        if "--device" in rest:
            i = rest.index("--device")
            device = rest[i + 1]
            del rest[i:i + 2]
        kw = {}
        if rest == ["reduced"]:
            kw = dict(text_widths=REDUCED_TEXT_WIDTHS, audio_widths=REDUCED_AUDIO_WIDTHS)
        elif rest:
            raise SystemExit(f"fullwidth.py build: unknown arguments {rest}")
        try:
            build_fullwidth(Path(out), llm_layers=int(llm), audio_layers=int(audio), device=device, **kw)
        finally:
            if os.environ.get("FULLWIDTH_PEAK") and "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
                Path(os.environ["FULLWIDTH_PEAK"]).write_text(
                    json.dumps({"gpu_peak": sys.modules["torch"].cuda.max_memory_allocated()}))
