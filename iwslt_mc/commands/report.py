"""iwslt-mc report: one table and one plot of quality against size for several runs."""

from __future__ import annotations

from .. import cli

EXAMPLES = """
  iwslt-mc score --hyp runs/b3/hyp.de --ref test.de --src test.en --lang en-de --out-json runs/b3/scores-en-de.json
  iwslt-mc report runs/*/ --out report/
  iwslt-mc report runs/b3 runs/b4 path/to/model_dir --metric bleu --json
"""


def add_parser(sub):
    p = cli.add_command(
        sub, "report",
        help="table (Markdown, JSON) and plot (PNG) of quality against size, bins and Pareto frontier",
        description=(
            "Collect models and their scores into report.md, report.json and quality-vs-size.png in "
            "--out. A RUN_DIR is a build output (RUN_DIR/model/ plus build.json) or a bare model "
            "directory; its scores are RUN_DIR/scores*.json and RUN_DIR/scores/*.json as written by "
            "'iwslt-mc score --out-json'. Size, parameters and bin are measured now (the sizer); "
            "recipe and techniques come from build.json and provenance.json. The plot shows quality "
            "against size (log scale) with the 2025 bin boundaries and the Pareto frontier (2026 "
            "ranking), one panel per language pair and test set."),
        examples=EXAMPLES,
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="build output or model directory")
    p.add_argument("--out", default="report", metavar="DIR", help="where to write the report (default: report/)")
    p.add_argument("--metric", default="auto", choices=["auto", "comet", "bleu", "chrf"],
                   help="quality axis and frontier metric (auto: COMET when every scored model has it, else BLEU)")
    p.add_argument("--edition", default="2025", help="edition whose bins are drawn and assigned (default 2025)")
    p.add_argument("--json", action="store_true", help="print the report record as JSON")
    return p


def run(args) -> int:
    from pathlib import Path

    from .. import report
    from ..output import print_json, print_table

    rec = report.write_report(args.run_dirs, args.out, metric=args.metric, edition=args.edition)
    if args.json:
        print_json(rec)
        return 0
    # The terminal gets the columns that decide; report.md has them all.
    label = report.METRIC_LABELS[rec["metric"]]
    rows = [report.Row(**r) for r in rec["rows"]]
    headers, body = report.table(rows, rec["metric"])
    keep = ["model", "lang", "test set", "size", "bin", label, "Pareto", "best in bin"]
    idx = [headers.index(h) for h in keep]
    print_table([[row[i] for i in idx] for row in body], keep, title=f"quality ({label}) against size")
    out = Path(args.out)
    written = ["report.md", "report.json"] + ([rec["plot"]] if rec["plot"] else [])
    print("wrote " + ", ".join(str(out / w) for w in written))
    return 0
