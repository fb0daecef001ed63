"""The offline demo kit for the Gemma 4 family: a tiny random ``Gemma4ForConditionalGeneration``.

``build_kit_gemma4(out_dir, seed=0)`` writes, with no network, the same layout as :mod:`iwslt_mc.kit`
(``kit.json``, ``model/``, ``data/`` from :func:`iwslt_mc.kit.write_data`), with a Gemma 4 model:

- text decoder (``gemma4_text``): 4 layers, hidden 64, sliding/global attention alternating
  (sliding window 16; the global layers have their own head width, as in the real model),
  per-layer embeddings (PLE, 8 per layer, one packed table), KV sharing (the last 2 layers reuse the
  keys/values of the last earlier layer of their attention type), tied ``lm_head``, final logit softcap;
- a conformer audio encoder (``gemma4_audio``, 2 layers, hidden 32) with its projector
  (``embed_audio``), and a vision encoder (``gemma4_vision``, 1 layer) with its projector
  (``embed_vision``), so that removing the vision encoder can be shown;
- a real ``Gemma4Processor``: ``Gemma4AudioFeatureExtractor`` (128 mel bins, 16 kHz),
  ``Gemma4ImageProcessorPil``, and a ``GemmaTokenizer`` (byte-fallback BPE) trained here on the kit's
  text with Gemma 4's special tokens (``<bos>``, ``<eos>``, turn markers ``<|turn>``/``<turn|>``,
  thinking channel ``<|channel>``/``<channel|>``, image ``<|image>``/``<|image|>``/``<image|>``,
  audio ``<|audio>``/``<|audio|>``/``<audio|>``), and a chat template that renders the organizers'
  prompt (user turn: text, then audio) with ``enable_thinking`` honoured.

The turn and channel strings are those transformers 5.24 itself uses for Gemma 4 (its response parser
reads ``<|turn>model``, ``<turn|>``, ``<|channel>thought``); the image/audio strings follow the same
pattern but are not in the package (assumed: the real tokenizer could not be read offline). The real
tokenizer's ids differ (262,144 entries); the kit's config carries the kit tokenizer's ids. Same seed -> byte-identical
weights. No torchvision here: the processor has no video processor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FAMILY = "gemma4"
BPE_VOCAB_SIZE = 1536
VOCAB_MULTIPLE = 64
SAMPLE_RATE = 16000
# Gemma 4's control tokens, in the real vocabulary's order of kind (ids here are the kit's own).
BASE_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
CONTROL_TOKENS = ["<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>",
                  "<|image>", "<|image|>", "<image|>", "<|audio>", "<|audio|>", "<audio|>", "<|video|>"]
NAMED_TOKENS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}

# Renders Gemma 4's turn format. The organizers' messages are one user turn with a text part and an
# audio part; an audio part becomes the audio placeholder the processor expands (boa, N audio, eoa).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if enable_thinking is defined and enable_thinking %}<|turn>system\n<|think|><turn|>\n{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<|turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'audio' %}<|audio|>"
    "{% elif item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

TEXT_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, global_head_dim=32, layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=16,
    hidden_size_per_layer_input=8, num_kv_shared_layers=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
    tie_word_embeddings=True, final_logit_softcapping=30.0, attention_dropout=0.0, hidden_activation="gelu_pytorch_tanh",
)
AUDIO_CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, subsampling_conv_channels=[128, 4],
    conv_kernel_size=5, attention_chunk_size=12, attention_context_left=13, attention_context_right=0,
    output_proj_dims=32, use_clipped_linears=True,
)
VISION_CONFIG = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
    head_dim=8, patch_size=16, pooling_kernel_size=3, position_embedding_size=64,
)


# gemma4_unified (``--unified``): the 12B's kind of layout at kit size. No audio encoder: each 40 ms of raw
# audio (640 samples) is one soft token through embed_audio; no PLE; a patch-embedder vision part. Unlike
# the 12B (families.gemma4.GEMMA4_12B_TEXT) it keeps KV sharing, so that the sharing rules are tested on this
# layout too, and its global layers have their own values (the 12B's attention_k_eq_v, one key head that is
# also the value, is tested at kit size in tests/families/test_gemma4_keqv.py).
UNIFIED_TEXT_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, global_head_dim=32, layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=16,
    num_kv_shared_layers=2, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
    final_logit_softcapping=30.0, attention_dropout=0.0, hidden_activation="gelu_pytorch_tanh",
)
UNIFIED_AUDIO_CONFIG = dict(audio_embed_dim=640)
UNIFIED_VISION_CONFIG = dict(patch_size=8, pooling_kernel_size=2, mm_embed_dim=64, mm_posemb_size=16, output_proj_dims=64)


def tokenizer_corpus() -> list[str]:
    from ...kit import tokenizer_corpus as corpus

    return corpus()


def build_tokenizer():
    """A ``GemmaTokenizer`` (byte-fallback BPE, spaces as ``▁``) trained on the kit text, Gemma 4 specials first."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    bpe = Tokenizer(models.BPE(byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False, special_tokens=[])
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    learned = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = {}
    for tok in BASE_SPECIALS + CONTROL_TOKENS + [f"<0x{b:02X}>" for b in range(256)]:
        vocab[tok] = len(vocab)
    for tok in sorted(learned["vocab"], key=learned["vocab"].get):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=dict(NAMED_TOKENS),
                         model_max_length=131072, clean_up_tokenization_spaces=False)
    tok.add_special_tokens({"additional_special_tokens": [t for t in CONTROL_TOKENS]}, replace_extra_special_tokens=False)
    return tok


def build_processor(unified: bool = False):
    """``Gemma4Processor``: real feature extractor and image processor, the kit tokenizer, the chat template.
    ``unified``: ``Gemma4UnifiedProcessor`` with its raw-frame ``Gemma4UnifiedAudioFeatureExtractor`` (its
    image processor needs torchvision; without it the processor has none: speech never needs it)."""
    from transformers import Gemma4AudioFeatureExtractor, Gemma4ImageProcessorPil

    if unified:
        from transformers import Gemma4UnifiedAudioFeatureExtractor

        fe = Gemma4UnifiedAudioFeatureExtractor(sampling_rate=SAMPLE_RATE)
        return make_processor(fe, None, build_tokenizer(), CHAT_TEMPLATE, unified=True, image_seq_length=70)
    fe = Gemma4AudioFeatureExtractor(feature_size=128, sampling_rate=SAMPLE_RATE)
    ip = Gemma4ImageProcessorPil(patch_size=VISION_CONFIG["patch_size"],
                                 pooling_kernel_size=VISION_CONFIG["pooling_kernel_size"], max_soft_tokens=70)
    return make_processor(fe, ip, build_tokenizer(), CHAT_TEMPLATE, image_seq_length=70)


def _video_processor_available() -> bool:
    try:
        from transformers import Gemma4VideoProcessor

        Gemma4VideoProcessor()
    except (ImportError, RuntimeError):
        return False
    return True


def make_processor(feature_extractor, image_processor, tokenizer, chat_template, unified: bool = False, **kwargs):
    """A ``Gemma4Processor`` (``Gemma4UnifiedProcessor`` when ``unified``) from its parts. transformers 5.24
    cannot build one without torchvision (its video processor, and the unified image processor, need it,
    and the class check of every part fails while their mapping is a placeholder); speech translation
    never uses video or images, so without torchvision the processor goes without those parts."""
    from unittest import mock

    import transformers

    cls = transformers.Gemma4UnifiedProcessor if unified else transformers.Gemma4Processor
    if _video_processor_available():
        video = (transformers.Gemma4UnifiedVideoProcessor if unified else transformers.Gemma4VideoProcessor)()
        if unified and image_processor is None:
            image_processor = transformers.Gemma4UnifiedImageProcessor()
        return cls(feature_extractor=feature_extractor, image_processor=image_processor, tokenizer=tokenizer,
                   video_processor=video, chat_template=chat_template, **kwargs)
    real = cls.check_argument_for_proper_class

    def check(self, name, arg):
        return None if name in ("video_processor", "image_processor") and arg is None else real(self, name, arg)

    with mock.patch.object(cls, "check_argument_for_proper_class", check):
        return cls(feature_extractor=feature_extractor, image_processor=image_processor, tokenizer=tokenizer,
                   video_processor=None, chat_template=chat_template, **kwargs)


def save_processor(processor, out_dir) -> None:
    """``processor.save_pretrained(out_dir)``; without a video processor (no torchvision) that part is left out."""
    from unittest import mock

    missing = [a for a in ("video_processor", "image_processor") if getattr(processor, a, "") is None]
    if not missing:
        processor.save_pretrained(str(out_dir))
        return
    cls = type(processor)
    parts = [a for a in cls.get_attributes() if a not in missing]
    with mock.patch.object(cls, "get_attributes", classmethod(lambda c: list(parts))):
        processor.save_pretrained(str(out_dir))


def load_processor(model_dir):
    """The processor of a Gemma 4 directory: ``AutoProcessor`` where it works, else built from its saved parts."""
    from transformers import AutoProcessor, AutoTokenizer, Gemma4AudioFeatureExtractor, Gemma4ImageProcessorPil

    if _video_processor_available():
        return AutoProcessor.from_pretrained(str(model_dir))
    d = Path(model_dir)
    cfg = {}
    if (d / "processor_config.json").exists():
        cfg = json.loads((d / "processor_config.json").read_text(encoding="utf-8"))
    unified = cfg.get("processor_class") == "Gemma4UnifiedProcessor"
    fe_cls = Gemma4AudioFeatureExtractor
    if unified:
        from transformers import Gemma4UnifiedAudioFeatureExtractor as fe_cls
    fe = fe_cls(**{k: v for k, v in cfg.get("feature_extractor", {}).items()
                   if k not in ("feature_extractor_type", "processor_class")})
    ip = None
    if cfg.get("image_processor"):
        ip = Gemma4ImageProcessorPil(**{k: v for k, v in cfg["image_processor"].items()
                                        if k not in ("image_processor_type", "processor_class")})
    tok = AutoTokenizer.from_pretrained(str(d))
    for k in ("max_length", "pad_to_multiple_of"):  # loading adds them as None, which the audio padding rejects
        if k in tok.init_kwargs and tok.init_kwargs[k] is None:
            del tok.init_kwargs[k]
    template = (d / "chat_template.jinja").read_text(encoding="utf-8") if (d / "chat_template.jinja").exists() else None
    extra = {k: cfg[k] for k in ("image_seq_length", "audio_seq_length", "audio_ms_per_token") if k in cfg}
    return make_processor(fe, ip, tok, template, unified=unified, **extra)


def build_config(tokenizer, unified: bool = False):
    from transformers import Gemma4Config, Gemma4UnifiedConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in BASE_SPECIALS + CONTROL_TOKENS}
    n = len(tokenizer)
    vocab_size = -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    special = dict(pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"], bos_token_id=ids["<bos>"])
    if unified:
        text = dict(UNIFIED_TEXT_CONFIG, vocab_size=vocab_size, **special)
        cls, audio, vision = Gemma4UnifiedConfig, dict(UNIFIED_AUDIO_CONFIG), dict(UNIFIED_VISION_CONFIG)
    else:
        text = dict(TEXT_CONFIG, vocab_size=vocab_size, vocab_size_per_layer_input=vocab_size, **special)
        cls, audio, vision = Gemma4Config, dict(AUDIO_CONFIG), dict(VISION_CONFIG)
    config = cls(
        text_config=text, audio_config=audio, vision_config=vision,
        boi_token_id=ids["<|image>"], eoi_token_id=ids["<image|>"], image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"], boa_token_id=ids["<|audio>"], eoa_token_index=ids["<audio|>"],
        audio_token_id=ids["<|audio|>"], tie_word_embeddings=True, dtype="float32",
    )
    config.pad_token_id, config.bos_token_id, config.eos_token_id = ids["<pad>"], ids["<bos>"], ids["<eos>"]
    return config, ids


def build_model(tokenizer, seed: int = 0, unified: bool = False):
    """The tiny random ``Gemma4ForConditionalGeneration`` (``Gemma4UnifiedForConditionalGeneration`` when
    ``unified``), float32, ids taken from ``tokenizer``."""
    import torch
    from transformers import Gemma4ForConditionalGeneration, Gemma4UnifiedForConditionalGeneration, GenerationConfig

    config, ids = build_config(tokenizer, unified=unified)
    if unified:
        config.architectures = ["Gemma4UnifiedForConditionalGeneration"]
    torch.manual_seed(seed)
    cls = Gemma4UnifiedForConditionalGeneration if unified else Gemma4ForConditionalGeneration
    model = cls(config).to(torch.float32).eval()
    with torch.no_grad():  # random clipping bounds of the clipped linears would be +-inf: keep them, but finite
        for name, buf in model.named_buffers():
            if name.endswith(("input_min", "output_min")):
                buf.fill_(-1e4)
            elif name.endswith(("input_max", "output_max")):
                buf.fill_(1e4)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<turn|>"]], pad_token_id=ids["<pad>"],
        do_sample=False, num_beams=1,
    )
    return model


def build_kit_gemma4(out_dir: str | os.PathLike, seed: int = 0, unified: bool = False):
    """Write the Gemma 4 kit to ``out_dir`` (new or empty) and return its :class:`iwslt_mc.kit.KitInfo`;
    ``unified``: the ``gemma4_unified`` layout (see ``UNIFIED_TEXT_CONFIG``). All or nothing
    (:func:`iwslt_mc.kit.write_family_kit`)."""
    from ...kit import write_family_kit

    def build():
        processor = build_processor(unified=unified)
        return build_model(processor.tokenizer, seed=seed, unified=unified), processor

    return write_family_kit(out_dir, seed, build, family=FAMILY, technique="tiny random Gemma 4 ({model_type}; demo kit)",
                            save_processor=save_processor)
