"""Supervised speech-translation training (Qwen2-Audio, Gemma 4) with the HF ``Trainer``.

The ``Trainer`` gives what long runs need without a hand-written loop: checkpoints and exact resume
(model, optimizer, scheduler, RNG states and the position in the epoch), gradient accumulation,
the cosine schedule, and multi-process training through accelerate (DDP, FSDP) when started with
``accelerate launch``. This module adds the data side (the model family's prompt, with the
reference translation as the assistant turn, labels masked up to and including the assistant
header) and the progress side (a bar with loss, step rate and ETA; ``train.log`` and
``loss_history.json``).

    examples = data.load_examples("kit/data", "train", lang="en-de")
    result = train(model, processor, examples, "en-de", TrainSettings(max_steps=300, lr=1e-3),
                   work_dir=Path("run.work"))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import MAX_SECONDS, Example, target_text
from ..distributed import is_main_process, world_size  # noqa: F401  (stages call training.is_main_process)
from ..errors import UserError

IGNORE_INDEX = -100
_CHECKPOINTING_ARG = "gradient_checkpointing"
LOG_NAME = "train.log"
HISTORY_NAME = "loss_history.json"
CHECKPOINTS = "checkpoints"


# ---------------------------------------------------------------- encoding

def encode_example(processor, wave: np.ndarray, target: str, lang: str) -> dict:
    """One training example: prompt ids (audio placeholders expanded) + target ids + the end-of-turn token.

    The prompt is the model family's (Qwen2-Audio: the published chat prompt; Gemma 4: the organizers'
    prompt with ``enable_thinking=False``), the end of turn its own (``<|im_end|>``, ``<turn|>``).
    Prompt and target are tokenized separately and concatenated, so the label mask ends exactly
    at the assistant header and the target tokens are the ones generation would produce after
    the prompt. Returns ``input_ids``, ``labels`` (lists) and the processor's other outputs without a
    batch axis (Qwen2-Audio: ``input_features``, ``feature_attention_mask``; Gemma 4: ``input_features``,
    ``input_features_mask`` as tensors, ``mm_token_type_ids`` as a list over the whole sequence).
    """
    from ..families import default_family, family_of_processor, prompt_text

    fam = family_of_processor(processor) or default_family()
    tok = processor.tokenizer
    enc = processor(text=prompt_text(processor, lang), audio=wave, sampling_rate=16000, return_tensors="pt")
    prompt_ids = enc["input_ids"][0].tolist()
    target_ids = tok(target.strip(), add_special_tokens=False)["input_ids"] + [fam.turn_end_id(tok)]
    item = {"input_ids": prompt_ids + target_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids}
    for k, v in enc.items():
        if k in ("input_ids", "attention_mask"):
            continue
        item[k] = v[0].tolist() + [0] * len(target_ids) if k in fam.token_aligned_inputs else v[0]
    return item


class SpeechTranslationDataset:
    """A map-style torch dataset over Examples; encodes on first access and keeps small sets in memory."""

    def __init__(self, examples: Sequence[Example], processor, lang: str, *, cache: bool | None = None,
                 max_seconds: float = MAX_SECONDS):
        self.examples = list(examples)
        self.max_seconds = max_seconds  # audio past it is cut (the model family's max_segment_seconds)
        self.processor = processor
        self.lang = lang
        # 128 x 3000 float32 features are 1.5 MB an example: cache only sets that fit comfortably
        self.cache = len(self.examples) <= 2048 if cache is None else cache
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        if i in self._cache:
            return self._cache[i]
        ex = self.examples[i]
        item = encode_example(self.processor, ex.waveform(self.max_seconds), target_text(ex, self.lang), self.lang)
        if self.cache:
            self._cache[i] = item
        return item


@dataclass
class Collator:
    """Right-pads ``input_ids``/``labels`` (and other per-token lists, with 0) and stacks the audio features,
    zero-padded to the longest (Qwen2-Audio's are a fixed 3000 frames; Gemma 4's follow the audio, and
    their ``input_features_mask`` marks the padding, as the processor's own batching does)."""

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        import torch
        import torch.nn.functional as F

        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for b, it in enumerate(items):
            k = len(it["input_ids"])
            ids[b, :k] = torch.tensor(it["input_ids"])
            labels[b, :k] = torch.tensor(it["labels"])
            mask[b, :k] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for key in items[0]:
            if key in out:
                continue
            vals = [it[key] for it in items]
            if isinstance(vals[0], list):  # aligned with input_ids
                t = torch.zeros((len(items), n), dtype=torch.long)
                for b, v in enumerate(vals):
                    t[b, :len(v)] = torch.tensor(v)
                out[key] = t
                continue
            shape = [max(v.shape[d] for v in vals) for d in range(vals[0].dim())]
            padded = []
            for v in vals:
                pads = []
                for d in reversed(range(v.dim())):
                    pads += [0, shape[d] - v.shape[d]]
                padded.append(F.pad(v, pads) if any(pads) else v)
            out[key] = torch.stack(padded)
        return out


def pad_token_id(processor, model=None) -> int:
    tok = processor.tokenizer
    for v in (tok.pad_token_id, getattr(getattr(model, "config", None), "pad_token_id", None), tok.eos_token_id):
        if v is not None:
            return int(v)
    raise UserError("the tokenizer has no pad or eos token")


# ---------------------------------------------------------------- settings

@dataclass
class TrainSettings:
    """Trainer settings (the published full fine-tuning: batch 4, lr 1e-5, cosine, 3 epochs, no warm-up)."""

    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 4  # per process
    grad_accum: int = 1
    lr: float = 1e-5
    scheduler: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.001
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "bf16"/"fp16": autocast over the loaded weights
    gradient_checkpointing: bool = False
    save_steps: int = 200
    save_total_limit: int = 1
    logging_steps: int = 1
    seed: int = 0
    device: str | None = None  # "cpu" forces CPU
    progress: bool = True


@dataclass
class TrainResult:
    steps: int
    epochs: float
    history: list[dict]  # {"step", "epoch", "loss", "lr", "grad_norm"} per logging step
    first_loss: float | None
    final_loss: float | None
    seconds: float
    resumed_from: str | None = None
    world_size: int = 1
    trainer: object = field(default=None, repr=False)


# ---------------------------------------------------------------- progress and logs

def _make_progress_callback(log_path: Path | None):
    from transformers import TrainerCallback

    class ProgressAndLog(TrainerCallback):
        """tqdm bar with loss, step rate and ETA; ``train.log`` lines; main process only."""

        def __init__(self):
            self.bar = None
            self.last_loss = None
            self.t0 = None
            self.start_step = 0

        def _log(self, msg: str):
            if log_path is not None:
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")

        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            self.t0 = time.time()
            self.start_step = state.global_step
            self._log(f"train begin: {state.max_steps} steps, resumed at step {state.global_step}"
                      f", {args.world_size} process(es), batch {args.per_device_train_batch_size} x "
                      f"{args.gradient_accumulation_steps} accumulation x {args.world_size}")
            if not args.disable_tqdm:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train",
                                unit="step", dynamic_ncols=True, mininterval=0.5)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                self.last_loss = logs["loss"]
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}", refresh=False)
                done = state.global_step - self.start_step
                rate = done / max(time.time() - self.t0, 1e-9)
                eta = (state.max_steps - state.global_step) / rate if rate > 0 else float("nan")
                self._log(f"step {state.global_step}/{state.max_steps} epoch {state.epoch:.3f} "
                          f"loss {logs['loss']:.6f} lr {logs.get('learning_rate', 0):.3e} "
                          f"grad_norm {logs.get('grad_norm', float('nan')):.4f} {rate:.2f} step/s eta {eta:.0f}s")
            elif "train_runtime" in logs:
                self._log(f"train end: {state.global_step} steps in {logs['train_runtime']:.1f}s "
                          f"(average loss {logs.get('train_loss', float('nan')):.6f})")

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self._log(f"checkpoint at step {state.global_step}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressAndLog()


def loss_history(log_history: list[dict]) -> list[dict]:
    """The per-step training losses out of ``Trainer.state.log_history``."""
    out = []
    for rec in log_history:
        if "loss" in rec and "step" in rec:
            out.append({"step": rec["step"], "epoch": rec.get("epoch"), "loss": rec["loss"],
                        "lr": rec.get("learning_rate"), "grad_norm": rec.get("grad_norm")})
    return out




def last_checkpoint(work_dir: Path) -> str | None:
    """The newest *complete* checkpoint in ``work_dir``.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without a readable one was torn by
    a kill while it was being written: it is discarded (by process 0) and the previous one is used.
    """
    import json
    import shutil

    d = Path(work_dir) / CHECKPOINTS
    if not d.is_dir():
        return None
    complete = []
    for c in d.iterdir():
        name, _, step = c.name.partition("-")
        if name != "checkpoint" or not step.isdigit() or not c.is_dir():
            continue
        try:
            json.loads((c / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            if is_main_process():
                shutil.rmtree(c, ignore_errors=True)
            continue
        complete.append((int(step), c))
    return str(max(complete)[1]) if complete else None


# ---------------------------------------------------------------- training

def _trainer_class():
    from transformers import Trainer

    class SpeechTrainer(Trainer):
        """The HF Trainer with a resume that restores the weights of renamed checkpoints.

        transformers 5 saves Qwen2-Audio with the old key names (``language_model.model.layers...``)
        and renames them in ``from_pretrained``, but ``Trainer._load_from_checkpoint`` loads the
        file with ``load_state_dict(strict=False)``: no key matches, nothing is restored and only a
        warning is logged. Full-model checkpoints are read back through ``from_pretrained`` instead.

        Loss scaling: Qwen2-Audio's forward takes ``**kwargs`` but computes a plain mean loss (it
        ignores ``num_items_in_batch``), so the Trainer's "model normalizes the loss" path would
        multiply gradients by the number of processes and skip the division by the accumulation
        steps. ``model_accepts_loss_kwargs = False`` selects the mean-per-micro-batch path instead.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = model if model is not None else self.model
            ckpt = Path(resume_from_checkpoint)
            plain = not self.is_fsdp_enabled and not hasattr(model, "peft_config") and (ckpt / "config.json").exists()
            if not plain or not any(ckpt.glob("*.safetensors")):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            fresh = type(model).from_pretrained(str(ckpt), dtype="auto", use_safetensors=True)
            model.load_state_dict(fresh.state_dict(), strict=True)
            del fresh

    return SpeechTrainer


RUN_ID_NAME = "run.json"
# Settings that do not change the trained weights (a resume may change them).
_COSMETIC = ("save_steps", "save_total_limit", "logging_steps", "progress")


def run_identity(model, examples: Sequence[Example], lang: str, settings: TrainSettings, identity: dict | None) -> dict:
    """What determines the trained weights: settings (less cosmetic ones), the examples (ids and targets),
    the model's class and parameter count, and the caller's ``identity`` (e.g. input fingerprint, options)."""
    import dataclasses
    import hashlib

    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.id}\0{target_text(ex, lang)}\0".encode())
    st = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _COSMETIC}
    return {"settings": st, "lang": lang, "examples": len(examples), "examples_sha256": h.hexdigest()[:16],
            "model": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            **({"identity": identity} if identity else {})}


def _check_run_identity(work_dir: Path, ident: dict) -> None:
    """Refuse to resume checkpoints that another training run (other settings, data or model) left in ``work_dir``."""
    import json

    from ..fsutil import atomic_write_json

    f = work_dir / RUN_ID_NAME
    has_ckpt = (work_dir / CHECKPOINTS).is_dir() and any((work_dir / CHECKPOINTS).iterdir())
    if f.exists() and has_ckpt:
        try:
            old = json.loads(f.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old != json.loads(json.dumps(ident)):
            changed = _changed_keys(old or {}, json.loads(json.dumps(ident)))
            raise UserError(f"{work_dir}: holds checkpoints of a training run with other settings or data "
                            f"(changed: {', '.join(changed[:6]) or 'unknown'}); rerun with the earlier settings to "
                            "continue it, or remove that directory to start over")
    if is_main_process():
        atomic_write_json(f, ident)


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _changed_keys(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}")
    return out


def train(model, processor, examples: Sequence[Example], lang: str, settings: TrainSettings, *,
          work_dir: Path, resume: bool = True, callbacks: Sequence = (),
          log: Callable[[str], None] | None = None, identity: dict | None = None) -> TrainResult:
    """Train ``model`` in place on ``examples`` (target = ``lang`` reference) with the HF Trainer.

    Checkpoints go to ``work_dir/checkpoints`` every ``save_steps``; with ``resume`` the run
    continues from the newest one (same seed -> the same final weights as an uninterrupted run).
    ``work_dir/run.json`` records what determines the weights (:func:`run_identity`): checkpoints of a
    run with other settings, data, model or ``identity`` are refused, never resumed.
    ``work_dir/train.log`` and ``work_dir/loss_history.json`` record progress.
    """
    import torch
    from transformers import PrinterCallback, ProgressCallback, TrainingArguments

    global _CHECKPOINTING_ARG
    _CHECKPOINTING_ARG = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                          else "gradient_checkpointing")  # renamed in transformers 5.x
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        _check_run_identity(work_dir, run_identity(model, examples, lang, settings, identity))
    main = is_main_process()
    log_path = work_dir / LOG_NAME if main else None
    on_cpu = settings.device == "cpu" or (settings.device is None and not torch.cuda.is_available())
    if settings.mixed_precision not in ("no", "bf16", "fp16"):
        raise UserError(f"mixed_precision must be no, bf16 or fp16, not {settings.mixed_precision!r}")
    args = TrainingArguments(
        output_dir=str(work_dir / CHECKPOINTS),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps else -1,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        seed=settings.seed,
        bf16=settings.mixed_precision == "bf16",
        fp16=settings.mixed_precision == "fp16",
        **{_CHECKPOINTING_ARG: settings.gradient_checkpointing},
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu and world_size() > 1 else None,
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to=[],
        disable_tqdm=not (settings.progress and main),
        optim="adamw_torch",
    )
    from ..families import max_audio_seconds

    dataset = SpeechTranslationDataset(examples, processor, lang, max_seconds=max_audio_seconds(model))
    cache_was = _cache_off(model)
    if settings.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings (LoRA) would cut the checkpointed graph
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset,
                      data_collator=Collator(pad_token_id(processor, model)),
                      callbacks=[_make_progress_callback(log_path), *callbacks])
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    ckpt = last_checkpoint(work_dir) if resume else None
    if ckpt and log:
        log(f"resuming from {ckpt}")
    started = time.time()
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # checkpoint writes would draw their own bars inside ours
    try:
        trainer.train(resume_from_checkpoint=ckpt)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    history = loss_history(trainer.state.log_history)
    if main:
        from ..fsutil import atomic_write_json

        atomic_write_json(work_dir / HISTORY_NAME, {"lang": lang, "examples": len(examples),
                                                    "world_size": args.world_size, "history": history})
    _cache_restore(cache_was)
    return TrainResult(
        steps=trainer.state.global_step, epochs=float(trainer.state.epoch or 0.0), history=history,
        first_loss=history[0]["loss"] if history else None, final_loss=history[-1]["loss"] if history else None,
        seconds=round(time.time() - started, 3), resumed_from=ckpt, world_size=args.world_size, trainer=trainer)


def _cache_off(model) -> list:
    """``use_cache`` off while training (no generation; with activation checkpointing transformers would
    turn it off itself, with a warning), on the model's config and on its text config, which the language
    model reads (a multimodal config such as Qwen2-Audio's has no ``use_cache`` of its own). Returns what
    :func:`_cache_restore` puts back."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return []
    configs = [cfg]
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    if text is not cfg:
        configs.append(text)
    was = [(c, getattr(c, "use_cache", None)) for c in configs]
    for c in configs:
        c.use_cache = False
    return was


def _cache_restore(was: list) -> None:
    """After training: the model config's ``use_cache`` on (as saved for decoding), the text config's as before."""
    for i, (c, value) in enumerate(was):
        c.use_cache = True if i == 0 else value


def steps_per_epoch(n_examples: int, settings: TrainSettings, world: int = 1) -> int:
    return max(1, math.ceil(math.ceil(n_examples / (settings.batch_size * world)) / settings.grad_accum))


# ---------------------------------------------------------------- objectives beyond the reference CE
# Used by the kd and replace-layers stages: the Trainer trains an ``ObjectiveModel`` that wraps the
# student; its forward returns the stage's loss. Everything else (checkpoints, exact resume,
# accumulation, schedules, DDP) is the plain ``train`` above.

def objective_model(student, loss_fn: Callable, *, aux=None, frozen: dict | None = None):
    """``student`` wrapped so that ``train`` optimises ``loss_fn(wrapper, batch) -> (loss, parts)``.

    ``aux`` (an ``nn.ModuleDict``, e.g. hidden-state projections) trains with the student and is
    saved in the checkpoints (so a resumed run restores it too), but not in the output model.
    ``frozen`` holds modules that are used but never trained nor checkpointed (a teacher, the
    original layers of a replaced block): they are not registered as submodules, so they are not in
    the state dict, the optimizer or DDP's gradient buckets. ``wrapper.last_parts`` holds the loss
    terms of the last step (floats) for logging.
    """
    import torch.nn as nn

    class ObjectiveModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            self.aux = aux if aux is not None else nn.ModuleDict()
            object.__setattr__(self, "frozen", dict(frozen or {}))
            self.last_parts: dict = {}

        @property
        def config(self):
            return self.student.config

        def gradient_checkpointing_enable(self, **kw):
            self.student.gradient_checkpointing_enable(**kw)

        def activation_checkpointing_enable(self, **kw):  # the transformers >= 5.x name
            fn = getattr(self.student, "activation_checkpointing_enable", None) or self.student.gradient_checkpointing_enable
            fn(**kw)

        def enable_input_require_grads(self):
            self.student.enable_input_require_grads()

        def state_dict(self, *args, **kwargs):
            """Each tensor once: a tied ``lm_head`` (Gemma 4) is the token embeddings' tensor under a second
            name, which the checkpoint's safetensors file refuses; loading the first name restores both."""
            sd = super().state_dict(*args, **kwargs)
            for k in _alias_keys(sd):
                del sd[k]
            return sd

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            result = super().load_state_dict(state_dict, strict=False, assign=assign)
            aliases = set(_alias_keys(super().state_dict()))
            missing = [k for k in result.missing_keys if k not in aliases]
            if strict and (missing or result.unexpected_keys):
                raise RuntimeError(f"state dict mismatch: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
            return type(result)(missing, result.unexpected_keys)

        def forward(self, **batch):
            loss, parts = loss_fn(self, batch)
            self.last_parts = {k: float(v) for k, v in parts.items()}
            return {"loss": loss}

    return ObjectiveModel()


def _alias_keys(sd: dict) -> list[str]:
    """Keys of ``sd`` whose tensor is one an earlier key already names (tied weights)."""
    seen, out = set(), []
    for k, v in sd.items():
        if getattr(v, "numel", lambda: 0)():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
            if key in seen:
                out.append(k)
            seen.add(key)
    return out


def parts_recorder(wrapper, path: Path | None):
    """A callback that appends ``wrapper.last_parts`` of every step to ``path`` (JSON lines; main process)."""
    import json

    from transformers import TrainerCallback

    class RecordParts(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if path is not None and state.is_world_process_zero and wrapper.last_parts:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **wrapper.last_parts}) + "\n")

    return RecordParts()


def label_positions(labels):
    """Boolean mask (B, L-1) of the positions whose next token is a label (logits[:, :-1] predict labels[:, 1:])."""
    return labels[:, 1:] != IGNORE_INDEX


def word_kd_loss(student_logits, teacher_logits, temperature: float):
    """KL(teacher || student) of the softened distributions, times T^2 (Hinton et al.), per token.

    Both are (N, V) over the same vocabulary (the caller maps a trimmed student's ids first).
    """
    import torch.nn.functional as F

    t = float(temperature)
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)


def hidden_kd_loss(student_h, teacher_h, mask=None, kind: str = "mse"):
    """Distance between student and teacher hidden states (B, L, D) at ``mask`` (B, L) positions.

    ``mse``: the mean squared error relative to the teacher's mean square (scale-free: LLM hidden
    states grow with depth and have outlier dimensions); ``cosine``: 1 - cosine similarity.
    """
    import torch.nn.functional as F

    s, t = student_h.float(), teacher_h.float()
    if mask is not None:
        s, t = s[mask.bool()], t[mask.bool()]
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    return ((s - t) ** 2).mean() / (t ** 2).mean().clamp_min(1e-12)
