"""The Gemma 4 family (transformers ``gemma4`` and ``gemma4_unified``), the organizers' 2027 reference.

Two layouts share ``Gemma4*ForConditionalGeneration``'s key names:

- ``gemma4`` (the E2B/E4B kind; the demo kit): a text decoder with per-layer embeddings (PLE: one packed
  table ``embed_tokens_per_layer`` of width ``num_hidden_layers * hidden_size_per_layer_input`` plus a
  projection), KV sharing (the last ``num_kv_shared_layers`` layers reuse the keys/values of the last
  earlier layer of their attention type), sliding/global layers with different head widths, tied
  ``lm_head``; a conformer audio encoder (``audio_tower``) with projector ``embed_audio``; a vision
  encoder (``vision_tower``) with projector ``embed_vision``.
- ``gemma4_unified`` (``google/gemma-4-12B-it`` in transformers 5.24's docstrings): no audio encoder
  (raw 640-sample frames go through ``embed_audio``), no PLE; vision is a patch embedder ``embed_vision``;
  in the 12B the full-attention layers have one key head and no ``v_proj`` (``attention_k_eq_v``).

Components: ``audio_encoder`` (audio_tower), ``vision_encoder`` (vision_tower and embed_vision: removed
together), ``projector`` (embed_audio), ``llm_layers``, ``per_layer_embeddings`` (the PLE table, its
projection and norm), ``embed_tokens``, ``lm_head`` (absent on disk when tied), ``other``.

The organizers' decoding (gemma_run.py, see track-rules.md): one user turn, text then audio, prompt
"Translate the following speech into {German|Chinese}. Output only the translation, with no explanation
or newlines.", ``enable_thinking=False``, greedy, ``max_new_tokens=256``.
"""

from __future__ import annotations

from ..base import Family

from .rules import COMPONENTS, component_for_key as _component_for_key

from .prompt import CHAT_TEMPLATE_KWARGS, MAX_NEW_TOKENS


class Gemma4Family(Family):
    name = "gemma4"
    label = "Gemma 4"
    model_types = ("gemma4", "gemma4_unified")
    hub_org, hub_name_prefix = "google", "gemma-4"
    components = COMPONENTS
    chat_template_kwargs = CHAT_TEMPLATE_KWARGS
    default_max_new_tokens = MAX_NEW_TOKENS
    turn_end_token = "<turn|>"  # the chat template closes every turn, the model's too, with it
    token_aligned_inputs = ("mm_token_type_ids",)
    # kd's hidden-state term: decoder layer outputs (each layer's PLE slice and layer_scalar applied; KV-sharing
    # layers compute their own output) and, in gemma4, the conformer's layer outputs (:meth:`layout`)
    hidden_state_kd = True
    processor_prefixes = ("Gemma4",)
    stages = ("prune-layers", "prune-ffn", "prune-hidden", "trim-vocab", "quantize", "finetune", "merge", "distill", "kd", "replace-layers",
              "drop-vision")
    strategies = {"quantize": ("nf4", "fp4", "int8", "ct")}  # method autoround: measured on Qwen2-Audio only
    kit_options = ("unified",)
    kit_variants = {"gemma4": {}, "gemma4_unified": {"unified": True}}
    recipes = (  # largest first
        ("gemma4-large", "gemma4-large.yaml"),
        ("gemma4-medium", "gemma4-medium.yaml"),
        ("gemma4-small", "gemma4-small.yaml"),
        ("gemma4-tiny", "gemma4-tiny.yaml"),
    )
    recipe_preference = ("gemma4-medium", "gemma4-small", "gemma4-tiny", "gemma4-large")
    tracks_kept_layers = True  # sliding/global layers differ in size: which stay is part of a prediction

    # Audio tokens per second of either layout: one soft token per 40 ms (both processors'
    # audio_ms_per_token; gemma4_unified: one 640-sample frame at 16 kHz, Gemma4UnifiedAudioConfig).
    AUDIO_TOKENS_PER_SECOND = 25
    # gemma4_unified (the 12B) loses audio understanding beyond ~450-500 audio tokens in the sequence (user
    # reports, track-rules.md); its processor does not cap the count (40 s -> 1,000 tokens), and decode's 30 s
    # window gave it 750. 18 s is 450 tokens, the low end of that range.
    UNIFIED_MAX_AUDIO_TOKENS = 450

    def max_segment_seconds(self, config) -> float:
        """gemma4_unified (google/gemma-4-12B-it): 18 s (450 audio tokens). gemma4 with its conformer
        encoder: 30 s, where its processor caps the audio at 750 tokens and drops the rest."""
        if getattr(config, "model_type", None) == "gemma4_unified":
            return self.UNIFIED_MAX_AUDIO_TOKENS / self.AUDIO_TOKENS_PER_SECOND
        return 30.0

    def loader_class(self):
        from transformers import AutoModelForMultimodalLM

        return AutoModelForMultimodalLM

    def load_processor(self, model_dir):
        from .kit import load_processor

        return load_processor(model_dir)

    def save_processor(self, processor, out_dir) -> None:
        from .kit import save_processor

        save_processor(processor, out_dir)

    def find_parts(self, model) -> dict:
        names = {id(m): n for n, m in model.named_modules()}
        inner = getattr(model, "model", model)
        lm = inner.language_model
        out_emb = model.get_output_embeddings()
        tied = out_emb is not None and out_emb.weight is lm.embed_tokens.weight

        def name(mod):
            return names.get(id(mod)) if mod is not None else None

        return {
            "llm_layers": name(lm.layers), "embed_tokens": name(lm.embed_tokens),
            "per_layer_embeddings": name(getattr(lm, "embed_tokens_per_layer", None)),
            "lm_head": name(out_emb), "lm_head_tied": tied,
            "audio_encoder": name(getattr(inner, "audio_tower", None)),
            "vision_encoder": name(getattr(inner, "vision_tower", None)),
            "vision_projector": name(getattr(inner, "embed_vision", None)),
            "projector": name(getattr(inner, "embed_audio", None)),
        }

    def component_for_key(self, key: str) -> str:
        return _component_for_key(key)

    def layout(self, model):
        """:func:`iwslt_mc.families.gemma4.layout.find_layout` (a :class:`~.layout.Gemma4Layout`)."""
        from .layout import find_layout

        return find_layout(model)

    def surgery(self):
        """:mod:`iwslt_mc.families.gemma4.surgery` (prune-ffn's in-place MLP narrowing lives there too)."""
        from . import surgery

        return surgery

    # the decoder takes per-layer token embeddings from the ids (gemma4) and multimodal masks (both layouts)
    llm_on_captured_embeds = False

    def check_ffn_pruning(self, cfg: dict, llm: bool, audio: bool) -> None:
        """The audio encoder's FFNs cannot be narrowed: ``gemma4_unified`` has no audio encoder, and
        ``gemma4``'s conformer FFN width is fixed by transformers (4 x hidden_size, no config field)."""
        from .surgery import AUDIO_FFN_REFUSAL

        if audio:
            _refuse_audio(cfg, "prune-ffn: audio_width", AUDIO_FFN_REFUSAL)

    # prune-hidden keeps every attention head unless ``llm_heads`` is given (the attention width is not tied to
    # hidden_size); with it, each layer's key/value heads follow (:func:`.rules.kept_head_counts`)
    prune_hidden_heads = False

    def check_hidden_pruning(self, cfg: dict, heads, audio: bool) -> None:
        """``heads`` query heads must be servable by every layer type (:func:`.rules.kept_head_counts`); the audio
        encoder's width stays (``gemma4_unified`` has none; ``gemma4``'s conformer: :data:`~.surgery.AUDIO_HIDDEN_REFUSAL`)."""
        from ...errors import UserError
        from .rules import kept_head_counts
        from .surgery import AUDIO_HIDDEN_REFUSAL

        if heads:
            try:
                kept_head_counts(cfg["text_config"], int(heads))
            except UserError as e:
                raise UserError(f"stage prune-hidden: {e}") from None
        if audio:
            _refuse_audio(cfg, "prune-hidden: audio_hidden/audio_ratio", AUDIO_HIDDEN_REFUSAL)

    def config_after_head_pruning(self, cfg: dict, heads: int) -> dict:
        """``cfg`` (config.json dict, a copy) with ``heads`` query heads: the key/value heads of every layer type
        follow (:func:`.rules.text_dict_after_heads`)."""
        import copy

        from .rules import text_dict_after_heads

        out = copy.deepcopy(cfg)
        out["text_config"] = text_dict_after_heads(cfg["text_config"], heads)
        return out

    def reference_widths(self) -> dict:
        """gemma-4-12B-it: hidden 3840; no audio encoder."""
        return {"hidden": GEMMA4_12B_TEXT["hidden_size"], "audio_hidden": None}

    def kv_sources(self, text_config) -> dict[int, int]:
        """Layer -> the earlier layer whose keys/values it reuses (KV sharing), for every sharing layer."""
        from .rules import kv_sources

        return kv_sources(text_config)

    def config_after_layer_removal(self, config, kept: list[int]):
        """Refuses a removal that breaks KV sharing (:func:`iwslt_mc.families.gemma4.rules.config_after_layer_removal`)."""
        from .rules import config_after_layer_removal

        return config_after_layer_removal(config, kept)

    def config_after_audio_layer_removal(self, config, kept: list[int]):
        """``config`` (a copy) for a model whose audio encoder keeps conformer layers ``kept``."""
        from .rules import config_after_audio_layer_removal

        return config_after_audio_layer_removal(config, kept)

    def allowed_removal(self, config, count: int) -> list[int]:
        """The contiguous block of ``count`` decoder layers nearest the middle whose removal keeps the model
        valid; UserError when none is (:func:`iwslt_mc.families.gemma4.rules.allowed_removal`)."""
        from .rules import allowed_removal

        return allowed_removal(config, count)

    def smoke_replace_block(self, config, kept: list[int], count: int, keep: int) -> list[int]:
        """The first block KV sharing and the global last layer allow (:func:`.rules.first_allowed_block`)."""
        from .plan import transformers_config
        from .rules import config_after_layer_removal, first_allowed_block

        cfg = transformers_config(config)
        if len(kept) != cfg.text_config.num_hidden_layers:
            cfg = config_after_layer_removal(cfg, kept)
        return first_allowed_block(cfg, count, keep)

    def check_layer_removal(self, model_dir, remove, middle: int = 0) -> None:
        """KV sharing, from the config alone (:func:`iwslt_mc.families.gemma4.surgery.check_removal`)."""
        from .surgery import check_removal

        check_removal(model_dir, remove, middle=middle)

    # a layer's removal rewires KV sharing (built into the attention modules when the model is made) and slices
    # the per-layer embedding table: the layer search scores rebuilt copies (:meth:`pruned_copy`)
    in_place_layer_removal = False

    def pruned_copy(self, model, removed_llm, removed_audio=()):
        from .surgery import pruned_copy

        return pruned_copy(model, removed_llm, removed_audio)

    def run_prune_layers(self, stage, in_dir, out_dir, ctx) -> dict:
        from .surgery import run_prune_layers

        return run_prune_layers(stage, in_dir, out_dir, ctx)

    def trim_vocab_kept_ids(self, stage, in_dir, processor, tok_json: dict, config: dict, generation_config, ctx):
        from .surgery import kept_ids

        return kept_ids(stage, in_dir, processor, tok_json, config, generation_config, ctx)

    def run_trim_vocab(self, stage, in_dir, out_dir, ctx) -> dict:
        from .surgery import run_trim_vocab

        return run_trim_vocab(stage, in_dir, out_dir, ctx)

    def has_vision(self, config: dict) -> bool:
        return bool(config.get("vision_config"))

    def drop_vision(self, model):
        from .surgery import drop_vision

        return drop_vision(model)

    def messages(self, lang: str, instruction_text: str | None = None, audio=None) -> list[dict]:
        """The organizers' messages: one user turn, the text, then the audio."""
        from .prompt import messages

        return messages(lang, instruction_text, audio)

    def predict(self, spec, base_config, edition: str, *, base_name: str | None = None):
        from .plan import predict

        return predict(spec, base_config, edition, base_name=base_name)

    def torch_save_layout(self, tensors, config: dict, float_dtype: str | None):
        """The organizers' ``torch.save(model.state_dict())`` layout of a Gemma 4 checkpoint (see
        :func:`iwslt_mc.floor.statedict.meta_state_dict_layout`)."""
        from ..meta import meta_torch_save_layout

        return meta_torch_save_layout("gemma4-torchsave", _meta_model, tensors, config, float_dtype)

    def torch_save_layout_name(self, config: dict) -> str:
        """``gemma4/meta-model(transformers-VERSION)``: the layout comes from a meta-device model."""
        from ..meta import meta_layout_name

        return meta_layout_name(config)

    def base_dims(self, cfg) -> dict:
        from .plan import base_dims

        return base_dims(cfg)

    def kept_after_prune(self, cfg, kept: list[int], options: dict) -> list[int] | None:
        from .plan import kept_after_prune

        return kept_after_prune(cfg, kept, options)

    def plain_config(self, raw: dict):
        """``raw`` as a PlainConfig: the planner's facts about it come from transformers once, then from
        :mod:`iwslt_mc.plancache` (``gemma4_plan.transformers_config`` converts it where needed)."""
        from ...floor.modeldir import PlainConfig

        if not isinstance(raw.get("text_config"), dict):
            return None  # transformers' defaults fill it in: the planner loads its config object instead
        return PlainConfig.from_dict(raw)

    def reference_dims(self) -> dict:
        """gemma-4-12B-it (:func:`gemma4_12b_config`): 48 LLM layers, no audio-encoder layers."""
        return {"llm_layers": GEMMA4_12B_TEXT["num_hidden_layers"], "audio_layers": None,
                "ffn_dim": GEMMA4_12B_TEXT["intermediate_size"], "audio_ffn_dim": None}

    def build_kit(self, out_dir, seed: int = 0, unified: bool = False):
        from .kit import build_kit_gemma4

        return build_kit_gemma4(out_dir, seed=seed, unified=unified)


# ------------------------------------------------------------------ the real gemma-4-12B-it layout

# google/gemma-4-12B-it's text decoder (``gemma4_unified_text``). transformers 5.25 names the checkpoint
# (``@auto_docstring(checkpoint="google/gemma-4-12B-it")`` on every Gemma4Unified*Config) but its text
# defaults are another model's (hidden 2304, 30 layers); the values here, each with its source:
# - hidden_size 3840: the package's Gemma4UnifiedVisionConfig.mm_embed_dim/output_proj_dims default
#   ("matches the text model hidden_size") and Gemma4UnifiedAssistantConfig.backbone_hidden_size, whose
#   docstring cites google/gemma-4-12b-it; track-rules.md ("hidden 3840").
# - num_hidden_layers 48, vocab_size 262,144: track-rules.md; vocab also the package's text default.
# - head_dim 256, global_head_dim 512 (full-attention layers), sliding_window 1024, the 5:1 sliding/global
#   layer_types, num_kv_shared_layers 0, no double-wide MLP: the package's Gemma4UnifiedTextConfig defaults.
# - intermediate_size 15360, num_attention_heads 16, num_key_value_heads 8, num_global_key_value_heads 1,
#   attention_k_eq_v true (full-attention layers: one key head, no v_proj): the published config.json of
#   google/gemma-4-12B-it as public code quotes it (cofin/mogemma,
#   src/py/tests/unit/test_gemma4_12b_config.py, "the official Gemma 4 12B nested config shape", which
#   also agrees on hidden 3840, 48 layers, head widths 256/512, window 1024 and the 5:1 pattern).
# - audio: 640-sample frames (40 ms at 16 kHz) -> RMSNorm -> Linear, and the vision patch embedder
#   (patch 16, pooling 3, 1120 positions): the package's Gemma4UnifiedAudioConfig/VisionConfig defaults.
# Check: this layout has 11,959,730,224 parameters (48 ``layer_scalar`` buffers included, as on disk),
# exactly the BF16 parameter count the Hugging Face model API reports for google/gemma-4-12B(-it) (quoted
# in public notes as "safetensors.parameters.BF16 = 11959730224 (11.96B)"); track-rules.md's "~11.95 B"
# is that number truncated. Test: tests/families/test_gemma4.py::test_plan_real_12b_layout_matches_meta_model.
GEMMA4_12B_TEXT = {"hidden_size": 3840, "num_hidden_layers": 48, "vocab_size": 262144, "intermediate_size": 15360,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "global_head_dim": 512,
                   "num_global_key_value_heads": 1, "attention_k_eq_v": True, "sliding_window": 1024,
                   "num_kv_shared_layers": 0}
GEMMA4_12B_PARAMS = 11_959_730_224  # the Hugging Face API's count for google/gemma-4-12B-it (see above)


def gemma4_12b_config():
    """A ``Gemma4UnifiedConfig`` with google/gemma-4-12B-it's layout (:data:`GEMMA4_12B_TEXT`), bf16."""
    from transformers import Gemma4UnifiedConfig

    cfg = Gemma4UnifiedConfig(text_config=dict(GEMMA4_12B_TEXT), vision_config={}, audio_config={}, dtype="bfloat16")
    cfg.architectures = ["Gemma4UnifiedForConditionalGeneration"]
    return cfg


def _meta_model(cfg_dict: dict, torch_dtype):
    """The meta-device model of a config.json dict (torch.save layout's skeleton, :meth:`Gemma4Family.torch_save_layout`)."""
    from transformers import AutoConfig

    from .plan import meta_model

    return meta_model(AutoConfig.for_model(**cfg_dict), dtype=torch_dtype)


def _refuse_audio(cfg: dict, what: str, reason: str) -> None:
    """The one-line refusal of narrowing Gemma 4's audio encoder (``what``: stage and option): the model has none
    (``gemma4_unified``), or ``reason`` (its conformer's)."""
    from ...errors import UserError

    if not (cfg.get("audio_config") or {}).get("num_hidden_layers"):
        raise UserError(f"stage {what}: this Gemma 4 model has no audio encoder "
                        "(gemma4_unified: raw audio frames enter through embed_audio)")
    raise UserError(f"stage {what}: {reason}")
