"""What every stage shares: strict options, a context, and ``run_stage`` (atomic output + provenance).

A stage is a class with a nested ``Options`` dataclass. Each option field carries its help text in
``field(metadata={"help": ...})``. Options are validated strictly: an unknown key, a wrong type or
an invalid value is a one-line ``UserError`` raised before any work is done.

    class PruneLayers(Stage):
        name = "prune-layers"
        @dataclass
        class Options(StageOptions):
            layers: list[int] | None = field(default=None, metadata={"help": "..."})
        def check(self, in_dir, ctx): ...        # cheap checks against the input model (config only)
        def run(self, in_dir, out_dir, ctx): ... # writes a loadable model dir into out_dir; returns extras
"""

from __future__ import annotations

import dataclasses
import glob
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from .. import distributed
from ..errors import UserError
from ..floor.modeldir import read_config
from ..floor.options import coerce


# transformers.trainer_utils.SchedulerType's values, which the training stages accept: importing that module
# loads torch (seconds), and validating a recipe (`plan` matches shipped recipes) must not
# (tests/planning/test_planner.py checks the list against the installed transformers)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")


@dataclass
class StageOptions:
    """Base for stage option dataclasses. Subclasses may override ``validate`` and ``smoke``."""

    @classmethod
    def from_dict(cls, raw: dict | None, *, stage: str = "") -> "StageOptions":
        raw = dict(raw or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in raw if k not in fields]
        where = f"stage {stage}: " if stage else ""
        if unknown:
            raise UserError(f"{where}unknown option {unknown[0]!r} (known: {', '.join(fields) or 'none'})")
        hints = typing.get_type_hints(cls)
        values = {k: coerce(v, hints[k], f"{where}option {k!r}") for k, v in raw.items()}
        try:
            opts = cls(**values)
        except TypeError as e:
            raise UserError(f"{where}{e}") from None
        opts.validate()
        return opts

    def validate(self) -> None:
        """Model-independent checks (ranges, choices). Raise UserError."""

    def smoke(self) -> "StageOptions":
        """A scaled-down copy for ``--smoke`` runs (few steps, few held-out segments). Default: unchanged."""
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls) -> list[tuple[str, str, Any]]:
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            out.append((f.name, f.metadata.get("help", ""), default))
        return out


@dataclass
class StageContext:
    """What a stage may need beyond its options. Filled by ``iwslt-mc stage`` or the recipe runner."""

    lang: str = "en-de"
    data: list[str] = field(default_factory=list)  # data specs (see iwslt_mc.training.data)
    condition: str = "constrained"
    smoke: bool = False
    seed: int = 0
    device: str | None = None  # None: cuda if available else cpu
    work_dir: Path | None = None  # persistent scratch for checkpoints (resume); survives a crash
    log: Callable[[str], None] = print

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class Stage:
    """Base class: subclasses set ``name``, ``Options`` and ``techniques`` and implement ``run``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[StageOptions]] = StageOptions
    # the description line(s) the packager shows for this stage; may be refined in run()'s extras
    techniques: ClassVar[list[str]] = []

    def __init__(self, options: dict | StageOptions | None = None):
        if isinstance(options, StageOptions):
            self.options = options
        else:
            self.options = self.Options.from_dict(options, stage=self.name)

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        """Cheap checks of the options against the input model (its config): raise UserError."""

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> dict | None:
        """The checks of :meth:`check` that need only the input's config, run by ``build --dry-run`` and at the
        start of every build before any stage runs. ``cfg`` is the base's ``config.json`` with the earlier
        stages' changes applied (their ``plan``), ``where`` names that input in messages. Returns the output's
        config (None: unchanged). Raise UserError."""
        return None

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        """Write the output model directory into ``out_dir``; return extras for the provenance record
        (``techniques``, ``data``, and anything stage-specific)."""
        raise NotImplementedError

    def with_smoke(self) -> "Stage":
        return type(self)(self.options.smoke())

    # -- the model I/O a family's own run uses (Family.run_prune_layers / run_trim_vocab get the stage, so a
    # family never imports the layers above it: iwslt_mc.modelio, iwslt_mc.sizing.sizer)
    @staticmethod
    def load_model(model_dir, **kwargs):
        """:func:`iwslt_mc.modelio.load_model`."""
        from .. import modelio

        return modelio.load_model(model_dir, **kwargs)

    @staticmethod
    def load_processor(model_dir):
        """:func:`iwslt_mc.modelio.load_processor`."""
        from .. import modelio

        return modelio.load_processor(model_dir)

    @staticmethod
    def save_model(model, processor, out_dir, **kwargs):
        """:func:`iwslt_mc.modelio.save_model`."""
        from .. import modelio

        return modelio.save_model(model, processor, out_dir, **kwargs)

    @staticmethod
    def runtime_dtype(model_dir, device):
        """:func:`iwslt_mc.modelio.runtime_dtype`: the dtype a stage computes in on ``device`` (None: as stored)."""
        from .. import modelio

        return modelio.runtime_dtype(model_dir, device)

    @staticmethod
    def checkpoint_dtype(model_dir):
        """The dtype of the unquantized weights as saved (config ``dtype``/``torch_dtype``), or None."""
        from ..modelio import config_dtype

        return config_dtype(read_config(model_dir))

    @staticmethod
    def stored_bytes(model_dir) -> int:
        """The model's bytes on disk as the sizer counts them (:func:`iwslt_mc.sizing.sizer.measure`)."""
        from ..sizing import sizer

        return sizer.measure(model_dir).bytes


def config_without_layers(cfg: dict, llm: list[int], audio: int = 0) -> dict:
    """A copy of ``cfg`` (a config.json dict) with the LLM layers ``llm`` and ``audio`` audio-encoder layers
    removed: the layer counts and per-layer lists (``layer_types``) follow, as the surgery writes them."""
    import copy

    out = copy.deepcopy(cfg)
    t = out.get("text_config") or {}
    if llm and "num_hidden_layers" in t:
        gone = set(llm)
        if isinstance(t.get("layer_types"), list):
            t["layer_types"] = [x for i, x in enumerate(t["layer_types"]) if i not in gone]
        t["num_hidden_layers"] = int(t["num_hidden_layers"]) - len(gone)
    a = out.get("audio_config") or {}
    if audio:
        key = "encoder_layers" if "encoder_layers" in a else "num_hidden_layers"
        if key in a:
            a[key] = int(a[key]) - audio
    return out


def remove_stale_partials(out_dir: Path) -> None:
    """Remove what a killed run left next to ``out_dir``: the temporary ``.NAME.*.partial`` directories of
    :func:`iwslt_mc.fsutil.atomic_directory` (a finished output is renamed into place, so any left over
    belong to a run that died). Checkpoints (the work directory) are kept: they are how a rerun resumes."""
    out_dir = Path(out_dir)
    if out_dir.parent.is_dir():
        for stale in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)


def data_warnings(log):
    """Collect the data readers' warnings while a stage runs (each logged once as it happens)."""
    from ..training.data import collect_warnings

    return collect_warnings(log)


def _check_family(stage: Stage, in_dir: Path) -> None:
    """A one-line refusal for a model family the stage does not handle (:meth:`Family.supports`)."""
    from ..families import families, family_for

    fam = family_for(in_dir)
    if not fam.supports(stage.name):
        handled = [f.name for f in families() if f.supports(stage.name)]
        raise UserError(f"stage {stage.name}: not supported for {fam.name} models yet ({in_dir}; "
                        f"it handles: {', '.join(handled)})")


def run_stage(stage: Stage, in_dir, out_dir, ctx: StageContext | None = None, *, overwrite: bool = False) -> dict:
    """Validate, run ``stage`` from ``in_dir`` to ``out_dir`` atomically, and append provenance.

    ``out_dir`` appears only when the stage finished; a crash leaves it absent (checkpoints, if the
    stage keeps any, live in ``ctx.work_dir``). Returns the provenance record.
    """
    from ..submission import provenance
    from ..sizing import sizer
    from ..fsutil import atomic_directory
    from ..modelio import check_model_dir

    ctx = ctx or StageContext()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_model_dir(in_dir)
    _check_family(stage, in_dir)
    if distributed.rank() == 0:
        remove_stale_partials(out_dir)  # other processes of a launch never clean: one could be rank 0's own
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir}: already exists (rerun with --overwrite to replace it, or choose another --out)")
    stage.check(in_dir, ctx)
    if ctx.work_dir is None:
        ctx.work_dir = out_dir.with_name(out_dir.name + ".work")
    if distributed.rank() > 0:
        # Under accelerate launch / torchrun every process runs the stage (training is collective);
        # only process 0 writes the output directory and its provenance.
        import tempfile

        with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.rank",
                                         dir=out_dir.parent if out_dir.parent.is_dir() else None) as tmp, \
                data_warnings(None):  # process 0 logs and records them
            stage.run(in_dir, Path(tmp), ctx)
        return {}
    before = sizer.measure(in_dir)
    started = time.time()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp, data_warnings(ctx.log) as warned:
        extras = dict(stage.run(in_dir, tmp, ctx) or {})
        if warned:
            extras["warnings"] = list(warned)
        after = sizer.measure(tmp)
        techniques = extras.pop("techniques", None) or list(stage.techniques)
        data = extras.pop("data", None) or []
        record = provenance.make_record(
            stage.name, stage.options.to_dict(), techniques=techniques, data=data, started=started,
            params_before=before.params, params_after=after.params,
            bytes_before=before.bytes, bytes_after=after.bytes, lang=ctx.lang, **extras)
        provenance.append(in_dir, tmp, record)
    if ctx.work_dir and Path(ctx.work_dir).exists():
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return record


@dataclass
class TrainingOptions(StageOptions):
    """Training settings shared by the distillation stages (kd, replace-layers); as finetune's full mode."""

    epochs: float = field(default=3.0, metadata={"help": "passes over the data"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps; overrides epochs when set"})
    batch_size: int = field(default=4, metadata={"help": "examples per step per process"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate"})
    scheduler: str = field(default="cosine", metadata={"help": "learning-rate schedule (cosine, linear, constant, ...)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.001, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    dtype: Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "dtype the student is loaded and trained in (auto = as saved); the output keeps the input's dtype"})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={"help": "autocast on top of dtype"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass"})
    split: str | None = field(default="train", metadata={
        "help": "data split ('train' = the published split without the 100 held-out utterances; none = all)"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N examples"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N steps (for resume)"})
    save_total_limit: int = field(default=1, metadata={"help": "checkpoints kept"})
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def _check_training(self, s: str) -> None:
        for k in ("batch_size", "grad_accum", "save_steps", "save_total_limit", "logging_steps"):
            if getattr(self, k) < 1:
                raise UserError(f"{s}: option {k!r} must be at least 1")
        for k in ("max_steps", "limit"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise UserError(f"{s}: option {k!r} must be at least 1")
        if self.epochs <= 0 or self.lr <= 0:
            raise UserError(f"{s}: options 'epochs' and 'lr' must be positive")
        if self.warmup_steps < 0:
            raise UserError(f"{s}: option 'warmup_steps' must be at least 0")
        from .base import LR_SCHEDULERS

        if self.scheduler not in LR_SCHEDULERS:
            raise UserError(f"{s}: unknown scheduler {self.scheduler!r} (e.g. cosine, linear, constant)")

    def smoke(self):
        return dataclasses.replace(self, max_steps=min(self.max_steps or 2, 2), limit=min(self.limit or 4, 4),
                                   batch_size=min(self.batch_size, 2), save_steps=max(self.save_steps, 1),
                                   warmup_steps=0)  # a 2-step run inside a warm-up would not train

    def settings(self, ctx: StageContext, device: str):
        from ..training import training

        return training.TrainSettings(
            epochs=self.epochs, max_steps=self.max_steps, batch_size=self.batch_size, grad_accum=self.grad_accum,
            lr=self.lr, scheduler=self.scheduler, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm, mixed_precision=self.mixed_precision,
            gradient_checkpointing=self.gradient_checkpointing, save_steps=self.save_steps,
            save_total_limit=self.save_total_limit, logging_steps=self.logging_steps, seed=ctx.seed,
            device="cpu" if device == "cpu" else None, progress=self.progress)

    def budget(self) -> str:
        steps = f"{self.max_steps} steps" if self.max_steps else f"{self.epochs:g} epochs"
        return f"lr {self.lr:g}, batch {self.batch_size}" + (f"x{self.grad_accum}" if self.grad_accum > 1 else "") + f", {steps}"
