"""replace-layers: module replacement (papers/000): N consecutive layers become one, trained to act as the block.

A block of ``count`` consecutive LLM decoder layers (``component: llm``) or audio-encoder layers
(``component: audio``) is replaced by a single layer, initialised from one of them (``init``:
``first``, ``last``, an index inside the block, or ``random``). With every other parameter frozen,
the new layer trains to reproduce the block's output from the block's input:

    loss = mse_weight * ||h_new - block(h_in)||^2 / ||block(h_in)||^2  +  ce_weight * CE(reference)

where ``block`` is the original layers (kept frozen, outside the model) run on the same input the new
layer receives, and CE is the original objective (the reference translation after the chat prompt).
With ``unfreeze_steps`` > 0 a second phase then trains every parameter with the same loss.

The block is given (``layers: [3, 4]``) or chosen: ``position: middle`` / ``top`` (never the first or
last layer when ``protect_first_last``), or ``search``: every allowed block is scored by the mean
cross-entropy of the references of ``search_examples`` training utterances (never the held-out or
test split) with the block collapsed to its ``init`` layer (``last`` when ``init`` is random), and the
block that loses least is replaced. Scores go to ``replace_search.jsonl`` in the output.

The output is a plain model with one layer fewer per collapsed layer: ``text_config.num_hidden_layers``
and ``layer_types`` (or ``audio_config.encoder_layers``) follow, so ``from_pretrained`` reloads it
alone. The block's output error (the relative MSE above, on the search utterances) before and after
training is in the provenance record (``block_error``). Checkpoints and resume as in ``kd``.

Families whose layers cannot be taken out in place (:attr:`~iwslt_mc.families.base.Family.in_place_layer_removal`
False: Gemma 4, where each layer has its own per-layer-embedding slice, attention type and KV-sharing role)
train with the block's other layers bypassed instead (:func:`make_bypass`: they pass the hidden state through and
record every argument the model gives them), so each original layer's target runs with its own per-layer
input, position embeddings and mask; the family's surgery then removes them (:meth:`Family.pruned_copy`).
A block whose removal the family forbids (Gemma 4's KV sharing, a global last layer) is refused before any
weight is loaded; a block chosen by position or search is one the family allows.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..floor.modeldir import read_config
from ..training.common import layer_counts, load_training_data
from .base import Stage, StageContext, TrainingOptions

SEARCH_LOG = "replace_search.jsonl"
PARTS_LOG = "replace_history.jsonl"


@dataclass
class ReplaceLayersOptions(TrainingOptions):
    component: Literal["llm", "audio"] = field(default="llm", metadata={"help": "llm (decoder layers) or audio (encoder layers)"})
    layers: list[int] | None = field(default=None, metadata={
        "help": "the consecutive layers to replace (indices of the input model), e.g. [3, 4, 5]"})
    count: int = field(default=0, metadata={"help": "size of the block when chosen by position (2 or more)"})
    position: Literal["middle", "top", "search"] = field(default="middle", metadata={
        "help": "how the block is chosen when layers is not given: middle, top, or search (least CE loss)"})
    protect_first_last: bool = field(default=True, metadata={"help": "never replace the first or last layer (chosen blocks)"})
    init: str = field(default="last", metadata={
        "help": "the new layer starts as: first, last, an index inside the block, or random"})
    mse_weight: float = field(default=1.0, metadata={"help": "weight of the block-output MSE"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the original objective (reference CE)"})
    unfreeze_steps: int = field(default=0, metadata={"help": "then train every parameter for this many steps (0 = no)"})
    search_examples: int = field(default=16, metadata={
        "help": "training utterances used to score blocks (search) and to measure the block error"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})

    def validate(self) -> None:
        s = "stage replace-layers"
        self._check_training(s)
        if self.layers is not None:
            if self.count:
                raise UserError(f"{s}: give either layers or count (with position), not both")
            if len(self.layers) < 2:
                raise UserError(f"{s}: option 'layers' must list at least 2 consecutive layers")
            if min(self.layers) < 0:
                raise UserError(f"{s}: option 'layers': layer indices start at 0, got {min(self.layers)}")
            if sorted(self.layers) != list(range(min(self.layers), min(self.layers) + len(self.layers))):
                raise UserError(f"{s}: option 'layers' {self.layers} is not a block of consecutive layers")
        elif self.count < 2:
            raise UserError(f"{s}: nothing to replace (give layers: [i, i+1, ...] or count >= 2)")
        if self.init not in ("first", "last", "random"):
            try:
                int(self.init)
            except ValueError:
                raise UserError(f"{s}: option 'init' must be first, last, random or a layer index, not {self.init!r}") from None
        if self.mse_weight < 0 or self.ce_weight < 0 or self.mse_weight + self.ce_weight == 0:
            raise UserError(f"{s}: mse_weight and ce_weight must be >= 0 and not both 0")
        if self.unfreeze_steps < 0 or self.search_examples < 1:
            raise UserError(f"{s}: unfreeze_steps must be >= 0 and search_examples >= 1")

    def smoke(self):
        return dataclasses.replace(super().smoke(), unfreeze_steps=min(self.unfreeze_steps, 2),
                                   search_examples=min(self.search_examples, 2))


def candidate_blocks(n: int, count: int, protect: bool) -> list[list[int]]:
    lo, hi = (1, n - 1) if protect else (0, n)
    return [list(range(a, a + count)) for a in range(lo, hi - count + 1)]


def init_position(block: list[int], init: str) -> int:
    """The layer of ``block`` the new layer starts from (``last`` for random: it is re-initialised after)."""
    if init == "first":
        return block[0]
    if init in ("last", "random"):
        return block[-1]
    return int(init)


def removed_by(options: dict) -> list[int] | None:
    """The LLM layers (indices of the stage's input) a replace-layers stage with ``options`` (a recipe's option
    dict) removes: its given block but the kept layer; None when the block is chosen during the run (or the
    stage replaces audio-encoder layers)."""
    if options.get("component", "llm") != "llm" or not options.get("layers"):
        return None
    block = sorted(options["layers"])
    keep = init_position(block, str(options.get("init", "last")))
    return [i for i in block if i != keep]


class BlockTap:
    """Captures the new layer's input (args, kwargs) and output, to compute the block's target on the same input."""

    def __init__(self, layer):
        self.args = self.kwargs = self.out = None
        self.handles = [layer.register_forward_pre_hook(self._pre, with_kwargs=True),
                        layer.register_forward_hook(self._post)]

    def _pre(self, mod, args, kwargs):
        self.args, self.kwargs = args, kwargs

    def _post(self, mod, args, output):
        self.out = output[0] if isinstance(output, tuple) else output

    def target(self, originals):
        import torch

        with torch.no_grad():
            args, h = list(self.args), None
            kwargs = dict(self.kwargs)
            for k in ("past_key_values", "past_key_value", "cache"):  # the originals never touch the model's cache
                if k in kwargs:
                    kwargs[k] = None
            if "use_cache" in kwargs:
                kwargs["use_cache"] = False
            h = args[0] if args else kwargs.pop("hidden_states")
            rest = args[1:]
            for layer in originals:
                o = layer(h, *rest, **kwargs)
                h = o[0] if isinstance(o, tuple) else o
        return h

    def remove(self):
        for h in self.handles:
            h.remove()


def _call_parts(args, kwargs, shared: dict):
    """(hidden state, the other positional args, the kwargs) of one recorded layer call, without the model's
    cache; mappings (Gemma 4's shared key/value states) replaced by one copy per object (``shared``), so the
    originals' writes reach each other but never the model's."""
    kwargs = dict(kwargs)
    for k in ("past_key_values", "past_key_value", "cache"):  # the originals never touch the model's cache
        if k in kwargs:
            kwargs[k] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    for k, v in kwargs.items():
        if hasattr(v, "keys") and hasattr(v, "__setitem__"):
            if id(v) not in shared:
                shared[id(v)] = copy.copy(v)
            kwargs[k] = shared[id(v)]
    args = list(args)
    h = args[0] if args else kwargs.pop("hidden_states")
    return h, args[1:], kwargs


def make_bypass(tap, slot: int):
    """An ``nn.Module`` standing in a bypassed layer's place: it records the arguments the model gives that
    layer (:meth:`SlotTap.record`) and passes the hidden state through unchanged."""
    import torch.nn as nn

    class Bypass(nn.Module):
        def forward(self, *args, **kwargs):
            tap.record(slot, args, kwargs)
            return args[0] if args else kwargs["hidden_states"]

    return Bypass()


class SlotTap:
    """The block tap for a block trained with its other layers bypassed (:func:`make_bypass`): the arguments the
    model gives every position of the block (each with its own per-layer input, position embeddings, mask) and
    the kept layer's output; :meth:`target` runs the original layers in order, each on its own position's
    arguments, from the hidden state the block receives."""

    def __init__(self, layer, slots: list[int], keep: int):
        self.slots, self.keep = slots, keep
        self.calls: dict[int, tuple] = {}
        self.out = None
        self.handles = [layer.register_forward_pre_hook(self._pre, with_kwargs=True),
                        layer.register_forward_hook(self._post)]

    def record(self, slot, args, kwargs):
        self.calls[slot] = (args, kwargs)

    def _pre(self, mod, args, kwargs):
        self.record(self.keep, args, kwargs)

    def _post(self, mod, args, output):
        self.out = output[0] if isinstance(output, tuple) else output

    def target(self, originals):
        import torch

        shared: dict = {}
        with torch.no_grad():
            h = _call_parts(*self.calls[self.slots[0]], shared)[0]  # what the block receives
            for slot, layer in zip(self.slots, originals):
                _, rest, kwargs = _call_parts(*self.calls[slot], shared)
                o = layer(h, *rest, **kwargs)
                h = o[0] if isinstance(o, tuple) else o
        return h

    def remove(self):
        for h in self.handles:
            h.remove()


def bypass(stack, remove, tap=None) -> dict:
    """Layers ``remove`` of ``stack`` (an ``nn.ModuleList``) replaced by pass-through modules recording into
    ``tap`` (a :class:`SlotTap`; None: recording nothing); returns the layers taken out, by index."""
    saved = {}
    for i in remove:
        saved[i] = stack[i]
        stack[i] = make_bypass(tap if tap is not None else _NoTap(), i)
    return saved


class _NoTap:
    def record(self, slot, args, kwargs):
        pass


class bypassed:
    """Context manager: :func:`bypass` while inside, the layers put back on exit (the search's candidates)."""

    def __init__(self, stack, remove):
        self.stack, self.remove = stack, list(remove)

    def __enter__(self):
        self.saved = bypass(self.stack, self.remove)
        return self

    def __exit__(self, *exc):
        for i, m in self.saved.items():
            self.stack[i] = m
        return False


class ReplaceLayers(Stage):
    name = "replace-layers"
    Options = ReplaceLayersOptions
    techniques = ["module replacement"]

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        from ..floor.languages import check_lang

        o = self.options
        check_lang(ctx.lang)
        n, block = self._check_config(read_config(in_dir), str(in_dir))
        what = "LLM" if o.component == "llm" else "audio-encoder"
        if block is not None:
            why = self._forbidden(in_dir, block)
            if why:
                raise UserError(f"stage replace-layers: {what} layers {block[0]}-{block[-1]} cannot become one layer "
                                f"(layer {init_position(block, o.init)} kept): {why}")
        else:
            cands = candidate_blocks(n, o.count, o.protect_first_last)
            why = {tuple(b): self._forbidden(in_dir, b) for b in cands}
            self._candidates = [b for b in cands if not why[tuple(b)]]
            if not self._candidates:
                b = cands[len(cands) // 2]
                raise UserError(f"stage replace-layers: no block of {o.count} {what} layers in {in_dir} can become one "
                                f"layer (initialised from {o.init}); e.g. {b[0]}-{b[-1]}: {why[tuple(b)]}")
        if not ctx.data:
            raise UserError("stage replace-layers: no training data (give --data)")
        self._examples = load_training_data(ctx, o.split, o.limit, "replace-layers")

    def _forbidden(self, in_dir: Path, block: list[int]) -> str | None:
        """Why the model's family forbids collapsing LLM ``block`` (its layers but the kept one removed:
        :meth:`Family.check_layer_removal`, from the config alone), or None."""
        if self.options.component != "llm":
            return None
        from ..families import family_for

        keep = init_position(block, self.options.init)
        try:
            family_for(in_dir).check_layer_removal(in_dir, [i for i in block if i != keep])
        except UserError as e:
            return str(e)
        return None

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> dict:
        from .base import config_without_layers

        o = self.options
        n, block = self._check_config(cfg, where)
        block = block or candidate_blocks(n, o.count, o.protect_first_last)[0]
        gone = block[1:]  # the block becomes one layer
        return config_without_layers(cfg, gone, 0) if o.component == "llm" else config_without_layers(cfg, [], len(gone))

    def _check_config(self, cfg: dict, in_dir: str):
        """The checks against the input's config; returns (its layer count, the given block or None)."""
        o = self.options
        if cfg.get("quantization_config"):
            raise UserError(f"stage replace-layers: {in_dir} is quantized; replace layers in the unquantized model")
        n = layer_counts(cfg)[o.component]
        what = "LLM" if o.component == "llm" else "audio-encoder"
        if not n:
            raise UserError(f"stage replace-layers: {in_dir} has no {what} layers"
                            + (" (an encoder-free model: its audio enters the LLM directly)" if o.component == "audio" else ""))
        if o.layers is not None:
            bad = [i for i in o.layers if i >= n]
            if bad:
                raise UserError(f"stage replace-layers: {what} layer {bad[0]} out of range ({in_dir} has {n}: 0..{n - 1})")
            block = sorted(o.layers)
        else:
            if not candidate_blocks(n, o.count, o.protect_first_last):
                raise UserError(f"stage replace-layers: no block of {o.count} {what} layers in {in_dir} ({n} layers"
                                + (", the first and last protected)" if o.protect_first_last else ")"))
            block = None
        if block is not None and o.init not in ("first", "last", "random") and int(o.init) not in block:
            raise UserError(f"stage replace-layers: init layer {o.init} is not in the block {block}")
        return n, block

    # ------------------------------------------------------------------------------------------

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from .. import modelio
        from ..families import surgery_of
        from ..training import training
        from ..training.data import describe_data
        from ..families import family_of_model
        from ..families import layout_of as find_layout
        from ..training.common import checkpoint_dtype, count_params, load_dtype

        o = self.options
        if not hasattr(self, "_examples"):
            self.check(in_dir, ctx)
        examples = self._examples
        if not training.is_main_process():
            ctx = dataclasses.replace(ctx, log=lambda msg: None)
        device = ctx.resolved_device()
        work = Path(ctx.work_dir) if ctx.work_dir else out_dir.with_name(out_dir.name + ".work")
        work.mkdir(parents=True, exist_ok=True)
        processor = modelio.load_processor(in_dir)
        dt = load_dtype(o.dtype)
        if dt is None:
            dt = modelio.runtime_dtype(in_dir, device)  # half precision trains in float32 on a CPU
        model = modelio.load_model(in_dir, dtype=dt)
        layout = find_layout(model)
        # a family whose layers come out only by rebuilding the model (Gemma 4) trains with the block bypassed
        fam = family_of_model(model)
        in_place = fam.in_place_layer_removal
        stack = layout.decoder_layers if o.component == "llm" else layout.audio_layers
        n = len(stack)
        probe = self._probe_batches(examples, processor, ctx)
        search = None
        cands = getattr(self, "_candidates", None) or candidate_blocks(n, o.count, o.protect_first_last)
        if o.layers is not None:
            block = sorted(o.layers)
        elif o.position == "search":
            block, search = self._search(model, stack, in_place, cands, probe, work, out_dir, ctx)
        else:
            block = cands[len(cands) // 2] if o.position == "middle" else cands[-1]
        keep = init_position(block, o.init)
        what = "LLM" if o.component == "llm" else "audio-encoder"
        ctx.log(f"replace-layers: {what} layers {block[0]}-{block[-1]} -> one layer (from {o.init})")

        originals = [copy.deepcopy(stack[i]).requires_grad_(False).eval() for i in block]
        remove = [i for i in block if i != keep]
        if in_place:
            surgery = surgery_of(model)
            (surgery.remove_llm_layers if o.component == "llm" else surgery.remove_audio_layers)(model, remove)
            new_layer = stack[block[0]]
        else:
            new_layer = stack[keep]
        if o.init == "random":
            from transformers import set_seed

            set_seed(ctx.seed)
            for m in new_layer.modules():
                model._init_weights(m)
        if in_place:
            tap = BlockTap(new_layer)
        else:  # the others pass the hidden state through, recording what the model gives each of them
            tap = SlotTap(new_layer, block, keep)
            bypass(stack, remove, tap)
        loss_fn = self._loss_fn(tap, originals, o.component)

        def measure() -> float:
            return self._block_error(model, tap, originals, probe)

        error_before = measure()
        ctx.log(f"replace-layers: block output error (relative MSE) before training {error_before:.4f}")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in new_layer.parameters():
            p.requires_grad_(True)
        trainable, total = count_params(model)
        wrapper = training.objective_model(model, loss_fn, frozen={"originals": originals})
        parts_path = work / PARTS_LOG if training.is_main_process() else None
        settings = o.settings(ctx, device)
        r1 = training.train(wrapper, processor, examples, ctx.lang, settings, work_dir=work / "replace",
                            log=ctx.log, callbacks=[training.parts_recorder(wrapper, parts_path)])
        error_after = measure()
        ctx.log(f"replace-layers: {r1.steps} steps (new layer only, {trainable:,} parameters); block error "
                f"{error_before:.4f} -> {error_after:.4f}")
        r2 = None
        if o.unfreeze_steps:
            for p in model.parameters():
                p.requires_grad_(True)
            r2 = training.train(wrapper, processor, examples, ctx.lang,
                                dataclasses.replace(settings, max_steps=o.unfreeze_steps),
                                work_dir=work / "unfreeze", log=ctx.log,
                                callbacks=[training.parts_recorder(wrapper, parts_path)])
            ctx.log(f"replace-layers: {r2.steps} more steps with every parameter training")
        tap.remove()
        trainer = (r2 or r1).trainer
        if training.is_main_process():
            if not in_place:  # the family's surgery takes the bypassed layers out (config, per-layer tables)
                model = (fam.pruned_copy(model, remove) if o.component == "llm"
                         else fam.pruned_copy(model, [], remove))
            model.config.use_cache = True
            modelio.save_model(model, processor, out_dir, dtype=checkpoint_dtype(in_dir))
            for name in (PARTS_LOG,):
                if (work / name).exists():
                    shutil.copy2(work / name, out_dir / name)
            for sub, r in (("replace", r1), ("unfreeze", r2)):
                if r is not None and (work / sub / training.LOG_NAME).exists():
                    shutil.copy2(work / sub / training.LOG_NAME, out_dir / f"train-{sub}.log")
        trainer.accelerator.wait_for_everyone()
        technique = (f"module replacement ({what} layers {block[0]}-{block[-1]} of {n} replaced by one layer "
                     f"initialised {'randomly' if o.init == 'random' else f'from layer {keep}'}, trained alone to "
                     f"reproduce the block's output (MSE weight {o.mse_weight:g}, reference CE weight {o.ce_weight:g}; "
                     f"{o.budget()})" + (f", then {o.unfreeze_steps} steps with every parameter" if o.unfreeze_steps else "")
                     + (f"; block chosen by CE search on {search['examples']} training utterances" if search else "") + ")")
        key = "replaced_llm_layers" if o.component == "llm" else "replaced_audio_layers"
        extras = {
            "techniques": [technique], "data": describe_data(ctx.data, o.split),
            key: block, "kept_layer": keep, "layers_before": n, "layers_after": n - len(block) + 1,
            "block_error": {"before": round(error_before, 6), "after": round(error_after, 6),
                            "utterances": sum(len(b["input_ids"]) for b in probe)},
            "train": {"examples": len(examples), "steps": r1.steps, "first_loss": r1.first_loss,
                      "final_loss": r1.final_loss, "seconds": r1.seconds, "trainable_params": trainable,
                      "resumed_from": r1.resumed_from,
                      "unfreeze": None if r2 is None else {"steps": r2.steps, "first_loss": r2.first_loss,
                                                           "final_loss": r2.final_loss, "seconds": r2.seconds}},
        }
        if search:
            extras["search"] = search
        return extras

    # ------------------------------------------------------------------------------------------

    def _probe_batches(self, examples, processor, ctx):
        """The first ``search_examples`` training utterances, encoded and collated in batches of 4."""
        from ..training import training

        ds = training.SpeechTranslationDataset(examples[: self.options.search_examples], processor, ctx.lang)
        coll = training.Collator(training.pad_token_id(processor))
        items = [ds[i] for i in range(len(ds))]
        return [coll(items[i:i + 4]) for i in range(0, len(items), 4)]

    def _block_error(self, model, tap, originals, probe) -> float:
        import torch

        was = model.training
        model.eval()
        num = den = 0.0
        with torch.no_grad():
            for b in probe:
                model(**{k: v.to(model.device) for k, v in b.items() if k != "labels"}, use_cache=False)
                t = tap.target(originals)
                mask = b["attention_mask"].to(t.device).bool() if self.options.component == "llm" else None
                s, tt = (tap.out[mask], t[mask]) if mask is not None else (tap.out, t)
                num += float(((s.float() - tt.float()) ** 2).sum())
                den += float((tt.float() ** 2).sum())
        model.train(was)
        return num / max(den, 1e-12)

    def _search(self, model, stack, in_place: bool, candidates, probe, work: Path, out_dir: Path, ctx):
        """The block of ``candidates`` (those the family allows) whose collapse loses least reference CE."""
        import torch

        from ..families import surgery_of

        o = self.options
        if in_place:
            surgery = surgery_of(model)
            removed = surgery.llm_layers_removed if o.component == "llm" else surgery.audio_layers_removed
        else:  # bypassing a layer computes what the family's rebuilt model without it does
            def removed(model, indices):
                return bypassed(stack, indices)
        log_path = work / SEARCH_LOG
        done = {}
        if log_path.exists():
            for line in log_path.read_text("utf-8").splitlines():
                try:
                    r = json.loads(line)
                    done[tuple(r["block"])] = r["ce"]
                except (ValueError, KeyError):
                    break
        model.eval()
        for block in candidates:
            if tuple(block) in done:
                continue
            keep = init_position(block, "last" if o.init == "random" else o.init)
            with removed(model, [i for i in block if i != keep]), torch.no_grad():
                ce = sum(float(model(**{k: v.to(model.device) for k, v in b.items()}, use_cache=False).loss)
                         for b in probe) / len(probe)
            done[tuple(block)] = ce
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"block": block, "ce": ce}) + "\n")
            ctx.log(f"replace-layers: block {block[0]}-{block[-1]}: CE {ce:.4f}")
        model.train()
        best = min(done, key=lambda b: (done[b], b))
        shutil.copy2(log_path, out_dir / SEARCH_LOG)
        return list(best), {"examples": sum(len(b["input_ids"]) for b in probe), "criterion": "reference CE",
                            "scores": {f"{b[0]}-{b[-1]}": round(v, 6) for b, v in sorted(done.items())},
                            "log": SEARCH_LOG}

    def _loss_fn(self, tap, originals, component):
        from ..training import training

        o = self.options

        def loss_fn(wrapper, batch):
            out = wrapper.student(**batch)
            parts = {}
            loss = out.loss.new_zeros(())
            if o.ce_weight:
                parts["ce"] = out.loss.detach()
                loss = loss + o.ce_weight * out.loss
            if o.mse_weight:
                for m in originals:  # the frozen block follows the model's device (Trainer moved it)
                    m.to(tap.out.device)
                target = tap.target(originals)
                mask = batch["attention_mask"] if component == "llm" else None
                mse = training.hidden_kd_loss(tap.out, target, mask, "mse")
                parts["block_mse"] = mse.detach()
                loss = loss + o.mse_weight * mse
            parts["loss"] = loss.detach()
            return loss, parts

        return loss_fn
