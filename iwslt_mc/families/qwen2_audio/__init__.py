"""The Qwen2-Audio family (transformers ``qwen2_audio``): Qwen2-Audio-7B-Instruct, the seed paper's base.

Everything Qwen2-Audio-specific is in this folder: where the parts of a loaded model are
(:mod:`.layout`), the surgery on them (:mod:`.surgery`), the prompt (:mod:`.prompt`), the planner's
arithmetic and the built-in 7B reference (:mod:`.plan`), the torch.save layout (:mod:`.torchsave`), the
demo kit (:mod:`.kit`) and the real vocabulary (:mod:`.vocab`). The planner's generic prediction and the
layout-based stage paths are written for this family's layout (it supports every stage but drop-vision).
"""

from __future__ import annotations

from ..base import ALL_STAGES, Family


class Qwen2AudioFamily(Family):
    name = "qwen2_audio"
    label = "Qwen2-Audio"
    model_types = ("qwen2_audio",)
    hub_org, hub_name_prefix = "Qwen", "qwen2-audio"
    hidden_state_kd = True
    processor_prefixes = ("Qwen2Audio",)
    stages = tuple(s for s in ALL_STAGES if s != "drop-vision")
    kit_options = ("vocab",)
    kit_variants = {"qwen2_audio": {}}
    target_search = True
    # the published recipes, then the bin-targeted ones
    recipes = (
        ("recipe-a", "recipe-a.yaml"),
        ("recipe-b", "recipe-b.yaml"),
        ("recipe-b-bin1", "recipe-b-bin1.yaml"),
        ("recipe-bin2", "recipe-bin2.yaml"),
        ("recipe-c", "recipe-c.yaml"),
        ("recipe-c-kd", "recipe-c-kd.yaml"),
        ("recipe-c-2step", "recipe-c-2step.yaml"),
        ("recipe-d-replace", "recipe-d-replace.yaml"),
        ("recipe-bin4", "recipe-bin4.yaml"),
        ("recipe-bin5", "recipe-bin5.yaml"),
        # the 2027 ladder: stated in GiB under the torch.save measure after loading, largest first
        ("recipe-2027-4gib", "recipe-2027-4gib.yaml"),
        ("recipe-2027-2gib", "recipe-2027-2gib.yaml"),
        ("recipe-2027-1gib", "recipe-2027-1gib.yaml"),
        ("recipe-2027-05gib", "recipe-2027-05gib.yaml"),
        ("quantize-only", "quantize-only.yaml"),
        ("quantize-only-int8", "quantize-only-int8.yaml"),
    )
    recipe_preference = ("recipe-b-bin1", "recipe-bin2", "recipe-b", "recipe-c", "recipe-a", "quantize-only",
                         "quantize-only-int8")

    @property
    def components(self):
        from .layout import COMPONENTS

        return COMPONENTS

    def loader_class(self):
        from transformers import Qwen2AudioForConditionalGeneration

        return Qwen2AudioForConditionalGeneration

    def find_parts(self, model) -> dict:
        from .layout import find_layout

        lay = find_layout(model)
        return {"llm_layers": lay.decoder_layers_name, "embed_tokens": lay.embed_tokens_name,
                "per_layer_embeddings": None, "lm_head": lay.lm_head_name, "lm_head_tied": False,
                "audio_encoder": lay.audio_tower_name, "audio_layers": lay.audio_layers_name, "vision_encoder": None,
                "projector": lay.projector_name}

    def layout(self, model):
        """:func:`iwslt_mc.families.qwen2_audio.layout.find_layout` (a :class:`~.layout.ModelLayout`)."""
        from .layout import find_layout

        return find_layout(model)

    def surgery(self):
        """:mod:`iwslt_mc.families.qwen2_audio.surgery`."""
        from . import surgery

        return surgery

    def component_for_key(self, key: str) -> str:
        from .layout import component_for_key

        return component_for_key(key)

    def llm_layer_index(self, key: str) -> int | None:
        from .layout import llm_layer_index

        return llm_layer_index(key)

    def audio_layer_index(self, key: str) -> int | None:
        from .layout import audio_layer_index

        return audio_layer_index(key)

    def config_after_layer_removal(self, config, kept: list[int]):
        import copy

        cfg = copy.deepcopy(config)
        t = getattr(cfg, "text_config", cfg)
        if getattr(t, "layer_types", None):
            t.layer_types = [t.layer_types[i] for i in kept]
        t.num_hidden_layers = len(kept)
        return cfg

    def torch_save_layout(self, tensors, config: dict, float_dtype: str | None):
        from .torchsave import state_dict_layout

        return state_dict_layout(tensors, config, float_dtype)

    def memory_key(self, disk_key: str) -> str:
        from .torchsave import memory_key

        return memory_key(disk_key)

    def torch_save_layout_name(self, config: dict) -> str:
        from .torchsave import LAYOUT

        return LAYOUT

    def messages(self, lang: str, instruction_text: str | None = None, audio=None) -> list[dict]:
        from .prompt import messages

        return messages(lang, instruction_text)

    def reference_label(self) -> str:
        return "built-in Qwen2-Audio-7B-Instruct"

    def reference_config(self, plain: bool = True):
        """Qwen2-Audio-7B-Instruct's architecture (:func:`~.plan.qwen2_audio_7b_config_dict`)."""
        from .plan import qwen2_audio_7b_config, qwen2_audio_7b_plain_config

        return qwen2_audio_7b_plain_config() if plain else qwen2_audio_7b_config()

    def plain_config(self, raw: dict):
        from .plan import plain_config

        return plain_config(raw)

    def plan_inventory(self, config, *, ffn_dim=None, audio_ffn_dim=None, vocab=None):
        from .plan import inventory

        return inventory(config, ffn_dim=ffn_dim, audio_ffn_dim=audio_ffn_dim, vocab=vocab)

    def reference_dims(self) -> dict:
        from .plan import qwen2_audio_7b_config_dict

        ref = qwen2_audio_7b_config_dict()
        return {"llm_layers": ref["text_config"]["num_hidden_layers"], "audio_layers": ref["audio_config"]["encoder_layers"],
                "ffn_dim": ref["text_config"]["intermediate_size"], "audio_ffn_dim": ref["audio_config"]["encoder_ffn_dim"]}

    def build_kit(self, out_dir, seed: int = 0, **options):
        from .kit import build_kit

        return build_kit(out_dir, seed=seed, **options)
