"""iwslt-mc demo: the whole job on the built-in tiny kit (offline, CPU, a few minutes)."""

from ..cli import add_command


def add_parser(sub):
    p = add_command(sub, "demo", help="run the whole job on the built-in tiny kit (offline, no GPU)",
                    description="Build the kit, run a recipe scaled to it, size, decode (segmented and long-audio), "
                                "package, check, score and report. The kit model has random weights: the scores "
                                "mean nothing; the demo shows every step working and what it writes.",
                    examples="  iwslt-mc demo\n  iwslt-mc demo --out /tmp/demo --recipe recipe-c --lang en-zh")
    p.add_argument("--out", default="demo-out", help="output directory: new, empty, or an earlier demo's (replaced); default %(default)s")
    p.add_argument("--recipe", default="recipe-b", help="recipe to run with --smoke (default %(default)s)")
    p.add_argument("--lang", default="en-de", choices=["en-de", "en-zh"])
    p.add_argument("--edition", default=None, metavar="YEAR",
                   help="track edition for the submission and report: 2027 (default, the newest; a declared "
                        "partial upload: the kit has speech for the ACL-talks test set only), 2026, 2025")
    p.add_argument("--no-comet", action="store_true", help="skip COMET even if its environment exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def run(args) -> int:
    from ..demo import run_demo
    from ..output import info, print_json, print_table

    res = run_demo(__import__("pathlib").Path(args.out), recipe=args.recipe, lang=args.lang,
                   comet=not args.no_comet, log=info, edition=args.edition)
    if args.json:
        print_json(res)
        return 0
    rows = [[s["name"], f"{s['seconds']:.1f}s", s["result"]] for s in res["steps"]]
    print_table(rows, ["step", "time", "result"], title=f"iwslt-mc demo: {res['seconds']:.0f}s in all")
    print("wrote:")
    for s in res["steps"]:
        for p in s["paths"]:
            print(f"  {s['name']:<18} {p}")
    print("NOTE: the kit model has RANDOM WEIGHTS: its translations and scores mean nothing. The demo shows that\n"
          "every step runs offline and what it writes; run the same commands on Qwen2-Audio-7B-Instruct for real.")
    if res.get("partial"):
        print(res["submission_note"])
    print(f"submission: {res['submission']}\nmodel: {res['model']}\neverything: {res['out']}")
    return 0
