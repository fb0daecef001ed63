"""iwslt-mc report: one table and one plot of quality against size for several runs."""

from __future__ import annotations

from .. import cli

EXAMPLES = """
  iwslt-mc score --hyp runs/b3/hyp.de --ref test.de --src test.en --lang en-de --out-json runs/b3/scores-en-de.json
  iwslt-mc report runs/*/ --out report/                  # 2027: Pareto frontier per test set and averaged
  iwslt-mc report runs/*/ --out report-2025/ --edition 2025   # 2025: also the bin edges and best per bin
  iwslt-mc report runs/b3 runs/b4 path/to/model_dir --metric bleu --json
  iwslt-mc report runs/*/ --teacher runs/teacher --accept-comet 0.6,0.8   # acceptability vs the teacher
"""


def add_parser(sub):
    p = cli.add_command(
        sub, "report",
        help="table (Markdown, JSON) and plot (PNG) of quality against size with the Pareto frontier",
        description=(
            "Collect models and their scores into report.md, report.json and quality-vs-size.png in "
            "--out. A RUN_DIR is a build output (RUN_DIR/model/ plus build.json) or a bare model "
            "directory; its scores are RUN_DIR/scores*.json and RUN_DIR/scores/*.json as written by "
            "'iwslt-mc score --out-json'. Size (the edition's measure: 2026/2027 torch.save(state_dict) bytes, "
            "which loads each model once on the CPU; 2025 safetensors bytes), parameters and bin are "
            "measured now; recipe and techniques come from build.json and provenance.json. The plot shows "
            "quality against size (log scale) and the Pareto frontier (the 2026/2027 ranking), one panel per "
            "language pair and test set, plus one per language pair averaged over its test sets when there "
            "are several; with --edition 2025 also the bin boundaries and the best model of each bin. "
            "report.md also has an acceptability section (papers/000): per model and test set, the share of "
            "segments whose sentence COMET (sentence chrF for files without COMET) is at or above each "
            "threshold, and with --teacher (or teacher scores stored by 'iwslt-mc score --teacher-hyp') "
            "precision, recall and F1 of the model's 'acceptable' decisions against the teacher's."),
        examples=EXAMPLES,
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="build output or model directory")
    p.add_argument("--out", default="report", metavar="DIR", help="where to write the report (default: report/)")
    p.add_argument("--metric", default="auto", choices=["auto", "comet", "bleu", "chrf"],
                   help="quality axis and frontier metric (auto: COMET when every scored model has it, else BLEU)")
    p.add_argument("--edition", default=None, metavar="YEAR",
                   help="track edition: 2027 (default, the newest), 2026 (Pareto, safetensors size), 2025 (bins)")
    p.add_argument("--teacher", metavar="RUN_DIR",
                   help="run whose segment scores are the positives for acceptability precision/recall/F1 "
                        "(same language pair, test set and segments)")
    p.add_argument("--accept-comet", metavar="LIST", default="0.51,0.70,0.90",
                   help="COMET acceptability thresholds, 0..1 (default 0.51,0.70,0.90: the DA thresholds of papers/000)")
    p.add_argument("--accept-chrf", metavar="LIST", default="51,70,90",
                   help="chrF acceptability thresholds for files without COMET, 0..100 (default 51,70,90)")
    p.add_argument("--json", action="store_true", help="print the report record as JSON")
    return p


def run(args) -> int:
    from pathlib import Path

    from ..submission import report
    from ..output import print_json, print_table

    from ..scoring import scoring

    accept = {"comet": scoring.check_thresholds(args.accept_comet, "comet"),
              "chrf": scoring.check_thresholds(args.accept_chrf, "chrf")}
    rec = report.write_report(args.run_dirs, args.out, metric=args.metric, edition=args.edition, accept=accept,
                              teacher=args.teacher)
    if args.json:
        print_json(rec)
        return 0
    # The terminal gets the columns that decide; report.md has them all.
    label = report.METRIC_LABELS[rec["metric"]]
    rows = [report.Row(**r) for r in rec["rows"]]
    headers, body = report.table(rows, rec["metric"], rec["edition"])
    keep = ["model", "lang", "test set", "size", "bin", label, "Pareto", "best in bin"]
    if rec["ranking"] != "bins":
        keep = [k for k in keep if k not in ("bin", "best in bin")]
    idx = [headers.index(h) for h in keep]
    print_table([[row[i] for i in idx] for row in body], keep, title=f"quality ({label}) against size")
    out = Path(args.out)
    written = ["report.md", "report.json"] + ([rec["plot"]] if rec["plot"] else [])
    for n in rec.get("notes") or []:
        print(f"note: {n}")
    print("wrote " + ", ".join(str(out / w) for w in written))
    return 0
