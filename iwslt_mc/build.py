"""``iwslt-mc build``: run a recipe's stages in order, resumably, and size the result.

Layout of a build directory::

    OUT/build.json          state: recipe, arguments, prediction, one entry per stage (fingerprint, status)
    OUT/recipe.yaml         the recipe as run (after --set overrides)
    OUT/stages/NN-ID/       each stage's output model directory (appears only when the stage finished)
    OUT/work/NN-ID/         a running stage's checkpoints (removed when it finishes)
    OUT/model/              the final model: hard links to the last stage's files, with full provenance

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
from .recipes import BUILTIN_DATA, Recipe, StageEntry

STATE = "build.json"


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


def _dir_fingerprint(model_dir: Path) -> str:
    """Identity of a base model directory: names, sizes and mtimes of its files (cheap, no hashing of GBs)."""
    items = []
    for f in sorted(Path(model_dir).iterdir()):
        if f.is_file():
            st = f.stat()
            items.append((f.name, st.st_size, int(st.st_mtime)))
    return _fingerprint(items)


def resolve_data(recipe: Recipe, entry: StageEntry, data: dict[str, str], condition: str,
                 stage_dirs: dict[str, Path]) -> list[str]:
    """Data references of ``entry`` -> paths/specs; refuses non-ACL data under the constrained condition."""
    out = []
    for ref in entry.data:
        if ref.startswith("@"):
            d = stage_dirs[ref[1:]]
            sub = d / "distill_data"
            out.append(str(sub if sub.exists() else d))
            continue
        if condition == "constrained" and ref != BUILTIN_DATA:
            raise UserError(f"{recipe.path}:{entry.line}: stage {entry.id} asks for data {ref!r}, but under the "
                            f"constrained condition only ACL 60/60 ({BUILTIN_DATA}) may be used")
        if ref not in data:
            flag = "--data PATH" if ref == BUILTIN_DATA else f"--data {ref}=PATH"
            raise UserError(f"{recipe.path}:{entry.line}: stage {entry.id} needs data {ref!r}: give {flag}")
        out.append(data[ref])
    return out


def check_data_refs(recipe: Recipe, data: dict[str, str], condition: str) -> None:
    """All data problems before any work: constrained violations and missing --data."""
    for entry in recipe.active_stages(condition):
        for ref in entry.data:
            if ref.startswith("@"):
                continue
            if condition == "constrained" and ref != BUILTIN_DATA:
                raise UserError(f"{recipe.path}:{entry.line}: stage {entry.id} asks for data {ref!r}, but under the "
                                f"constrained condition only ACL 60/60 ({BUILTIN_DATA}) may be used")
            if ref not in data:
                flag = "--data PATH" if ref == BUILTIN_DATA else f"--data {ref}=PATH"
                raise UserError(f"stage {entry.id} of {recipe.name} needs data {ref!r}: give {flag}")
    for name, path in data.items():
        if not Path(path).exists() and "/" not in str(path).strip("/"):
            continue  # maybe a hub id; the data loader decides
        if not Path(path).exists():
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


def build(recipe: Recipe, *, lang: str, base: str, data: dict[str, str], condition: str, out: Path,
          resume: bool = False, smoke: bool = False, seed: int = 0, device: str | None = None,
          edition: str = "2025", log=print) -> BuildResult:
    from . import sizer
    from .modelio import check_model_dir, is_local
    from .prompting import check_lang
    from .stages import make_stage
    from .stages.base import StageContext, run_stage

    check_lang(lang)
    if condition not in ("constrained", "unconstrained"):
        raise UserError(f"--condition must be constrained or unconstrained, not {condition!r}")
    if is_local(base):
        check_model_dir(base)
    check_data_refs(recipe, data, condition)
    out = Path(out)
    state_path = out / STATE
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise UserError(f"{out}: build directory exists (rerun with --resume to continue it, or choose another --out)")
        if not state_path.exists():
            raise UserError(f"{out}: not a build directory (no {STATE}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    prev = {s["id"]: s for s in state.get("stages", [])}

    prediction = predict_recipe(recipe, base, condition=condition, lang=lang, data=data, edition=edition)
    if prediction:
        log(f"planner: predicted {prediction['bytes']:,} bytes, {prediction['params']:,} parameters, "
            f"{prediction['bin'] or 'no bin'} ({edition}){'' if prediction['bin'] else ' - NOT ELIGIBLE for a size bin'}")

    state.update({
        "recipe": recipe.name, "recipe_file": str(recipe.path), "lang": lang, "base": str(base),
        "data": data, "condition": condition, "smoke": smoke, "seed": seed, "edition": edition,
        "prediction": prediction,
    })
    atomic_write_text(out / "recipe.yaml", recipe.text)
    stages_state: list[dict] = []
    stage_dirs: dict[str, Path] = {}
    stage_fps: dict[str, str] = {}
    in_dir = Path(base) if is_local(base) else base
    in_fp = _dir_fingerprint(Path(base)) if is_local(base) else str(base)
    skipped = []
    active = recipe.active_stages(condition)
    (out / "stages").mkdir(exist_ok=True)
    for n, entry in enumerate(active, 1):
        sdir = out / "stages" / f"{n:02d}-{entry.id}"
        options = {k: (str(stage_dirs[v[1:]]) if isinstance(v, str) and v.startswith("@") else v)
                   for k, v in entry.options.items()}
        fp_options = {k: (f"@{stage_fps[v[1:]]}" if isinstance(v, str) and v.startswith("@") else v)
                      for k, v in entry.options.items()}
        data_specs = resolve_data(recipe, entry, data, condition, stage_dirs)
        fp_data = [(f"@{stage_fps[r[1:]]}" if r.startswith("@") else data.get(r, r)) for r in entry.data]
        fp = _fingerprint({"stage": entry.stage, "options": fp_options, "data": fp_data, "lang": lang,
                           "condition": condition, "smoke": smoke, "seed": seed, "input": in_fp})
        done = prev.get(entry.id)
        if resume and done and done.get("status") == "done" and done.get("fingerprint") == fp and sdir.exists():
            log(f"[{n}/{len(active)}] {entry.id} ({entry.stage}): unchanged, skipped")
            skipped.append(entry.id)
            rec = done
        else:
            if sdir.exists():
                shutil.rmtree(sdir)  # stale output of a changed stage
            for stale in (out / "stages").glob(f".{sdir.name}.*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
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
        stages_state.append(rec)
        # record progress after every stage, so a crash later keeps what finished
        state["stages"] = stages_state + [s for s in state.get("stages", []) if s["id"] not in {x["id"] for x in stages_state}]
        atomic_write_json(state_path, state)
        stage_dirs[entry.id] = sdir
        stage_fps[entry.id] = fp
        in_dir, in_fp = sdir, fp

    model_dir = out / "model"
    _link_tree(Path(in_dir), model_dir)
    rep = sizer.measure(model_dir, edition=edition)
    size = {"bytes": rep.bytes, "params": rep.params, "bin": rep.bin, "edition": edition}
    if prediction:
        size["predicted_bytes"] = prediction["bytes"]
        size["prediction_error"] = round((prediction["bytes"] - rep.bytes) / rep.bytes, 6)
    state["stages"] = stages_state
    state["final"] = {"dir": str(model_dir), **size}
    atomic_write_json(state_path, state)
    return BuildResult(out_dir=out, model_dir=model_dir, stages=stages_state, prediction=prediction, size=size,
                       skipped=skipped)


def predict_recipe(recipe: Recipe, base: str, *, condition: str, lang: str, data: dict, edition: str) -> dict | None:
    """The planner's prediction for the recipe's final model, before any work. None if it cannot say."""
    try:
        from .planner import predict_for_stages
    except ImportError:
        return None
    return predict_for_stages(recipe.active_stages(condition), base=base, lang=lang, data=data, edition=edition)
