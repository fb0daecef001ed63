#!/usr/bin/env python3
"""Recipe-fidelity benchmark: how much of the toy teacher's translation quality each compression keeps.

On the toy teacher (``tools/train_toy_teacher.py``) and its corpus's test split, runs the project's
own stages and recipes and tabulates chrF++ (German; chrF for Chinese), BLEU, size, parameters and
time for:

- the teacher;
- LLM layer pruning by the ``iterative``, ``middle`` and ``top`` strategies at two depths, each
  before and after a short full fine-tuning on the train split (the recovery step of every
  pruning recipe);
- vocabulary trimming to the train split's texts (the test split's texts play no part), with how
  many test hypotheses differ from the teacher's and the chrF++ difference;
- NF4 (double quantization) and int8 quantization of every linear layer but lm_head;
- recipe-b and recipe-c end to end (``iwslt_mc.build``), with steps, layer counts and widths scaled
  to the toy model (``RECIPE_SETS``).
- with ``--kd-rows`` (issue 18, :func:`distillation_rows`): recipe-c's cut of the teacher recovered by
  sequence-level KD only, by word-level + hidden-state KD (stage ``kd``) and by two-step KD, each then
  NF4 (same total training steps); module replacement of 2 and 3 LLM layers by one (stage
  ``replace-layers``) against iterative pruning of 1 and 2 layers plus fine-tuning (same steps).

Each variant is a run directory (``OUT/runs/NAME``: the model, its hypotheses, and a scores JSON
from :func:`iwslt_mc.scoring.scoring.score_files`), so ``iwslt-mc report OUT/runs/*`` reads them too.
Finished variants are reused when the benchmark is run again (delete ``OUT/runs/NAME`` to redo
one). Writes ``OUT/results.json``, the Markdown table (``--report``) and next to it the report's
quality-vs-size plot.

    python tools/bench_fidelity.py --corpus toy/corpus --out toy/bench --report docs/bench/fidelity.md \\
        --epochs-variant                          # the committed teacher; about 2 hours on 2 CPU cores
    python tools/bench_fidelity.py ... --only teacher,trim-vocab,nf4    # a subset
    python tools/bench_fidelity.py --corpus tests/fixtures/toy/data --out /tmp/kdb --kd-rows --heldout 64 \
        --only teacher,kd-distill,kd-c-llm,...   # the distillation rows on the committed slice (names: distillation_rows)

The corpus is the teacher's (``tools/train_toy_teacher.py`` has the command that makes it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TEACHER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "toy" / "teacher"
STRATEGIES = ("iterative", "middle", "top")
TESTSET = "toy-test"
MAX_NEW_TOKENS = 64  # references are at most ~30 tokens
# issue 18's distillation settings, shared with tools/bench_kd_scale.py (the same method at scale): stage kd's
# word-level term, its hidden-state term, and stage replace-layers' block choice and loss
WORD_KD = {"alpha": 0.5, "temperature": 2.0}
HIDDEN_KD = {"hidden_weight": 1.0, "hidden": ["llm", "audio"]}
REPLACE = {"position": "search", "search_examples": 32, "init": "last", "mse_weight": 1.0, "ce_weight": 1.0}


def two_step_cut(remove: int) -> tuple[int, int]:
    """Two-step KD: the LLM layers the first step removes (half the cut, at least one) and the second."""
    first = max(1, remove // 2)
    return first, remove - first


def finetune_options(steps: int, lr: float) -> dict:
    """The recovery fine-tuning after pruning, at toy scale (train split references)."""
    return {"mode": "full", "dtype": "float32", "split": "train", "max_steps": steps, "batch_size": 8, "lr": lr,
            "warmup_steps": max(1, steps // 10), "weight_decay": 0.01, "save_steps": max(steps, 1),
            "logging_steps": 25, "progress": False}


def recipe_sets(name: str, *, steps: int | None, lr: float, distill: int | None, heldout: int, llm_layers: int, audio_layers: int,
                llm_ffn: int, audio_ffn: int, qlora_cap: int = 2000) -> list[str]:
    """``--set`` overrides that scale a recipe to the toy model (published values in comments)."""
    # steps None: the recipe's own epochs (published: 3 for the full fine-tunings, 1 for QLoRA)
    ft = ([f"max_steps={steps}", f"warmup_steps={max(1, steps // 10)}"] if steps else ["warmup_steps=100"])
    # CPU float32; no gradient checkpointing at this size (the recipes turn it on to fit 7B in 80 GB)
    ft += [f"lr={lr}", "dtype=float32", "batch_size=8", "gradient_checkpointing=false"]
    search = ["split=dev", f"heldout={heldout}", "batch_size=16", f"max_new_tokens={MAX_NEW_TOKENS}"]
    out = [f"ft-full.{s}" for s in ft]  # published: 3 epochs at 1e-5 in bf16
    # published: the teacher translates all the training audio
    out += ([f"distill.limit={distill}"] if distill else []) + ["distill.batch_size=16",
                                                                f"distill.max_new_tokens={MAX_NEW_TOKENS}"]
    out += [f"ft-pruned.{s}" for s in ft]
    quant = ["quantize.compute_dtype=fp32"]  # CPU: bf16 matmuls are slow without AMX
    if name == "recipe-b":
        # 8 of 32 LLM layers -> a quarter of the toy's layers, rounded up
        out += [f"prune.remove={max(1, -(-llm_layers // 4))}"] + [f"prune.{s}" for s in search]
        out += [f"qlora.max_steps={max(1, (steps or qlora_cap) // 2)}", f"qlora.lr={lr}", "qlora.batch_size=8",
                "qlora.lora_r=16", "qlora.lora_alpha=32"]  # published r 64 / alpha 128 on 4096-wide layers
        return out + quant
    if name == "recipe-c":
        # 24 of 32 LLM layers (keep first and last), 24 of 32 audio layers, FFN widths halved
        out += [f"prune-llm.remove={max(1, min(llm_layers - 2, round(llm_layers * 24 / 32)))}"]
        out += [f"prune-llm.{s}" for s in search]
        out += [f"prune-audio.audio_remove={max(1, min(audio_layers - 1, round(audio_layers * 24 / 32)))}"]
        out += [f"prune-ffn.llm_width={llm_ffn // 2}", f"prune-ffn.audio_width={audio_ffn // 2}",
                "prune-ffn.calibration=32"]  # published: activation importance on 64 utterances
        out += ["trim-vocab.split=train"]  # the test references must not choose the vocabulary
        return out + quant
    raise ValueError(name)


def plan(args, cfg: dict) -> list[dict]:
    """Every variant: name, what it is, where it starts, and the stage or recipe that makes it."""
    n = cfg["text_config"]["num_hidden_layers"]
    depths = [int(d) for d in args.depths.split(",")] if args.depths else [max(1, n // 6), max(2, n // 3)]
    ft = finetune_options(args.ft_steps, args.ft_lr)
    search = {"heldout": args.heldout, "split": "dev", "batch_size": 16, "max_new_tokens": MAX_NEW_TOKENS}
    out = [{"name": "teacher", "what": "toy teacher", "group": "teacher"}]
    for d in depths:
        for s in STRATEGIES:
            opts = {"strategy": s, "remove": d, **(search if s == "iterative" else {})}
            out.append({"name": f"prune-{s}-{d}", "what": f"{s} pruning, {d} of {n} LLM layers", "group": "pruning",
                        "from": "teacher", "stage": "prune-layers", "options": opts, "strategy": s, "depth": d})
            out.append({"name": f"prune-{s}-{d}-ft", "what": f"{s} pruning, {d} of {n} + fine-tuning", "group": "pruning",
                        "from": f"prune-{s}-{d}", "stage": "finetune", "options": ft, "strategy": s, "depth": d})
    out.append({"name": "trim-vocab", "what": "vocabulary trimmed to the train split's texts", "group": "vocabulary",
                "from": "teacher", "stage": "trim-vocab", "options": {"use_data": True, "split": "train"}})
    for method in ("nf4", "int8"):
        opts = {"method": method, "double_quant": True, "skip": ["lm_head"], "compute_dtype": "fp32"}
        out.append({"name": method, "what": f"{method.upper()} quantization of every linear layer but lm_head",
                    "group": "quantization", "from": "teacher", "stage": "quantize", "options": opts})
    sizes = dict(steps=args.ft_steps, lr=args.ft_lr, distill=args.distill, heldout=args.heldout, llm_layers=n,
                 audio_layers=cfg["audio_config"]["encoder_layers"], llm_ffn=cfg["text_config"]["intermediate_size"],
                 audio_ffn=cfg["audio_config"]["encoder_ffn_dim"])
    for r in ("recipe-b", "recipe-c"):
        out.append({"name": r, "what": f"{r} end to end (toy scale)", "group": "recipes", "recipe": r,
                    "sets": recipe_sets(r, **sizes)})
    # the recovery budget is the toy scale's main departure from the published recipe (3 epochs)
    out.append({"name": "recipe-b-4x", "what": f"recipe-b, {4 * args.ft_steps} steps per full fine-tuning",
                "group": "recipes", "recipe": "recipe-b", "sets": recipe_sets("recipe-b", **{**sizes, "steps": 4 * args.ft_steps})})
    if args.epochs_variant:
        out.append({"name": "recipe-b-3ep", "what": "recipe-b, published epochs (3 per full fine-tuning; QLoRA 1,000 steps)",
                    "group": "recipes", "recipe": "recipe-b", "sets": recipe_sets("recipe-b", **{**sizes, "steps": None})})
    if args.kd_rows:
        out += distillation_rows(args, cfg)
    # recipe-b fine-tunes the teacher first (its stage 1) and compresses that: score it too
    out = [x for v in out for x in [v] + ([{
        "name": f"{v['name']}.ft-full", "what": f"{v['name']}'s stage 1: the fine-tuned teacher it compresses",
        "group": "recipes", "stage_of": (v["name"], "01-ft-full")}] if v.get("recipe") == "recipe-b" else [])]
    if args.only:
        keep = set(args.only.split(","))
        out = [v for v in out if v["name"] in keep]
    return out


def distillation_rows(args, cfg: dict) -> list[dict]:
    """Issue 18's rows: the recipe-c cut recovered by sequence-level KD only, by word-level + hidden-state
    KD, and by two-step KD (same total training steps); module replacement (2 -> 1, 3 -> 1 LLM layers)
    against iterative pruning of as many layers plus fine-tuning (same steps). Every search and every
    training step uses the train split; nothing is chosen on the test split. ``@NAME`` in options or
    ``data`` is another row's model (or, for data, its ``distill_data``)."""
    n = cfg["text_config"]["num_hidden_layers"]
    na = cfg["audio_config"]["encoder_layers"]
    steps = args.kd_steps
    train = {"split": "train", "dtype": "float32", "batch_size": 8, "lr": args.ft_lr, "weight_decay": 0.01,
             "save_steps": 10_000, "logging_steps": 25, "progress": False}
    warm = lambda k: {"max_steps": k, "warmup_steps": max(1, k // 10)}  # noqa: E731
    kd = {**WORD_KD, **HIDDEN_KD}
    search = {"strategy": "iterative", "split": "train", "heldout": args.heldout, "batch_size": 16,
              "max_new_tokens": MAX_NEW_TOKENS}
    remove_c = max(1, min(n - 2, round(n * 24 / 32)))  # recipe-c: 24 of 32 LLM layers
    first = two_step_cut(remove_c)[0]  # two-step: the same-width student keeps half of what recipe-c removes
    cut = lambda prefix, src, remove: [  # noqa: E731  recipe-c's cuts after the LLM layers
        {"name": f"{prefix}-llm", "what": f"iterative pruning, {remove} more LLM layers (train-split search)",
         "from": src, "stage": "prune-layers", "options": {**search, "remove": remove}},
        {"name": f"{prefix}-audio", "what": "audio encoder: top layer(s) removed", "from": f"{prefix}-llm",
         "stage": "prune-layers", "options": {"strategy": "top", "audio_remove": max(1, min(na - 1, round(na * 24 / 32)))}},
        {"name": f"{prefix}-ffn", "what": "FFN widths halved (activation importance, train split)", "from": f"{prefix}-audio",
         "stage": "prune-ffn", "options": {"llm_width": cfg["text_config"]["intermediate_size"] // 2,
                                           "audio_width": cfg["audio_config"]["encoder_ffn_dim"] // 2,
                                           "importance": "activation", "calibration": 32, "split": "train"}},
        {"name": f"{prefix}-trim", "what": "vocabulary trimmed to the train split", "from": f"{prefix}-ffn",
         "stage": "trim-vocab", "options": {"use_data": True, "split": "train"}}]
    rows = [{"name": "kd-distill", "what": "teacher translations of the train split (sequence-level KD data)",
             "from": "teacher", "stage": "distill", "options": {"batch_size": 16, "max_new_tokens": MAX_NEW_TOKENS}}]
    rows += cut("kd-c", "teacher", remove_c)
    rows += [
        {"name": "kd-c-seq", "what": f"recipe-c cut + fine-tuning on references + teacher translations ({steps} steps)",
         "from": "kd-c-trim", "stage": "finetune", "data": "@kd-distill", "options": {"mode": "full", **train, **warm(steps)}},
        {"name": "kd-c-word-hidden", "what": f"recipe-c cut + word-level + hidden-state KD from the teacher ({steps} steps)",
         "from": "kd-c-trim", "stage": "kd", "data": "@kd-distill",
         "options": {"teacher": "@teacher", **kd, **train, **warm(steps)}},
        {"name": "kd-2s-half", "what": f"two-step KD, step 1: iterative pruning of {first} of {n} LLM layers (same width)",
         "from": "teacher", "stage": "prune-layers", "options": {**search, "remove": first}},
        {"name": "kd-2s-step1", "what": f"two-step KD, step 1: word + hidden KD from the teacher ({steps // 2} steps)",
         "from": "kd-2s-half", "stage": "kd", "data": "@kd-distill",
         "options": {"teacher": "@teacher", **kd, "hidden": ["llm"], **train, **warm(steps // 2)}},
    ]
    rows += cut("kd-2s", "kd-2s-step1", remove_c - first)
    rows += [{"name": "kd-2s-step2", "what": f"two-step KD, step 2: recipe-c's cuts + word + hidden KD from the step-1 "
                                             f"student ({steps - steps // 2} steps; {steps} in all)",
              "from": "kd-2s-trim", "stage": "kd", "data": "@kd-distill",
              "options": {"teacher": "@kd-2s-step1", **kd, **train, **warm(steps - steps // 2)}}]
    mr = dict(REPLACE)
    for k in (2, 3):
        rows += [
            {"name": f"mr-{k}to1", "what": f"module replacement: {k} consecutive LLM layers -> 1 (CE search), "
                                           f"new layer alone ({steps} steps)",
             "from": "teacher", "stage": "replace-layers", "options": {**mr, "count": k, **train, **warm(steps)}},
            {"name": f"mr-prune{k - 1}", "what": f"iterative pruning of {k - 1} LLM layers (train-split search)",
             "from": "teacher", "stage": "prune-layers", "options": {**search, "remove": k - 1}},
            {"name": f"mr-prune{k - 1}-ft", "what": f"iterative pruning of {k - 1} LLM layers + fine-tuning ({steps} steps)",
             "from": f"mr-prune{k - 1}", "stage": "finetune", "options": {"mode": "full", **train, **warm(steps)}},
        ]
    # recipe-c ends in NF4 of every linear layer (lm_head included): the same for the three recoveries
    q = {"method": "nf4", "double_quant": True, "skip": [], "compute_dtype": "fp32"}
    rows += [{"name": f"{src}-nf4", "what": f"{src} + NF4 of every linear layer (recipe-c's last stage)",
              "from": src, "stage": "quantize", "options": q} for src in ("kd-c-seq", "kd-c-word-hidden", "kd-2s-step2")]
    for r in rows:
        r["group"] = "distillation"
    return rows


def stage_ctx(args, work_dir: Path, data: list[str] | None = None):
    from iwslt_mc.stages.base import StageContext

    return StageContext(lang=args.lang, data=data or [str(args.corpus)], seed=args.seed, device="cpu", work_dir=work_dir,
                        log=lambda msg: print("   ", msg, flush=True))


def _resolve(value, model_dirs: dict):
    """``@NAME`` -> that row's model directory."""
    return str(model_dirs[value[1:]]) if isinstance(value, str) and value.startswith("@") else value


def make_variant(v: dict, args, runs: Path, model_dirs: dict) -> tuple[Path, float]:
    """Build one variant's model (skipped when it exists); returns (model dir, seconds spent building)."""
    from iwslt_mc import build, recipes
    from iwslt_mc.submission import provenance
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import run_stage

    run = runs / v["name"]
    if v["name"] == "teacher":
        # a link, so the teacher is a run directory like the others (iwslt-mc report reads RUN/model)
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "model").exists():
            (run / "model").symlink_to(Path(args.teacher), target_is_directory=True)
        return Path(args.teacher), 0.0
    if "stage_of" in v:
        model = runs / v["stage_of"][0] / "stages" / v["stage_of"][1]
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "model").exists():
            (run / "model").symlink_to(model.resolve(), target_is_directory=True)
        return model, float(provenance.read(model)["stages"][-1].get("seconds") or 0.0)
    if "recipe" in v:
        model = run / "model"
        if not model.exists():
            recipe = recipes.apply_overrides(recipes.load_recipe(v["recipe"]), v["sets"])
            build.build(recipe, lang=args.lang, base=str(args.teacher), data={recipes.BUILTIN_DATA: str(args.corpus)},
                        condition="constrained", out=run, resume=True, seed=args.seed, device="cpu",
                        log=lambda msg: print("   ", msg, flush=True))
        prov = provenance.read(model)
        return model, sum(s.get("seconds") or 0 for s in prov.get("stages", [])[len(provenance.read(args.teacher).get("stages", [])):])
    model = run / "model"
    if not model.exists():
        work = runs / (v["name"] + ".work")
        logs = sorted(runs.glob("prune-iterative-*/model/prune_search.jsonl"), key=lambda p: p.stat().st_size)
        if v.get("strategy") == "iterative" and v["stage"] == "prune-layers" and logs:
            # a deeper search continues the rounds of a shallower one (same model, held-out set and metric)
            work.mkdir(parents=True, exist_ok=True)
            shutil.copy2(logs[-1], work / "prune_search.jsonl")
        run.mkdir(parents=True, exist_ok=True)
        options = {k: _resolve(x, model_dirs) for k, x in v["options"].items()}
        data = [str(Path(_resolve(v["data"], model_dirs)) / "distill_data")] if v.get("data") else None
        run_stage(make_stage(v["stage"], options), model_dirs[v["from"]], model, stage_ctx(args, work, data))
    rec = provenance.read(model)["stages"][-1]
    return model, float(rec.get("seconds") or 0.0)


def evaluate(model_dir: Path, run: Path, args, examples) -> dict:
    """Decode the test split, write hypotheses/references, score them with the project's scorer."""
    import torch

    from iwslt_mc.training import data
    from iwslt_mc import modelio
    from iwslt_mc.sizing import sizer
    from iwslt_mc.decoding import core as decoding
    from iwslt_mc.scoring import scoring
    from iwslt_mc.fsutil import atomic_write_json, atomic_write_text

    # float32 on CPU; the stored dtype (the teacher's float16) is what the size column measures
    model = modelio.load_model(model_dir, dtype=torch.float32, device="cpu")
    processor = modelio.load_processor(model_dir)
    waves = [e.waveform() for e in examples]
    t0 = time.time()
    hyps = decoding.translate(model, processor, waves, args.lang, mode="fast", batch_size=16,
                              max_new_tokens=MAX_NEW_TOKENS)
    seconds = time.time() - t0
    run.mkdir(parents=True, exist_ok=True)
    code = args.lang.split("-")[1]
    hyp_file, ref_file = run / f"hyp.{code}", run / f"ref.{code}"
    atomic_write_text(hyp_file, "".join(decoding.one_line(h.text) + "\n" for h in hyps))
    atomic_write_text(ref_file, "".join(data.target_text(e, args.lang) + "\n" for e in examples))
    scores = scoring.score_files(hyp_file, ref_file, args.lang, resegment_mode="never", testset=TESTSET)
    atomic_write_json(run / f"scores-{args.lang}.json", scores)
    size = sizer.measure(model_dir)
    m = scores["metrics"]
    return {"chrf": round(m["chrf"]["score"], 2), "chrf_name": m["chrf"]["name"], "bleu": round(m["bleu"]["score"], 2),
            "bytes": size.bytes, "params": size.params, "decode_seconds": round(seconds, 1),
            "tokens": sum(h.n_tokens for h in hyps), "exact": sum(h.text.strip() == r.strip() for h, r in zip(
                hyps, [data.target_text(e, args.lang) for e in examples])),
            "signatures": {k: v["signature"] for k, v in m.items()}}


def compare_with_teacher(runs: Path, name: str, lang: str) -> dict | None:
    """How the variant's test hypotheses differ from the teacher's (both decoded by :func:`evaluate`)."""
    code = lang.split("-")[1]
    mine, teacher = runs / name / f"hyp.{code}", runs / "teacher" / f"hyp.{code}"
    if not (mine.exists() and teacher.exists()):
        return None
    a, b = teacher.read_text("utf-8").splitlines(), mine.read_text("utf-8").splitlines()
    if len(a) != len(b):
        return None
    return {"changed": sum(x != y for x, y in zip(a, b)), "of": len(a)}


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def markdown(results: list[dict], args, meta: dict, plot: str | None, sets: dict | None = None) -> str:
    teacher = next((r for r in results if r["name"] == "teacher"), None)
    base = teacher["chrf"] if teacher else None
    name = results[0]["chrf_name"] if results else "chrF"
    lines = [
        "# Recipe fidelity on the toy teacher",
        "",
        f"Quality kept by each compression of the toy teacher (`{meta['teacher']}`), on the {meta['examples']} "
        f"utterances of the toy corpus's test split (`{meta['corpus']}`), {args.lang}. Greedy decoding "
        f"(`iwslt_mc.decoding.core.translate`, fast mode, float32 on CPU), scored with `iwslt_mc.scoring.scoring`. "
        f"Size and parameters by `iwslt_mc.sizing.sizer`. Made by `python tools/bench_fidelity.py` "
        f"({meta['date']}, CPU, {meta.get('threads', '?')} threads; recovery fine-tuning {args.ft_steps} steps "
        f"at lr {args.ft_lr:g}, batch 8, on the train split's references).",
        "",
        f"| variant | what | {name} | % of teacher | BLEU | exact | size | parameters | build s | decode s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        pct = f"{100 * r['chrf'] / base:.1f}" if base else "-"
        what = r["what"] + (f"; {_changed(r, base)}" if r.get("vs_teacher") and base else "")
        lines.append(f"| {r['name']} | {what} | {r['chrf']:.2f} | {pct} | {r['bleu']:.2f} | {r['exact']} | "
                     f"{_fmt_bytes(r['bytes'])} | {r['params']:,} | {r['build_seconds']:.0f} | {r['decode_seconds']:.0f} |")
    lines += ["", "## Targets", ""] + [f"- {t}" for t in targets(results)]
    if meta.get("corpus_made_by"):
        lines += ["", "## Reproduce", "", f"The corpus: {meta['corpus_made_by']}", "",
                  f"The benchmark: `{meta['command']}`"]
    if sets:
        lines += ["", "## Recipes at toy scale", "",
                  "The recipes run unchanged through `iwslt_mc.build` with these `--set` overrides (layer counts, "
                  "widths and training budgets scaled to the toy model; published values in the recipe files):", ""]
        lines += [f"- {n}: `{' '.join(v)}`" for n, v in sets.items() if v]
    if plot:
        lines += ["", f"![quality against size]({plot})"]
    sig = results[0]["signatures"] if results else {}
    lines += ["", "Signatures: " + "; ".join(f"{k} `{v}`" for k, v in sig.items()), ""]
    return "\n".join(lines)


def _changed(r: dict, base: float) -> str:
    c = r["vs_teacher"]
    diff = f"{r['chrf'] - base:+.2f} {r['chrf_name']}"
    return f"{c['changed']} of {c['of']} test hypotheses differ from the teacher's ({diff})"


def targets(results: list[dict]) -> list[str]:
    """The issue's targets, each with its measured figure and whether it is met."""
    by = {r["name"]: r for r in results}
    t = by.get("teacher")
    out = []
    if not t or t["chrf"] <= 0:
        return ["(no teacher score: nothing to compare with)"]
    for name in ("recipe-b", "recipe-b-4x", "recipe-b-3ep"):
        if name in by:
            pct = 100 * by[name]["chrf"] / t["chrf"]
            line = (f"{name} keeps >= 95% of the teacher's chrF: {pct:.1f}% -> "
                    + ("met" if pct >= 95 else f"missed by {95 - pct:.1f} points"))
            own = by.get(f"{name}.ft-full")
            if own:
                line += f" ({100 * by[name]['chrf'] / own['chrf']:.1f}% of its own fine-tuned teacher, {own['chrf']:.2f})"
            out.append(line)
    depths = sorted({int(n.split("-")[2]) for n in by if n.startswith("prune-iterative-")})
    for d in depths:
        for suffix in ("", "-ft"):
            it, mid = by.get(f"prune-iterative-{d}{suffix}"), by.get(f"prune-middle-{d}{suffix}")
            if it and mid:
                ok = it["chrf"] >= mid["chrf"]
                out.append(f"iterative >= middle at depth {d}{' after fine-tuning' if suffix else ''}: "
                           f"{it['chrf']:.2f} vs {mid['chrf']:.2f} -> "
                           + ("met" if ok else f"missed by {mid['chrf'] - it['chrf']:.2f}"))
    for name in ("kd-c-seq-nf4", "kd-c-word-hidden-nf4", "kd-2s-step2-nf4"):
        if name in by:
            r = by[name]
            pct, size = 100 * r["chrf"] / t["chrf"], 100 * r["bytes"] / t["bytes"]
            out.append(f"{name} ({size:.0f}% of the teacher's bytes) keeps >= 90% of its chrF: {pct:.1f}% -> "
                       + ("met" if pct >= 90 and size <= 25 else f"missed by {90 - pct:.1f} points")
                       + f" (wall time from the teacher: {r.get('chain_seconds', 0):.0f} s)")
    for k in (2, 3):
        mr, pr = by.get(f"mr-{k}to1"), by.get(f"mr-prune{k - 1}-ft")
        if mr and pr:
            out.append(f"module replacement {k} -> 1 >= iterative pruning of {k - 1} + fine-tuning (same steps): "
                       f"{mr['chrf']:.2f} vs {pr['chrf']:.2f} -> "
                       + ("met" if mr["chrf"] >= pr["chrf"] else f"missed by {pr['chrf'] - mr['chrf']:.2f}")
                       + f" (wall time {mr.get('chain_seconds', 0):.0f} s vs {pr.get('chain_seconds', 0):.0f} s)")
    if "trim-vocab" in by:
        pct = 100 * by["trim-vocab"]["chrf"] / t["chrf"]
        line = (f"vocabulary trimming keeps 100%: {pct:.2f}% -> "
                + ("met" if pct >= 100 else f"missed by {100 - pct:.2f} points"))
        if by["trim-vocab"].get("vs_teacher"):
            line += f"; {_changed(by['trim-vocab'], t['chrf'])}, vocabulary from the train split's texts only"
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[-5:]))
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="toy teacher model dir (default: the test fixture)")
    ap.add_argument("--corpus", type=Path, required=True, help="toy corpus dir with train/dev/test (tools/make_toy_corpus.py)")
    ap.add_argument("--out", type=Path, required=True, help="benchmark dir (runs/, results.json); reused when rerun")
    ap.add_argument("--report", type=Path, help="Markdown table to write (default OUT/fidelity.md); the plot goes next to it")
    ap.add_argument("--lang", default="en-de")
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test utterances")
    ap.add_argument("--depths", default=None, help="LLM layers removed, comma-separated (default: a sixth and a third)")
    ap.add_argument("--ft-steps", type=int, default=150, help="recovery fine-tuning steps (and recipe training stages)")
    ap.add_argument("--ft-lr", type=float, default=5e-4)
    ap.add_argument("--heldout", type=int, default=100, help="iterative search: dev utterances scored per candidate")
    ap.add_argument("--distill", type=int, default=None,
                    help="recipes: translate only the first N training utterances (default: all, as published)")
    ap.add_argument("--epochs-variant", action="store_true",
                    help="also recipe-b with the published epochs (about 40 minutes on 2 CPU cores)")
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--kd-rows", action="store_true",
                    help="also issue 18's rows: recipe-c cut with sequence-level KD vs word + hidden KD vs two-step KD; "
                         "module replacement vs iterative pruning (see distillation_rows)")
    ap.add_argument("--kd-steps", type=int, default=150, help="training steps of each distillation row's recovery")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    from iwslt_mc.training import data
    from iwslt_mc.fsutil import atomic_write_json, atomic_write_text

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    args.teacher = args.teacher.resolve()
    cfg = json.loads((args.teacher / "config.json").read_text())
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    examples = data.load_examples(str(args.corpus), "test", limit=args.test_limit, lang=args.lang)
    results_path = args.out / "results.json"
    old = {r["name"]: r for r in json.loads(results_path.read_text())["results"]} if results_path.exists() else {}
    model_dirs, results = {}, []
    variants = plan(args, cfg)
    for v in variants:
        t0 = time.time()
        print(f"== {v['name']}: {v['what']}", flush=True)
        model_dir, build_s = make_variant(v, args, runs, model_dirs)
        model_dirs[v["name"]] = model_dir
        prev = old.get(v["name"])
        if prev and (runs / v["name"] / f"scores-{args.lang}.json").exists() and prev.get("examples") == len(examples):
            r = prev
        else:
            r = {"name": v["name"], "what": v["what"], "group": v["group"], "examples": len(examples),
                 "build_seconds": round(build_s, 1), **evaluate(model_dir, runs / v["name"], args, examples)}
        if v.get("stage") == "trim-vocab":  # held-out text: what trimming to the train split's tokens changed
            r["vs_teacher"] = compare_with_teacher(runs, v["name"], args.lang)
        src = v.get("from")
        r["chain_seconds"] = round(r["build_seconds"] + next((x.get("chain_seconds", x["build_seconds"]) for x in results
                                                             if x["name"] == src), 0.0), 1)
        results.append(r)
        vs = r.get("vs_teacher")
        changed = f"  {vs['changed']} of {vs['of']} differ from the teacher" if vs else ""
        print(f"   {r['chrf_name']} {r['chrf']:.2f}  BLEU {r['bleu']:.2f}  {_fmt_bytes(r['bytes'])}  "
              f"({time.time() - t0:.0f} s){changed}", flush=True)
        atomic_write_json(results_path, {"results": results + [o for n, o in old.items() if n not in {x['name'] for x in results}]})
    report = args.report or args.out / "fidelity.md"
    plot = None
    try:
        from iwslt_mc.submission import report as rep

        rec = rep.write_report([runs / r["name"] for r in results], args.out / "report")
        if rec.get("plot"):
            plot = report.with_suffix(".png").name
            report.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(args.out / "report" / rec["plot"], report.with_suffix(".png"))
    except Exception as e:  # the table matters more than the plot
        print(f"report plot not written: {e}", file=sys.stderr)
    root = Path(__file__).resolve().parent.parent
    teacher = args.teacher.relative_to(root) if args.teacher.is_relative_to(root) else args.teacher
    made_by = ""
    readme = args.corpus / "README.md"
    if readme.exists():
        made_by = next((ln.strip() for ln in readme.read_text(encoding="utf-8").splitlines() if ln.startswith("Made by")), "")
    meta = {"teacher": str(teacher), "corpus": str(args.corpus), "examples": len(examples),
            "date": time.strftime("%Y-%m-%d"), "corpus_made_by": made_by,
            "command": "python tools/bench_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "threads": torch.get_num_threads()}
    report.parent.mkdir(parents=True, exist_ok=True)
    sets = {v["name"]: v["sets"] for v in variants if "sets" in v}
    atomic_write_text(report, markdown(results, args, meta, plot, sets))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
