"""kd: word-level and hidden-state knowledge distillation from a teacher running in the same process.

The student (this stage's input model) trains on speech-translation pairs (``ctx.data``, split
``split``; the published chat prompt with the reference as the assistant turn, as in ``finetune``)
with

    loss = alpha * T^2 * KL(teacher_T || student_T)        word-level KD (Kim and Rush; Hinton et al.)
         + (1 - alpha) * CE(student, reference)
         + hidden_weight * mean over mapped layers of d(P(h_student), h_teacher)   hidden-state KD

The teacher (``teacher``, a model directory of the student's family: Qwen2-Audio, or Gemma 4 with the
organizers' prompt) sees the same chat prompt and audio, token for token, is frozen and runs without
gradients. KL and CE are taken at the target positions only. Gemma 4: word-level KD only (the
hidden-state term is refused in one line).

Vocabularies: when the student's vocabulary was trimmed (``trim-vocab``) its ids differ from the
teacher's. Ids are mapped through the two ``tokenizer.json`` files (same token string = same token):
the teacher reads the student's input mapped to its own ids, and its distribution is restricted to
the student's tokens (the KL is over the student's vocabulary, renormalised). A student token the
teacher does not know is an error before any work (a teacher with another tokenizer).

Hidden states: ``hidden`` names the components (``llm``, ``audio``); ``llm_layer_map`` /
``audio_layer_map`` say which student layer output is compared with which teacher layer output:
``auto`` follows the student's lineage when it was pruned from the teacher (provenance: student
layer i carries the original layers up to the next surviving one, so it is compared with the teacher
layer just before that one; the last with the last), and falls back to ``uniform`` (student layer i
of n -> teacher layer round((i + 1) * N / n) - 1); ``last`` compares the last layers only; or an
explicit list ``["0:1", "3:7"]`` (student:teacher). ``hidden_loss``: ``mse`` (relative to the
teacher's mean square, so layers of different scale weigh alike) or ``cosine``. When the widths
differ, a learned linear projection (student -> teacher width, one per mapped layer) is trained with
the student, saved in the checkpoints and dropped from the output. LLM states are compared at every
non-padding position (audio, prompt and target), audio-encoder states at every encoder position.

Memory, the 7B teacher and a student on one 80 GB GPU (bytes per parameter: bf16 weights 2, their
gradients 2, AdamW's two moments in the weights' dtype 4; NF4 ~0.74 per parameter with its
constants, measured 6.24 GB for the whole 8.4B-parameter model, embeddings in bf16):

    teacher bf16, frozen                      8.4B x 2            = 16.9 GB
    teacher NF4 (teacher_dtype: nf4)                                  6.2 GB
    student, same width, 16 of 32 LLM layers  5.2B x 8 (full FT)  = 41.2 GB
    student, recipe-c size after pruning      ~1.6B x 8           = 12.8 GB
    logits, batch 4 x ~850 positions, bf16    2 models x 1.06 GB  =  2.1 GB (fp32 copies only at the
                                                                     ~4 x 100 target positions: 0.5 GB)
    activations, gradient checkpointing       ~ 4-8 GB

So the two-step recipe's first student (16 layers, bf16 teacher) needs ~ 16.9 + 41.2 + 2.1 + 8 = 68 GB
and fits; an unpruned 8.4B student (67 GB alone, the README's figure) does not fit next to a bf16
teacher (84 GB) but does with ``teacher_dtype: nf4`` (~75 GB; batch 2 leaves more room). A top-k
log-probability cache on disk is therefore not needed for the recipes here; it would cost a full
teacher pass over the data and ~ k x 6 bytes per target token, and it cannot give hidden states.

Checkpoints go to ``ctx.work_dir/checkpoints`` every ``save_steps``; a rerun resumes from the newest
(student, projections, optimizer, scheduler, RNG) and reaches the same weights. The loss terms of
every step are in ``kd_history.jsonl`` next to ``train.log`` and ``loss_history.json`` in the output.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import InputFileError, UserError
from ..floor.modeldir import read_config
from ..training.common import layer_counts, load_training_data
from .base import Stage, StageContext, TrainingOptions

PARTS_LOG = "kd_history.jsonl"
HIDDEN_COMPONENTS = ("llm", "audio")
_DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


LayerMap = str | list[str] | dict


@dataclass
class KDOptions(TrainingOptions):
    teacher: str | None = field(default=None, metadata={
        "help": "teacher model directory (required; in a recipe @ID names an earlier stage's output)"})
    alpha: float = field(default=0.5, metadata={
        "help": "weight of the word-level KL term; 1 - alpha weighs the cross-entropy on the references"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of the KL term (> 0)"})
    hidden_weight: float = field(default=0.0, metadata={"help": "weight of the hidden-state term (0 = off)"})
    hidden: list[str] = field(default_factory=lambda: ["llm", "audio"], metadata={
        "help": "components whose layer outputs are matched: llm, audio"})
    hidden_loss: Literal["mse", "cosine"] = field(default="mse", metadata={
        "help": "mse (relative to the teacher's mean square) or cosine (1 - cosine similarity)"})
    llm_layer_map: LayerMap = field(default="auto", metadata={
        "help": "auto (lineage from provenance, else uniform), uniform, last, or [\"student:teacher\", ...]"})
    audio_layer_map: LayerMap = field(default="auto", metadata={"help": "as llm_layer_map, for the audio encoder"})
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16", "nf4"] = field(
        default="auto", metadata={"help": "teacher weights: auto (as stored; float32 for half precision on a CPU), "
                                          "a float dtype, or nf4 (bitsandbytes 4-bit, on a GPU)"})
    freeze: list[str] = field(default_factory=list, metadata={
        "help": "student components that do not train (audio_encoder, projector, llm_layers, embed_tokens, lm_head)"})

    def validate(self) -> None:
        s = "stage kd"
        self._check_training(s)
        if not self.temperature > 0:
            raise UserError(f"{s}: option 'temperature' must be > 0, not {self.temperature:g}")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"{s}: option 'alpha' must be in [0, 1], not {self.alpha:g}")
        if self.hidden_weight < 0:
            raise UserError(f"{s}: option 'hidden_weight' must be at least 0")
        bad = [c for c in self.hidden if c not in HIDDEN_COMPONENTS]
        if bad:
            raise UserError(f"{s}: option 'hidden': unknown component {bad[0]!r} (llm, audio)")
        from ..training.common import FREEZABLE

        bad = [c for c in self.freeze if c not in FREEZABLE]
        if bad:
            raise UserError(f"{s}: cannot freeze {bad[0]!r} (components: {', '.join(FREEZABLE)})")
        for k in ("llm_layer_map", "audio_layer_map"):
            parse_layer_map(getattr(self, k), f"{s}: option {k!r}")

    def techniques(self, maps: dict) -> list[str]:
        terms = []
        if self.alpha > 0:
            terms.append(f"word-level KL at temperature {self.temperature:g} (weight {self.alpha:g})")
        if self.alpha < 1:
            terms.append(f"cross-entropy on references (weight {1 - self.alpha:g})")
        if self.hidden_weight > 0 and maps:
            where = "; ".join(f"{k} layers {', '.join(f'{s}->{t}' for s, t in m)}" for k, m in maps.items())
            terms.append(f"hidden-state {self.hidden_loss.upper() if self.hidden_loss == 'mse' else 'cosine'} "
                         f"(weight {self.hidden_weight:g}; {where})")
        return [f"knowledge distillation from a teacher in the same process ({'; '.join(terms)}; {self.budget()})"]


# ---------------------------------------------------------------------------------------------
# layer maps and vocabulary maps (pure JSON; no model)


def parse_layer_map(value, what: str):
    """``"auto"``/``"uniform"``/``"last"`` or a list of (student, teacher) index pairs."""
    if isinstance(value, str):
        if value in ("auto", "uniform", "last"):
            return value
        raise UserError(f"{what}: expected auto, uniform, last or a list like [\"0:1\", \"3:7\"], not {value!r}")
    items = list(value.items()) if isinstance(value, dict) else [tuple(str(v).split(":")) for v in value]
    pairs = []
    for it in items:
        try:
            s, t = (int(x) for x in it)
        except (TypeError, ValueError):
            raise UserError(f"{what}: {it!r} is not a student:teacher pair of layer indices") from None
        if s < 0 or t < 0:
            raise UserError(f"{what}: layer indices start at 0, got {s}:{t}")
        pairs.append((s, t))
    if not pairs:
        raise UserError(f"{what}: empty layer map")
    return pairs


def lineage(teacher_dir: Path, student_dir: Path, kind: str, n_teacher: int) -> list[int] | None:
    """For each student layer, the teacher layer whose output it stands for, when the student was
    made from the teacher by the recorded stages (prune-layers, replace-layers); else None."""
    from ..submission import provenance

    t = provenance.read(teacher_dir).get("stages", [])
    s = provenance.read(student_dir).get("stages", [])
    key = lambda r: (r.get("stage"), r.get("started"))  # noqa: E731
    if len(s) < len(t) or [key(r) for r in s[:len(t)]] != [key(r) for r in t]:
        return None
    removed_key, replaced_key = ("removed_llm_layers", "replaced_llm_layers") if kind == "llm" else (
        "removed_audio_layers", "replaced_audio_layers")
    idx = list(range(n_teacher))
    for r in s[len(t):]:
        if r.get(removed_key):
            gone = set(r[removed_key])
            idx = [x for i, x in enumerate(idx) if i not in gone]
        if r.get(replaced_key):
            a, b = min(r[replaced_key]), max(r[replaced_key])
            idx = idx[:a] + [idx[b]] + idx[b + 1:]
    # student layer i stands for the original layers up to the next surviving one
    return [idx[i + 1] - 1 if i + 1 < len(idx) else n_teacher - 1 for i in range(len(idx))]


def resolve_layer_map(spec, n_student: int, n_teacher: int, chain: list[int] | None, what: str):
    """The (student, teacher) pairs of ``spec`` for these depths; indices checked."""
    spec = parse_layer_map(spec, what)
    if spec == "last":
        return [(n_student - 1, n_teacher - 1)]
    if spec == "auto" and chain is not None and len(chain) == n_student:
        return list(enumerate(chain))
    if spec in ("auto", "uniform"):
        return [(i, max(0, round((i + 1) * n_teacher / n_student) - 1)) for i in range(n_student)]
    for s, t in spec:
        if s >= n_student:
            raise UserError(f"{what}: student layer {s} out of range (the student has {n_student}: 0..{n_student - 1})")
        if t >= n_teacher:
            raise UserError(f"{what}: teacher layer {t} out of range (the teacher has {n_teacher}: 0..{n_teacher - 1})")
    return spec


def _token_ids(model_dir: Path) -> dict[str, int]:
    f = Path(model_dir) / "tokenizer.json"
    try:
        tj = json.loads(f.read_text("utf-8"))
    except FileNotFoundError:
        raise InputFileError(f, "not found (kd maps token ids through the fast tokenizer)") from None
    except ValueError as e:
        raise InputFileError(f, f"not valid JSON ({e})") from None
    ids = dict(tj.get("model", {}).get("vocab", {}))
    ids.update({t["content"]: t["id"] for t in tj.get("added_tokens", [])})
    return ids


def vocab_map(student_dir: Path, teacher_dir: Path, n_student: int, n_teacher: int) -> list[int] | None:
    """Teacher id of each student id (None: the same ids). Raises UserError when the teacher lacks a token."""
    s, t = _token_ids(student_dir), _token_ids(teacher_dir)
    missing = [tok for tok in s if tok not in t]
    if missing:
        raise UserError(f"stage kd: teacher {teacher_dir} has another tokenizer: {len(missing)} of the student's "
                        f"{len(s)} tokens are not in it (e.g. {missing[0]!r})")
    if all(t[tok] == i for tok, i in s.items()) and n_student <= n_teacher:
        return None  # same ids (rows past the tokenizer, padding in the real model, line up too)
    out = [-1] * n_student
    for tok, i in s.items():
        if i < n_student:
            out[i] = t[tok]
    holes = [i for i, v in enumerate(out) if v < 0]
    if holes:
        raise UserError(f"stage kd: student row {holes[0]} of {student_dir} has no token in its tokenizer, and the "
                        f"vocabularies differ: cannot map it to the teacher")
    return out


def check_teacher(student_dir: Path, teacher_dir: Path, what: str = "stage kd") -> tuple[dict, dict]:
    """Configs of a usable teacher (same audio front end as the student), or a one-line error."""
    from ..modelio import check_model_dir

    check_model_dir(teacher_dir)
    s_cfg, t_cfg = read_config(student_dir), read_config(teacher_dir)
    if t_cfg.get("quantization_config"):
        raise UserError(f"{what}: teacher {teacher_dir} is quantized; give the unquantized teacher "
                        "(teacher_dtype: nf4 quantizes it on loading)")
    fe = {}
    for d in (student_dir, teacher_dir):
        p = Path(d) / "processor_config.json"
        pp = Path(d) / "preprocessor_config.json"
        cfg = json.loads(p.read_text("utf-8")).get("feature_extractor") if p.exists() else (
            json.loads(pp.read_text("utf-8")) if pp.exists() else None)
        fe[d] = {k: v for k, v in (cfg or {}).items() if k not in ("processor_class",)}
    if fe[student_dir] != fe[teacher_dir]:
        raise UserError(f"{what}: teacher {teacher_dir} has another audio feature extractor than {student_dir}")
    sa, ta = s_cfg.get("audio_config", {}), t_cfg.get("audio_config", {})
    if sa.get("max_source_positions") != ta.get("max_source_positions"):
        raise UserError(f"{what}: teacher {teacher_dir} encodes audio into {ta.get('max_source_positions')} positions, "
                        f"the student {sa.get('max_source_positions')}: the chat prompts would differ")
    return s_cfg, t_cfg


def widths(cfg: dict) -> dict:
    return {"llm": int(cfg.get("text_config", {}).get("hidden_size", 0)),
            "audio": int(cfg.get("audio_config", {}).get("d_model", 0))}


# ---------------------------------------------------------------------------------------------
# capturing layer outputs


class LayerTap:
    """Forward hooks that keep the outputs of chosen layers (tensor or the first item of a tuple)."""

    def __init__(self, layers, indices):
        self.out: dict[int, object] = {}
        self.handles = [layers[i].register_forward_hook(self._hook(i)) for i in sorted(set(indices))]

    def _hook(self, i):
        def hook(mod, args, output):
            self.out[i] = output[0] if isinstance(output, tuple) else output
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


class KD(Stage):
    name = "kd"
    Options = KDOptions
    techniques = ["knowledge distillation"]

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        from ..floor.languages import check_lang

        o = self.options
        check_lang(ctx.lang)
        if not o.teacher:
            raise UserError("stage kd: no teacher (set teacher: a model directory, or @ID of an earlier stage)")
        teacher = Path(o.teacher)
        from ..modelio import check_model_dir

        self._check_families(Path(in_dir), check_model_dir(teacher))
        s_cfg, t_cfg = check_teacher(Path(in_dir), teacher)
        if s_cfg.get("quantization_config"):
            raise UserError(f"stage kd: {in_dir} is quantized; distil into an unquantized student (quantize after)")
        if o.teacher_dtype == "nf4":
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise UserError("stage kd: teacher_dtype nf4 needs bitsandbytes (pip install bitsandbytes)") from None
        self._maps = self._layer_maps(Path(in_dir), teacher, s_cfg, t_cfg)
        self._vocab = vocab_map(Path(in_dir), teacher, int(s_cfg["text_config"]["vocab_size"]),
                                int(t_cfg["text_config"]["vocab_size"]))
        if not ctx.data:
            raise UserError("stage kd: no training data (give --data)")
        self._examples = load_training_data(ctx, o.split, o.limit, "kd")

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> None:
        if not self.options.teacher:
            raise UserError("stage kd: no teacher (set teacher: a model directory, or @ID of an earlier stage)")
        if cfg.get("quantization_config"):
            raise UserError(f"stage kd: {where} is quantized; distil into an unquantized student (quantize after)")
        return None

    def _check_families(self, student: Path, teacher: Path) -> None:
        """Teacher and student of one family (the same prompt, turn format and tokenizer kind); hidden-state
        KD only where the family has it."""
        from ..families import family_for

        fam, t_fam = family_for(student), family_for(teacher)
        if t_fam.name != fam.name:
            raise UserError(f"stage kd: teacher {teacher} is a {t_fam.label} model and the student {student} a "
                            f"{fam.label} model; kd needs both of one family (their prompts and tokens must match)")
        if self.options.hidden_weight > 0 and not fam.hidden_state_kd:
            raise UserError(f"stage kd: hidden-state KD (hidden_weight > 0) is not supported for {fam.label} models "
                            f"yet ({student}); word-level KD (hidden_weight 0) is")

    def _layer_maps(self, student: Path, teacher: Path, s_cfg: dict, t_cfg: dict) -> dict:
        o = self.options
        if o.hidden_weight <= 0:
            # explicit indices are still checked: a bad map is an error even when unused
            for kind in HIDDEN_COMPONENTS:
                spec = getattr(o, f"{kind}_layer_map")
                resolve_layer_map(spec, layer_counts(s_cfg)[kind], layer_counts(t_cfg)[kind], None,
                                  f"stage kd: option '{kind}_layer_map'")
            return {}
        maps = {}
        ns, nt = layer_counts(s_cfg), layer_counts(t_cfg)
        kinds = [k for k in o.hidden if ns[k] and nt[k]]  # no audio layers: an encoder-free model
        if not kinds:
            raise UserError(f"stage kd: hidden-state KD of {', '.join(o.hidden)}: the student {student} or the teacher "
                            f"{teacher} has no such layers (an encoder-free model has no audio-encoder layers; "
                            "match hidden: [llm])")
        for kind in kinds:
            chain = lineage(teacher, student, kind, nt[kind])
            maps[kind] = resolve_layer_map(getattr(o, f"{kind}_layer_map"), ns[kind], nt[kind], chain,
                                           f"stage kd: option '{kind}_layer_map'")
        return maps

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        import torch

        from .. import modelio
        from ..training import training
        from ..training.data import describe_data
        from ..families import layout_of as find_layout
        from ..submission.provenance import read as read_provenance
        from ..training.common import checkpoint_dtype, count_params, freeze_components, load_dtype, teacher_fingerprint

        o = self.options
        if not hasattr(self, "_maps"):
            self.check(in_dir, ctx)
        examples = self._examples
        if not training.is_main_process():
            ctx = dataclasses.replace(ctx, log=lambda msg: None)
        device = ctx.resolved_device()
        teacher_dir = Path(o.teacher)
        processor = modelio.load_processor(in_dir)
        student = modelio.load_model(in_dir, dtype=load_dtype(o.dtype))
        if o.freeze:
            freeze_components(student, o.freeze)
        teacher = self._load_teacher(teacher_dir, device, student)
        s_lay = t_lay = None
        s_w = t_w = {}
        if self._maps:  # hidden-state KD (a family with hidden_state_kd): layers and widths of both models
            s_lay, t_lay = find_layout(student), find_layout(teacher)
            s_w, t_w = s_lay.widths, t_lay.widths

        from transformers import set_seed

        set_seed(ctx.seed)  # projections start the same in every run (and resume restores them)
        aux = torch.nn.ModuleDict()
        for kind, pairs in self._maps.items():
            if s_w[kind] != t_w[kind]:
                for s, t in pairs:
                    aux[f"{kind}_{s}_{t}"] = torch.nn.Linear(s_w[kind], t_w[kind], bias=False).to(
                        dtype=next(student.parameters()).dtype)
        s2t = torch.tensor(self._vocab, dtype=torch.long) if self._vocab is not None else None
        loss_fn = self._loss_fn(s_lay, t_lay, teacher, s2t)
        wrapper = training.objective_model(student, loss_fn, aux=aux, frozen={"teacher": teacher})
        trainable, total = count_params(student)
        ctx.log(f"kd: teacher {teacher_dir}; {trainable:,} of {total:,} student parameters train"
                + (f", {sum(p.numel() for p in aux.parameters()):,} in projections" if len(aux) else "")
                + (f"; vocabulary mapped ({len(self._vocab)} student ids)" if s2t is not None else ""))
        work_dir = Path(ctx.work_dir) if ctx.work_dir else out_dir.with_name(out_dir.name + ".work")
        work_dir.mkdir(parents=True, exist_ok=True)
        parts_path = work_dir / PARTS_LOG if training.is_main_process() else None
        result = training.train(wrapper, processor, examples, ctx.lang, o.settings(ctx, device), work_dir=work_dir,
                                log=ctx.log, callbacks=[training.parts_recorder(wrapper, parts_path)])
        if result.history:
            ctx.log(f"kd: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}")
        trainer = result.trainer
        if training.is_main_process():
            student = trainer.accelerator.unwrap_model(wrapper).student
            student.config.use_cache = True
            modelio.save_model(student, processor, out_dir, dtype=checkpoint_dtype(in_dir))
            for name in (training.LOG_NAME, training.HISTORY_NAME, PARTS_LOG):
                if (work_dir / name).exists():
                    shutil.copy2(work_dir / name, out_dir / name)
        trainer.accelerator.wait_for_everyone()
        return {
            "techniques": o.techniques(self._maps),
            "data": describe_data(ctx.data, o.split),
            "teacher": {"path": str(teacher_dir.resolve()), "fingerprint": teacher_fingerprint(teacher_dir),
                        "stages": [s.get("stage") for s in read_provenance(teacher_dir).get("stages", [])]},
            "layer_maps": {k: [list(p) for p in v] for k, v in self._maps.items()},
            "vocab_mapped": s2t is not None,
            "train": {"examples": len(examples), "steps": result.steps, "epochs": round(result.epochs, 4),
                      "first_loss": result.first_loss, "final_loss": result.final_loss,
                      "seconds": result.seconds, "processes": result.world_size,
                      "trainable_params": trainable, "resumed_from": result.resumed_from},
        }

    def _load_teacher(self, teacher_dir: Path, device: str, student):
        import os

        import torch

        from .. import modelio
        from ..training.common import DTYPES, bitsandbytes_config, load_dtype

        o = self.options
        if o.teacher_dtype == "nf4":

            gpu = int(device.split(":")[1]) if device.startswith("cuda:") else int(os.environ.get("LOCAL_RANK", "0"))
            compute = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
            bnb = bitsandbytes_config("nf4", double_quant=True, compute_dtype=compute, skip=["lm_head"])
            dev = {"": gpu} if device.startswith("cuda") else device
            teacher = modelio.load_model(teacher_dir, dtype=getattr(torch, DTYPES[compute]), device=dev,
                                         quantization_config=bnb)
        else:
            dt = modelio.runtime_dtype(teacher_dir, device) if o.teacher_dtype == "auto" else load_dtype(o.teacher_dtype)
            teacher = modelio.load_model(teacher_dir, dtype=dt, device=device)
        teacher.eval()
        teacher.requires_grad_(False)
        teacher.config.use_cache = False
        return teacher

    def _loss_fn(self, s_lay, t_lay, teacher, s2t):
        import torch

        from ..training import training

        o = self.options
        maps = self._maps
        taps_s = {k: LayerTap(s_lay.decoder_layers if k == "llm" else s_lay.audio_layers, [s for s, _ in m])
                  for k, m in maps.items()}
        taps_t = {k: LayerTap(t_lay.decoder_layers if k == "llm" else t_lay.audio_layers, [t for _, t in m])
                  for k, m in maps.items()}

        def loss_fn(wrapper, batch):
            student = wrapper.student
            labels = batch["labels"]
            inputs = {k: v for k, v in batch.items() if k != "labels"}  # the family's processor outputs
            out_s = student(**inputs)
            sel = training.label_positions(labels)
            ls = out_s.logits[:, :-1][sel]
            target = labels[:, 1:][sel]
            parts = {}
            loss = ls.new_zeros((), dtype=torch.float32)
            need_teacher = o.alpha > 0 or maps
            if need_teacher:
                tdev = next(teacher.parameters()).device
                t_inputs = dict(inputs)
                ids = inputs["input_ids"]
                t_inputs["input_ids"] = (s2t.to(ids.device)[ids] if s2t is not None else ids)
                t_inputs = {k: v.to(tdev) for k, v in t_inputs.items()}
                t_inputs["input_features"] = t_inputs["input_features"].to(next(teacher.parameters()).dtype
                                                                           if next(teacher.parameters()).is_floating_point()
                                                                           else t_inputs["input_features"].dtype)
                with torch.no_grad():
                    out_t = teacher(**t_inputs)
            if o.alpha < 1:
                ce = torch.nn.functional.cross_entropy(ls.float(), target)
                parts["ce"] = ce.detach()
                loss = loss + (1 - o.alpha) * ce
            if o.alpha > 0:
                lt = out_t.logits[:, :-1][sel.to(out_t.logits.device)].to(ls.device)
                if s2t is not None:
                    lt = lt[:, s2t.to(lt.device)]
                kl = training.word_kd_loss(ls, lt, o.temperature)
                parts["kl"] = kl.detach()
                loss = loss + o.alpha * kl
            if maps:
                terms = []
                for kind, pairs in maps.items():
                    mask = inputs["attention_mask"] if kind == "llm" else None
                    for s, t in pairs:
                        hs = taps_s[kind].out[s]
                        ht = taps_t[kind].out[t].to(hs.device)
                        proj = wrapper.aux[f"{kind}_{s}_{t}"] if f"{kind}_{s}_{t}" in wrapper.aux else None
                        if proj is not None:
                            hs = proj(hs)
                        terms.append(training.hidden_kd_loss(hs, ht, mask, o.hidden_loss))
                hid = torch.stack(terms).mean()
                parts["hidden"] = hid.detach()
                loss = loss + o.hidden_weight * hid
            parts["loss"] = loss.detach()
            return loss, parts

        return loss_fn
