"""``iwslt-mc plan``: predict size, parameters and bin of a compression before building it."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc plan                                          # the unmodified Qwen2-Audio-7B-Instruct in bf16
  iwslt-mc plan --llm-layers 24 --precision nf4-dq       # prune 8 decoder layers, 4-bit with double quant
  iwslt-mc plan --precision nf4-dq --quantize-embeddings --vocab 32768
  iwslt-mc plan --precision int8 --precision lm_head=bf16 --precision audio_encoder=bf16
  iwslt-mc plan --target Bin3                            # specs that land in Bin3, least aggressive first
  iwslt-mc plan --target Bin2 --precision nf4-dq --vocab 32768   # vary only what is not given
  iwslt-mc plan --base path/to/model --llm-layers 20 --json
"""


def add_parser(sub):
    p = add_command(
        sub, "plan",
        help="predict bytes, parameters and bin of a compression (or list specs that fit a bin)",
        description=("Predict the storage size (bytes of the safetensors file save_pretrained writes), the logical "
                     "parameter count and the size bin of a compressed model without building it: the base "
                     "architecture is enumerated on the meta device and each format's on-disk layout is computed "
                     "exactly (bf16/fp16/fp32; bitsandbytes int8 with per-row scales; nf4/fp4 with absmax per 64 "
                     "values, quant_map and quant_state, plus nested statistics with double quantization '-dq'). "
                     "With --target BinN: a short table of specs that land in that bin, least to most aggressive."),
        examples=EXAMPLES,
    )
    p.add_argument("--base", metavar="MODEL_DIR",
                   help="model directory whose config.json is the base (default: built-in Qwen2-Audio-7B-Instruct)")
    p.add_argument("--llm-layers", type=int, metavar="N", help="LLM decoder layers kept")
    p.add_argument("--audio-layers", type=int, metavar="N", help="audio encoder layers kept")
    p.add_argument("--ffn-dim", type=int, metavar="N", help="LLM MLP width (intermediate_size)")
    p.add_argument("--audio-ffn-dim", type=int, metavar="N", help="audio encoder MLP width (encoder_ffn_dim)")
    p.add_argument("--vocab", type=int, metavar="N", help="vocabulary size kept (embed_tokens and lm_head rows)")
    p.add_argument("--precision", action="append", default=[], metavar="[COMPONENT=]P",
                   help=("precision of all components (P) or of one (COMPONENT=P); repeatable. P: bf16 fp16 fp32 "
                         "int8 nf4 nf4-dq fp4 fp4-dq, or ctB[-gG][-sym] (compressed-tensors pack-quantized, B = 2-8 bits, "
                         "groups of G weights, default 128, e.g. ct4 ct3-g64 ct4-sym). Components: audio_encoder projector llm_layers embed_tokens "
                         "lm_head other (aliases audio, llm, embeddings = embed_tokens and lm_head). A quantized "
                         "default leaves embed_tokens and lm_head in bf16 unless --quantize-embeddings"))
    p.add_argument("--quantize-embeddings", action="store_true",
                   help="apply a quantized default precision to embed_tokens and lm_head too")
    p.add_argument("--float-dtype", choices=("bf16", "fp16", "fp32"),
                   help="dtype of the tensors that are not quantized (default bf16)")
    p.add_argument("--target", metavar="BIN", help="list specs whose size lands in this bin (e.g. Bin3)")
    p.add_argument("--edition", default="2025", help="track edition whose bins apply (default: 2025)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def parse_precisions(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """``["nf4", "lm_head=bf16"]`` -> (default, {component: precision}); validates every value."""
    from ..errors import UserError
    from ..planner import check_precision, normalize_component

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


def run(args) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .. import planner
    from ..output import info, print_json, print_table, warn
    from ..sizer import bin_explanation
    from ..track import format_size, get_edition

    ed = get_edition(args.edition)
    default, per = parse_precisions(args.precision)
    base_config = planner.load_base_config(args.base) if args.base else None
    if base_config is not None and getattr(base_config, "quantization_config", None):
        warn(f"{args.base} is already quantized; the plan starts from its architecture, so give --precision for the target")
    base_name = args.base or "built-in Qwen2-Audio-7B-Instruct"

    if args.target:
        rows = planner.specs_for_bin(
            args.target, base_config, ed.key, llm_layers=args.llm_layers, audio_layers=args.audio_layers,
            vocab=args.vocab, precision=default, quantize_embeddings=True if args.quantize_embeddings else None,
            ffn_dim=args.ffn_dim, audio_ffn_dim=args.audio_ffn_dim, component_precision=per)
        if args.json:
            print_json({"target": args.target, "edition": ed.key, "base": base_name,
                        "specs": [p.to_json() for p in rows]})
            return 0 if rows else 1
        if not rows:
            info(f"no spec in the search grid lands in {args.target} (fix fewer options, or plan one spec by hand)")
            return 1
        base = planner.base_dims(base_config or planner.qwen2_audio_7b_config())
        widths = any((p.dims["ffn_dim"], p.dims["audio_ffn_dim"]) != (base["ffn_dim"], base["audio_ffn_dim"]) for p in rows)
        table = []
        for p in rows:
            d = p.dims
            row = [d["llm_layers"], d["audio_layers"], f"{d['vocab']:,}"]
            if widths:
                row.append(f"{d['ffn_dim']}/{d['audio_ffn_dim']}")
            emb = p.spec.quantize_embeddings and planner.is_quant_precision(p.spec.precision)
            row += [p.spec.precision + ("+emb" if emb else ""), f"{p.bytes / 1e6:,.1f}", f"{p.params / 1e6:,.1f}"]
            table.append(row)
        headers = ["LLM layers", "audio layers", "vocab"] + (["FFN llm/audio"] if widths else []) + ["precision", "MB", "M params"]
        print_table(table, headers, title=f"{base_name}: specs predicted in {rows[0].bin}, least to most aggressive")
        info("precision +emb: embed_tokens and lm_head quantized too; exact bytes with --json")
        print(f"signature:  {rows[0].signature}")
        return 0

    spec = planner.Spec(llm_layers=args.llm_layers, audio_layers=args.audio_layers, ffn_dim=args.ffn_dim,
                        audio_ffn_dim=args.audio_ffn_dim, vocab=args.vocab, precision=default or "bf16",
                        component_precision=per, quantize_embeddings=args.quantize_embeddings,
                        float_dtype=args.float_dtype)
    pred = planner.predict(spec, base_config, ed.key, base_name=base_name)
    if args.json:
        print_json(pred.to_json())
        return 0
    rows = []
    for comp, v in pred.components.items():
        prec = spec.precision_of(comp)
        rows.append([comp, prec, f"{v['params']:,}", f"{v['bytes']:,}",
                     f"{100.0 * v['bytes'] / pred.bytes:.1f}%" if pred.bytes else "-"])
    rows.append(["safetensors header", "", "", f"{pred.header_bytes:,}", ""])
    rows.append(["total (predicted)", "", f"{pred.params:,}", f"{pred.bytes:,}", "100.0%"])
    d = pred.dims
    title = (f"{base_name}: {d['llm_layers']} LLM layers, {d['audio_layers']} audio layers, vocab {d['vocab']:,}, "
             f"FFN {d['ffn_dim']}/{d['audio_ffn_dim']}")
    print_table(rows, ["component", "precision", "parameters", "bytes", "share"], title=title)
    print(f"storage size:  {pred.bytes:,} bytes ({format_size(pred.bytes)}, {format_size(pred.bytes, 'MB')})")
    print(f"parameters:    {pred.params:,}")
    if pred.overhead:
        print(f"quant state:   {pred.overhead:,} bytes (absmax, quant_map, scales; not parameters)")
    print(f"bin:           {bin_explanation(pred.bytes, ed.key)}")
    print(f"signature:     {pred.signature}")
    return 0
