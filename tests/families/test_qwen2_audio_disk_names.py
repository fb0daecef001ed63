"""Qwen2-Audio's on-disk names differ between transformers releases; the planner and the torch.save measure
follow them.

transformers 5.25 (the lock) saves the LLM under ``language_model.model.*``, 5.17 (the H200 image's) under
``language_model.model.model.*``; both load either with every weight, to the same in-memory state dict
(measured: docs/bench/gpu_check_plan.md, last section). Here, under the lock's transformers, the kit's
checkpoint is rewritten with 5.17's names (what 5.17's save_pretrained writes: the same tensors, safetensors
sorting them itself), and the planner is made to use 5.17's prefixes (the ones :func:`learn_disk_prefixes`
returns under 5.17) to force the path the installed transformers would choose there.
"""

from __future__ import annotations

import shutil

import pytest

from iwslt_mc.families.qwen2_audio import plan as qplan
from iwslt_mc.planning import planner
from iwslt_mc.planning.planner import Spec, predict
from iwslt_mc.sizing import sizer, torchsave

# what learn_disk_prefixes returns under transformers 5.17.0 (run in the image's environment, /tmp/gc-venv)
PREFIXES_5_17 = {"model.language_model.": "language_model.model.model.", "lm_head.": "language_model.lm_head.",
                 "model.audio_tower.": "audio_tower.", "model.multi_modal_projector.": "multi_modal_projector."}


@pytest.fixture(scope="module")
def kit_517(kit, tmp_path_factory):
    """The kit's model with 5.17's names (``language_model.model.`` -> ``language_model.model.model.``)."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("kit517") / "model"
    shutil.copytree(kit / "model", out)
    sd = load_file(str(out / "model.safetensors"))
    renamed = {("language_model.model.model." + k[len("language_model.model."):]
                if k.startswith("language_model.model.") else k): v for k, v in sd.items()}
    assert sum(k.startswith("language_model.model.model.") for k in renamed) == sum(
        k.startswith("language_model.model.") for k in sd) > 10
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_the_installed_transformers_names_are_the_locks():
    """Under the lock's transformers (5.25) the learned prefixes are the hand-written ones, so every figure
    the planner gave before stays byte for byte."""
    assert qplan.learn_disk_prefixes() == qplan.DISK_PREFIXES
    assert qplan.disk_prefixes() == qplan.DISK_PREFIXES


def test_the_lock_loads_a_517_checkpoint_whole(kit, kit_517):
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    ref = Qwen2AudioForConditionalGeneration.from_pretrained(kit / "model")
    got, info = Qwen2AudioForConditionalGeneration.from_pretrained(kit_517, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    a, b = ref.state_dict(), got.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_sizer_reads_517_names(kit, kit_517):
    """Components and the torch.save measure of a 5.17-written checkpoint: the LLM layers are LLM layers, and the
    in-memory state dict (the same as the 5.25-written one's) gives the same torch.save bytes."""
    old, new = sizer.measure(kit / "model"), sizer.measure(kit_517)
    assert new.components == old.components and new.params == old.params
    assert new.torch_save is not None, new.torch_save_note
    assert (new.torch_save.bytes, new.torch_save.bytes_cpu) == (old.torch_save.bytes, old.torch_save.bytes_cpu)
    n_llm = sum(1 for e in predict(Spec(precision="fp32"), planner.load_base_config(kit / "model")).entries
                if e[0].startswith("language_model.model."))
    # only the header grows: 6 characters ("model.") per LLM key, padded to 8 bytes
    assert new.header_bytes - old.header_bytes in range(6 * n_llm - 7, 6 * n_llm + 8)
    assert new.bytes - new.header_bytes == old.bytes - old.header_bytes


def test_torch_save_layout_maps_517_names_to_memory():
    from iwslt_mc.families.qwen2_audio.torchsave import memory_key

    for tail in ("layers.3.mlp.up_proj.weight", "embed_tokens.weight", "norm.weight"):
        assert memory_key("language_model.model.model." + tail) == memory_key("language_model.model." + tail) == (
            "model.language_model." + tail)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "nf4-dq"])
def test_planner_predicts_the_517_checkpoint_exactly(kit, kit_517, precision, monkeypatch):
    """With 5.17's prefixes (forced: the path the planner takes under 5.17) the planner's bytes are the
    5.17-written file's, component by component, and its torch.save figure is the one of the same model under
    5.25's names (one in-memory state dict); only the safetensors header differs from the lock's prediction."""
    base = planner.load_base_config(kit / "model")
    planner._INVENTORY_CACHE.clear()
    lock = predict(Spec(precision=precision), base)
    monkeypatch.setattr(qplan, "disk_prefixes", lambda: dict(PREFIXES_5_17))
    planner._INVENTORY_CACHE.clear()
    try:
        pred = predict(Spec(precision=precision), base)
    finally:
        planner._INVENTORY_CACHE.clear()
    keys = [e[0] for e in pred.entries]
    assert sum(k.startswith("language_model.model.model.layers.") for k in keys) == sum(
        k.startswith("language_model.model.layers.") for k in [e[0] for e in lock.entries]) > 0
    assert not any(k.startswith("language_model.model.layers.") for k in keys)
    assert {c: v["bytes"] for c, v in pred.components.items()} == {c: v["bytes"] for c, v in lock.components.items()}
    assert pred.bytes - pred.header_bytes == lock.bytes - lock.header_bytes and pred.header_bytes > lock.header_bytes
    assert (pred.torch_save.bytes, pred.torch_save.bytes_cpu) == (lock.torch_save.bytes, lock.torch_save.bytes_cpu)
    if precision == "fp32":  # the kit as saved
        real = sizer.measure(kit_517)
        assert (pred.bytes, pred.header_bytes) == (real.bytes, real.header_bytes)
        assert pred.torch_save.bytes_cpu == real.torch_save.bytes_cpu


def test_full_size_prediction_under_517_names_is_the_measured_file(monkeypatch):
    """The full-size figures of tests/planning/test_planner.py were measured with transformers 5.17: with its
    names the planner gives them to the byte (bf16, int8; nf4-dq up to the double-quantized state's float
    offset, a few characters per weight); with 5.25's it is 2,312 header bytes short (386 LLM keys)."""
    # tests/planning/test_planner.py's FULL_* (shared/reference/qwen2-audio.md)
    FULL_BF16_BYTES, FULL_INT8_BYTES, FULL_NF4_DQ_BYTES = 16_794_299_128, 9_690_934_025, 6_242_345_704
    planner._INVENTORY_CACHE.clear()
    lock = predict(Spec(precision="bf16")).bytes
    monkeypatch.setattr(qplan, "disk_prefixes", lambda: dict(PREFIXES_5_17))
    planner._INVENTORY_CACHE.clear()
    try:
        assert predict(Spec(precision="bf16")).bytes == FULL_BF16_BYTES == lock + 2_312
        assert predict(Spec(precision="int8")).bytes == FULL_INT8_BYTES
        assert abs(predict(Spec(precision="nf4-dq")).bytes - FULL_NF4_DQ_BYTES) < 1_000
    finally:
        planner._INVENTORY_CACHE.clear()
