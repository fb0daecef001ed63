"""The Qwen2.5-Omni family: the thinker of Qwen/Qwen2.5-Omni-7B (and -3B), transformers'
``qwen2_5_omni_thinker`` (``Qwen2_5OmniThinkerForConditionalGeneration``).

Why this model (README, "Model families"): its model card reports speech-to-text translation on CoVoST2
including en-de and en-zh, it is a popular open speech LLM (7B and 3B), and it needs the least new machinery
here: the Qwen2 byte-level BPE tokenizer and Whisper features of Qwen2-Audio, one chat format, and a kit
that loads offline from the installed transformers (Voxtral needs mistral-common, Granite Speech's feature
extractor torchaudio, Phi-4-multimodal's image processor torchvision; none is installed).

The thinker is the text half of Qwen2.5-Omni (the talker and token2wav, which produce speech, are not
loaded: a participant translating speech to text keeps the thinker alone). Layout (in-memory names):

- ``model.audio_tower``: Whisper-style encoder (conv1, conv2, sinusoidal positions, ``layers``, ``ln_post``),
  its output projection ``proj`` (d_model -> LLM width: the **projector** component) and the 2-row
  ``audio_bos_eos_token`` table;
- ``model.visual``: Qwen2.5-VL's ViT (``blocks``) and patch ``merger`` (the ``vision_encoder`` component;
  always built, speech never feeds it);
- ``model.language_model``: Qwen2-style decoder (``embed_tokens``, ``layers``, ``norm``) with multimodal
  RoPE; ``lm_head`` (untied in the 7B).

On disk (``save_pretrained``) the names are ``audio_tower.``, ``visual.``, ``model.`` and ``lm_head.``: the
thinker's part of the released checkpoint without its ``thinker.`` prefix.
"""

from __future__ import annotations

from ..base import Family
from .rules import COMPONENTS, LABEL, component_for_key
from .rules import messages as _messages

# Whisper-style encoder: 100 mel frames per second, conv stride 2 -> 50 positions per second
ENCODER_POSITIONS_PER_SECOND = 50


class Qwen25OmniFamily(Family):
    name = "qwen2_5_omni"
    label = LABEL
    model_types = ("qwen2_5_omni_thinker",)
    hub_org, hub_name_prefix = "Qwen", "qwen2.5-omni"
    components = COMPONENTS
    turn_end_token = "<|im_end|>"
    processor_prefixes = ("Qwen2_5Omni",)
    # the stages run on this family (kit-tested: tests/families/test_family_qwen2_5_omni.py)
    stages = ("prune-layers", "trim-vocab", "quantize", "finetune", "merge", "distill", "kd")
    strategies = {"prune-layers": ("middle", "top"),
                  "quantize": ("nf4", "fp4", "int8", "ct")}  # method autoround: measured on Qwen2-Audio only
    kit_options = ()
    kit_variants = {"qwen2_5_omni_thinker": {}}  # the kits the shared family tests build (tests/conftest.py family_kit)
    # (name, file in recipes/): what `iwslt-mc ls` lists for this family, largest first
    recipes = (("qwen2_5_omni-int8", "qwen2_5_omni-int8.yaml"), ("qwen2_5_omni-medium", "qwen2_5_omni-medium.yaml"))
    recipe_preference = ("qwen2_5_omni-medium", "qwen2_5_omni-int8")  # trained before zero-shot

    # -- loading
    def loader_class(self):
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        return Qwen2_5OmniThinkerForConditionalGeneration

    def load_processor(self, model_dir):
        from .kit import load_processor

        return load_processor(model_dir)

    def save_processor(self, processor, out_dir) -> None:
        from .kit import save_processor

        save_processor(processor, out_dir)

    # -- parts
    def find_parts(self, model) -> dict:
        names = {id(m): n for n, m in model.named_modules()}
        inner = model.model
        lm = inner.language_model
        out_emb = model.get_output_embeddings()
        return {
            "llm_layers": names[id(lm.layers)], "embed_tokens": names[id(lm.embed_tokens)],
            "per_layer_embeddings": None, "lm_head": names.get(id(out_emb)),
            "lm_head_tied": out_emb is not None and out_emb.weight is lm.embed_tokens.weight,
            "audio_encoder": names[id(inner.audio_tower)], "vision_encoder": names[id(inner.visual)],
            "projector": names[id(inner.audio_tower.proj)],
        }

    def component_for_key(self, key: str) -> str:
        return component_for_key(key)

    # -- surgery
    def config_after_layer_removal(self, config, kept: list[int]):
        from .rules import config_after_layer_removal

        return config_after_layer_removal(config, kept)

    def config_after_audio_layer_removal(self, config, kept: list[int]):
        from .rules import config_after_audio_layer_removal

        return config_after_audio_layer_removal(config, kept)

    def run_prune_layers(self, stage, in_dir, out_dir, ctx) -> dict:
        from .stages import run_prune_layers

        return run_prune_layers(stage, in_dir, out_dir, ctx)

    def trim_vocab_kept_ids(self, stage, in_dir, processor, tok_json: dict, config: dict, generation_config, ctx):
        from .stages import kept_ids

        return kept_ids(stage, in_dir, processor, tok_json, config, generation_config, ctx)

    def run_trim_vocab(self, stage, in_dir, out_dir, ctx) -> dict:
        from .stages import run_trim_vocab

        return run_trim_vocab(stage, in_dir, out_dir, ctx)

    # -- prompt and decoding
    def messages(self, lang: str, instruction_text: str | None = None, audio=None) -> list[dict]:
        return _messages(lang, instruction_text, audio)

    def max_segment_seconds(self, config) -> float:
        """The audio encoder's positions (1500 in the 7B: 30 s; the processor's Whisper features pad and cut
        at 30 s too)."""
        a = getattr(config, "audio_config", None)
        positions = getattr(a, "max_source_positions", None) or 1500
        return min(30.0, positions / ENCODER_POSITIONS_PER_SECOND)

    # -- planner
    def plain_config(self, raw: dict):
        from .plan import plain_config

        return plain_config(raw)

    def predict(self, spec, base_config, edition: str, *, base_name: str | None = None):
        from .plan import predict

        return predict(spec, self._plain(base_config), edition, base_name=base_name)

    def _plain(self, cfg):
        """A transformers config as the PlainConfig the planner's arithmetic reads."""
        from ...floor.modeldir import PlainConfig

        return cfg if isinstance(cfg, PlainConfig) else self.plain_config(cfg.to_dict())

    def reference_label(self) -> str:
        return "Qwen2.5-Omni-7B (thinker)"

    def reference_config(self, plain: bool = True):
        from .plan import REFERENCE_7B

        if plain:
            return self.plain_config(REFERENCE_7B)
        from transformers import Qwen2_5OmniThinkerConfig

        return Qwen2_5OmniThinkerConfig.from_dict(REFERENCE_7B)

    def base_dims(self, cfg) -> dict:
        from .plan import base_dims

        return base_dims(self._plain(cfg))

    def reference_dims(self) -> dict:
        from .plan import REFERENCE_7B

        t, a = REFERENCE_7B["text_config"], REFERENCE_7B["audio_config"]
        return {"llm_layers": t["num_hidden_layers"], "audio_layers": a["encoder_layers"],
                "ffn_dim": t["intermediate_size"], "audio_ffn_dim": a["encoder_ffn_dim"]}

    def torch_save_layout(self, tensors, config: dict, float_dtype: str | None):
        """The organizers' ``torch.save(model.state_dict())`` layout, from the model transformers builds for
        ``config`` on the meta device (remembered per config by :mod:`iwslt_mc.plancache`)."""
        from ..meta import meta_torch_save_layout

        return meta_torch_save_layout("qwen2_5_omni-torchsave", self._meta_model, tensors, config, float_dtype)

    def _meta_model(self, cfg_dict: dict, torch_dtype):
        """The thinker transformers builds for a config.json dict, on the meta device."""
        import torch
        from transformers import Qwen2_5OmniThinkerConfig

        cfg = Qwen2_5OmniThinkerConfig.from_dict(cfg_dict)
        with torch.device("meta"):
            return self.loader_class()._from_config(cfg, dtype=torch_dtype)

    def torch_save_layout_name(self, config: dict) -> str:
        from ..meta import meta_layout_name

        return meta_layout_name(config)

    # -- kit
    def build_kit(self, out_dir, seed: int = 0, **options):
        from .kit import build_kit

        return build_kit(out_dir, seed=seed)
