"""torch.save of an asymmetric compressed-tensors checkpoint (``dequantize: true``) as each transformers loads it.

transformers 5.25 (the lock) loads it dense: one float ``weight`` per quantized module. 5.17 (the H200 image's)
wraps the modules before loading and decompresses them after, so each keeps ``weight_scale``,
``weight_zero_point`` (int8, one per group) and ``weight_shape`` beside the float weight (bias first, weight
last). :func:`torchsave.ct_dequantize_keeps_params` asks the installed transformers which; here, under the lock's,
the 5.17 path is forced and checked against the figure a real torch.save gave under 5.17 for the same checkpoint
(docs/bench/gpu_check_plan.md, last section).
"""

from __future__ import annotations

import pytest

from iwslt_mc.planning import planner
from iwslt_mc.planning.planner import Spec, predict
from iwslt_mc.sizing import sizer, torchsave
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage

pytest.importorskip("compressed_tensors")

# `stage quantize --set method=ct --set bits=4 --set scales=minmax --set group_size=16` on the seed-0 kit model,
# loaded by transformers 5.17.0 + compressed-tensors 0.20.1 and torch.save'd (CPU): measured in t517
KIT_CT4_G16_TORCH_SAVE_517 = 2_533_441
KIT_CT4_G16_TORCH_SAVE_525 = 2_412_693


@pytest.fixture(scope="module")
def kit_ct_asym(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct_asym") / "m"
    run_stage(make_stage("quantize", {"method": "ct", "bits": 4, "group_size": 16, "scales": "minmax"}),
              kit / "model", out, StageContext(log=lambda *a: None, device="cpu"))
    return out


def test_the_locks_transformers_loads_dequantized_ct_dense():
    assert torchsave.ct_dequantize_keeps_params() is False
    assert torchsave._probe_ct_dequantize() is False


def test_dense_figure_is_a_real_torch_save(kit_ct_asym, tmp_path):
    """The lock's path: the figure `size` gives is a real torch.save of the model loaded."""
    r = sizer.measure(kit_ct_asym)
    assert r.torch_save is not None, r.torch_save_note
    real = torchsave.measure_streamed(kit_ct_asym, device="cpu").bytes
    assert r.torch_save.bytes_cpu == real == KIT_CT4_G16_TORCH_SAVE_525


def test_kept_parameters_figure_is_517s(kit_ct_asym, monkeypatch):
    monkeypatch.setattr(torchsave, "ct_dequantize_keeps_params", lambda: True)
    r = sizer.measure(kit_ct_asym)
    assert r.torch_save is not None, r.torch_save_note
    assert r.torch_save.bytes_cpu == KIT_CT4_G16_TORCH_SAVE_517
    entries, _ = torchsave.state_dict_layout(*_tensors_and_config(kit_ct_asym))
    keys = [e.key for e in entries]
    i = keys.index("model.language_model.layers.0.self_attn.q_proj.bias")
    assert keys[i:i + 5] == ["model.language_model.layers.0.self_attn.q_proj." + s for s in
                             ("bias", "weight_scale", "weight_zero_point", "weight_shape", "weight")]
    zp = entries[i + 2]
    assert zp.dtype == "I8" and zp.shape == entries[i + 1].shape


def test_planner_follows_the_same_switch(kit, monkeypatch):
    """The planner's torch.save figure for a ct plan (asymmetric, dequantize: true): the dense layout, or the kept
    parameters' (more bytes). (Under 5.17 the planner's ct4 figure for the reduced base, 168,210,561, was the real
    torch.save's; docs/bench/gpu_check_plan.md.)"""
    base = planner.load_base_config(kit / "model")
    spec = Spec(precision="ct4-g16")
    dense = predict(spec, base).torch_save
    monkeypatch.setattr(torchsave, "ct_dequantize_keeps_params", lambda: True)
    kept = predict(spec, base).torch_save
    assert dense is not None and kept is not None
    assert kept.bytes_cpu > dense.bytes_cpu


def _tensors_and_config(model_dir):
    import json

    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    with safe_open(str(model_dir / "model.safetensors"), "np") as f:
        tensors = [(k, f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()]
        shapes = {k[: -len("weight_shape")]: tuple(int(x) for x in f.get_tensor(k)) for k in f.keys()
                  if k.endswith(".weight_shape")}
    return tensors, config, None, shapes


# the same for a family laid out from its meta model (iwslt_mc.floor.statedict.meta_state_dict_layout): the
# Qwen2.5-Omni thinker kit, ct4 g16 minmax. Under 5.17 `size` gave 2,285,539 and a real torch.save 2,285,539
# (5.25: 2,156,855 = 2,156,855); 5.17 also names the thinker's parts differently in memory (``audio_tower.*``,
# 5.25 ``model.audio_tower.*``), which its meta model carries, so under the lock only the structure is checked.
OMNI_CT4_G16_TORCH_SAVE_525 = 2_156_855


def test_meta_layout_follows_the_switch(_kits, tmp_path, monkeypatch):
    path, _ = _kits("qwen2_5_omni_thinker")
    out = tmp_path / "omni-ct"
    run_stage(make_stage("quantize", {"method": "ct", "bits": 4, "group_size": 16, "scales": "minmax"}),
              path / "model", out, StageContext(log=lambda *a: None, device="cpu"))
    dense = sizer.measure(out)
    assert dense.torch_save is not None, dense.torch_save_note
    assert dense.torch_save.bytes_cpu == torchsave.measure_streamed(out, device="cpu").bytes == OMNI_CT4_G16_TORCH_SAVE_525
    monkeypatch.setattr(torchsave, "ct_dequantize_keeps_params", lambda: True)
    kept = sizer.measure(out)
    assert kept.torch_save is not None, kept.torch_save_note
    tensors, config, _, shapes = _tensors_and_config(out)
    n_ct = sum(k.endswith(".weight_shape") for k, _, _ in tensors)
    assert n_ct > 10 and kept.torch_save.storages == dense.torch_save.storages + 3 * n_ct
    entries, _ = torchsave.state_dict_layout(tensors, config, None, shapes)
    keys = [e.key for e in entries]
    w = next(k for k in keys if k.endswith(".weight_shape"))[: -len("weight_shape")]
    at = keys.index(w + "weight_scale")
    assert keys[at:at + 4] == [w + s for s in ("weight_scale", "weight_zero_point", "weight_shape", "weight")]
