"""The offline demo kit of the Qwen2.5-Omni family: a tiny random ``Qwen2_5OmniThinkerForConditionalGeneration``.

``build_kit(out_dir, seed=0)`` writes, with no network, the layout of :mod:`iwslt_mc.kit` (``kit.json``,
``model/``, ``data/`` from :func:`iwslt_mc.kit.write_data`) with a Qwen2.5-Omni thinker (the text half of
Qwen/Qwen2.5-Omni-7B; the talker and token2wav, which speak, are not part of it):

- text decoder (``qwen2_5_omni_text``): 4 layers, hidden 64, 4 query and 2 key/value heads (head width 16,
  multimodal RoPE sections 2+3+3), FFN 176, untied ``lm_head`` (as in the 7B);
- Whisper-style audio encoder (``qwen2_5_omni_audio_encoder``): 2 layers, d_model 64, 128 mel bins, 1500
  positions (30 s), its own output projection ``proj`` to the LLM width (the projector) and the
  ``audio_bos_eos_token`` table;
- a one-block vision encoder (``qwen2_5_omni_vision_encoder``, width 16) with its patch merger, because the
  thinker always builds one (speech never feeds it);
- a real ``Qwen2_5OmniProcessor``: ``WhisperFeatureExtractor`` (128 bins, 16 kHz, 30 s),
  ``Qwen2VLImageProcessorPil`` and a ``Qwen2Tokenizer`` (byte-level BPE with the Qwen2 pre-tokenizer) trained
  here on the kit's text, with Qwen2.5-Omni's special tokens appended in the real tokenizer's order
  (``<|endoftext|>`` ... ``<|VIDEO|>``, ids 151643..151656 there); no video processor (it needs torchvision:
  the processor is built, saved and loaded without it, see :func:`load_processor`), and the chat template of
  the real model (audio parts become ``<|audio_bos|><|AUDIO|><|audio_eos|>``).

Same seed -> byte-identical weights. The kit's embedding rows are the tokenizer's length rounded up to 64
(the real model: 152,064 rows).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FAMILY = "qwen2_5_omni"
SAMPLE_RATE = 16000
BPE_VOCAB_SIZE = 1536
VOCAB_MULTIPLE = 64
# Qwen2.5-Omni's special tokens in the real tokenizer's order (ids 151643..151656 there).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
                  "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>",
                  "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>"]
# the tokenizer attributes Qwen2_5OmniProcessor reads
NAMED_TOKENS = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
                "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
                "vision_eos_token": "<|vision_eos|>"}

# Qwen2.5-Omni-7B's chat template (audio, image, video and text parts; a default system turn when none).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

AUDIO_CONFIG = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, d_model=64,
                    max_source_positions=1500, n_window=100, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
VISION_CONFIG = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                     temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0])
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                   attention_dropout=0.0)
# Random weights produce no end-of-turn token on their own: a small default keeps demo decoding fast.
MAX_NEW_TOKENS = 32


def build_tokenizer():
    """A ``Qwen2Tokenizer``: byte-level BPE with the Qwen2 pre-tokenizer trained on the kit text, Qwen2.5-Omni's
    special tokens appended after the learned vocabulary (as in the real one)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from ...kit import tokenizer_corpus

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    learned = json.loads(bpe.to_str())["model"]
    vocab = dict(learned["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    base = len(vocab)
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = base + i
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", errors="replace", model_max_length=32768,
                         clean_up_tokenization_spaces=False, extra_special_tokens=dict(NAMED_TOKENS))
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]}, replace_extra_special_tokens=False)
    return tok


def feature_extractor(**kwargs):
    """Qwen2.5-Omni's ``WhisperFeatureExtractor``: 128 mel bins, 16 kHz, 30 s windows."""
    from transformers import WhisperFeatureExtractor

    args = dict(feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30, n_fft=400,
                padding_value=0.0, return_attention_mask=True)
    args.update(kwargs)
    return WhisperFeatureExtractor(**args)


def _video_processor():
    """Qwen2.5-Omni's video processor, or None where it cannot be built (it needs torchvision)."""
    try:
        from transformers import Qwen2VLVideoProcessor

        return Qwen2VLVideoProcessor()
    except (ImportError, RuntimeError, AttributeError):
        return None


def make_processor(fe, image_processor, tokenizer, chat_template):
    """A ``Qwen2_5OmniProcessor`` from its parts; without torchvision it goes without a video processor
    (speech translation never uses one; the class check would refuse None)."""
    from unittest import mock

    from transformers import Qwen2_5OmniProcessor as cls

    video = _video_processor()
    if video is not None:
        return cls(image_processor=image_processor, video_processor=video, feature_extractor=fe,
                   tokenizer=tokenizer, chat_template=chat_template)
    real = cls.check_argument_for_proper_class

    def check(self, name, arg):
        return None if name == "video_processor" and arg is None else real(self, name, arg)

    with mock.patch.object(cls, "check_argument_for_proper_class", check):
        return cls(image_processor=image_processor, video_processor=None, feature_extractor=fe, tokenizer=tokenizer,
                   chat_template=chat_template)


def build_processor():
    from transformers import Qwen2VLImageProcessorPil

    return make_processor(feature_extractor(), Qwen2VLImageProcessorPil(), build_tokenizer(), CHAT_TEMPLATE)


def save_processor(processor, out_dir) -> None:
    """``processor.save_pretrained(out_dir)``, leaving out a missing video processor."""
    from unittest import mock

    if getattr(processor, "video_processor", None) is not None:
        processor.save_pretrained(str(out_dir))
        return
    cls = type(processor)
    parts = [a for a in cls.get_attributes() if a != "video_processor"]
    with mock.patch.object(cls, "get_attributes", classmethod(lambda c: list(parts))):
        processor.save_pretrained(str(out_dir))


def load_processor(model_dir):
    """The processor of a Qwen2.5-Omni directory: ``AutoProcessor`` where a video processor can be built,
    else assembled from the saved feature extractor, image processor, tokenizer and chat template."""
    from transformers import AutoProcessor, AutoTokenizer, Qwen2VLImageProcessorPil

    if _video_processor() is not None:
        return AutoProcessor.from_pretrained(str(model_dir))
    d = Path(model_dir)
    cfg = {}
    if (d / "processor_config.json").exists():
        cfg = json.loads((d / "processor_config.json").read_text(encoding="utf-8"))
    drop = ("feature_extractor_type", "image_processor_type", "processor_class")
    fe = feature_extractor(**{k: v for k, v in (cfg.get("feature_extractor") or {}).items() if k not in drop})
    ip = Qwen2VLImageProcessorPil(**{k: v for k, v in (cfg.get("image_processor") or {}).items() if k not in drop})
    tok = AutoTokenizer.from_pretrained(str(d))
    template = (d / "chat_template.jinja").read_text(encoding="utf-8") if (d / "chat_template.jinja").exists() else None
    return make_processor(fe, ip, tok, template)


def build_config(tokenizer):
    """The kit's ``Qwen2_5OmniThinkerConfig`` with the kit tokenizer's ids."""
    from transformers import Qwen2_5OmniThinkerConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    text = dict(TEXT_CONFIG, vocab_size=vocab_size, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(AUDIO_CONFIG, output_dim=TEXT_CONFIG["hidden_size"]),
        vision_config=dict(VISION_CONFIG, out_hidden_size=TEXT_CONFIG["hidden_size"]),
        text_config=text, audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"], audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"], user_token_id=ids["<|im_start|>"], dtype="float32")
    # the real config.json carries these too (the thinker's rope index reads vision_start_token_id)
    config.vision_start_token_id, config.vision_end_token_id = ids["<|vision_bos|>"], ids["<|vision_eos|>"]
    config.architectures = ["Qwen2_5OmniThinkerForConditionalGeneration"]
    return config, ids


def build_model(tokenizer, seed: int = 0):
    """The tiny random thinker, float32, ids taken from ``tokenizer``."""
    import torch
    from transformers import GenerationConfig, Qwen2_5OmniThinkerForConditionalGeneration

    config, ids = build_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False, num_beams=1, repetition_penalty=1.0,
        max_new_tokens=MAX_NEW_TOKENS)
    return model


def build_kit(out_dir: str | os.PathLike, seed: int = 0):
    """Write the Qwen2.5-Omni kit to ``out_dir`` (new or empty) and return its :class:`iwslt_mc.kit.KitInfo`;
    all or nothing (built in a temporary sibling directory, renamed into place: :func:`iwslt_mc.kit.write_family_kit`)."""
    from ...kit import write_family_kit

    def build():
        processor = build_processor()
        return build_model(processor.tokenizer, seed=seed), processor

    return write_family_kit(out_dir, seed, build, family=FAMILY, technique="tiny random Qwen2.5-Omni thinker (demo kit)",
                            save_processor=save_processor)
