"""finetune: full fine-tuning, LoRA or QLoRA on speech-translation pairs, with the published settings.

Data: ``ctx.data`` (data specs, see :mod:`iwslt_mc.training.data`), split ``split`` (default ``train``: the
published split holds out 100 utterances of the merged dev+eval with the run's seed), target
language ``ctx.lang``. Every example is checked (texts, audio) before the model is loaded.

Modes:
- ``full``: every parameter trains (except components named in ``freeze``); the output is a plain
  model in the input checkpoint's dtype (``save_dtype``; bf16 for the real model, as published),
  whatever ``dtype`` it trained in.
- ``lora``: peft LoRA adapters (``target_modules``: ``all-linear`` = every linear layer but
  ``lm_head``, a regex matched against full module names, or a list of module-name suffixes).
- ``qlora``: the base is loaded in 4-bit (NF4, double quantization; compute in bf16 on a GPU that
  has it, float32 otherwise) and LoRA adapters train on top. An input that is already quantized is
  used as it is.

With ``merge: true`` (default) adapters are merged and the output is a plain model. For QLoRA the
4-bit base is dequantized first, so the output holds exactly the weights the adapters trained
against (dequantized NF4 + adapters), in the input's dtype; a following ``quantize`` stage makes it
4-bit again (peft's merge into 4-bit layers would round twice). With ``merge: false`` the output
holds the unmerged base (4-bit for QLoRA) plus ``adapter/`` (adapter_config.json,
adapter_model.safetensors); the ``merge`` stage merges it later.

Checkpoints go to ``ctx.work_dir/checkpoints`` every ``save_steps`` steps; rerunning the same stage
with the same work dir resumes from the newest one and reaches the same weights as an uninterrupted
run. ``train.log`` and ``loss_history.json`` are written next to the output model. Under
``accelerate launch`` every process trains (DDP, or FSDP when accelerate is configured for it) and
process 0 writes the output.
"""

from __future__ import annotations

import json

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..floor.modeldir import model_fingerprint, read_config
from ..training.common import FREEZABLE, count_params, freeze_components, load_dtype
from .base import Stage, StageContext, StageOptions

ADAPTER_DIR = "adapter"  # same name the merge stage looks for by default


@dataclass
class FinetuneOptions(StageOptions):
    mode: Literal["full", "lora", "qlora"] = field(default="full", metadata={
        "help": "full (all parameters), lora (peft adapters), qlora (adapters on a 4-bit NF4 base)"})
    epochs: float = field(default=3.0, metadata={"help": "passes over the data (published: 3)"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps; overrides epochs when set"})
    batch_size: int = field(default=4, metadata={"help": "examples per step per process (published: 4)"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate (published: 1e-5)"})
    scheduler: str = field(default="cosine", metadata={
        "help": "learning-rate schedule (transformers names: cosine, linear, constant, ...)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps (published: none)"})
    weight_decay: float = field(default=0.001, metadata={"help": "AdamW weight decay (published: 0.001)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    dtype: Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "dtype the model is loaded and trained in (auto = as saved; bf16 for the real model, as published)"})
    save_dtype: Literal["input", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = field(default="input", metadata={
        "help": "dtype of the output weights (input = the input checkpoint's, so training in float32 does not "
                "double a bf16 model's size)"})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={
        "help": "autocast on top of the loaded dtype (e.g. dtype float32 + bf16 keeps fp32 master weights)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (less memory, ~30% slower)"})
    freeze: list[str] = field(default_factory=list, metadata={
        "help": f"full mode: components that do not train ({', '.join(FREEZABLE)})"})
    split: str | None = field(default="train", metadata={
        "help": "data split ('train' = the published split without the 100 held-out utterances; none = all)"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N examples"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank (published: 64)"})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha (published: 128)"})
    rslora: bool = field(default=True, metadata={"help": "rank-stabilized LoRA scaling alpha/sqrt(r) (published: on)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (published: 0)"})
    target_modules: str | list[str] = field(default="all-linear", metadata={
        "help": "LoRA targets: all-linear (every linear layer but lm_head), a regex over full module names, "
                "or a list of module-name suffixes (q_proj, v_proj, ...)"})
    exclude_modules: list[str] | None = field(default=None, metadata={
        "help": "LoRA: module-name suffixes (or one regex) never adapted"})
    quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "qlora: 4-bit type (published: nf4)"})
    double_quant: bool = field(default=True, metadata={"help": "qlora: double quantization (published: on)"})
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(default="auto", metadata={
        "help": "qlora: matmul dtype (auto = bf16 on a GPU that supports it, else fp32)"})
    quant_skip: list[str] = field(default_factory=lambda: ["lm_head"], metadata={
        "help": "qlora: modules kept unquantized (names or dotted suffixes, or re:REGEX)"})
    merge: bool = field(default=True, metadata={
        "help": "lora/qlora: merge the adapters into the base (a plain model); false keeps them in adapter/"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N steps (for resume)"})
    save_total_limit: int = field(default=1, metadata={
        "help": "checkpoints kept (each holds weights + optimizer state: ~4x the model size for full fine-tuning)"})
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        s = "stage finetune"
        for k in ("batch_size", "grad_accum", "lora_r", "lora_alpha", "save_steps", "save_total_limit", "logging_steps"):
            if getattr(self, k) < 1:
                raise UserError(f"{s}: option {k!r} must be at least 1")
        for k in ("max_steps", "limit"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise UserError(f"{s}: option {k!r} must be at least 1")
        if self.epochs <= 0:
            raise UserError(f"{s}: option 'epochs' must be positive")
        if self.lr <= 0:
            raise UserError(f"{s}: option 'lr' must be positive")
        for k in ("warmup_steps",):
            if getattr(self, k) < 0:
                raise UserError(f"{s}: option {k!r} must be at least 0")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"{s}: option 'lora_dropout' must be in [0, 1)")
        bad = [c for c in self.freeze if c not in FREEZABLE]
        if bad:
            raise UserError(f"{s}: cannot freeze {bad[0]!r} (components: {', '.join(FREEZABLE)})")
        if self.freeze and self.mode != "full":
            raise UserError(f"{s}: freeze applies to mode full (LoRA trains only its adapters)")
        from .base import LR_SCHEDULERS

        if self.scheduler not in LR_SCHEDULERS:
            raise UserError(f"{s}: unknown scheduler {self.scheduler!r} (e.g. cosine, linear, constant)")
        if isinstance(self.target_modules, str) and self.target_modules.strip().startswith("["):
            import yaml  # "[q_proj, v_proj]" is a list of names, not a regex character class

            self.target_modules = [str(x) for x in yaml.safe_load(self.target_modules)]
        if isinstance(self.target_modules, str):
            import re

            if self.target_modules != "all-linear":
                try:
                    re.compile(self.target_modules)
                except re.error as e:
                    raise UserError(f"{s}: target_modules {self.target_modules!r}: invalid regex ({e})") from None
        elif not self.target_modules:
            raise UserError(f"{s}: target_modules is empty")

    def smoke(self) -> "FinetuneOptions":
        return dataclasses.replace(self, max_steps=min(self.max_steps or 2, 2), limit=min(self.limit or 4, 4),
                                   batch_size=min(self.batch_size, 2), save_steps=max(self.save_steps, 1),
                                   lora_r=min(self.lora_r, 8), lora_alpha=min(self.lora_alpha, 16),
                                   warmup_steps=0)  # a 2-step run inside a 50-step warm-up would not train

    def techniques(self) -> list[str]:
        what = {"full": "full fine-tuning", "lora": "LoRA fine-tuning", "qlora": "QLoRA fine-tuning"}[self.mode]
        parts = [f"lr {self.lr:g}", f"batch {self.batch_size}" + (f"x{self.grad_accum}" if self.grad_accum > 1 else ""),
                 self.scheduler, f"{self.max_steps} steps" if self.max_steps else f"{self.epochs:g} epochs"]
        if self.mode != "full":
            lora = f"r {self.lora_r}, alpha {self.lora_alpha}" + (", rsLoRA" if self.rslora else "")
            if self.lora_dropout:
                lora += f", dropout {self.lora_dropout:g}"
            lora += ", all linear layers" if self.target_modules == "all-linear" else f", targets {self.target_modules}"
            parts.insert(0, lora)
        if self.mode == "qlora":
            parts.insert(0, f"4-bit {self.quant_type.upper()}" + (" with double quantization" if self.double_quant else ""))
        if self.freeze:
            parts.append(f"frozen: {', '.join(self.freeze)}")
        out = [f"{what} ({'; '.join(parts)})"]
        if self.mode != "full" and self.merge:
            out.append("LoRA adapters merged into the base model")
        return out


def qlora_compute_dtype(name: str, device: str) -> str:
    """bf16 where the GPU supports it; fp32 on CPU (bf16 matmuls there are slow without AMX: 3-4x here)."""
    import torch

    if name != "auto":
        return name
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def lora_config(o: FinetuneOptions):
    from peft import LoraConfig

    return LoraConfig(r=o.lora_r, lora_alpha=o.lora_alpha, use_rslora=o.rslora, lora_dropout=o.lora_dropout,
                      target_modules=o.target_modules, exclude_modules=o.exclude_modules, bias="none")


class Finetune(Stage):
    name = "finetune"
    Options = FinetuneOptions
    techniques = ["fine-tuning"]

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> dict | None:
        from ..families import family_of_model_type

        o = self.options
        fam = family_of_model_type(cfg.get("model_type"))
        missing = [c for c in o.freeze if fam is not None and c not in fam.components]
        if missing:
            raise UserError(f"stage finetune: cannot freeze {missing[0]!r}: {fam.label} models have no such component "
                            f"({where})")
        if cfg.get("quantization_config") and o.mode == "full":
            raise UserError(f"stage finetune: {where} is quantized; full fine-tuning needs an unquantized model "
                            "(use mode lora or qlora)")
        return None

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        from ..families import family_for
        from ..floor.languages import check_lang

        o = self.options
        check_lang(ctx.lang)
        fam = family_for(in_dir)
        missing = [c for c in o.freeze if c not in fam.components]
        if missing:
            raise UserError(f"stage finetune: cannot freeze {missing[0]!r}: {fam.label} models have no such component "
                            f"({in_dir})")
        if not ctx.data:
            raise UserError("stage finetune: no training data (give --data)")
        cfg = read_config(in_dir)
        quantized = bool(cfg.get("quantization_config"))
        if quantized and o.mode == "full":
            raise UserError(f"stage finetune: {in_dir} is quantized; full fine-tuning needs an unquantized model "
                            "(use mode lora or qlora)")
        if o.mode == "qlora" or quantized:
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise UserError("stage finetune: qlora needs bitsandbytes (pip install bitsandbytes)") from None
        from ..families import max_audio_seconds

        self._max_seconds = max_audio_seconds(in_dir)  # training cuts clips there (the family's longest piece)
        self._examples = self._load_data(ctx)

    def _load_data(self, ctx: StageContext):
        from ..training.data import load_examples, validate_examples

        o = self.options
        exs = load_examples(ctx.data, o.split, limit=o.limit, seed=ctx.seed, lang=ctx.lang)
        if len(exs) > 2000:
            ctx.log(f"finetune: checking {len(exs):,} examples (texts, audio headers)")
        m = getattr(self, "_max_seconds", 30.0)
        rep = validate_examples(exs, ctx.lang, max_seconds=m)
        hours = rep.seconds / 3600
        msg = f"finetune: {rep.examples} examples, " + (f"{hours:.2f} h" if hours >= 1 else f"{rep.seconds / 60:.1f} min") + " of audio"
        if rep.truncated:
            msg += f"; {rep.truncated} clips over {m:g} s will be truncated to {m:g} s"
        ctx.log(msg)
        return exs

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from .. import modelio
        from ..training import training
        from ..training.data import describe_data

        o = self.options
        examples = getattr(self, "_examples", None) or self._load_data(ctx)
        if not training.is_main_process():
            ctx = dataclasses.replace(ctx, log=lambda msg: None)  # one copy of each message, from process 0
        device = ctx.resolved_device()
        processor = modelio.load_processor(in_dir)
        model, quantized = self._load_model(in_dir, device, ctx)
        trainable, total = count_params(model)
        ctx.log(f"finetune: {o.mode}, {trainable:,} of {total:,} parameters train ({100 * trainable / max(total, 1):.2f}%)")
        settings = training.TrainSettings(
            epochs=o.epochs, max_steps=o.max_steps, batch_size=o.batch_size, grad_accum=o.grad_accum, lr=o.lr,
            scheduler=o.scheduler, warmup_steps=o.warmup_steps, weight_decay=o.weight_decay,
            max_grad_norm=o.max_grad_norm, mixed_precision=o.mixed_precision,
            gradient_checkpointing=o.gradient_checkpointing, save_steps=o.save_steps,
            save_total_limit=o.save_total_limit, logging_steps=o.logging_steps, seed=ctx.seed,
            device="cpu" if device == "cpu" else None, progress=o.progress)
        work_dir = Path(ctx.work_dir) if ctx.work_dir else out_dir.with_name(out_dir.name + ".work")

        ident = {"input": model_fingerprint(in_dir), "options": {
            k: v for k, v in dataclasses.asdict(o).items() if k not in ("save_steps", "save_total_limit", "logging_steps", "progress")}}
        result = training.train(model, processor, examples, ctx.lang, settings, work_dir=work_dir, log=ctx.log,
                                identity=json.loads(json.dumps(ident, default=str)))
        ctx.log(f"finetune: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}"
                if result.history else f"finetune: {result.steps} steps")
        trainer = result.trainer
        if training.is_main_process():
            self._save(model, processor, trainer, in_dir, out_dir, quantized)
            for name in (training.LOG_NAME, training.HISTORY_NAME):
                if (work_dir / name).exists():
                    shutil.copy2(work_dir / name, out_dir / name)
        elif o.mode == "full" and getattr(trainer, "is_fsdp_enabled", False):
            trainer.save_model(str(out_dir))  # FSDP gathers the full state dict collectively
        trainer.accelerator.wait_for_everyone()
        return {
            "techniques": o.techniques(),
            "data": describe_data(ctx.data, o.split),
            "train": {"examples": len(examples), "steps": result.steps, "epochs": round(result.epochs, 4),
                      "first_loss": result.first_loss, "final_loss": result.final_loss,
                      "seconds": result.seconds, "processes": result.world_size,
                      "trainable_params": trainable, "resumed_from": result.resumed_from},
        }

    def _load_model(self, in_dir: Path, device: str, ctx: StageContext):
        from .. import modelio
        from ..training.common import DTYPES, bitsandbytes_config

        o = self.options
        quantized = bool(read_config(in_dir).get("quantization_config"))
        # bitsandbytes layers cannot move after loading: place each process's copy on its own GPU
        gpu = int(device.split(":")[1]) if device.startswith("cuda:") else int(os.environ.get("LOCAL_RANK", "0"))
        dev = {"": gpu} if device.startswith("cuda") else device
        if o.mode == "qlora" and not quantized:
            compute = qlora_compute_dtype(o.compute_dtype, device)
            bnb = bitsandbytes_config(o.quant_type, double_quant=o.double_quant, compute_dtype=compute,
                                      skip=list(o.quant_skip))
            model = modelio.load_model(in_dir, dtype=DTYPES[compute], device=dev, quantization_config=bnb)
            quantized = True
        elif quantized:  # already 4-bit/8-bit (a quantize stage ran before): LoRA on top of it as it is
            model = modelio.load_model(in_dir, device=dev)
        else:
            model = modelio.load_model(in_dir, dtype=load_dtype(o.dtype))
        if o.mode == "full":
            if o.freeze:
                n = freeze_components(model, o.freeze)
                ctx.log(f"finetune: froze {', '.join(o.freeze)} ({n:,} parameters)")
        else:
            from peft import get_peft_model
            from transformers import set_seed

            set_seed(ctx.seed)  # LoRA A matrices are drawn from the global RNG: same seed, same start
            try:
                model = get_peft_model(model, lora_config(o))
            except ValueError as e:
                raise UserError(f"stage finetune: LoRA target_modules {o.target_modules!r}: {str(e).splitlines()[0]}") from None
            _refuse_tied_lm_head_adapter(model, in_dir)
        return model, quantized

    def _save(self, model, processor, trainer, in_dir: Path, out_dir: Path, quantized: bool) -> None:
        from .. import modelio
        from ..modelio import drop_irreversible_conversions
        from ..training.common import checkpoint_dtype, merge_adapters, repacked_layers

        o = self.options
        out_dtype = checkpoint_dtype(in_dir) if o.save_dtype == "input" else load_dtype(o.save_dtype)
        if o.mode == "full":
            if getattr(trainer, "is_fsdp_enabled", False):  # FSDP gathers and writes the training dtype: recast
                trainer.save_model(str(out_dir))
                (out_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: never shipped
                processor.save_pretrained(str(out_dir))
                if out_dtype is not None and checkpoint_dtype(out_dir) not in (None, out_dtype):
                    modelio.recast_saved(out_dir, out_dtype, processor)
            else:
                modelio.save_model(trainer.accelerator.unwrap_model(model), processor, out_dir, dtype=out_dtype)
            return
        model = trainer.accelerator.unwrap_model(model)
        if quantized and repacked_layers(model):
            raise UserError("stage finetune: 4-bit layers were repacked by CPU inference; saving would corrupt them")
        if o.merge:
            # a 4-bit base is dequantized and stored in the input's dtype: a plain model (quantize it after)
            base = merge_adapters(model, out_dtype)
        else:
            model.save_pretrained(str(out_dir / ADAPTER_DIR), safe_serialization=True)
            base = model.unload()  # the base without adapters, as it was loaded
            if not quantized and out_dtype is not None:
                base = base.to(out_dtype)
        base.config.use_cache = True
        drop_irreversible_conversions(base)
        modelio.save_model(base, processor, out_dir)


def _refuse_tied_lm_head_adapter(peft_model, in_dir: Path) -> None:
    """An adapter on an ``lm_head`` tied to the token embeddings (Gemma 4) would, once merged, change the
    input embeddings too (one shared tensor): a model other than the one trained. Refused."""
    base = peft_model.get_base_model()
    head, emb = base.get_output_embeddings(), base.get_input_embeddings()
    if head is None or not hasattr(head, "lora_A"):
        return
    if getattr(head, "base_layer", head).weight is getattr(emb, "weight", None):
        raise UserError(f"stage finetune: LoRA target_modules {peft_model.peft_config['default'].target_modules!r} "
                        f"adapt lm_head, which {in_dir} ties to the token embeddings (merging would change both); "
                        "leave lm_head out")


