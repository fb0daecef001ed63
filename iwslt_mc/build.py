"""``iwslt-mc build``: run a recipe's stages in order, resumably, and size the result.

Layout of a build directory::

    OUT/build.json          state: recipe, arguments, prediction, one entry per stage (fingerprint, status
                            running/done); written (atomically) before the first stage starts
    OUT/recipe.yaml         the recipe as run (after --set overrides)
    OUT/stages/NN-ID/       each stage's output model directory (appears only when the stage finished)
    OUT/work/NN-ID/         a running stage's checkpoints (removed when it finishes)
    OUT/model/              the final model: hard links to the last stage's files, with full provenance

The directory is created only after the recipe was checked against the base (the planner's
prediction), and is resumable from then on: killed at any moment, ``--resume`` continues it (a
training stage from its last checkpoint) and ends with the same bytes as an uninterrupted build.
A stage is skipped on ``--resume`` when its directory exists and its fingerprint (stage, options,
data, language, condition, smoke, seed and the fingerprint of its input) matches the one recorded
when it finished. Anything downstream of a changed stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .fsutil import atomic_write_json, atomic_write_text
from .recipes import BUILTIN_DATA, Recipe, StageEntry, join_query, split_ref

STATE = "build.json"
_BUILD_ENTRIES = {STATE, "recipe.yaml", "stages", "work", "model", ".model.partial"}


@dataclass
class BuildResult:
    out_dir: Path
    model_dir: Path
    stages: list[dict]
    prediction: dict | None
    size: dict
    skipped: list[str] = field(default_factory=list)


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_data(recipe: Recipe, entry: StageEntry, data: dict[str, str], condition: str,
                 stage_dirs: dict[str, Path]) -> list[str]:
    """Data references of ``entry`` -> data specs (paths with loader options after ``?``)."""
    out = []
    for ref in entry.data:
        name, query = split_ref(ref)
        if name.startswith("@"):
            d = stage_dirs[name[1:]]
            sub = d / "distill_data"
            out.append(join_query(str(sub if sub.exists() else d), query))
            continue
        _check_ref(recipe, entry, name, data, condition)
        out.append(join_query(data[name], query))
    return out


def _check_ref(recipe: Recipe, entry: StageEntry, name: str, data: dict[str, str], condition: str) -> None:
    if condition == "constrained" and name != BUILTIN_DATA:
        raise UserError(f"{recipe.path}:{entry.line}: stage {entry.id} asks for data {name!r}, but under the "
                        f"constrained condition only ACL 60/60 ({BUILTIN_DATA}) may be used")
    if name not in data:
        flag = "--data PATH" if name == BUILTIN_DATA else f"--data {name}=PATH"
        raise UserError(f"{recipe.path}:{entry.line}: stage {entry.id} needs data {name!r}: give {flag}")


def check_data_refs(recipe: Recipe, data: dict[str, str], condition: str) -> None:
    """All data problems before any work: constrained violations, missing or absent --data."""
    if condition == "constrained":
        extra = sorted(n for n in data if n != BUILTIN_DATA)
        if extra:
            raise UserError(f"--data {extra[0]}: under the constrained condition only ACL 60/60 ({BUILTIN_DATA}) "
                            "may be used (use --condition unconstrained for other data)")
    for entry in recipe.active_stages(condition):
        for ref in entry.data:
            name, _ = split_ref(ref)
            if not name.startswith("@"):
                _check_ref(recipe, entry, name, data, condition)
    for name, spec in data.items():
        path = split_ref(spec)[0]
        if not Path(path).exists() and (path.startswith((".", "/", "~")) or path.count("/") != 1):
            raise UserError(f"{path}: data for {name!r} not found")


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy where links fail) every file of ``src`` into a fresh ``dst``."""
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (tmp / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            s, d = Path(root) / f, tmp / rel / f
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def _finished_record(running: dict, sdir: Path) -> dict:
    """The state entry of a stage that finished but was killed before the state said so (from its provenance)."""
    last = json.loads((sdir / "provenance.json").read_text(encoding="utf-8"))["stages"][-1]
    return {**running, "status": "done", "seconds": last.get("seconds"), "params_after": last.get("params_after"),
            "bytes_after": last.get("bytes_after")}


def _record_stage(state: dict, state_path: Path, finished: list[dict], rec: dict) -> None:
    """Write ``state`` with ``finished`` stages, then ``rec``, then the older entries of other stages."""
    ids = {x["id"] for x in finished} | {rec["id"]}
    state["stages"] = finished + [rec] + [s for s in state.get("stages", []) if s["id"] not in ids]
    atomic_write_json(state_path, state)


def check_build_dir(out: Path, *, resume: bool) -> dict:
    """Check ``out`` for a new build or a resumed one and return its state (empty when new).

    Accepted: a missing or empty directory (a new build, with or without --resume), or a build directory
    (one with build.json) with --resume. Every refusal names what the next command should be."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    state_path = out / STATE
    if out.is_dir():
        # a build.json temporary file is all a build killed within its first write can leave
        for tmp in out.glob(f".{STATE}.*.tmp"):
            tmp.unlink(missing_ok=True)
        entries = {p.name for p in out.iterdir()}
        if entries:
            # a build killed in its first stage by an older iwslt-mc has no build.json yet: resumable all the same
            legacy = STATE not in entries and "recipe.yaml" in entries and entries <= _BUILD_ENTRIES
            if not state_path.exists() and not legacy:
                raise UserError(f"{out}: not empty and not a build directory (no {STATE}); choose another --out")
            if not resume:
                raise UserError(f"{out}: build directory exists; rerun with --resume to continue it, "
                                "or choose another --out")
    if not state_path.exists():
        return {}
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{state_path}: unreadable build state ({e}); choose another --out") from None
    if not isinstance(state, dict) or not isinstance(state.get("stages", []), list):
        raise UserError(f"{state_path}: not a build state; choose another --out")
    return state


def build(recipe: Recipe, *, lang: str, base: str, data: dict[str, str], condition: str, out: Path,
          resume: bool = False, smoke: bool = False, seed: int = 0, device: str | None = None,
          edition: str | None = None, log=print) -> BuildResult:
    from .distributed import world_size
    from .modelio import check_model_dir, is_local
    from .floor.languages import check_lang

    if world_size() > 1:
        raise UserError("build runs as one process: under accelerate launch/torchrun every process would run the "
                        "whole recipe. Run the training stages with `accelerate launch -m iwslt_mc stage finetune ...` "
                        "(see README, Several GPUs)")
    from .sizing.track import get_edition

    edition = get_edition(edition).key  # None: the newest, as every other command
    check_lang(lang)
    if condition not in ("constrained", "unconstrained"):
        raise UserError(f"--condition must be constrained or unconstrained, not {condition!r}")
    if is_local(base):
        check_model_dir(base)
    from .recipes import check_recipe_family

    check_recipe_family(recipe, base)
    check_data_refs(recipe, data, condition)
    out = Path(out)
    state_path = out / STATE
    state = check_build_dir(out, resume=resume)
    # the stages' own checks and the prediction validate the recipe against the base before the directory exists
    validate_stages(recipe, base, condition=condition, lang=lang, data=data, smoke=smoke)
    prediction = predict_recipe(recipe, base, condition=condition, lang=lang, data=data, edition=edition, smoke=smoke)
    if prediction:
        log(f"planner: predicted {prediction['bytes']:,} bytes, {prediction['params']:,} parameters, "
            f"{size_verdict(edition, prediction['bin'], prediction.get('torch_save'), predicted=True)}")
    # The state is on disk before any stage starts: a build killed at any moment after this is resumable.
    state.update({
        "recipe": recipe.name, "recipe_file": str(recipe.path), "lang": lang, "base": str(base),
        "data": data, "condition": condition, "smoke": smoke, "seed": seed, "edition": edition,
        "prediction": prediction, "status": "running",
    })
    state.pop("final", None)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state_path, state)
    atomic_write_text(out / "recipe.yaml", recipe.text)
    try:
        return _run_stages(recipe, state, prediction, lang=lang, base=base, data=data, condition=condition, out=out,
                           resume=resume, smoke=smoke, seed=seed, device=device, edition=edition, log=log)
    except UserError as e:
        raise UserError(f"{e} ({out} keeps what finished: fix this, then rerun with --resume)") from None
    except Exception as e:
        e.add_note(f"iwslt-mc build: {out} keeps what finished: rerun the same command with --resume to continue")
        raise


def _run_stages(recipe: Recipe, state: dict, prediction: dict | None, *, lang: str, base: str, data: dict[str, str],
                condition: str, out: Path, resume: bool, smoke: bool, seed: int, device: str | None, edition: str,
                log) -> BuildResult:
    from .sizing import sizer
    from .floor.modeldir import model_fingerprint
    from .modelio import is_local
    from .stages import make_stage
    from .stages.base import StageContext, run_stage

    state_path = out / STATE
    prev = {s["id"]: s for s in state.get("stages", [])}
    stages_state: list[dict] = []
    stage_dirs: dict[str, Path] = {}
    stage_fps: dict[str, str] = {}
    in_dir = Path(base) if is_local(base) else base
    in_fp = model_fingerprint(base) if is_local(base) else str(base)
    skipped = []
    active = [e for e in scaled_stages(recipe, base, smoke=smoke) if e.when in (None, condition)]
    (out / "stages").mkdir(exist_ok=True)
    for n, entry in enumerate(active, 1):
        sdir = out / "stages" / f"{n:02d}-{entry.id}"
        options = {k: (str(stage_dirs[v[1:]]) if isinstance(v, str) and v.startswith("@") else v)
                   for k, v in entry.options.items()}
        fp_options = {k: (f"@{stage_fps[v[1:]]}" if isinstance(v, str) and v.startswith("@") else v)
                      for k, v in entry.options.items()}
        data_specs = resolve_data(recipe, entry, data, condition, stage_dirs)
        fp_data = [(f"@{stage_fps[split_ref(r)[0][1:]]}?{split_ref(r)[1]}" if r.startswith("@") else data_specs[i])
                   for i, r in enumerate(entry.data)]
        fp = _fingerprint({"stage": entry.stage, "options": fp_options, "data": fp_data, "lang": lang,
                           "condition": condition, "smoke": smoke, "seed": seed, "input": in_fp})
        done = prev.get(entry.id)
        # "running" with its directory present: killed between the stage's atomic rename and the state write
        # (the directory is removed before a stage is marked running, so it is this run's complete output)
        if (resume and done and done.get("status") in ("done", "running") and done.get("fingerprint") == fp
                and sdir.exists()):
            log(f"[{n}/{len(active)}] {entry.id} ({entry.stage}): unchanged, skipped")
            skipped.append(entry.id)
            rec = done if done["status"] == "done" else _finished_record(done, sdir)
        else:
            if sdir.exists():
                shutil.rmtree(sdir)  # stale output of a changed stage
            wdir = out / "work" / sdir.name
            if done and done.get("fingerprint") != fp and wdir.exists():
                log(f"[{n}/{len(active)}] {entry.id}: options, data or input changed since its checkpoints were "
                    f"written: discarding {wdir}")
                shutil.rmtree(wdir)
            for stale in (out / "stages").glob(f".{sdir.name}.*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
            # recorded before the stage starts: a kill inside it leaves a state that --resume continues
            _record_stage(state, state_path, stages_state, {"id": entry.id, "stage": entry.stage, "dir": str(sdir),
                                                            "fingerprint": fp, "status": "running"})
            stage = make_stage(entry.stage, options)
            if smoke:
                stage = stage.with_smoke()
            ctx = StageContext(lang=lang, data=data_specs, condition=condition, smoke=smoke, seed=seed,
                               device=device, work_dir=out / "work" / sdir.name, log=log)
            log(f"[{n}/{len(active)}] {entry.id} ({entry.stage}) -> {sdir}")
            t0 = time.time()
            record = run_stage(stage, in_dir, sdir, ctx)
            rec = {"id": entry.id, "stage": entry.stage, "dir": str(sdir), "fingerprint": fp, "status": "done",
                   "seconds": round(time.time() - t0, 2), "params_after": record.get("params_after"),
                   "bytes_after": record.get("bytes_after")}
        # record progress after every stage, so a crash later keeps what finished
        _record_stage(state, state_path, stages_state, rec)
        stages_state.append(rec)
        stage_dirs[entry.id] = sdir
        stage_fps[entry.id] = fp
        in_dir, in_fp = sdir, fp

    model_dir = out / "model"
    _link_tree(Path(in_dir), model_dir)
    rep = sizer.measure(model_dir, edition=edition)
    size = {"bytes": rep.bytes, "params": rep.params, "bin": rep.bin, "edition": edition,
            "torch_save": rep.torch_save.to_json() if rep.torch_save else None}
    if prediction:
        size["predicted_bytes"] = prediction["bytes"]
        size["prediction_error"] = round((prediction["bytes"] - rep.bytes) / rep.bytes, 6)
    state["stages"] = stages_state
    state["final"] = {"dir": str(model_dir), **size}
    state["status"] = "done"
    atomic_write_json(state_path, state)
    if (out / "work").is_dir() and not any((out / "work").iterdir()):
        (out / "work").rmdir()  # every stage's checkpoints went when it finished
    return BuildResult(out_dir=out, model_dir=model_dir, stages=stages_state, prediction=prediction, size=size,
                       skipped=skipped)


def validate_stages(recipe: Recipe, base: str, *, condition: str, lang: str, data: dict, smoke: bool = False) -> None:
    """Every check of the recipe's stages that needs only the base's config.json (and the module names it
    builds on the meta device), before any work: each stage's :meth:`~iwslt_mc.stages.base.Stage.plan` on the
    config the earlier stages leave (layer indices against the layers left at that point, module patterns
    against the modules that exist then, widths against the current widths, a quantized input where the stage
    needs an unquantized one). Run by ``build --dry-run`` and by ``build`` before its directory exists; errors
    name the recipe file, the stage's line and its id."""
    from .families import families, family_of_model_type
    from .modelio import is_local
    from .stages import make_stage
    from .floor.modeldir import read_config
    from .stages.base import StageContext

    if not is_local(base) or not (Path(base) / "config.json").is_file():
        return
    cfg = read_config(Path(base))
    ctx = StageContext(lang=lang, condition=condition, smoke=smoke, log=lambda *a: None)
    for n, entry in enumerate(e for e in scaled_stages(recipe, base, smoke=smoke) if e.when in (None, condition)):
        from .recipes import _strip_refs

        stage = make_stage(entry.stage, _strip_refs(entry.options))
        if smoke:
            stage = stage.with_smoke()
        where = (f"the input of stage {entry.id} ({base}" + (f" after {n} earlier stage{'s' * (n > 1)})" if n else ")"))
        try:
            fam = family_of_model_type(cfg.get("model_type"))
            if fam is not None and not fam.supports(stage.name):
                handled = [f.name for f in families() if f.supports(stage.name)]
                raise UserError(f"stage {stage.name}: not supported for {fam.name} models yet (it handles: "
                                f"{', '.join(handled)})")
            cfg = stage.plan(cfg, ctx, where) or cfg
        except UserError as e:
            raise UserError(f"{recipe.path}:{entry.line}: {e}") from None


def size_verdict(edition: str | None, bin_name: str | None, torch_save: dict | None, *, predicted: bool = False) -> str:
    """What a size means for ``edition``, in words: the bin (2025), or for an edition without bins (2026,
    2027) that it is ranked on the quality-size Pareto frontier, with its primary size measure."""
    from .sizing.track import get_edition

    ed = get_edition(edition)
    if ed.has_bins:
        return bin_name or f"NO BIN: >= 4 GB, NOT ELIGIBLE for a size bin of the {ed.key} edition"
    if ed.primary_size_measure != "torch_save_bytes":
        measure = "size measure: the safetensors bytes"
    elif torch_save:
        div = 2**30 if ed.size_unit == "GiB" else 10**9
        measure = (f"{'predicted ' if predicted else ''}torch.save {torch_save['bytes'] / div:.3f} {ed.size_unit} "
                   f"({torch_save['bytes']:,} bytes)")
    else:
        measure = "torch.save size not exact from the headers (iwslt-mc size MODEL --torch-save stream measures it)"
    return f"edition {ed.key}: no size bins, ranked on the Pareto frontier of quality and size; {measure}"


def predict_recipe(recipe: Recipe, base: str, *, condition: str, lang: str, data: dict, edition: str,
                   smoke: bool = False) -> dict | None:
    """The planner's prediction for the recipe's final model, before any work (None if the base has no
    local config). Layer, width, vocabulary and precision changes are read from the stages' options;
    the trimmed vocabulary is counted by tokenizing the same text the trim-vocab stage will read."""
    from .modelio import is_local
    from .planning.planner import load_base_config, predict

    if not is_local(base):
        return None
    cfg = load_base_config(base)
    stages = [e for e in scaled_stages(recipe, base, smoke=smoke) if e.when in (None, condition)]
    spec, notes = spec_for_stages(stages, cfg, base=base, lang=lang, data=data, condition=condition)
    pred = predict(spec, cfg, edition=edition, base_name=str(base))
    out = pred.to_json()
    out["notes"] = notes
    return out


_SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _base_float(cfg) -> str:
    dt = str(getattr(cfg, "dtype", None) or "bfloat16").replace("torch.", "")
    return _SHORT_DTYPE.get(dt, "bf16")


_SKIP_COMPONENTS = {"lm_head": "lm_head", "audio_tower": "audio_encoder", "multi_modal_projector": "projector",
                    "embed_tokens": "embed_tokens",
                    # Gemma 4's module names
                    "embed_audio": "projector", "vision_tower": "vision_encoder", "embed_vision": "vision_encoder",
                    "embed_tokens_per_layer": "per_layer_embeddings", "per_layer_model_projection": "per_layer_embeddings"}


def schema_options(entry: StageEntry, *, smoke: bool = False) -> dict:
    """Every option of ``entry``'s stage as the stage itself reads it: the stage's option schema applied to
    the recipe's values (coercion, defaults, and with ``smoke`` its scaled-down values). ``@ID`` values
    read as placeholders here; the planner never needs them."""
    from .recipes import _strip_refs
    from .stages import make_stage

    stage = make_stage(entry.stage, _strip_refs(entry.options))
    return (stage.with_smoke() if smoke else stage).options.to_dict()


def spec_for_stages(stages: list[StageEntry], cfg, *, base: str, lang: str, data: dict, condition: str):
    """A planner ``Spec`` equivalent to running ``stages`` on a model with config ``cfg``."""
    from .planning.planner import Spec, base_dims

    dims = dict(base_dims(cfg))
    fdt = _base_float(cfg)
    precision, per = fdt, {}
    ct_embeddings = drop_vision = False
    notes: list[str] = []
    from .families import family_of_config

    # a family whose layers differ in size (Gemma 4: sliding/global): which ones stay is part of the prediction
    fam = family_of_config(cfg)
    llm_kept = list(range(dims["llm_layers"])) if fam.tracks_kept_layers else None
    for e in stages:
        o = schema_options(e)
        if e.stage == "prune-layers" and llm_kept is not None:
            llm_kept = fam.kept_after_prune(cfg, llm_kept, o)
            if llm_kept is None:
                notes.append(f"stage {e.id}: the searched layers are not known before the build; planned as the "
                             "valid block nearest the middle")
        if e.stage == "replace-layers" and llm_kept is not None and o.get("component", "llm") == "llm":
            from .stages.replace_layers import removed_by

            gone = removed_by(o)
            llm_kept = fam.kept_after_prune(cfg, llm_kept, {"llm_layers": gone}) if gone is not None else None
            if llm_kept is None:
                notes.append(f"stage {e.id}: the replaced block is chosen during the build; planned as the valid "
                             "block nearest the middle")
        if e.stage == "prune-layers":
            for key, listed, count, what in (("llm_layers", "llm_layers", "remove", "LLM"),
                                             ("audio_layers", "audio_layers", "audio_remove", "audio-encoder")):
                if dims.get(key) is None:
                    continue
                n = len(o.get(listed) or []) + int(o.get(count) or 0)
                if n >= dims[key]:
                    raise UserError(f"stage {e.id} removes {n} {what} layers, but the model has only {dims[key]} there "
                                    f"(base {base}{'; on a small test model add --smoke' if n > 2 else ''})")
                dims[key] -= n
        elif e.stage == "drop-vision":
            drop_vision = True
        elif e.stage == "prune-ffn":
            from .stages.prune_ffn import rounded_width

            m = int(o.get("multiple_of") or 64)
            dims["ffn_dim"] = rounded_width(o.get("llm_width"), m) or dims["ffn_dim"]
            dims["audio_ffn_dim"] = rounded_width(o.get("audio_width"), m) or dims["audio_ffn_dim"]
        elif e.stage == "prune-hidden":
            dims.update(_hidden_dims(cfg, dims, o, e.id))
        elif e.stage == "trim-vocab":
            n = _trimmed_vocab(e, base, lang, data, condition)
            if n is None:
                notes.append("trim-vocab: vocabulary size not predictable before the build; counted untrimmed")
            else:
                dims["vocab"] = n
        elif e.stage == "quantize":
            method = o.get("method", "nf4")
            precision = method if method == "int8" else method + ("-dq" if o.get("double_quant", True) else "")
            if method == "ct":
                from .floor.sizes import ct_precision

                precision = ct_precision(int(o.get("bits") or 4), int(o.get("group_size", 128)), bool(o.get("symmetric", False)))
                ct_embeddings = "int8" if o.get("int8_embeddings") else bool(o.get("quantize_embeddings", False))
                if o.get("allocation"):  # bits per module: the allocation file holds its own exact figure
                    precision = ct_precision(8, int(o.get("group_size", 128)), True)
                    notes.append(f"quantize: bits per module from {o['allocation']}: not a planner spec, so "
                                 "predicted here as uniform symmetric ct8 (a rough figure); the file's 'predicted' is "
                                 "the exact one for the model it was made on (iwslt-mc plan --allocate)")
            per = {}
            if method == "autoround":  # calibrated: packed symmetric ct in the LLM decoder blocks (and as asked)
                from .floor.sizes import ct_precision

                precision = ct_precision(int(o.get("bits") or 4), int(o.get("group_size", 128)), True)
                packed = {"llm_layers"} | ({"lm_head"} if o.get("quantize_lm_head") else set()) | (
                    {"audio_encoder", "projector"} if o.get("quantize_audio") else set())
                per = {c: fdt for c in fam.components if c not in packed}
            for name in ([] if method == "autoround" else o.get("skip", ["lm_head"]) or []):  # autoround: its own
                comp = _SKIP_COMPONENTS.get(str(name).split(".")[-1])
                if comp is None:
                    notes.append(f"quantize: skip pattern {name!r} not mapped to a component; predicted as quantized")
                else:
                    per[comp] = fdt
            if o.get("dtype", "auto") not in (None, "auto"):
                fdt = _SHORT_DTYPE.get(o["dtype"], o["dtype"])
        elif e.stage == "finetune" and o.get("save_dtype") not in (None, "input"):
            # the output keeps the input's dtype unless save_dtype says otherwise (not the training dtype)
            fdt = _SHORT_DTYPE.get(o["save_dtype"], o["save_dtype"])
        else:
            from .planning.recipe_spec import dims_after_distillation_stage  # kd, replace-layers

            dims = dims_after_distillation_stage(e.stage, o, dims) or dims
    if precision in ("bf16", "fp16", "fp32"):
        precision = fdt
    # embeddings are never quantized by bitsandbytes (nn.Embedding), whatever the default precision
    if ct_embeddings == "int8":
        from .floor.sizes import CT_INT8_ROWS

        per["embed_tokens"] = CT_INT8_ROWS  # int-quantized 8-bit, a scale per row (quantize option int8_embeddings)
    elif ct_embeddings:
        per["embed_tokens"] = precision  # compressed-tensors quantizes nn.Embedding too
    else:
        per.setdefault("embed_tokens", fdt)
    quant_lm_head = precision not in ("bf16", "fp16", "fp32") and "lm_head" not in per
    spec = Spec(llm_layers=dims["llm_layers"], audio_layers=dims.get("audio_layers"), ffn_dim=dims["ffn_dim"],
                audio_ffn_dim=dims.get("audio_ffn_dim"), vocab=dims["vocab"], precision=precision,
                component_precision=per, quantize_embeddings=quant_lm_head, float_dtype=fdt,
                hidden=dims.get("hidden"), heads=dims.get("heads"), audio_hidden=dims.get("audio_hidden"),
                drop_vision=drop_vision, llm_kept=llm_kept if llm_kept is not None and
                len(llm_kept) != base_dims(cfg)["llm_layers"] else None)
    return spec, notes


def _hidden_dims(cfg, dims: dict, options: dict, stage_id: str) -> dict:
    """LLM width, heads and audio width after a prune-hidden stage, by the stage's own rule."""
    from .planning.planner import apply_hidden_dims
    from .stages.prune_hidden import PruneHiddenOptions, target_shape

    current = json.loads(apply_hidden_dims(cfg, dims).to_json_string(use_diff=False))
    shape = target_shape(current, PruneHiddenOptions.from_dict(options, stage="prune-hidden"), where=stage_id)
    return {"hidden": shape["hidden"], "heads": shape["heads"], "audio_hidden": shape["audio_hidden"]}


def _trimmed_vocab(entry: StageEntry, base: str, lang: str, data: dict, condition: str) -> int | None:
    try:
        from .stages.trim_vocab import kept_token_ids
    except ImportError:
        return None
    specs = [join_query(data[split_ref(r)[0]], split_ref(r)[1]) for r in entry.data
             if not r.startswith("@") and split_ref(r)[0] in data]
    return len(kept_token_ids(Path(base), entry.options, lang=lang, data=specs))


# Architecture-dependent options, scaled under --smoke from the 7B reference to a smaller base.
def scaled_stages(recipe: Recipe, base: str, *, smoke: bool) -> list[StageEntry]:
    """The recipe's stages; under ``--smoke`` on a base smaller than Qwen2-Audio-7B, layer counts and
    widths are scaled by the base's ratio (e.g. remove 8 of 32 LLM layers -> 1 of 4 on the kit), and a
    ``ct`` quantization's group size fitted to the scaled widths (:func:`fit_ct_group_sizes`)."""
    import dataclasses

    from .families import family_of_config
    from .modelio import is_local
    from .planning.planner import base_dims, load_base_config

    stages = list(recipe.stages)
    if not smoke or not is_local(base):
        return stages
    cfg = load_base_config(base)
    # the family's full-size reference (Qwen2-Audio-7B, Gemma 4 12B): what the recipe's counts are written for
    fam = family_of_config(cfg)
    rd = fam.reference_dims()
    bd = base_dims(cfg)
    if all(bd[k] == rd[k] for k in rd):
        return stages

    # layers left at each point (a later prune-layers stage removes from what the earlier ones left)
    left = {k: bd.get(k) or 0 for k in ("llm_layers", "audio_layers")}
    counts = {"llm_layers": ("remove", "llm_layers"), "audio_layers": ("audio_remove", "audio_layers")}

    def min_keep(o) -> int:  # what a strategy leaves at least: an iterative search never removes the first or last
        return 2 if o.get("strategy") == "iterative" and o.get("protect_first_last", True) else 1

    def layers(x, key, i):
        """``x`` of the reference's layers scaled to the base, at most what leaves the first and last layer and
        room for the later prune-layers stages (one layer each, each keeping what its strategy keeps)."""
        if not x:
            return 0
        scaled = round(x * bd[key] / rd[key]) if rd.get(key) else x
        later = [dict(f.options) for f in stages[i + 1:] if f.stage == "prune-layers" and f.options.get(counts[key][0])]
        keep = max([min_keep(dict(stages[i].options))] + [min_keep(o) for o in later])
        return max(1, min(left[key] - 2, left[key] - len(later) - keep, scaled))

    def width(x, key):
        return None if x is None else max(1, min(bd[key], round(x * bd[key] / rd[key])))

    out = []
    for i, e in enumerate(stages):
        o = dict(e.options)
        if e.stage == "prune-layers":
            for key, (count, listed) in counts.items():
                if o.get(count):
                    o[count] = layers(o[count], key, i)
                left[key] -= int(o.get(count) or 0) + len(o.get(listed) or [])
        elif e.stage == "prune-hidden":
            # explicit 7B widths become ratios of the smaller base (heads follow the width by default)
            ref = fam.reference_widths()
            if o.get("llm_hidden"):
                o["llm_ratio"] = o.pop("llm_hidden") / ref["hidden"]
                o.pop("llm_heads", None)
            if o.get("audio_hidden") and ref["audio_hidden"]:
                o["audio_ratio"] = o.pop("audio_hidden") / ref["audio_hidden"]
        elif e.stage == "prune-ffn":
            if o.get("llm_width"):
                o["llm_width"] = width(o["llm_width"], "ffn_dim")
            if o.get("audio_width"):
                o["audio_width"] = width(o["audio_width"], "audio_ffn_dim")
        out.append(dataclasses.replace(e, options=o))
    from .planning.recipe_spec import scale_distillation_stages  # replace-layers blocks the small base has room for

    return fit_ct_group_sizes(scale_distillation_stages(out, bd, cfg), load_base_config(base))


def fit_ct_group_sizes(stages: list[StageEntry], cfg) -> list[StageEntry]:
    """A ``ct`` quantize stage's group size, where it does not divide every input width of the model it
    quantizes (``stages`` applied to a model with config ``cfg``), made the largest power of two that does
    and is at most the recipe's: for ``--smoke`` on a smaller base (groups of 64 cannot divide the kit's
    scaled widths, e.g. 20 or 55) and for the frontier's width variants (audio 960 wide at 3/4 width).
    Where the recipe's group size divides every width it is left alone."""
    import dataclasses
    import math

    from .planning.planner import predict

    out = []
    for i, e in enumerate(stages):
        if e.stage == "quantize" and e.options.get("method") in ("ct", "autoround"):
            before = [x for x in stages[:i] if x.stage != "trim-vocab"]  # the vocabulary is no input width
            spec, _ = spec_for_stages(before, cfg, base="", lang="", data={}, condition="")
            widths = {ent[2][1] for ent in predict(spec, cfg).entries if len(ent[2]) == 2}
            g, common = int(e.options.get("group_size", 128)), math.gcd(*widths)
            if common % g:  # powers of two: the group sizes vLLM's kernels take (32, 64, 128)
                fitted = max(2 ** k for k in range(g.bit_length()) if 2 ** k <= g and common % 2 ** k == 0)
                e = dataclasses.replace(e, options={**e.options, "group_size": fitted})
        out.append(e)
    return out
