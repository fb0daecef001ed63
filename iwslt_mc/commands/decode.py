"""``iwslt-mc decode``: test audio in, one hypothesis per segment out; resumable, data-parallel."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc decode kit/model --lang en-de --audio kit/data?split=eval --out hyp.de --max-new-tokens 32
  iwslt-mc decode kit/model --lang en-de --audio kit/data/testsets/KITTALKS --audio kit/data/testsets/KITCLIPS \\
      --out-dir hyp/                  # IWSLT test-set folders -> hyp/KITTALKS.de, hyp/KITCLIPS.de (+ .jsonl logs)
  iwslt-mc decode MODEL --lang en-zh --audio test/ACL6060 --audio test/TVSERIES --out-dir hyp/ --resume
  iwslt-mc decode MODEL --lang en-de --audio acl=data/acl6060?split=eval --out-dir hyp/   # NAME=SPEC: hyp/acl.de
  iwslt-mc decode MODEL --lang en-de --audio test/IWSLT.tst2023.en-de.yaml --out tst2023.de
  iwslt-mc decode MODEL --lang en-zh --audio talk.wav --out talk.zh        # cut at pauses into <= 30 s
  iwslt-mc decode MODEL --lang en-de --audio files.txt --out hyp.de --resume   # continue after a kill
  iwslt-mc decode MODEL --lang en-de --audio SPEC --out hyp.de --mode reference  # the published decoding
  accelerate launch --multi_gpu --num_processes 4 -m iwslt_mc decode MODEL --lang en-de --audio SPEC --out hyp.de
"""

DESCRIPTION = """\
Translate every segment of --audio with a Qwen2-Audio model directory and write --out: UTF-8, one
line per segment in input order (line breaks inside a hypothesis become spaces; an empty hypothesis
is an empty line), written atomically at the end. <out>.jsonl logs each segment (id, source, text,
token count, seconds) as it finishes; --resume continues from it after an interruption and gives
the same file as an uninterrupted run.

--audio is recognised by itself: an IWSLT test-set folder (WAVs, a FILE_ORDER file naming one WAV per
line, at most one segmentation YAML with wav/offset/duration per segment, optional *.en/*.de/*.zh
references), a dataset (save_to_disk or parquet directory, parquet file, data list; add ?split=eval
to pick a split), a segmentation YAML (WAVs relative to it), a text file listing audio paths, or one
audio file. A test set's lines come in the organizers' order: WAVs by their position in FILE_ORDER,
then segments by their position in the YAML; without a YAML, one line per WAV in FILE_ORDER order.

Several --audio decode in one run (the model loads once) with --out-dir DIR: each input writes
DIR/NAME.<de|zh|ar> and its log DIR/NAME.<de|zh|ar>.jsonl, NAME being the test set's folder name (a
file's stem for other inputs; NAME=SPEC names it yourself). --resume continues the whole run.
Every input and the model are checked before anything is decoded.

Audio longer than 30 s from a list or a single file is cut at pauses into segments (lines) of at
most 30 s. A segment of a test set, YAML or dataset longer than the longest audio piece the model
takes (Qwen2-Audio: its audio encoder's 30 s window; gemma-4-12B-it: 18 s, 450 audio tokens, beyond
which its encoder-free audio fades) is cut at pauses into pieces that are decoded and joined into its
one line; the log records the pieces and the summary names those segments.

--mode reference is the published decoding (chat prompt, greedy, batch 1, max_length 1024).
--mode fast (default) gives the same tokens with length-sorted batches, left padding and, on CUDA,
a static KV cache with torch.compile."""


def add_parser(sub):
    p = add_command(sub, "decode", help="translate test audio: one hypothesis line per segment",
                    description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory (safetensors, config, processor)")
    p.add_argument("--lang", required=True, choices=["en-de", "en-zh", "en-ar"], help="language pair")
    p.add_argument("--audio", required=True, action="append", metavar="[NAME=]SPEC",
                   help="test-set folder, dataset, segmentation YAML, list of audio files, or one audio file; "
                        "repeat for several (with --out-dir)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", metavar="FILE", help="hypothesis file to write (log: FILE.jsonl); one --audio")
    out.add_argument("--out-dir", metavar="DIR", help="folder for one hypothesis file per --audio: DIR/NAME.<de|zh|ar>")
    p.add_argument("--mode", choices=["fast", "reference"], default="fast", help="decoding mode (default: fast)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="segments per batch in fast mode (default: 8)")
    p.add_argument("--max-length", type=int, default=1024, metavar="N",
                   help="generation limit counting the prompt, as published (default: 1024)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="also stop after N generated tokens (default: no extra limit)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="instruction text instead of 'Translate the English speech into German:' (or Chinese)")
    p.add_argument("--resume", action="store_true", help="continue from the .jsonl log(s) of an interrupted run")
    p.add_argument("--overwrite", action="store_true",
                   help="discard existing logs and replace existing output files (refused without it)")
    p.add_argument("--skip-bad", action="store_true",
                   help="decode unreadable segments as empty lines (with a warning) instead of stopping")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["auto", "bf16", "fp16", "fp32"],
                   help="weights dtype (default: as stored; float32 on a CPU for float16/bf16 weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def _outputs(args, inputs) -> list:
    """The output file of each input: --out, or DIR/NAME.<target code> under --out-dir (names unique)."""
    from pathlib import Path

    from ..errors import UserError
    from ..floor.languages import TARGET_CODE

    if args.out:
        if len(inputs) > 1:
            raise UserError(f"--out names one file but --audio is given {len(inputs)} times: use --out-dir DIR")
        return [Path(args.out)]
    seen: dict[str, str] = {}
    for name, inp in inputs:
        if name in seen:
            raise UserError(f"two inputs are both named {name!r} ({seen[name]}, {inp.spec}): "
                            "name them with --audio NAME=SPEC")
        seen[name] = inp.spec
    return [Path(args.out_dir) / f"{name}.{TARGET_CODE[args.lang]}" for name, _ in inputs]


def split_name(arg: str) -> tuple[str | None, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); a SPEC alone (also one that contains '=' in a path or ?query) -> (None, SPEC)."""
    import os
    import re

    name, eq, rest = arg.partition("=")
    if eq and rest and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) and not os.path.exists(arg):
        return name, rest
    return None, arg


def run(args) -> int:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..decoding.runner import bad_segments_message, check_model, decode_to_file
    from ..errors import UserError
    from ..decoding.inputs import check_segments, resolve_audio
    from ..output import info, print_json, print_table, warn

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    check_model(args.model_dir)  # architecture and weight files, before any audio or weight is read
    inputs = []
    for arg in args.audio:
        name, spec = split_name(arg)
        inp = resolve_audio(spec)
        if name:
            inp.name = name
        inputs.append((inp.name, inp))
    outs = _outputs(args, inputs)
    bad_all, bad_before = [], {}
    for (_, audio), out in zip(inputs, outs):
        for note in audio.notes:
            info(note)
        bad = check_segments(audio)
        bad_before[str(out)] = {s.problem for s in bad}
        bad_all += bad
    if bad_all and not args.skip_bad:
        raise UserError(bad_segments_message(bad_all))
    if bad_all:
        warn(f"{len(bad_all)} bad segment(s) will be empty lines: " + "; ".join(s.problem for s in bad_all))
    dtype = None if args.dtype in (None, "auto") else args.dtype
    cache: dict = {}
    summaries = []
    for (_, audio), out in zip(inputs, outs):
        summaries.append(decode_to_file(
            args.model_dir, audio, out, lang=args.lang, mode=args.mode, batch_size=args.batch_size,
            max_length=args.max_length, max_new_tokens=args.max_new_tokens, prompt=args.prompt, dtype=dtype,
            device=args.device, skip_bad=args.skip_bad, resume=args.resume, overwrite=args.overwrite,
            progress=not args.no_progress and not args.json, cache=cache, checked=True))
    from ..distributed import rank

    if rank() != 0:
        return 0
    for summary in summaries:
        late = [b for b in summary.bad if b not in bad_before[summary.out]]
        if late:
            warn(f"{summary.out}: {len(late)} segment(s) could not be decoded and are empty lines: " + "; ".join(late))
        if summary.split_segments:
            ids = summary.split_segments
            info(f"{summary.out}: {len(ids)} segment(s) longer than {summary.max_segment_seconds:g} s were cut at "
                 f"pauses into {summary.pieces} "
                 f"pieces, decoded and joined into one line each (see {summary.log}): "
                 + ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else ""))
    if args.json:
        print_json(summaries[0].to_json() if args.out else [s.to_json() for s in summaries])
        return 0
    for summary in summaries:
        s = summary.to_json()
        rows = [
            ["segments", f"{s['segments']} ({s['decoded']} decoded now, {s['resumed']} from the log, {len(s['bad'])} bad, "
                         f"{len(s['split_segments'])} over 30 s split at pauses)"],
            ["audio", f"{s['audio_seconds']:.1f} s"],
            ["decoding time", f"{s['decode_seconds']:.1f} s (this run: {s['wall_seconds']:.1f} s wall, "
                              f"{s['world_size']} process{'es' if s['world_size'] > 1 else ''})"],
            ["real-time factor", f"{s['rtf']:.3f} (decoding time / audio duration)"],
            ["speed", f"{s['segments_per_second']:.2f} segments/s, {s['tokens_per_second']:.1f} tokens/s"],
            ["output", f"{s['out']} (log {s['log']})"],
        ]
        title = f"decode {args.mode} on {s['device']}" + (f": {s['name']}" if args.out_dir else "")
        print_table(rows, ["", ""], title=title)
    return 0
