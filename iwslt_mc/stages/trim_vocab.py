"""trim-vocab: keep only the tokens a translation model for these languages needs.

Kept (old ids, renumbered densely in their old order):

- every added/special token of the tokenizer, and every id the configs name (``audio_token_index``,
  bos/eos/pad of the model and of the generation config);
- the 256 byte-level base tokens, so any text still encodes (in more pieces if its tokens are gone);
  with ``byte_alphabet: false`` only those the kept tokens are built of (their merge closure), which saves
  the rows of unused bytes, and text with other characters no longer encodes;
- the tokens of the chat prompt for every language pair;
- the tokens of the given text: ``corpora`` (text files, one segment per line, or data specs whose
  English and target-language texts are read) and the stage's ``--data``, in ``languages``;
- ``keep_tokens`` (token strings as in the vocabulary) and ``keep_ids``;
- closed under BPE merges: the parts of every merge that builds a kept token are kept too, so
  every merge that tokenizing the given text applied survives and that text tokenizes to exactly
  the same tokens (renumbered) as before.

Rewritten consistently: ``tokenizer.json`` (vocab, merges whose parts or result were dropped
removed, added tokens, post-processor ids), ``vocab.json``/``merges.txt`` and
``tokenizer_config.json`` ids when present; ``config.json`` (``audio_token_index``, token ids,
``text_config.vocab_size``) and ``generation_config.json``; ``embed_tokens`` and ``lm_head`` keep only
the rows of kept tokens (rows past the tokenizer's length, padding in the real model, go too). The
stage re-encodes the prompt and all given text with the new tokenizer and checks it gives the old
tokens renumbered before it finishes.

On an input whose greedy output uses only kept tokens, the trimmed model's logits over the kept
tokens are the original's and the decoded text is identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError, UserError
from ..floor.modeldir import read_config
from .base import Stage, StageContext, StageOptions

TEXT_SUFFIXES = (".txt", ".text")


@dataclass
class TrimVocabOptions(StageOptions):
    corpora: list[str] = field(default_factory=list, metadata={
        "help": "text whose tokens are kept: .txt files (one segment per line) or data specs (their English and "
                "target-language texts)"})
    use_data: bool = field(default=True, metadata={"help": "also keep the tokens of the texts in --data"})
    languages: list[str] | None = field(default=None, metadata={
        "help": "text columns read from data specs, e.g. [en, de, zh] (default: en and the target of --lang)"})
    split: str | None = field(default=None, metadata={"help": "split of the data specs to read (none = all)"})
    keep_tokens: list[str] = field(default_factory=list, metadata={
        "help": "extra tokens to keep, as spelled in the vocabulary (e.g. 'Ġhello')"})
    keep_ids: list[int] = field(default_factory=list, metadata={"help": "extra token ids to keep"})
    byte_alphabet: bool = field(default=True, metadata={
        "help": "keep all 256 byte-level base tokens, so any text still encodes; false: only the bytes the kept tokens "
                "are built of (fewer embedding and lm_head rows; text with other characters no longer encodes)"})
    general_words: int = field(default=0, metadata={
        "help": "also keep the tokens of the N most frequent words of each non-English language in `languages` "
                "(wordfreq's general frequency lists, not test data): fewer unseen test words fall back to "
                "byte pieces, at a size cost the planner predicts (needs pip install 'iwslt-mc[wordlists]'); 0 = off"})

    def validate(self) -> None:
        if self.languages is not None:
            bad = [c for c in self.languages if c not in ("en", "de", "zh", "ar")]
            if bad:
                raise UserError(f"stage trim-vocab: unknown language code {bad[0]!r} (expected en, de, zh, ar)")
        if any(i < 0 for i in self.keep_ids):
            raise UserError("stage trim-vocab: keep_ids must be non-negative")
        if self.general_words < 0:
            raise UserError("stage trim-vocab: general_words must be >= 0")


# ---------------------------------------------------------------------------------------------
# tokenizer.json surgery (pure JSON; no model needed)


def _merge_pair(m) -> tuple[str, str]:
    if isinstance(m, str):
        a, b = m.split(" ", 1)
        return a, b
    return m[0], m[1]


def byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel.alphabet()


def merge_closure(tok_json: dict, keep: set[int]) -> set[int]:
    """``keep`` plus, recursively, the parts of every merge whose result is kept."""
    vocab = tok_json["model"]["vocab"]
    producers: dict[str, list] = {}
    for m in tok_json["model"]["merges"]:
        a, b = _merge_pair(m)
        producers.setdefault(a + b, []).append((a, b))
    id2tok = {i: t for t, i in vocab.items()}
    out = set(keep)
    todo = [id2tok[i] for i in keep if i in id2tok]
    while todo:
        t = todo.pop()
        for a, b in producers.get(t, ()):
            for part in (a, b):
                pid = vocab.get(part)
                if pid is not None and pid not in out:
                    out.add(pid)
                    todo.append(part)
    return out


def _remap_post_processor(pp, old2new: dict) -> None:
    if not isinstance(pp, dict):
        return
    if pp.get("type") == "Sequence":
        for sub in pp.get("processors", []):
            _remap_post_processor(sub, old2new)
    for spec in (pp.get("special_tokens") or {}).values():
        if isinstance(spec, dict) and "ids" in spec:
            spec["ids"] = [old2new[i] for i in spec["ids"]]
    for key in ("sep", "cls"):  # RobertaProcessing/BertProcessing: [token, id]
        if isinstance(pp.get(key), list) and len(pp[key]) == 2:
            pp[key][1] = old2new[pp[key][1]]


def trim_tokenizer_json(tok_json: dict, keep_ids: list[int]) -> tuple[dict, dict]:
    """A copy of ``tok_json`` with only ``keep_ids`` (sorted old ids; new id = position). Returns (json, old2new)."""
    import copy

    old2new = {old: new for new, old in enumerate(keep_ids)}
    out = copy.deepcopy(tok_json)
    model = out["model"]
    model["vocab"] = {t: old2new[i] for t, i in tok_json["model"]["vocab"].items() if i in old2new}
    kept = model["vocab"]
    merges = []
    for m in tok_json["model"]["merges"]:
        a, b = _merge_pair(m)
        if a in kept and b in kept and (a + b) in kept:
            merges.append(m)
    model["merges"] = merges
    out["added_tokens"] = [dict(t, id=old2new[t["id"]]) for t in tok_json.get("added_tokens", []) if t["id"] in old2new]
    _remap_post_processor(out.get("post_processor"), old2new)
    return out, old2new


# ---------------------------------------------------------------------------------------------
# configs

_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "audio_token_index",
            "audio_token_id", "sep_token_id", "unk_token_id")


def config_token_ids(config_obj) -> set[int]:
    """Token ids named by a config (top level and text_config) or a generation config."""
    ids: set[int] = set()
    objs = [config_obj] + [getattr(config_obj, "text_config", None)]
    for o in objs:
        if o is None:
            continue
        for k in _ID_KEYS:
            v = getattr(o, k, None)
            if isinstance(v, int) and v >= 0:
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v if isinstance(x, int) and x >= 0)
    return ids


def remap_config_ids(config_obj, old2new: dict) -> None:
    objs = [config_obj] + [getattr(config_obj, "text_config", None)]
    for o in objs:
        if o is None:
            continue
        for k in _ID_KEYS:
            if k == "audio_token_id" and o is config_obj:
                continue  # an alias of audio_token_index in Qwen2AudioConfig (attribute_map)
            v = getattr(o, k, None) if k in _own_keys(o) else None
            if isinstance(v, int) and v >= 0:
                setattr(o, k, old2new[v])
            elif isinstance(v, (list, tuple)):
                setattr(o, k, [old2new[x] for x in v])


def _own_keys(o) -> set:
    d = o.to_dict() if hasattr(o, "to_dict") else vars(o)
    return set(d)


# ---------------------------------------------------------------------------------------------
# texts


def read_corpus(item: str, languages: list[str], split: str | None, seed: int) -> tuple[list[str], dict]:
    """Lines of a text file, or the ``languages`` texts of a data spec. Returns (texts, provenance entry)."""
    p = Path(item).expanduser()
    if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES:
        try:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as e:
            raise InputFileError(p, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
        lines = [ln for ln in lines if ln]
        return lines, {"path": str(p), "kind": "text", "lines": len(lines)}
    from ..training.data import describe_data, load_examples

    exs = load_examples(item, split=split, seed=seed)
    texts = []
    for ex in exs:
        for code in languages:
            t = ex.text(code)
            if t:
                texts.append(t)
    d = describe_data(item, split)[0]
    d.update(kind="texts", examples=len(exs), languages=list(languages))
    return texts, d


def keep_set(tok, tok_json: dict, encoded: list[list[int]], configs: list, o: "TrimVocabOptions",
             rows: int) -> list[int]:
    """Sorted old ids to keep: the encoded text's tokens, added tokens, config ids, byte alphabet (unless off),
    explicit tokens/ids, closed under merges; only ids the tokenizer knows and the model has rows for."""
    keep: set[int] = set()
    for ids in encoded:
        keep.update(ids)
    keep.update(t["id"] for t in tok_json.get("added_tokens", []))
    for c in configs:
        keep.update(config_token_ids(c))
    vocab = tok_json["model"]["vocab"]
    if o.byte_alphabet:
        keep.update(vocab[c] for c in byte_alphabet() if c in vocab)
    keep.update(vocab[t] if t in vocab else tok.convert_tokens_to_ids(t) for t in o.keep_tokens)
    keep.update(o.keep_ids)
    keep = merge_closure(tok_json, keep)
    tokenizer_ids = set(vocab.values()) | {t["id"] for t in tok_json.get("added_tokens", [])}
    return sorted(i for i in keep if i in tokenizer_ids and i < rows)


def kept_token_ids(in_dir, options: dict | None, *, lang: str, data: list[str], seed: int = 0) -> list[int]:
    """The ids trim-vocab would keep for ``in_dir`` (tokenizer and configs only, no weights): lets the
    planner predict a recipe's size before any stage runs."""
    from transformers import AutoConfig, GenerationConfig

    from .. import modelio
    from ..families import family_for, prompt_text
    from ..floor.languages import TARGET_LANGUAGE

    stage = TrimVocab(options or {})
    ctx = StageContext(lang=lang, data=list(data), seed=seed, log=lambda *_: None)
    stage.check(Path(in_dir), ctx)
    processor = modelio.load_processor(in_dir)
    tok_json = json.loads((Path(in_dir) / "tokenizer.json").read_text("utf-8"))
    gen = (GenerationConfig.from_pretrained(str(in_dir))
           if (Path(in_dir) / "generation_config.json").exists() else None)
    own = family_for(in_dir).trim_vocab_kept_ids(stage, in_dir, processor, tok_json, read_config(in_dir), gen, ctx)
    if own is not None:  # a family with its own keep rule (Gemma 4)
        return own[0]
    texts, _ = stage._texts(ctx, stage._languages(ctx))
    prompts = [prompt_text(processor, lg) for lg in TARGET_LANGUAGE]
    enc = processor.tokenizer(prompts + texts, add_special_tokens=False)["input_ids"]
    configs = [AutoConfig.from_pretrained(str(in_dir))]
    if gen is not None:
        configs.append(gen)
    rows = int(read_config(in_dir).get("text_config", {}).get("vocab_size", 0))
    return keep_set(processor.tokenizer, tok_json, enc, configs, stage.options, rows)


def general_word_list(lang: str, n: int) -> list[str]:
    """The ``n`` most frequent words of ``lang`` from wordfreq (a general list that does not come from test sets)."""
    try:
        import wordfreq
    except ImportError:
        raise UserError("stage trim-vocab: general_words needs the wordfreq package: "
                        "pip install 'iwslt-mc[wordlists]' (or pip install wordfreq)") from None
    return wordfreq.top_n_list(lang, n)


def general_word_texts(lang: str, words: list[str]) -> list[str]:
    """How the words appear in running text: alone and after a space (a different byte-level BPE token),
    capitalised too for German (nouns, sentence starts). Chinese is written without spaces."""
    if lang == "zh":
        return list(words)
    out = []
    for w in words:
        forms = {w, w[:1].upper() + w[1:]} if lang == "de" else {w}
        for f in sorted(forms):
            out += [f, " " + f]
    return out


class TrimVocab(Stage):
    name = "trim-vocab"
    Options = TrimVocabOptions
    techniques = ["vocabulary trimming"]
    # the keep rule and the tokenizer.json surgery, for a family's own run (Family.run_trim_vocab)
    keep_set = staticmethod(keep_set)
    trim_tokenizer_json = staticmethod(trim_tokenizer_json)

    def _languages(self, ctx: StageContext) -> list[str]:
        if self.options.languages:
            return list(self.options.languages)
        from ..training.data import target_code

        return ["en", target_code(ctx.lang)]

    def _texts(self, ctx: StageContext, languages: list[str]) -> tuple[list[str], list[dict]]:
        o = self.options
        texts: list[str] = []
        data_used = []
        for item in list(o.corpora) + (list(ctx.data) if o.use_data else []):
            t, d = read_corpus(str(item), languages, o.split, ctx.seed)
            texts += t
            d["use"] = "vocabulary trimming (tokens seen in this text are kept)"
            data_used.append(d)
        if o.general_words:
            for lg in languages:
                if lg == "en":
                    continue
                words = general_word_list(lg, o.general_words)
                texts += general_word_texts(lg, words)
                data_used.append({"dataset": f"wordfreq {lg} top {o.general_words:,} words",
                                  "use": "vocabulary trimming (general target-language word list)"})
        return texts, data_used

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        o = self.options
        from ..floor.languages import check_lang

        check_lang(ctx.lang)
        if not o.corpora and not (o.use_data and ctx.data) and not o.keep_tokens and not o.keep_ids and not o.general_words:
            raise UserError("stage trim-vocab: no text to keep tokens of (give corpora, --data, keep_tokens or keep_ids); "
                            "trimming to the prompt alone would leave almost nothing to translate with")
        for c in o.corpora:
            p = Path(c).expanduser()
            if p.suffix.lower() in TEXT_SUFFIXES and not p.is_file():
                raise InputFileError(p, "corpus file not found")
        tj = Path(in_dir) / "tokenizer.json"
        if not tj.exists():
            raise InputFileError(in_dir, "no tokenizer.json: trim-vocab rewrites the fast (byte-level BPE) tokenizer")
        tok = json.loads(tj.read_text("utf-8"))
        if tok.get("model", {}).get("type") != "BPE":
            raise InputFileError(tj, f"tokenizer model is {tok.get('model', {}).get('type')}, trim-vocab handles BPE only")
        if o.keep_tokens:
            vocab = tok["model"]["vocab"]
            added = {t["content"] for t in tok.get("added_tokens", [])}
            missing = [t for t in o.keep_tokens if t not in vocab and t not in added]
            if missing:
                raise UserError(f"stage trim-vocab: keep_tokens {missing[0]!r} is not in the vocabulary of {tj}")
        rows = int(read_config(in_dir).get("text_config", {}).get("vocab_size", 0))
        bad = [i for i in o.keep_ids if i >= rows]
        if bad:
            raise UserError(f"stage trim-vocab: keep_ids {bad[0]} out of range (the model has {rows} token rows)")

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from .. import modelio
        from ..sizing import sizer
        from ..families import family_for, prompt_text
        from ..floor.languages import TARGET_LANGUAGE

        o = self.options
        fam = family_for(in_dir)
        own = fam.run_trim_vocab(self, in_dir, out_dir, ctx)  # a family with its own surgery (Gemma 4)
        if own is not None:
            return own
        surgery, find_layout = fam.surgery(), fam.layout
        model = modelio.load_model(in_dir, device=ctx.resolved_device())
        processor = modelio.load_processor(in_dir)
        tok = processor.tokenizer
        tok_json = json.loads((Path(in_dir) / "tokenizer.json").read_text("utf-8"))
        layout = find_layout(model)
        rows_before = layout.embed_tokens.weight.shape[0]

        # --- the text whose tokens stay
        languages = self._languages(ctx)
        texts, data_used = self._texts(ctx, languages)
        prompts = [prompt_text(processor, lang) for lang in TARGET_LANGUAGE]
        ctx.log(f"trim-vocab: tokenizing {len(texts)} segments of text and {len(prompts)} prompts")
        enc = tok(prompts + texts, add_special_tokens=False)["input_ids"] if (prompts or texts) else []
        keep_ids = keep_set(tok, tok_json, enc, [model.config, model.generation_config], o, rows_before)
        new_json, old2new = trim_tokenizer_json(tok_json, keep_ids)

        # --- the model: rows, ids, sizes
        pad = layout.text_config.pad_token_id
        surgery.select_vocab(model, keep_ids, new_pad_id=old2new.get(pad) if pad is not None else None)
        remap_config_ids(model.config, old2new)
        remap_config_ids(model.generation_config, old2new)
        for mod in model.modules():  # cached copies of config values on modules
            if hasattr(mod, "pad_token_id") and isinstance(mod.pad_token_id, int) and mod.pad_token_id in old2new:
                mod.pad_token_id = old2new[mod.pad_token_id]
            if getattr(mod, "vocab_size", None) == rows_before:
                mod.vocab_size = len(keep_ids)
        if getattr(model.config, "vocab_size", None) == rows_before:
            model.config.vocab_size = len(keep_ids)

        ctx.log(f"trim-vocab: {rows_before} -> {len(keep_ids)} token rows; saving")
        modelio.save_model(model, processor, out_dir)
        self._rewrite_tokenizer_files(Path(out_dir), new_json, old2new)

        self._check_trimmed(Path(out_dir), prompts + texts, enc, old2new, len(keep_ids))

        before = sizer.measure(in_dir)
        after = sizer.measure(out_dir)
        saved = before.bytes - after.bytes
        what = ", ".join(languages)
        alphabet = "byte alphabet" if o.byte_alphabet else "the bytes they are built of (byte_alphabet: false)"
        techniques = [f"vocabulary trimming ({rows_before:,} -> {len(keep_ids):,} tokens: special, prompt, {alphabet} "
                      f"and tokens seen in {len(texts):,} {what} text segments; {saved:,} bytes saved)"]
        return {"techniques": techniques, "data": data_used, "vocab_before": rows_before,
                "vocab_after": len(keep_ids), "bytes_saved": saved, "text_segments": len(texts),
                "languages": languages}

    @staticmethod
    def _check_trimmed(out: Path, lines: list[str], enc: list[list[int]], old2new: dict, rows: int) -> None:
        """The saved tokenizer must give the old tokens (``enc``), renumbered, for everything we promised,
        and have as many tokens as the model has rows."""
        from .. import modelio

        new_proc = modelio.load_processor(out)
        new_enc = new_proc.tokenizer(lines, add_special_tokens=False)["input_ids"]
        for line, old, new in zip(lines, enc, new_enc):
            if [old2new[i] for i in old] != new:
                raise RuntimeError(f"trim-vocab: the trimmed tokenizer encodes {line[:60]!r} differently (a bug)")
        if len(new_proc.tokenizer) != rows:
            raise RuntimeError(f"trim-vocab: tokenizer has {len(new_proc.tokenizer)} tokens, model {rows} rows")

    @staticmethod
    def _rewrite_tokenizer_files(out: Path, new_json: dict, old2new: dict) -> None:
        from ..fsutil import atomic_write_text

        atomic_write_text(out / "tokenizer.json", json.dumps(new_json, ensure_ascii=False, indent=2))
        tc = out / "tokenizer_config.json"
        if tc.exists():
            cfg = json.loads(tc.read_text("utf-8"))
            if isinstance(cfg.get("added_tokens_decoder"), dict):
                cfg["added_tokens_decoder"] = {str(old2new[int(k)]): v for k, v in cfg["added_tokens_decoder"].items()
                                               if int(k) in old2new}
                atomic_write_text(tc, json.dumps(cfg, ensure_ascii=False, indent=2))
        vj = out / "vocab.json"
        if vj.exists():
            atomic_write_text(vj, json.dumps(new_json["model"]["vocab"], ensure_ascii=False))
        mt = out / "merges.txt"
        if mt.exists():
            lines = ["#version: 0.2"] + [" ".join(_merge_pair(m)) for m in new_json["model"]["merges"]]
            atomic_write_text(mt, "\n".join(lines) + "\n")
