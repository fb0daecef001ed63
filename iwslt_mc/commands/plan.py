"""``iwslt-mc plan``: predict size, parameters and bin of a compression before building it."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc plan                                          # the unmodified Qwen2-Audio-7B-Instruct in bf16
  iwslt-mc plan --llm-layers 24 --precision nf4-dq       # prune 8 decoder layers, 4-bit with double quant
  iwslt-mc plan --precision nf4-dq --quantize-lm-head --vocab 32768   # lm_head 4-bit too (embeddings stay bf16)
  iwslt-mc plan --precision int8 --precision lm_head=bf16 --precision audio_encoder=bf16
  iwslt-mc plan --target Bin3                            # buildable specs in Bin3 (2025), each with its stages/recipe
  iwslt-mc plan --target Bin2 --precision nf4-dq --vocab 32768   # vary only what is not given
  iwslt-mc plan --target Bin4 --precision ct3 --quantize-embeddings  # 3-bit compressed-tensors, embeddings too
  iwslt-mc plan --base path/to/model --llm-layers 20 --json
  iwslt-mc plan --hidden 2048 --heads 16 --audio-hidden 640 --precision nf4-dq   # narrower (prune-hidden)
  iwslt-mc plan --target Bin5                            # includes narrow specs (prune-hidden) for Bin4/Bin5
  iwslt-mc plan --frontier --base MODEL --write variants/     # depth x width family of recipe-bin4, predicted sizes
  iwslt-mc plan --frontier --base MODEL --runs runs/*/        # after building and scoring: the Pareto-optimal ones
  iwslt-mc plan gemma4-small --base /tmp/g12                 # a recipe's final model on a base (Gemma 4 12B layout)
  iwslt-mc plan --base /tmp/g12 --drop-vision --llm-layers 36 --precision nf4-dq --precision ple=bf16
  iwslt-mc plan --base MODEL --target 2.5GiB --edition 2027 --allocate bits.json --data DEV   # bits per module
"""


def add_parser(sub):
    p = add_command(
        sub, "plan",
        help="predict bytes, parameters and bin of a compression (or list specs that fit a bin)",
        description=("Predict the storage size (bytes of the safetensors file save_pretrained writes), the logical "
                     "parameter count and the size bin of a compressed model without building it: every tensor of the base "
                     "architecture is computed from its config.json (Qwen2-Audio; Gemma 4: enumerated from a model "
                     "built on the meta device, once per config: a repeat reads ~/.cache/iwslt-mc/plan) and each format's on-disk layout is computed "
                     "exactly (bf16/fp16/fp32; bitsandbytes int8 with per-row scales; nf4/fp4 with absmax per 64 "
                     "values, quant_map and quant_state, plus nested statistics with double quantization '-dq'; "
                     "compressed-tensors ctB packed integers with a scale and zero point per group), and "
                     "the organizers' torch.save(model.state_dict()) bytes of the built model. Every spec comes with "
                     "the stages (or a shipped recipe with --set overrides) that build it, or says why none can. "
                     "With --target BinN (2025 bins): a short table of buildable specs that land in that bin, least "
                     "to most aggressive, searched over the float, int8, nf4-dq and ct4/ct3/ct2 precisions (ct also "
                     "with quantized embeddings)."),
        examples=EXAMPLES,
    )
    p.add_argument("plan_recipe", nargs="?", metavar="RECIPE",
                   help=("a recipe (iwslt-mc ls, or a .yaml): predict its final model on --base (a config-only "
                         "directory is enough; a trimmed vocabulary is --vocab, default 16000, unless --data and a "
                         "tokenizer let it be counted)"))
    p.add_argument("--base", metavar="MODEL_DIR",
                   help="model directory whose config.json is the base (default: built-in Qwen2-Audio-7B-Instruct)")
    p.add_argument("--llm-layers", type=int, metavar="N", help="LLM decoder layers kept")
    p.add_argument("--audio-layers", type=int, metavar="N", help="audio encoder layers kept")
    p.add_argument("--ffn-dim", type=int, metavar="N", help="LLM MLP width (intermediate_size)")
    p.add_argument("--audio-ffn-dim", type=int, metavar="N", help="audio encoder MLP width (encoder_ffn_dim)")
    p.add_argument("--hidden", type=int, metavar="N", help="LLM residual width (hidden_size; prune-hidden)")
    p.add_argument("--heads", type=int, metavar="N",
                   help="LLM query heads kept (head size kept; key/value heads follow the GQA group size)")
    p.add_argument("--audio-hidden", type=int, metavar="N",
                   help="audio encoder width (d_model, a multiple of its head size; prune-hidden)")
    p.add_argument("--vocab", type=int, metavar="N", help="vocabulary size kept (embed_tokens and lm_head rows)")
    p.add_argument("--drop-vision", action="store_true",
                   help="without the vision encoder (stage drop-vision; Gemma 4 bases)")
    p.add_argument("--precision", action="append", default=[], metavar="[COMPONENT=]P",
                   help=("precision of all components (P) or of one (COMPONENT=P); repeatable. P: bf16 fp16 fp32 "
                         "int8 nf4 nf4-dq fp4 fp4-dq, or ctB[-gG][-sym] (compressed-tensors pack-quantized, B = 2-8 bits, "
                         "groups of G weights, default 128, e.g. ct4 ct3-g64 ct4-sym); embed_tokens also ct-int8 (quantize "
                         "int8_embeddings: int8 per row, stays int8 after loading). Components: audio_encoder projector llm_layers embed_tokens "
                         "lm_head other, for Gemma 4 also vision_encoder per_layer_embeddings (aliases audio, llm, "
                         "vision, ple, embeddings = embed_tokens and lm_head). A quantized "
                         "default leaves embed_tokens and lm_head in bf16 unless --quantize-embeddings"))
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="apply a quantized default precision to lm_head too (quantize stage skip=[]); buildable")
    p.add_argument("--quantize-embeddings", action="store_true",
                   help=("apply a quantized default precision to embed_tokens and lm_head: buildable with ct precisions "
                         "(quantize method ct); a what-if with bitsandbytes ones (it leaves the token embedding in float). "
                         "With --target: search ct precisions with quantized embeddings only"))
    p.add_argument("--float-dtype", choices=("bf16", "fp16", "fp32"),
                   help="dtype of the tensors that are not quantized (default bf16)")
    p.add_argument("--target", metavar="BIN", help="list specs whose size lands in this bin (e.g. Bin3)")
    p.add_argument("--edition", default=None,
                   help="track edition: 2025 (bins), 2026/2027 (Pareto, no bins); default: the newest, 2025 with --target")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    a = p.add_argument_group("mixed precision (--allocate): bits per Linear module by measured sensitivity")
    a.add_argument("--allocate", metavar="OUT.json",
                   help=("measure each Linear module of --base (weights needed) quantized alone at each width on the "
                         "--data dev utterances (KL to the unquantized model), choose the widths that meet --target "
                         "(a size: 2.5GiB, 900MB, bytes) under --edition's measure with the least summed loss, and "
                         "write the allocation for stage quantize (method ct, symmetric: true, allocation: OUT.json)"))
    a.add_argument("--bits", default="2,3,4,8,16", metavar="B,B,...",
                   help="widths to choose from (2,3,4,8 packed symmetric; 16 = kept float; default all)")
    a.add_argument("--group-size", type=int, default=None, metavar="N",
                   help="weights per scale (default 128, or the largest power of two dividing every input width)")
    a.add_argument("--split", default="train",
                   help="split of --data to measure on (default train: with ACL 60/60 the published training side; "
                        "never test)")
    a.add_argument("--limit", type=int, default=None, metavar="N", help="measure on the first N utterances only")
    f = p.add_argument_group("frontier (--frontier)")
    f.add_argument("--frontier", action="store_true",
                   help="plan a family of depth x width variants of a recipe for --base, smallest first; with --runs, "
                        "mark the Pareto-optimal ones among the built and scored variants")
    f.add_argument("--recipe", default=None, metavar="RECIPE",
                   help="template recipe (default recipe-bin4): its LLM prune-layers, prune-hidden and prune-ffn are varied")
    f.add_argument("--depths", default=None, metavar="F,F,...",
                   help="fractions of LLM layers kept (default 1,0.75,0.5,0.375,0.25)")
    f.add_argument("--widths", default=None, metavar="F,F,...",
                   help="fractions of the residual/FFN widths kept (default 1,0.75,0.5,0.375,0.25)")
    f.add_argument("--data", metavar="SPEC", help="count the trimmed vocabulary on this data (else --vocab, default 16000); "
                   "also for RECIPE")
    f.add_argument("--lang", default="en-de", help="language pair (vocabulary trimming; default en-de); also for RECIPE")
    f.add_argument("--write", metavar="DIR", help="write each variant as DIR/NAME.yaml, to build with iwslt-mc build")
    f.add_argument("--force", action="store_true", help="overwrite variant files in --write")
    f.add_argument("--runs", nargs="+", metavar="RUN_DIR", default=[],
                   help="built variants (build directories with scores*.json) to place on the frontier")
    f.add_argument("--metric", default="auto", help="quality metric for --runs: auto, comet, bleu, chrf (as in report)")
    return p


def _fractions(text: str | None, what: str) -> tuple[float, ...]:
    from ..errors import UserError
    from ..planning.frontier import DEFAULT_FRACTIONS

    if text is None:
        return DEFAULT_FRACTIONS
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--{what} {text!r}: expected comma-separated fractions, e.g. 1,0.5,0.25") from None
    if not vals or any(not 0 < v <= 1 for v in vals):
        raise UserError(f"--{what} {text!r}: every fraction must be in (0, 1]")
    return vals


def run_frontier(args) -> int:
    """``plan --frontier``: the family's predicted sizes, and the measured frontier of its built runs."""
    from ..planning import frontier
    from ..errors import UserError
    from ..output import info, print_json, print_table

    if not args.base:
        raise UserError("--frontier needs --base MODEL_DIR (the model the variants start from)")
    template = args.recipe or frontier.DEFAULT_TEMPLATE
    variants = frontier.plan_family(template, args.base, depths=_fractions(args.depths, "depths"),
                                    widths=_fractions(args.widths, "widths"),
                                    data={"acl6060": args.data} if args.data else None,
                                    vocab=args.vocab or 16000, lang=args.lang, edition=args.edition)
    metric = frontier.mark_built(variants, args.runs, metric=args.metric, edition=args.edition) if args.runs else None
    written = frontier.write_variants(variants, args.write, template=template, base=args.base, force=args.force) if args.write else []
    if args.json:
        print_json({"template": template, "base": args.base, "metric": metric,
                    "variants": [v.to_json() for v in variants], "written": [str(p) for p in written]})
        return 0
    keys = sorted({k for v in variants for k in v.measured}, key=str)
    rows = []
    for v in variants:
        p, d = v.prediction, v.prediction["dims"]
        row = [v.name, v.kind, d["llm_layers"], f"{d['hidden']}/{d['heads']}/{d['audio_hidden']}",
               f"{p['bytes']:,}", p["bin"] or "none", f"{p['params'] / 1e6:,.1f}"]
        for k in keys:
            m = v.measured.get(k)
            row.append("-" if m is None else f"{m['score']:.2f}{' *' if m['pareto'] else ''}")
        rows.append(row)
    headers = ["variant", "kind", "LLM layers", "width llm/heads/audio", "predicted bytes", "bin", "M params"]
    headers += [f"{metric} {k[0]} {k[1]}" for k in keys]
    print_table(rows, headers, title=f"{template} on {args.base}: depth x width variants, smallest first")
    for n in sorted({n for v in variants for n in v.prediction.get("notes", [])}):
        info(f"note: {n}")
    if keys:
        info("*: on the Pareto frontier (no other built variant is both no larger and no worse); size measured")
    elif args.runs:
        info("no scores in --runs yet (iwslt-mc score ... --out-json RUN/scores-TESTSET.json)")
    for pth in written:
        print(f"wrote {pth}")
    return 0


def parse_precisions(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """``["nf4", "lm_head=bf16"]`` -> (default, {component: precision}); validates every value."""
    from ..errors import UserError
    from ..planning.planner import check_precision, normalize_component

    default, per = None, {}
    for v in values:
        for item in filter(None, (x.strip() for x in v.split(","))):
            if "=" in item:
                comp, prec = (x.strip() for x in item.split("=", 1))
                for c in (("embed_tokens", "lm_head") if comp == "embeddings" else (normalize_component(comp),)):
                    per[c] = check_precision(prec)
            else:
                if default is not None and default != item:
                    raise UserError(f"--precision given twice without a component ({default!r}, {item!r}); "
                                    "use COMPONENT=P for per-component precision")
                default = check_precision(item)
    return default, per


DEFAULT_TRIMMED_VOCAB = 16000


def run_recipe(args, ed) -> int:
    """``plan RECIPE --base DIR``: the planner's table for the recipe's final model, from the base's config."""
    import dataclasses

    from ..planning import planner
    from ..build import spec_for_stages
    from ..errors import UserError
    from ..families import family_named
    from ..output import info, print_json
    from ..recipes import check_recipe_family, load_recipe

    sized = [n for n in ("llm_layers", "audio_layers", "ffn_dim", "audio_ffn_dim", "hidden", "heads", "audio_hidden",
                         "target") if getattr(args, n) is not None] + (["precision"] if args.precision else [])
    if sized:
        raise UserError(f"plan RECIPE: the recipe's stages set the size; --{sized[0].replace('_', '-')} does not apply "
                        "(iwslt-mc build RECIPE --set ID.key=value changes a stage)")
    recipe = load_recipe(args.plan_recipe)
    if args.base:
        check_recipe_family(recipe, args.base)
        base_config = planner.load_base_config(args.base, plain=True)
        base_name = args.base
    elif family_named(recipe.family).reference_config() is not None:
        fam = family_named(recipe.family)
        base_config, base_name = fam.reference_config(), fam.reference_label()
    else:
        raise UserError(f"plan {recipe.name}: a {recipe.family} recipe needs --base MODEL_DIR "
                        "(for the 12B layout: python tools/gemma4_12b_config.py DIR)")
    stages = recipe.active_stages("constrained")
    trims = any(e.stage == "trim-vocab" for e in stages)
    notes = []
    if trims and args.data:
        spec, notes = spec_for_stages(stages, base_config, base=args.base, lang=args.lang,
                                      data={"acl6060": args.data}, condition="constrained")
    else:
        spec, notes = spec_for_stages([e for e in stages if e.stage != "trim-vocab"], base_config, base=args.base or "",
                                      lang=args.lang, data={}, condition="constrained")
        if trims:
            vocab = args.vocab or DEFAULT_TRIMMED_VOCAB
            spec = dataclasses.replace(spec, vocab=vocab)
            notes.append(f"trim-vocab: planned with {vocab:,} tokens (--vocab; `build --dry-run` counts your data's)")
    pred = planner.predict(spec, base_config, ed.key, base_name=base_name)
    if args.json:
        print_json({"recipe": recipe.name, "family": recipe.family, **pred.to_json(), "notes": notes})
        return 0
    print_prediction(pred, spec, base_config, base_name, ed, title_prefix=f"{recipe.name} on ")
    for n in notes:
        info(f"note: {n}")
    return 0


def print_prediction(pred, spec, base_config, base_name: str, ed, *, title_prefix: str = "") -> None:
    """The component table, both size measures, parameters and bin of a prediction."""
    from ..output import info, print_table
    from ..quantization.formats import planned_quantization_config
    from ..sizing.sizer import bin_explanation
    from ..sizing.track import GB, GiB

    rows = []
    for comp, v in pred.components.items():
        rows.append([comp, spec.precision_of(comp), f"{v['params']:,}", f"{v['bytes']:,}",
                     f"{100.0 * v['bytes'] / pred.bytes:.1f}%" if pred.bytes else "-"])
    rows.append(["safetensors header", "", "", f"{pred.header_bytes:,}", ""])
    rows.append(["total (predicted)", "", f"{pred.params:,}", f"{pred.bytes:,}", "100.0%"])
    print_table(rows, ["component", "precision", "parameters", "bytes", "share"],
                title=title_prefix + plan_title(base_name, pred.dims, base_config))
    print(f"safetensors:   {pred.bytes:,} bytes ({pred.bytes / GB:.3f} GB, {pred.bytes / GiB:.3f} GiB)")
    print(f"  signature:   {pred.signature}")
    ts = pred.torch_save
    if ts is not None:
        print(f"torch.save:    {ts.bytes:,} bytes ({ts.bytes / GB:.3f} GB, {ts.bytes / GiB:.3f} GiB) "
              f"(the organizers' measure, model on one GPU; {ts.bytes_cpu:,} loaded on a CPU)")
        print(f"  signature:   {ts.signature}")
    else:
        print(f"torch.save:    {pred.torch_save_note}")
    qc = planned_quantization_config(pred.entries or [])
    if ts is not None and qc and qc["dequantize"]:
        info("note: compressed-tensors with zero points (asymmetric) or quantized embeddings unpacks to floats at load, "
             "so torch.save counts it at float size (symmetric ct of linear layers and lm_head stays packed)")
    print(f"parameters:    {pred.params:,}")
    if pred.overhead:
        print(f"quant state:   {pred.overhead:,} bytes (absmax, quant_map, scales; not parameters)")
    if ed.has_bins:
        print(f"bin:           {bin_explanation(pred.bytes, ed.key)}")
    else:
        print(f"edition {ed.key}:  no bins (Pareto ranking of quality and size)")


def plan_title(base_name: str, d: dict, base_config) -> str:
    """``BASE: 24 LLM layers, 32 audio layers, vocab 156,032, FFN 11008/5120``; parts a model does not have
    (no audio encoder, no audio FFN width, no vision encoder) are left out rather than printed as None."""
    from ..planning import planner

    parts = [f"{d['llm_layers']} LLM layers"]
    if d.get("audio_layers") is not None:
        parts.append(f"{d['audio_layers']} audio layers")
    if "vision" in d:
        parts.append("vision encoder" if d["vision"] else "no vision encoder")
    parts.append(f"vocab {d['vocab']:,}")
    parts.append(f"FFN {d['ffn_dim']}" + (f"/{d['audio_ffn_dim']}" if d.get("audio_ffn_dim") is not None else ""))
    if "hidden" in d:
        base_widths = planner.hidden_base_dims(base_config or planner.reference_config(plain=True))
        w = {k: d.get(k, v) for k, v in base_widths.items()}  # a family may give the LLM width only (Gemma 4)
        if w != base_widths:
            parts.append(f"width {w['hidden']} ({w['heads']} heads)" +
                         (f"/{w['audio_hidden']}" if "audio_hidden" in d or w["audio_hidden"] is not None else ""))
    return f"{base_name}: " + ", ".join(parts)


def run_allocate(args) -> int:
    """``plan --allocate OUT.json``: bits per Linear module by measured sensitivity within --target bytes."""
    from pathlib import Path

    from ..errors import UserError
    from ..output import info, print_json
    from ..quantization import allocation

    if not args.base or not args.target or not args.data:
        raise UserError("--allocate needs --base MODEL_DIR (with weights), --target SIZE (e.g. 2.5GiB) and --data DEV")
    if args.plan_recipe or args.precision:
        raise UserError("--allocate chooses the precision of every Linear module; give no RECIPE or --precision")
    out = Path(args.allocate)
    if out.exists() and not args.force:
        raise UserError(f"{out}: exists (--force overwrites it)")
    budget = allocation.parse_size(args.target)
    widths = allocation.parse_widths(args.bits)
    alloc = allocation.plan_allocation(args.base, args.data, args.lang, budget, edition=args.edition or "2027",
                                       widths=widths, group_size=args.group_size, split=args.split,
                                       limit=args.limit, log=info)
    allocation.write_allocation(out, alloc)
    if args.json:
        print_json(alloc.to_json())
        return 0
    print(f"{out}: {alloc.summary()}; groups of {alloc.group_size}")
    print(f"  {alloc.measure} (edition {alloc.edition}): {alloc.predicted:,} bytes predicted, budget {budget:,}")
    print(f"  summed dev KL (additive estimate): {alloc.predicted_loss:.5f} nats/token")
    print(f"  build: iwslt-mc stage quantize --in {args.base} --out OUT --set method=ct --set symmetric=true --set allocation={out}")
    return 0


def run(args) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..floor.sizes import QUANT_PRECISIONS, parse_ct_precision
    from ..planning import planner, recipe_spec, search
    from ..output import info, print_json, print_table, warn
    from ..sizing.track import get_edition

    from ..errors import UserError
    from ..sizing.track import GiB

    if args.plan_recipe and args.frontier:
        raise UserError("give RECIPE or --frontier (with --recipe TEMPLATE), not both")
    if args.frontier:
        return run_frontier(args)
    if args.allocate:
        return run_allocate(args)
    ed = get_edition(args.edition if args.edition or not args.target else "2025")
    if args.plan_recipe:
        return run_recipe(args, ed)
    default, per = parse_precisions(args.precision)
    if args.quantize_lm_head and args.quantize_embeddings:
        raise UserError("--quantize-lm-head and --quantize-embeddings: give one (embeddings include lm_head)")
    # plain configs (no transformers import) where the base's family computes its shapes; same numbers
    base_config = planner.load_base_config(args.base, plain=True) if args.base else planner.reference_config(plain=True)
    if base_config is not None and getattr(base_config, "quantization_config", None):
        warn(f"{args.base} is already quantized; the plan starts from its architecture, so give --precision for the target")
    base_name = args.base or "built-in Qwen2-Audio-7B-Instruct"

    if args.target:
        if args.quantize_embeddings and default and not parse_ct_precision(default):
            raise UserError(f"--target lists buildable specs only, and bitsandbytes ({default}) leaves the token "
                            "embeddings in float: use --quantize-lm-head, or a ct precision (e.g. ct4) to quantize them")
        emb = "all" if args.quantize_embeddings else "lm_head" if args.quantize_lm_head else None
        rows = search.specs_for_bin(
            args.target, base_config, ed.key, llm_layers=args.llm_layers, audio_layers=args.audio_layers,
            vocab=args.vocab, precision=default, quantize_embeddings=emb,
            ffn_dim=args.ffn_dim, audio_ffn_dim=args.audio_ffn_dim, component_precision=per)
        if args.json:
            print_json({"target": args.target, "edition": ed.key, "base": base_name,
                        "specs": [p.to_json() for p in rows]})
            return 0 if rows else 1
        if not rows:
            info(f"no spec in the search grid lands in {args.target} (fix fewer options, or plan one spec by hand)")
            return 1
        base = planner.base_dims(base_config or planner.reference_config(plain=True))
        widths = any((p.dims["ffn_dim"], p.dims["audio_ffn_dim"]) != (base["ffn_dim"], base["audio_ffn_dim"]) for p in rows)
        hidden = any(p.dims.get("hidden") != base.get("hidden") for p in rows)
        table = []
        for i, p in enumerate(rows, 1):
            d = p.dims
            row = [i, d["llm_layers"], d["audio_layers"], f"{d['vocab']:,}"]
            if widths:
                row.append(f"{d['ffn_dim']}/{d['audio_ffn_dim']}")
            if hidden:
                row.append(f"{d['hidden']}/{d['heads']}/{d['audio_hidden']}")
            ts = f"{p.torch_save.bytes / GiB:,.3f}" if p.torch_save else "-"
            row += [p.spec.precision + p.spec.quantized_extra(), f"{p.bytes / 1e6:,.1f}", ts, f"{p.params / 1e6:,.1f}"]
            table.append(row)
        headers = (["#", "LLM layers", "audio layers", "vocab"] + (["FFN llm/audio"] if widths else [])
                   + (["width llm/heads/audio"] if hidden else []) + ["precision", "MB", "torch.save GiB", "M params"])
        print_table(table, headers, title=f"{base_name}: buildable specs predicted in {rows[0].bin}, least to most aggressive")
        info("precision +lm_head: lm_head quantized too (embed_tokens stays bf16); exact bytes with --json")
        if any(parse_ct_precision(p.spec.precision) for p in rows):
            info("ctB: compressed-tensors B-bit (quantize method ct), +emb: embed_tokens and lm_head quantized too; "
                 "transformers unpacks ct weights to floats at load, so their torch.save measure is not the bytes on disk")
        print("how to build (a shipped recipe with --set overrides where one fits, else the stages in order):")
        notes = {}
        for i, p in enumerate(rows, 1):
            cmd = p.plan.recipe_command()
            print(f"  {i}. {cmd}" if cmd else f"  {i}. iwslt-mc stage ... : {p.plan.chain(notes=False)}")
            for s in p.plan.steps:
                if s.note:
                    notes.setdefault(s.stage, s.note.split(";")[0])
        for stage, note in notes.items():
            if stage == "trim-vocab":
                note += " (the vocab column is assumed; `build --dry-run` counts the tokens of your data)"
            info(f"{stage}: {note}")
        info("--json lists each spec's stages and options")
        print(f"signature:  {rows[0].signature}")
        return 0

    if args.quantize_lm_head and (default or "bf16") in QUANT_PRECISIONS:
        per.setdefault("embed_tokens", args.float_dtype or "bf16")
    spec = planner.Spec(llm_layers=args.llm_layers, audio_layers=args.audio_layers, ffn_dim=args.ffn_dim,
                        audio_ffn_dim=args.audio_ffn_dim, vocab=args.vocab, precision=default or "bf16",
                        component_precision=per, quantize_embeddings=args.quantize_embeddings or args.quantize_lm_head,
                        float_dtype=args.float_dtype, hidden=args.hidden, heads=args.heads,
                        audio_hidden=args.audio_hidden, drop_vision=args.drop_vision)
    pred = planner.predict(spec, base_config, ed.key, base_name=base_name)
    try:
        pred.plan = recipe_spec.build_plan(spec, base_config)
        not_buildable = None
    except UserError as e:
        not_buildable = str(e)
    if args.json:
        print_json({**pred.to_json(), "not_buildable": not_buildable})
        return 0
    print_prediction(pred, spec, base_config, base_name, ed)
    if not_buildable:
        print(f"build:         {not_buildable}")
    else:
        cmd = pred.plan.recipe_command()
        print(f"build:         {cmd}" if cmd else "build:         (no shipped recipe has exactly these size stages)")
        print(f"  stages:      {pred.plan.chain()}")
    return 0
