"""``iwslt-mc package``: an upload-ready submission folder with a computed name, description and checksums."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc package runs/b/model --team HW-TSC --lang en-de --condition constrained --type primary \\
      --hyp-dir hyp/        # 2027: hyp/tvseries.de ... hyp/accent.de (with their .jsonl decode logs)
                            # -> submissions/HW-TSC_IWSLT27_ModelCompression_en-de_constrained_primary/
  iwslt-mc package runs/b/model --team KIT --lang en-zh --condition constrained --type contrastive \\
      --hyp acl=hyp/acl.zh --partial          # a deliberate partial upload: 1 of 5 test sets
  iwslt-mc package runs/b/model --team KIT --lang en-de --condition constrained --type primary \\
      --edition 2025 --hyp acl6060=hyp/acl6060.de   # -> KIT_IWSLT25_ModelCompression_en-de_Bin3_constrained_primary
  iwslt-mc package out/m --team KIT --lang en-de --condition constrained --type primary --edition 2025 \\
      --hyp tst=other-tool.de --segments tst=468 --allow-unlogged   # hypotheses decoded by another tool
"""

DESCRIPTION = """\
Size the model with every size measure of the edition (2027: torch.save(state_dict) bytes in GiB,
as the organizers' scripts do, plus the safetensors bytes), build the edition's standardized model
name (with the size bin in 2025), and write OUT/<name>/ atomically:

  <name>.<TESTSET>.txt   one hypothesis file per --hyp: UTF-8 without BOM, LF line ends, one
                         segment per line, final newline, line count of the input kept exactly
  description.txt        the mandatory description fields, ready to paste: exact storage size in
                         bytes and in the edition's unit, parameters, techniques, datasets
  manifest.json          edition, name, sizes, parameters, sha256 / bytes / lines of every file,
                         model directory, tool version, time (used by 'iwslt-mc check')

Editions 2026 and 2027 name their test sets (en-de: tvseries, acl, callcenter, youtube,
businessnews, accent; en-zh: the same without accent): a submission covers all of them, or is
refused unless --partial (a deliberate partial upload, written into the manifest and description).
Each hypothesis file must come with the decode log 'iwslt-mc decode' wrote beside it (FILE.jsonl):
a log recording another model's fingerprint is refused (hypotheses of one model are never packaged
under another's name and size); hypotheses without such a log need --allow-unlogged (recorded as
unverified). A 0-line hypothesis file is an error. Hypotheses are never altered beyond the file
format (UTF-8, LF): tags such as (Applause) stay as decoded.

Techniques and datasets (by name, never a local path) come from the model's provenance.json; --techniques/--datasets are only
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
    p.add_argument("--team", required=True, help="team short name: letters, digits and hyphens (e.g. KIT, HW-TSC), at most 32")
    p.add_argument("--lang", required=True, metavar="LP", help="language pair: en-de, en-zh (2025 also en-ar)")
    p.add_argument("--condition", required=True, metavar="COND", help="constrained or unconstrained")
    p.add_argument("--type", required=True, dest="submission_type", metavar="TYPE", help="primary or contrastive")
    p.add_argument("--hyp", action="append", metavar="TESTSET=FILE",
                   help="hypothesis file of a test set, one line per segment (repeat for each test set; "
                        "2026/2027: TESTSET is a test-set key such as tvseries, or its label name TVSERIES)")
    p.add_argument("--hyp-dir", metavar="DIR",
                   help="take every DIR/<TESTSET>.<de|zh> named after one of the edition's test sets (as "
                        "'iwslt-mc decode' names them); --hyp adds or overrides single files")
    p.add_argument("--edition", default=None, metavar="YEAR",
                   help="track edition: 2027 (default, the newest), 2026 (no bins), 2025 (bins in the name)")
    p.add_argument("--partial", action="store_true",
                   help="a deliberate partial upload: allow missing test sets (recorded in manifest and description)")
    p.add_argument("--allow-unlogged", action="store_true",
                   help="accept hypotheses without a decode log recording the model (marked unverified in the "
                        "manifest and description)")
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
    from ..submission import description as sub_desc, files as sub_files, names as sub_names
    from ..submission import package as sub_package
    from ..errors import UserError
    from ..output import info, print_json, warn

    from ..sizing.track import get_edition

    ed = get_edition(args.edition)
    hyps = {}
    if args.hyp_dir:
        hyps.update(sub_names.find_hypotheses(args.hyp_dir, ed, args.lang))
    explicit = sub_names.parse_assignments(args.hyp, "--hyp")
    hyps.update(sub_names.resolve_test_sets(ed, args.lang, explicit) if explicit else {})
    if not hyps:
        raise UserError("no hypothesis files: give --hyp TESTSET=FILE (repeatable) or --hyp-dir DIR")
    segs_raw = sub_names.parse_assignments(args.segments, "--segments", "N")
    segments = {}
    for t, v in segs_raw.items():
        try:
            segments[t] = int(v)
        except ValueError:
            raise UserError(f"--segments {t}={v}: N must be a whole number") from None
    logs = sub_names.parse_assignments(args.log, "--log", "FILE.jsonl")
    res = sub_package.package(
        args.model_dir, team=args.team, lp=args.lang, condition=args.condition,
        submission_type=args.submission_type, hyps=hyps, edition=ed.key, techniques=args.techniques,
        datasets=args.datasets, segments=segments, logs=logs, out=args.out, force=args.force, notes=args.note,
        auto_logs=not args.no_auto_log, partial=args.partial, allow_unlogged=args.allow_unlogged)
    for w in res.warnings:
        warn(w)
    if args.json:
        print_json(res.manifest | {"dir": str(res.dir)})
        return 0
    m = res.manifest
    info(f"packaged {res.dir}")
    print(f"name:        {res.name}")
    print(f"folder:      {res.dir}")
    for measure, n in m["sizes"].items():
        label = "size:" if measure == m["size_measure"] else "also:"
        print(f"{label:<13}{n:,} bytes = {sub_desc.exact_unit(n, m['size_unit'])} ({measure})"
              + (f", {m['bin']}" if m["bin"] and measure == m["size_measure"] else ""))
    print(f"parameters:  {m['params']:,}")
    for t, ts in m["test_sets"].items():
        how = f"verified against {ts['segments_from']}" if ts["expected_segments"] is not None else "count not verified"
        upload = f" -> upload as '{ts['label']}'" if ts.get("label") else ""
        print(f"{t}:{' ' * max(1, 12 - len(t))}{ts['file']} ({ts['lines']:,} lines, {how}; {ts['model_check']}){upload}")
    if m.get("partial"):
        print(f"PARTIAL:     test sets not included: {', '.join(m['partial']['missing'])}")
    print(f"description: {res.dir / sub_files.DESCRIPTION}")
    return 0
