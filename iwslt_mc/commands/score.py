"""iwslt-mc score: BLEU, chrF/chrF++ (sacrebleu), COMET, after resegmentation when needed."""

from __future__ import annotations

from .. import cli

EXAMPLES = """
  iwslt-mc score --hyp hyp.de --ref test.de --lang en-de
  iwslt-mc score --hyp hyp.zh --ref test.zh --lang en-zh --resegment always --json
  iwslt-mc score --hyp hyp.de --ref test.de --src test.en --lang en-de \\
      --comet ~/models/wmt22-comet-da/checkpoints/model.ckpt --out-json runs/b3/scores-en-de.json
  iwslt-mc setup-comet && iwslt-mc score ... --comet Unbabel/wmt22-comet-da   # hub id: needs the network
  iwslt-mc score --hyp small.de --teacher-hyp teacher.de --ref test.de --lang en-de --accept-chrf 40,51,70
"""


def add_parser(sub):
    p = cli.add_command(
        sub, "score",
        help="score a hypothesis file: BLEU, chrF/chrF++, COMET (after resegmentation)",
        description=(
            "Score a hypothesis file (one segment per line, UTF-8) against a reference file the way "
            "the organizers do: sacrebleu BLEU (tok 13a for German, zh for Chinese) and chrF++ "
            "(German) / chrF (Chinese), case-sensitive with punctuation, each with its signature. "
            "When the line counts differ (or with --resegment always) the hypothesis is first "
            "resegmented to the reference segments with mweralign (mwerSegmenter's alignment; "
            "offline tokenization) and the alignment's AS-WER is reported. With --comet the "
            "segments are also scored by COMET, run in its own environment (iwslt-mc setup-comet). "
            "Applause/laughter-style tags ((Applause), [Applaus], (笑声), ...) are removed from hypothesis "
            "and reference before scoring, as the organizers ignore them (--keep-tags: score the lines "
            "as they are, identical to the sacrebleu command line; --tag-pattern: your own rule); every "
            "signature ends with tags:stripped or tags:kept. The files are never changed. "
            "Acceptability (papers/000): per threshold, the share of segments whose sentence COMET (or "
            "sentence chrF without --comet) is at or above it; with --teacher-hyp (a teacher's output of the "
            "same segments), precision, recall and F1 of the system's 'acceptable' decisions against the "
            "teacher's (segments the teacher gets acceptable are the positives)."),
        examples=EXAMPLES,
    )
    p.add_argument("--hyp", required=True, metavar="FILE", help="hypothesis file, one segment per line")
    p.add_argument("--ref", required=True, metavar="FILE", help="reference file, one segment per line")
    p.add_argument("--src", metavar="FILE", help="source (English) file, one line per reference line; needed by --comet")
    p.add_argument("--lang", required=True, choices=["en-de", "en-zh", "en-ar"], help="language pair")
    p.add_argument("--resegment", default="auto", choices=["auto", "always", "never"],
                   help="align the hypothesis to the reference segments: when line counts differ (auto, default), always, or never (then counts must match)")
    p.add_argument("--spm", metavar="MODEL", help="local SentencePiece model for resegmentation tokens (default: whitespace for German, characters for Chinese)")
    p.add_argument("--comet", metavar="CHECKPOINT", help="COMET checkpoint (.ckpt, or a model dir with checkpoints/model.ckpt), or a hub id such as Unbabel/wmt22-comet-da when online")
    p.add_argument("--comet-env", metavar="DIR", help="the COMET environment (default: as iwslt-mc setup-comet)")
    p.add_argument("--comet-batch-size", type=int, metavar="N", help="COMET batch size (default 64 on a GPU, 16 on the CPU)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep-tags", action="store_true",
                   help="do not remove applause/laughter-style tags before scoring (default: removed)")
    g.add_argument("--tag-pattern", metavar="REGEX",
                   help="remove what this regular expression matches instead of the built-in tag rule")
    p.add_argument("--teacher-hyp", metavar="FILE",
                   help="a teacher's hypothesis file (e.g. the uncompressed model's) for precision/recall/F1 of "
                        "acceptable decisions; resegmented and scored like --hyp")
    p.add_argument("--accept-comet", metavar="LIST", default="0.51,0.70,0.90",
                   help="COMET acceptability thresholds, 0..1 (default 0.51,0.70,0.90: the DA thresholds 51/70/90 of papers/000)")
    p.add_argument("--accept-chrf", metavar="LIST", default="51,70,90",
                   help="chrF acceptability thresholds without --comet, 0..100 (default 51,70,90)")
    p.add_argument("--testset", metavar="NAME", help="label for the report (default: the reference file's name)")
    p.add_argument("--out-json", metavar="FILE", help="also write the full result (with segment scores) here; iwslt-mc report reads RUN_DIR/scores*.json")
    p.add_argument("--json", action="store_true", help="print the full result as JSON (segment scores included)")
    return p


def run(args) -> int:
    from ..scoring import scoring
    from ..errors import UserError
    from ..fsutil import atomic_write_json
    from ..output import print_json

    if args.comet_batch_size is not None and args.comet_batch_size < 1:
        raise UserError("--comet-batch-size must be at least 1")
    accept = {"comet": scoring.check_thresholds(args.accept_comet, "comet"),
              "chrf": scoring.check_thresholds(args.accept_chrf, "chrf")}
    result = scoring.score_files(
        args.hyp, args.ref, args.lang, src=args.src, resegment_mode=args.resegment, spm_model=args.spm,
        comet=args.comet, comet_env=args.comet_env, comet_batch_size=args.comet_batch_size,
        testset=args.testset, tags="keep" if args.keep_tags else "strip", tag_pattern=args.tag_pattern,
        teacher_hyp=args.teacher_hyp, accept=accept)
    if args.out_json:
        atomic_write_json(args.out_json, result)
    if args.json:
        print_json(result)
        return 0
    # Plain lines, not a table: a signature must never be cut to fit the terminal.
    rs, lines = result["resegmentation"], result["lines"]
    tags = result["tags"]
    print(f"{result['lang']} {result['testset']}: {lines['ref']} segments"
          + (f" (hypothesis resegmented from {lines['hyp']} lines)" if rs["applied"] else "")
          + ("; tags kept" if tags["mode"] == "keep" else
             f"; tags removed before scoring: {tags['removed']['hyp']} in the hypothesis, {tags['removed']['ref']} in the reference"))
    rows = [(m["name"], f"{m['score']:.4f}" if m["name"] == "COMET" else f"{m['score']:.1f}", m["signature"])
            for m in result["metrics"].values()]
    if rs["applied"]:
        rows.append(("AS-WER", f"{rs['as_wer']:.2f}", rs["signature"]))
    width = max(len(r[0]) for r in rows)
    for name, score, sig in rows:
        print(f"{name:<{width}} = {score:>6}  {sig}")
    acc = result.get("acceptability")
    if acc:
        print(f"acceptable (sentence {acc['label']} >= threshold)"
              + (f"; against the teacher {acc['teacher_file']}" if acc["teacher"] else "") + ":")
        for lv in acc["levels"]:
            print("  " + format_level(lv, acc["metric"]))
    return 0


def format_level(lv: dict, metric: str) -> str:
    """One threshold's line: share acceptable, and with a teacher P/R/F1 (plain text, also used by report)."""
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    t = f"{lv['threshold']:.2f}" if metric == "comet" else f"{lv['threshold']:g}"
    line = f">= {t}: {lv['acceptable']}/{lv['segments']} ({100 * (lv['share'] or 0):.1f}%)"
    if "precision" in lv:
        line += (f"  teacher {lv['teacher_acceptable']}/{lv['segments']}  precision {f(lv['precision'])} "
                 f"recall {f(lv['recall'])} F1 {f(lv['f1'])}")
    return line
