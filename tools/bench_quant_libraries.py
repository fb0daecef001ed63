"""Which quantization libraries quantize the kit through transformers, save safetensors and reload with
``from_pretrained`` alone: the measurement behind ``quantize method ct`` (compressed-tensors).

The candidates are not project dependencies: install them beside the project's torch/transformers into a
throwaway folder and put it first on the path, e.g.

    pip install --target /tmp/qlibs --no-deps hqq==0.2.8.post1 torchao==0.18.0 optimum-quanto==0.2.7
    PYTHONPATH=/tmp/qlibs:$PWD python tools/bench_quant_libraries.py --kit /tmp/kit [--markdown]

Every Linear layer is quantized (lm_head too; the token embeddings only where a row says so), groups of
16 weights where the format has groups. For each library and bit width: does it quantize on load, does ``save_pretrained`` write safetensors, do
``from_pretrained`` alone and a forward work, are the reloaded logits those of the model before saving,
and how many bytes (the kit's float32 model is the reference). compressed-tensors (``quantize method ct``)
is measured the same way through :mod:`iwslt_mc.quantization.formats`. Each case runs in its own process (a
failing library can leave transformers patched).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {
    "compressed-tensors int4 g16": ("ct", {"bits": 4}),
    "compressed-tensors int2 g16": ("ct", {"bits": 2}),
    "compressed-tensors int2 g16, embeddings too": ("ct", {"bits": 2, "quantize_embeddings": True}),
    "hqq 4-bit g16": ("hqq", {"nbits": 4}),
    "hqq 2-bit g16": ("hqq", {"nbits": 2}),
    "torchao int4 weight-only g16 (IntxWeightOnly)": ("torchao", {"bits": 4}),
    "torchao int2 weight-only g16 (IntxWeightOnly)": ("torchao", {"bits": 2}),
    "torchao int4 packed (Int4WeightOnly)": ("torchao-int4", {}),
    "optimum-quanto int4": ("quanto", {"weights": "int4"}),
    "optimum-quanto int2": ("quanto", {"weights": "int2"}),
}


def _one(kind: str, opts: dict, model_dir: str, out: str) -> dict:
    import torch
    from transformers import Qwen2AudioForConditionalGeneration as Q

    from iwslt_mc.sizing import sizer

    rec = {"version": None, "quantized": False, "saved": False, "reloaded": False, "same_logits": None, "bytes": None}
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    step = "quantize"
    try:
        if kind == "ct":
            import compressed_tensors

            from iwslt_mc.quantization import formats as quant_formats
            from iwslt_mc.stages.quantize import QuantizeOptions

            rec["version"] = compressed_tensors.__version__
            o = QuantizeOptions.from_dict({"method": "ct", "group_size": 16, "skip": [], **opts})
            model, _ = quant_formats.ct_quantize(model_dir, o, log=lambda *a: None)
        else:
            if kind == "hqq":
                import hqq
                from transformers import HqqConfig

                rec["version"] = getattr(hqq, "__version__", "?")
                cfg = HqqConfig(group_size=16, **opts)
            elif kind.startswith("torchao"):
                import torchao
                from transformers import TorchAoConfig

                rec["version"] = torchao.__version__
                if kind == "torchao":
                    from torchao.quantization import IntxWeightOnlyConfig
                    from torchao.quantization.granularity import PerGroup

                    cfg = TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{opts['bits']}"),
                                                             granularity=PerGroup(16)))
                else:
                    from torchao.quantization import Int4WeightOnlyConfig

                    cfg = TorchAoConfig(Int4WeightOnlyConfig(group_size=16))
            else:
                from importlib.metadata import version

                from transformers import QuantoConfig

                rec["version"] = version("optimum-quanto")
                cfg = QuantoConfig(**opts)
            model = Q.from_pretrained(model_dir, quantization_config=cfg, dtype=torch.float32, device_map="cpu")
        rec["quantized"] = True
        step = "forward"
        with torch.no_grad():  # not inference_mode: quanto cannot run under it
            before = model(input_ids=ids).logits
        step = "save"
        if kind == "ct":
            quant_formats.ct_save(model, None, out)
        else:
            model.save_pretrained(out)
        if not list(Path(out).glob("*.safetensors")):
            raise RuntimeError("no safetensors file written")
        rec["saved"] = True
        rec["bytes"] = sizer.measure(out).bytes
        step = "reload"
        again = Q.from_pretrained(out, device_map="cpu")
        with torch.no_grad():
            after = again(input_ids=ids).logits
        rec["reloaded"] = True
        rec["same_logits"] = bool(torch.equal(before, after))
        rec["max_diff"] = float((before - after).abs().max())
    except Exception as e:  # the point is to record how each library fails
        rec["error"] = f"{step}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kit", required=True, help="a demo kit (iwslt-mc kit DIR)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--report", type=Path, help="write the markdown report here (e.g. docs/bench/quant_libraries.md)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    model_dir = str(Path(a.kit) / "model")
    if a.case:
        kind, opts = CASES[a.case]
        print(json.dumps(_one(kind, opts, model_dir, a.out)))
        return 0
    from iwslt_mc.sizing import sizer

    ref = sizer.measure(model_dir).bytes
    rows = []
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([sys.executable, __file__, "--kit", a.kit, "--case", name, "--out", str(Path(tmp) / "q")],
                               capture_output=True, text=True, timeout=900)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        rec = json.loads(lines[-1]) if lines else {"error": f"process failed: {r.stderr.strip().splitlines()[-1:]}"}
        rows.append((name, rec))
    if not (a.markdown or a.report):
        print(json.dumps({"reference_bytes": ref, "cases": dict(rows)}, indent=2))
        return 0
    import torch
    import transformers

    yn = {True: "yes", False: "no", None: "-"}
    lines = [f"| library, format | version | quantized on load | safetensors saved | from_pretrained alone | same logits "
             f"| bytes (float32 kit: {ref:,}) | failure |", "| --- | --- | --- | --- | --- | --- | ---: | --- |"]
    for name, r in rows:
        b = f"{r['bytes']:,}" if r.get("bytes") else "-"
        lines.append(f"| {name} | {r.get('version') or '-'} | {yn[r.get('quantized')]} | {yn[r.get('saved')]} | "
                     f"{yn[r.get('reloaded')]} | {yn[r.get('same_logits')]} | {b} | {r.get('error', '')} |")
    if a.markdown:
        print("\n".join(lines))
    if a.report:
        from iwslt_mc.fsutil import atomic_write_text

        head = ["# Quantization libraries on the kit", "",
                "Which maintained libraries quantize the demo kit (`iwslt-mc kit`, float32) through transformers, save "
                "safetensors and reload with `from_pretrained` alone, with the logits of the model before saving. Made by "
                f"`PYTHONPATH=/tmp/qlibs:$PWD python tools/bench_quant_libraries.py --kit KIT --report {a.report}` with "
                f"torch {torch.__version__.split('+')[0]}, transformers {transformers.__version__}, the libraries installed "
                "with `pip install --target /tmp/qlibs --no-deps` (not project dependencies). Every Linear layer is "
                "quantized, lm_head included; groups of 16 weights. The bytes are the checkpoint's safetensors.", ""]
        tail = ["", "Reading (of the 2026-11-28 run): compressed-tensors is the only candidate that stores sub-4-bit weights packed (2 bits: "
                "smaller than 4) and quantizes the token embeddings; torchao's CPU format stores one int8 per weight at "
                "any width (int2 = int4 bytes) and its packed int4 layout does not load on a CPU; hqq cannot quantize "
                "on load in this transformers; optimum-quanto models are not serializable through transformers.", ""]
        atomic_write_text(a.report, "\n".join(head + lines + tail))
        print(f"wrote {a.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
