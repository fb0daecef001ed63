"""``iwslt-mc package``: an upload-ready submission folder with a computed name, description and checksums."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc package out/recipe-b --team KIT --lang en-de --condition constrained --type primary \\
      --hyp acl6060=hyp/acl6060.de                # -> submissions/KIT_IWSLT25_ModelCompression_en-de_Bin3_constrained_primary/
  iwslt-mc package out/m --team KIT --lang en-zh --condition unconstrained --type contrastive \\
      --hyp tst=hyp.zh --datasets "CoVoST 2 en-zh; ACL 60/60 dev" --edition 2026
  iwslt-mc package out/m --team KIT --lang en-de --condition constrained --type primary \\
      --hyp tst=hyp.de --segments tst=468 --json  # verify the line count without a decoder log
"""

DESCRIPTION = """\
Size the model with the sizer, build the edition's standardized model name (with the size bin in
2025), and write OUT/<name>/ atomically:

  <name>.<TESTSET>.txt   one hypothesis file per --hyp: UTF-8 without BOM, LF line ends, one
                         segment per line, final newline, line count of the input kept exactly
  description.txt        the mandatory description fields, ready to paste: exact storage size in
                         bytes and in the edition's unit, parameters, techniques, datasets
  manifest.json          edition, name, sizes, parameters, sha256 / bytes / lines of every file,
                         model directory, tool version, time (used by 'iwslt-mc check')

Techniques and datasets come from the model's provenance.json; --techniques/--datasets are only
accepted where the provenance has none (techniques are always mandatory, datasets for
unconstrained). Line counts are verified against the number of segments of each test set: from
--segments, from --log (the decoder's JSONL log, one record per segment), or from a log found next
to the hypothesis file (FILE.jsonl, or FILE with its suffix replaced by .jsonl). Everything is
validated before anything is written; an existing submission is replaced only with --force, and a
second primary for the same language pair and condition under OUT is refused."""


def add_parser(sub):
    p = add_command(sub, "package", help="package hypotheses and a description into an upload-ready submission",
                    description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the model directory the hypotheses were decoded with")
    p.add_argument("--team", required=True, help="team name: letters and digits only")
    p.add_argument("--lang", required=True, metavar="LP", help="language pair: en-de, en-zh (2025 also en-ar)")
    p.add_argument("--condition", required=True, metavar="COND", help="constrained or unconstrained")
    p.add_argument("--type", required=True, dest="submission_type", metavar="TYPE", help="primary or contrastive")
    p.add_argument("--hyp", action="append", required=True, metavar="TESTSET=FILE",
                   help="hypothesis file of a test set, one line per segment (repeat for each test set)")
    p.add_argument("--edition", default="2025", help="track edition: 2025 (bins in the name) or 2026 (default: 2025)")
    p.add_argument("--techniques", metavar="TEXT", help="compression techniques, ';'-separated; only if provenance lacks them")
    p.add_argument("--datasets", metavar="TEXT", help="datasets used, ';'-separated; only if provenance lacks them")
    p.add_argument("--segments", action="append", metavar="TESTSET=N",
                   help="known number of segments of a test set (the hypothesis file must have N lines)")
    p.add_argument("--log", action="append", metavar="TESTSET=FILE.jsonl",
                   help="decoder JSONL log of a test set; its records give the number of segments")
    p.add_argument("--no-auto-log", action="store_true", help="do not look for FILE.jsonl next to each hypothesis file")
    p.add_argument("--note", action="append", metavar="TEXT",
                   help="optional description detail (inference time, FLOPs, ...), one line each; repeatable")
    p.add_argument("--out", default="submissions", help="folder that holds the submissions (default: submissions/)")
    p.add_argument("--force", action="store_true", help="replace an existing submission of the same name")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return p


def run(args) -> int:
    from .. import packaging
    from ..errors import UserError
    from ..output import info, print_json, warn

    hyps = packaging.parse_assignments(args.hyp, "--hyp")
    segs_raw = packaging.parse_assignments(args.segments, "--segments", "N")
    segments = {}
    for t, v in segs_raw.items():
        try:
            segments[t] = int(v)
        except ValueError:
            raise UserError(f"--segments {t}={v}: N must be a whole number") from None
    logs = packaging.parse_assignments(args.log, "--log", "FILE.jsonl")
    res = packaging.package(
        args.model_dir, team=args.team, lp=args.lang, condition=args.condition,
        submission_type=args.submission_type, hyps=hyps, edition=args.edition, techniques=args.techniques,
        datasets=args.datasets, segments=segments, logs=logs, out=args.out, force=args.force, notes=args.note,
        auto_logs=not args.no_auto_log)
    for w in res.warnings:
        warn(w)
    if args.json:
        print_json(res.manifest | {"dir": str(res.dir)})
        return 0
    m = res.manifest
    info(f"packaged {res.dir}")
    print(f"name:        {res.name}")
    print(f"folder:      {res.dir}")
    print(f"size:        {m['bytes']:,} bytes ({packaging.exact_unit(m['bytes'], m['size_unit'])})"
          + (f", {m['bin']}" if m["bin"] else ""))
    print(f"parameters:  {m['params']:,}")
    for t, ts in m["test_sets"].items():
        how = f"verified against {ts['segments_from']}" if ts["expected_segments"] is not None else "not verified"
        print(f"{t}:{' ' * max(1, 12 - len(t))}{ts['file']} ({ts['lines']:,} lines, {how})")
    print(f"description: {res.dir / packaging.DESCRIPTION}")
    return 0
