"""The issue-31 bench tools' own logic: bench_quant_calibrated's variant names (scopes and their controls) and
bench_quant_embeddings' int8 token embeddings (they stay int8 after the organizers' load, the model runs, and
torch.save shrinks by the table's float bytes less its int8 bytes and scales)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_calibrated_variant_names_state_their_scope_and_control():
    cal = _tool("bench_quant_calibrated")
    v = cal.variant("ar3-audio-i200-n128-all")
    assert v["scope"] == "all" and v["bits"] == 3
    assert {k: v["options"][k] for k in ("iters", "nsamples", "quantize_lm_head", "quantize_audio")} == {
        "iters": 200, "nsamples": 128, "quantize_lm_head": True, "quantize_audio": True}
    blocks = cal.variant("ar2-audio-n128")["options"]  # no suffix: the blocks alone, stated (the stage's default
    assert blocks["quantize_lm_head"] is False and blocks["quantize_audio"] is False  # packs the audio encoder)
    assert cal.variant("ar3-audio-lm")["options"]["quantize_lm_head"] is True
    assert cal.variant("rtn2-all")["options"]["skip"] == [] and cal.variant("rtn2")["options"]["skip"] == cal.SCOPE
    assert cal.variant("rtn4-enc")["options"]["skip"] == ["lm_head"]
    assert cal.control_name(3, "all") == "rtn3-all" and cal.control_name(3, "") == "rtn3"
    rows = [{"name": "a", "bits": 3, "scope": "all", "dev_kl": 0.02}, {"name": "b", "bits": 3, "scope": "all",
                                                                         "dev_kl": 0.04},
            {"name": "c", "bits": 3, "dev_kl": 0.004}]  # an earlier run's row: no scope key
    chosen = cal.choose(rows)
    assert chosen[(3, "all")]["name"] == "a" and chosen[(3, "")]["name"] == "c"


@pytest.mark.filterwarnings("ignore")
def test_int8_embeddings_stay_int8_after_loading_and_run(kit, tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import Qwen2AudioForConditionalGeneration

    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    emb = _tool("bench_quant_embeddings")
    packed = tmp_path / "ct4"
    run_stage(make_stage("quantize", {"method": "ct", "bits": 4, "group_size": 16, "symmetric": True, "skip": []}),
              kit / "model", packed, StageContext(log=lambda *a: None, device="cpu"))
    e8 = emb.int8_embeddings(packed, tmp_path / "ct4-e8")
    before, _ = emb.organizers_torch_save(packed, tmp_path / "w")
    after, dtypes = emb.organizers_torch_save(e8, tmp_path / "w")
    assert dtypes == {"model.language_model.embed_tokens.weight": "int8",
                      "model.language_model.embed_tokens.weight_scale": "float32"}
    table = 1600 * 64
    saved = table * 4 - table - 1600 * 4  # float32 -> int8, plus a float32 scale per row
    assert 0 < saved - (before - after) < 2_000  # the new tensor's pickle record
    ids = torch.tensor([[5, 17, 300, 1200, 9]])
    with torch.inference_mode():
        a = Qwen2AudioForConditionalGeneration.from_pretrained(str(packed)).eval()(input_ids=ids).logits
        m = Qwen2AudioForConditionalGeneration.from_pretrained(str(e8)).eval()
        assert m.model.language_model.layers[0].mlp.up_proj.weight_packed.dtype == torch.int32  # Linear packed too
        b = m(input_ids=ids).logits  # the first forward unpacks both
    assert not torch.equal(a, b) and (a - b).abs().max() < 0.05  # int8 rounding of the table, nothing more
