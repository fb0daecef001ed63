"""merge: fold LoRA adapters into their base model, so the result is a plain model directory.

The input is the base model directory; the adapter is ``adapter`` (a directory with
``adapter_config.json`` and ``adapter_model.safetensors``), by default ``INPUT/adapter`` as written
by ``finetune`` with ``merge: false``. peft's ``merge_and_unload`` adds ``B @ A * scaling`` to each
adapted weight. A 4-bit base is dequantized first (the weights the adapters were trained against),
so the output is always a plain model, in the dtype the base was saved with; a following quantize
stage makes it 4-bit again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError, UserError
from ..floor.modeldir import read_config
from ..modelio import drop_irreversible_conversions
from ..training.common import checkpoint_dtype, merge_adapters
from .base import Stage, StageContext, StageOptions

ADAPTER_DIR = "adapter"


@dataclass
class MergeOptions(StageOptions):
    adapter: str | None = field(default=None, metadata={
        "help": "adapter directory (adapter_config.json + adapter_model.safetensors); default: INPUT/adapter"})


def adapter_dir(in_dir: Path, option: str | None) -> Path:
    d = Path(option).expanduser() if option else Path(in_dir) / ADAPTER_DIR
    if not d.is_dir():
        raise InputFileError(d, "adapter directory not found (give the adapter with --set adapter=DIR)")
    if not (d / "adapter_config.json").exists():
        raise InputFileError(d, "no adapter_config.json: not a peft adapter directory")
    if not (d / "adapter_model.safetensors").exists():
        pickles = [f.name for f in d.glob("*.bin")]
        problem = (f"adapter weights are a pickle ({pickles[0]}); only safetensors are loaded" if pickles
                   else "no adapter_model.safetensors")
        raise InputFileError(d, problem)
    return d


class Merge(Stage):
    name = "merge"
    Options = MergeOptions
    techniques = ["LoRA adapters merged into the base model"]

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        read_config(in_dir)
        d = adapter_dir(in_dir, self.options.adapter)
        try:
            import json

            cfg = json.loads((d / "adapter_config.json").read_text())
        except ValueError as e:
            raise InputFileError(d / "adapter_config.json", f"invalid JSON ({e})") from None
        if cfg.get("peft_type", "LORA") != "LORA":
            raise UserError(f"{d}: a {cfg.get('peft_type')} adapter; merge handles LoRA adapters")

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from peft import PeftModel

        from .. import modelio
        from ..training.common import repacked_layers

        d = adapter_dir(in_dir, self.options.adapter)
        device = ctx.resolved_device()
        quantized = bool(read_config(in_dir).get("quantization_config"))
        base = modelio.load_model(in_dir, device=device if quantized else None)
        processor = modelio.load_processor(in_dir)
        model = PeftModel.from_pretrained(base, str(d), is_trainable=False)
        if quantized and repacked_layers(base):
            raise UserError("stage merge: 4-bit layers were repacked by CPU inference; dequantizing them is lossy")
        merged = merge_adapters(model, checkpoint_dtype(in_dir) if quantized else None)
        drop_irreversible_conversions(merged)
        modelio.save_model(merged, processor, out_dir)
        cfg = model.peft_config["default"] if hasattr(model, "peft_config") else None
        info = {"adapter": str(d)}
        if cfg is not None:
            info.update(r=cfg.r, alpha=cfg.lora_alpha, rslora=bool(cfg.use_rslora))
        return {"techniques": list(self.techniques), "merged": info}
