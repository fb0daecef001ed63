"""``iwslt-mc decode``: test audio in, one hypothesis per segment out; resumable, data-parallel."""

from __future__ import annotations

from ..cli import add_command

EXAMPLES = """
  iwslt-mc decode kit/model --lang en-de --audio kit/data?split=eval --out hyp.de --max-new-tokens 32
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

--audio is recognised by itself: a dataset (save_to_disk or parquet directory, parquet file, data
list; add ?split=eval to pick a split), a segmentation YAML (IWSLT test sets; WAVs relative to it),
a text file listing audio paths, or one audio file. Audio longer than 30 s from a list or a single
file is cut at pauses into segments of at most 30 s. Every input is checked before decoding starts.

--mode reference is the published decoding (chat prompt, greedy, batch 1, max_length 1024).
--mode fast (default) gives the same tokens with length-sorted batches, left padding and, on CUDA,
a static KV cache with torch.compile."""


def add_parser(sub):
    p = add_command(sub, "decode", help="translate test audio: one hypothesis line per segment",
                    description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory (safetensors, config, processor)")
    p.add_argument("--lang", required=True, choices=["en-de", "en-zh", "en-ar"], help="language pair")
    p.add_argument("--audio", required=True, metavar="SPEC", help="dataset, segmentation YAML, list of audio files, or one audio file")
    p.add_argument("--out", required=True, metavar="FILE", help="hypothesis file to write (log: FILE.jsonl)")
    p.add_argument("--mode", choices=["fast", "reference"], default="fast", help="decoding mode (default: fast)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="segments per batch in fast mode (default: 8)")
    p.add_argument("--max-length", type=int, default=1024, metavar="N",
                   help="generation limit counting the prompt, as published (default: 1024)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="also stop after N generated tokens (default: no extra limit)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="instruction text instead of 'Translate the English speech into German:' (or Chinese)")
    p.add_argument("--resume", action="store_true", help="continue from FILE.jsonl of an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="discard an existing FILE.jsonl and start again")
    p.add_argument("--skip-bad", action="store_true",
                   help="decode unreadable segments as empty lines (with a warning) instead of stopping")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["auto", "bf16", "fp16", "fp32"],
                   help="weights dtype (default: as stored; float32 on a CPU for float16/bf16 weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def run(args) -> int:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..decoding import decode_to_file
    from ..errors import UserError
    from ..inputs import check_segments, resolve_audio
    from ..output import info, print_json, print_table, warn

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    audio = resolve_audio(args.audio)
    for note in audio.notes:
        info(note)
    bad = check_segments(audio)
    if bad and args.skip_bad:
        warn(f"{len(bad)} bad segment(s) will be empty lines: " + "; ".join(s.problem for s in bad))
    dtype = None if args.dtype in (None, "auto") else args.dtype
    summary = decode_to_file(
        args.model_dir, audio, args.out, lang=args.lang, mode=args.mode, batch_size=args.batch_size,
        max_length=args.max_length, max_new_tokens=args.max_new_tokens, prompt=args.prompt, dtype=dtype,
        device=args.device, skip_bad=args.skip_bad, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress and not args.json)
    from ..distributed import rank

    if rank() != 0:
        return 0
    late = [b for b in summary.bad if b not in {s.problem for s in bad}]
    if late:
        warn(f"{len(late)} segment(s) could not be decoded and are empty lines: " + "; ".join(late))
    if args.json:
        print_json(summary.to_json())
        return 0
    s = summary.to_json()
    rows = [
        ["segments", f"{s['segments']} ({s['decoded']} decoded now, {s['resumed']} from the log, {len(s['bad'])} bad)"],
        ["audio", f"{s['audio_seconds']:.1f} s"],
        ["decoding time", f"{s['decode_seconds']:.1f} s (this run: {s['wall_seconds']:.1f} s wall, "
                          f"{s['world_size']} process{'es' if s['world_size'] > 1 else ''})"],
        ["real-time factor", f"{s['rtf']:.3f} (decoding time / audio duration)"],
        ["speed", f"{s['segments_per_second']:.2f} segments/s, {s['tokens_per_second']:.1f} tokens/s"],
        ["output", f"{s['out']} (log {s['log']})"],
    ]
    print_table(rows, ["", ""], title=f"decode {args.mode} on {s['device']}")
    return 0
