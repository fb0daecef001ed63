"""What holds for every registered family, on each of its kits (conftest's ``family_kit``: qwen2_audio,
gemma4, gemma4_unified, and whatever family is registered next): the seam finds the family, the sizer's
components add up, the planner predicts the saved file exactly, and the family's prompt is what its
processor's template makes of the family's messages."""

from __future__ import annotations

from iwslt_mc.families import family_for, family_of_processor, prompt_text


def test_kit_is_its_family_and_declares_its_stages(family_kit):
    variant, fam, kit = family_kit
    assert family_for(kit / "model") is fam
    assert variant in fam.model_types  # each model type the family accepts has a kit
    assert fam.supports("prune-layers") and fam.supports("trim-vocab") and fam.supports("quantize")
    assert not fam.supports("no-such-stage")


def test_sizer_components_add_up_to_the_file(family_kit):
    from iwslt_mc.sizing import sizer

    _, fam, kit = family_kit
    rep = sizer.measure(kit / "model")
    assert rep.bytes == (kit / "model" / "model.safetensors").stat().st_size
    assert sum(v["bytes"] for v in rep.components.values()) + rep.header_bytes == rep.bytes
    assert set(rep.components) <= set(fam.components)
    assert rep.components["llm_layers"]["params"] > 0 and rep.components["embed_tokens"]["params"] > 0


def test_plan_of_the_kit_as_saved_is_exact(family_kit):
    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer

    _, _, kit = family_kit
    pred = planner.predict(planner.Spec(precision="fp32"), planner.load_base_config(kit / "model"), "2025")
    rep = sizer.measure(kit / "model")
    assert (pred.bytes, pred.params) == (rep.bytes, rep.params)
    # component by component too (the planner leaves out empty "other" and a tied, unstored lm_head)
    assert pred.components == {k: v for k, v in rep.components.items() if v["bytes"] or k not in ("other", "lm_head")}
    assert pred.torch_save is not None  # the organizers' measure is predicted for every family


def test_prompt_is_the_family_messages_through_the_template(family_kit):
    _, fam, kit = family_kit
    processor = fam.load_processor(kit / "model")
    assert family_of_processor(processor) is fam
    text = prompt_text(processor, "en-de")
    assert text == processor.apply_chat_template(fam.messages("en-de"), add_generation_prompt=True, tokenize=False,
                                                 **fam.chat_template_kwargs)
    assert text != prompt_text(processor, "en-zh")
