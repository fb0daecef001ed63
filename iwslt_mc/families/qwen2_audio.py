"""The Qwen2-Audio family: delegates to the modules that have always handled it (layout, prompting,
planner, kit), so behaviour is exactly what it was before families existed."""

from __future__ import annotations

from .base import ALL_STAGES, Family


class Qwen2AudioFamily(Family):
    name = "qwen2_audio"
    label = "Qwen2-Audio"
    model_types = ("qwen2_audio",)
    hub_org, hub_name_prefix = "Qwen", "qwen2-audio"
    hidden_state_kd = True
    processor_prefixes = ("Qwen2Audio",)
    stages = tuple(s for s in ALL_STAGES if s != "drop-vision")
    kit_options = ("vocab",)

    @property
    def components(self):
        from ..layout import COMPONENTS

        return COMPONENTS

    def loader_class(self):
        from transformers import Qwen2AudioForConditionalGeneration

        return Qwen2AudioForConditionalGeneration

    def find_parts(self, model) -> dict:
        from ..layout import find_layout

        lay = find_layout(model)
        return {"llm_layers": lay.decoder_layers_name, "embed_tokens": lay.embed_tokens_name,
                "per_layer_embeddings": None, "lm_head": lay.lm_head_name, "lm_head_tied": False,
                "audio_encoder": lay.audio_tower_name, "vision_encoder": None, "projector": lay.projector_name}

    def component_for_key(self, key: str) -> str:
        from ..layout import component_for_key

        return component_for_key(key)

    def config_after_layer_removal(self, config, kept: list[int]):
        import copy

        cfg = copy.deepcopy(config)
        t = getattr(cfg, "text_config", cfg)
        if getattr(t, "layer_types", None):
            t.layer_types = [t.layer_types[i] for i in kept]
        t.num_hidden_layers = len(kept)
        return cfg

    def messages(self, lang: str, instruction_text: str | None = None, audio=None) -> list[dict]:
        from ..prompting import messages

        return messages(lang, instruction_text)

    def prompt_text(self, processor, lang: str, instruction_text: str | None = None) -> str:
        from ..prompting import _qwen2_audio_prompt_text

        return _qwen2_audio_prompt_text(processor, lang, instruction_text)

    def predict(self, spec, base_config, edition: str, *, base_name: str | None = None):
        from ..planner import predict

        return predict(spec, base_config, edition, base_name=base_name)

    def plain_config(self, raw: dict):
        from .qwen2_audio_plan import plain_config

        return plain_config(raw)

    def plan_inventory(self, config, *, ffn_dim=None, audio_ffn_dim=None, vocab=None):
        from .qwen2_audio_plan import inventory

        return inventory(config, ffn_dim=ffn_dim, audio_ffn_dim=audio_ffn_dim, vocab=vocab)

    def reference_dims(self) -> dict:
        from ..planner import qwen2_audio_7b_config_dict

        ref = qwen2_audio_7b_config_dict()
        return {"llm_layers": ref["text_config"]["num_hidden_layers"], "audio_layers": ref["audio_config"]["encoder_layers"],
                "ffn_dim": ref["text_config"]["intermediate_size"], "audio_ffn_dim": ref["audio_config"]["encoder_ffn_dim"]}

    def build_kit(self, out_dir, seed: int = 0, **options):
        from ..kit import build_kit

        return build_kit(out_dir, seed=seed, **options)
