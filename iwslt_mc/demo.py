"""``iwslt-mc demo``: the whole job on the built-in tiny kit, offline, on a CPU, in a few minutes.

kit -> build (a recipe with --smoke) -> size -> decode (segmented test set and long-audio form,
the latter cut by the built-in segmenter) -> package -> check -> score (BLEU/chrF, resegmented
where the segmentation differs; COMET with a tiny offline checkpoint where its environment exists)
-> report. The kit model has random weights: its translations and scores mean nothing; the demo
shows that every step runs and what it writes.

Editions that name their test sets (2026, 2027: TV series, ACL talks, call-centre, YouTube,
business news, accented speech) get an honest *partial* submission: the kit has speech for one of
them only, its ACL 60/60-schema talk, which stands in for the ACL talks test set. The demo does not
copy that talk's translation under the other test sets' names (that would be a submission claiming
TV-series output it never made); it packages the one test set with ``partial=True`` and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

TEAM = "DEMO"
MARKER = ".iwslt-mc-demo"  # marks a directory the demo made, so a rerun may replace it


@dataclass
class Step:
    name: str
    seconds: float
    result: str
    paths: list[str] = field(default_factory=list)


def submission_plan(edition: str | None, lang: str, hyps: dict[str, Path]) -> tuple[dict[str, Path], bool, str]:
    """Which of the demo's decoded files go into the submission, as which test set, and whether the
    upload is partial: ``(test set -> file, partial, message for the user)``."""
    from .sizing.track import get_edition

    ed = get_edition(edition)
    sets = ed.test_sets.get(lang) or ()
    if not sets:  # 2025: test sets are not named; the demo's two segmented decodes
        chosen = {k: v for k, v in hyps.items() if k != "talk-unsegmented"}
        return chosen, False, f"edition {ed.key} names no test sets: packaged {', '.join(chosen)}"
    acl = next(t for t in sets if t.key == "acl")
    others = [t.label for t in sets if t.key != "acl"]
    msg = (f"PARTIAL upload (edition {ed.key}): the kit has speech for 1 of the {len(sets)} {lang} test sets, its "
           f"ACL 60/60-schema talk, packaged as {acl.label}; no kit audio exists for {', '.join(others)}, so they "
           "are left out and recorded as missing (a real submission decodes all of them; package refuses a "
           "missing one without --partial)")
    return {"acl": hyps["talk-segmented"]}, True, msg


def check_kit_recipe(recipe) -> None:
    """The demo's kit is a Qwen2-Audio model: a recipe for another family is refused before any work."""
    from .families import family_named
    from .recipes import DEFAULT_FAMILY

    if recipe.family != DEFAULT_FAMILY:
        raise UserError(f"demo --recipe {recipe.name}: the recipe is for {family_named(recipe.family).label} models, "
                        f"the demo kit is a {family_named(DEFAULT_FAMILY).label} model; pick one of its recipes "
                        "(iwslt-mc ls)")


def run_demo(out: Path, *, recipe: str = "recipe-b", lang: str = "en-de", comet: bool = True, log=print,
             edition: str | None = None) -> dict:
    from .sizing import sizer
    from .build import build
    from .decoding.runner import decode_to_file
    from .fsutil import prepare_output_dir
    from .decoding.inputs import resolve_audio
    from .families import default_family
    from .submission.check import check
    from .submission.package import package
    from .recipes import load_recipe
    from .submission.report import write_report
    from .scoring.scoring import score_files

    from .sizing.track import get_edition

    # every option checked before any work (the kit and the build take minutes)
    ed = get_edition(edition)
    rec = load_recipe(recipe)
    check_kit_recipe(rec)
    from .floor.languages import check_lang

    check_lang(lang)
    out = Path(out)
    if (out / MARKER).exists():
        import shutil

        log(f"replacing the previous demo in {out}")
        shutil.rmtree(out)
    prepare_output_dir(out)
    (out / MARKER).write_text("made by iwslt-mc demo; a rerun replaces this directory\n")
    steps: list[Step] = []
    t_all = time.time()

    def step(name):
        log(f"\n== {name}")
        return time.time()

    t = step("kit: tiny random Qwen2-Audio + English speech set")
    kit = out / "kit"
    default_family().build_kit(kit, seed=0)
    steps.append(Step("kit", time.time() - t, "tiny model, 16 utterances, long-audio talk", [str(kit)]))

    t = step(f"build {recipe} --smoke")
    run_dir = out / "run"
    res = build(rec, lang=lang, base=str(kit / "model"), data={"acl6060": str(kit / "data")},
                condition="constrained", out=run_dir, smoke=True, log=log, edition=ed.key)
    pred = res.prediction or {}
    steps.append(Step("build", time.time() - t,
                      f"{len(res.stages)} stages; planner {pred.get('bytes', 0):,} B vs real {res.size['bytes']:,} B",
                      [str(res.model_dir)]))

    t = step("size")
    rep = sizer.measure(res.model_dir, ed.key)
    steps.append(Step("size", time.time() - t, f"{rep.bytes:,} bytes (safetensors), {rep.params:,} parameters"
                      + (f", {rep.bin}" if ed.has_bins else f"; edition {ed.key} has no bins")))

    tgt = lang.split("-")[1]
    hyp_dir = out / "hyp"
    tests = {
        # test set name -> (audio spec, reference file)
        "acl6060-eval": (f"{kit / 'data'}?split=eval", kit / "data" / "long" / f"talk.{tgt}"),
        "talk-segmented": (str(kit / "data" / "long" / "talk.yaml"), kit / "data" / "long" / f"talk.{tgt}"),
        "talk-unsegmented": (str(kit / "data" / "long" / "talk.wav"), kit / "data" / "long" / f"talk.{tgt}"),
    }
    hyps = {}
    for name, (spec, _ref) in tests.items():
        t = step(f"decode {name} ({spec})")
        hyp = hyp_dir / f"{name}.{tgt}"
        summ = decode_to_file(res.model_dir, resolve_audio(spec), hyp, lang=lang, mode="fast", batch_size=4,
                              max_new_tokens=16, progress=False)
        hyps[name] = hyp
        steps.append(Step(f"decode {name}", time.time() - t,
                          f"{summ.segments} segments, RTF {summ.rtf:.2f}", [str(hyp), summ.log]))

    t = step("package + check")
    sub_root = out / "submissions"
    chosen, partial, plan_msg = submission_plan(edition, lang, hyps)
    log(plan_msg)
    pkg = package(res.model_dir, team=TEAM, lp=lang, condition="constrained", submission_type="primary",
                  hyps={k: str(v) for k, v in chosen.items()}, out=sub_root, edition=edition, partial=partial)
    chk = check([pkg.dir])
    if not chk.ok:
        raise UserError("demo: the fresh submission failed its check: " + "; ".join(chk.all_problems()))
    m = pkg.manifest
    size = ", ".join(f"{n:,} B ({k})" for k, n in m["sizes"].items())
    steps.append(Step("package+check", time.time() - t,
                      f"{pkg.name}: check passed; {size}"
                      + (f"; PARTIAL: {len(chosen)} test set(s), missing {', '.join(m['partial']['missing'])}"
                         if m.get("partial") else ""), [str(pkg.dir)]))

    comet_ckpt = _tiny_comet(out, log) if comet else None
    scores_dir = run_dir / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    from .fsutil import atomic_write_json

    for name, (_spec, ref) in tests.items():
        t = step(f"score {name}")
        r = score_files(hyps[name], ref, lang, src=kit / "data" / "long" / "talk.en", comet=comet_ckpt, testset=name)
        atomic_write_json(scores_dir / f"scores-{lang}-{name}.json", r)
        steps.append(Step(f"score {name}", time.time() - t, _score_line(r), [str(scores_dir / f'scores-{lang}-{name}.json')]))

    t = step("report")
    rep_dir = out / "report"
    write_report([run_dir], rep_dir, edition=edition)
    steps.append(Step("report", time.time() - t, "table + quality-vs-size plot",
                      [str(rep_dir / "report.md"), str(rep_dir / "quality-vs-size.png")]))
    total = time.time() - t_all
    return {"out": str(out), "seconds": round(total, 1), "steps": [s.__dict__ for s in steps],
            "submission": str(pkg.dir), "model": str(res.model_dir), "edition": m["edition"],
            "partial": m.get("partial"), "submission_note": plan_msg}


def _score_line(r: dict) -> str:
    parts = []
    for key in ("bleu", "chrf", "comet"):
        v = r["metrics"].get(key)
        if v is not None:
            parts.append(f"{v['name']} {v['score']:.2f}")
    if r["resegmentation"]["applied"]:
        parts.append(f"resegmented {r['lines']['hyp']} -> {r['lines']['ref']} lines")
    return ", ".join(parts) or "scored"


def _tiny_comet(out: Path, log) -> str | None:
    """A tiny offline COMET checkpoint when the COMET environment exists (never built by the demo)."""
    from .scoring import comet_env

    env = comet_env.default_env_dir()
    if not comet_env.is_ready(env):
        log("COMET: no COMET environment (run `iwslt-mc setup-comet` once): skipped")
        return None
    ckpt = out / "tiny-comet"
    try:
        return str(comet_env.make_tiny_checkpoint(ckpt, env_dir=env))
    except UserError as e:
        log(f"COMET: skipped ({e})")
        return None
