"""``iwslt-mc check``: re-verify packaged submissions and print every problem found."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc check submissions/KIT_IWSLT27_ModelCompression_en-de_constrained_primary
  iwslt-mc check submissions/*/                    # also: one primary per language pair and condition
  iwslt-mc check submissions/X --model out/recipe-b --json
"""

DESCRIPTION = """\
Re-verify submission folders written by 'iwslt-mc package': sha256, byte and line count of every
file against manifest.json; no unlisted files; hypothesis files valid UTF-8 with LF line ends, no
BOM and a final newline, with as many lines as their test set has segments (where known); the
name against the recorded fields and the bin of the recorded size; every test set of the edition
present (2026/2027), unless the manifest declares a partial upload; no empty hypothesis file; the
mandatory description fields and their agreement with the manifest; and one primary per language
pair and condition across all folders given (only contrastive runs: a warning, the latest upload
then counts as primary).

The model is re-measured and compared (fingerprint, bytes, parameters, bin, name) when --model is
given; a model rebuilt in place is caught by its fingerprint even at the same size;
without it, the model directory recorded in the manifest is re-measured if it still exists
(--no-model skips this). Prints every problem; the exit code is 1 if there is any, 0 if none."""


def add_parser(sub):
    p = add_command(sub, "check", help="re-verify packaged submissions (checksums, name, bin, lines, description)",
                    description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("dirs", nargs="+", metavar="SUBMISSION_DIR", help="submission folder(s) written by 'iwslt-mc package'")
    p.add_argument("--model", metavar="MODEL_DIR", help="model directory to re-measure (default: the one in the manifest)")
    p.add_argument("--no-model", action="store_true", help="do not re-measure any model")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args) -> int:
    from ..submission import check as sub_check
    from ..errors import UserError
    from ..output import print_json

    if args.model and args.no_model:
        raise UserError("--model and --no-model exclude each other")
    res = sub_check.check(args.dirs, model_dir=args.model, use_recorded_model=not args.no_model)
    if args.json:
        print_json(res.to_json())
        return 0 if res.ok else 1
    for s in res.submissions:
        status = "ok" if not s.problems else f"{len(s.problems)} problem(s)"
        print(f"{s.dir}: {status}")
        for p in s.problems:
            print(f"  problem: {p}")
        for n in s.notes:
            print(f"  note: {n}")
    for p in res.problems:
        print(f"problem: {p}")
    for w in res.warnings:
        print(f"warning: {w}")
    n = len(res.all_problems())
    print("all checks passed" if res.ok else f"{n} problem(s) found")
    return 0 if res.ok else 1
