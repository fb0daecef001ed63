"""Mixed precision by measured sensitivity (issue 31 item 3): a bit width per Linear module within a byte budget
under the edition's measure, written by ``plan --allocate`` and built by ``quantize`` (method ct, allocation)."""

from __future__ import annotations

import json

import pytest
import torch

from iwslt_mc.sizing import sizer
from iwslt_mc.errors import UserError
from iwslt_mc.quantization import allocation as A
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage

pytest.importorskip("compressed_tensors")

QUIET = dict(log=lambda *a: None, device="cpu")
ARCHIVE = "tmpabcdefgh"  # the organizers' NamedTemporaryFile name length
G = 16  # divides every input width of the kit (64, 128, 176)
WIDTHS = (2, 3, 4, 8, 16)


@pytest.fixture(scope="module")
def modules(kit):
    return A.allocatable_modules(kit / "model")


@pytest.fixture(scope="module")
def handmade(kit, modules, tmp_path_factory):
    """Every width on some module (lm_head at 2 bits), built by the quantize stage."""
    root = tmp_path_factory.mktemp("mixed")
    names = list(modules)
    bits = {n: WIDTHS[i % len(WIDTHS)] for i, n in enumerate(names)}
    bits["lm_head"] = 2
    path = A.write_allocation(root / "alloc.json", A.Allocation(modules=bits, group_size=G))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    run_stage(make_stage("quantize", {"method": "ct", "symmetric": True, "allocation": str(path)}),
              kit / "model", root / "out", StageContext(**QUIET))
    return root, bits


def organizers_load(model_dir):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(str(model_dir), dtype="auto", device_map="cpu")


def test_predicted_bytes_equal_the_measured_torch_save_of_the_build(kit, modules, handmade, tmp_path):
    root, bits = handmade
    out = root / "out"
    sd = organizers_load(out).state_dict()
    torch.save(sd, tmp_path / f"{ARCHIVE}.pt")
    real = (tmp_path / f"{ARCHIVE}.pt").stat().st_size
    s27 = A.Sizer(kit / "model", "2027", G, modules)
    pred = s27.torch_save(bits)
    assert pred.bytes_cpu == real
    measured = sizer.measure(out, edition="2027")
    assert measured.torch_save.bytes == pred.bytes == s27.bytes(bits)
    # 2025: the safetensors file bytes
    assert A.Sizer(kit / "model", "2025", G, modules).bytes(bits) == measured.bytes
    # mixed widths are really smaller than float and larger than all-2-bit
    assert s27.bytes({n: 2 for n in modules}) < real < s27.bytes({n: 16 for n in modules})


def test_each_module_is_packed_at_its_own_width_after_from_pretrained(handmade, modules):
    root, bits = handmade
    cfg = json.loads((root / "out" / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["dequantize"] is False and qc["format"] == "pack-quantized"
    assert sorted(g["weights"]["num_bits"] for g in qc["config_groups"].values()) == [2, 3, 4, 8]
    assert all(g["weights"]["symmetric"] for g in qc["config_groups"].values())
    sd = organizers_load(root / "out").state_dict()
    for name, b in bits.items():
        out, inp = modules[name]
        if b == 16:
            assert sd[name + ".weight"].dtype == torch.float32 and name + ".weight_packed" not in sd
        else:
            assert name + ".weight" not in sd, name
            assert sd[name + ".weight_packed"].dtype == torch.int32
            assert tuple(sd[name + ".weight_packed"].shape) == (out, -(-inp * b // 32)), (name, b)
            assert tuple(sd[name + ".weight_scale"].shape) == (out, inp // G)
    assert bits["lm_head"] == 2 and tuple(sd["lm_head.weight_packed"].shape) == (modules["lm_head"][0], 64 * 2 // 32)


def test_the_choice_meets_the_budget_and_gives_bits_where_the_loss_is(kit, modules):
    s = A.Sizer(kit / "model", "2027", G, modules)
    names = list(modules)
    sensitive = "lm_head"
    losses = {n: {2: 1e-3, 3: 4e-4, 4: 1e-4, 8: 1e-6} for n in names}
    losses[sensitive] = {2: 5.0, 3: 2.0, 4: 1.0, 8: 0.01}
    uniform3 = s.bytes({n: 3 for n in names})
    bits = A.choose(losses, s, uniform3)
    assert s.bytes(bits) <= uniform3
    # the one sensitive module gets its bits from the insensitive ones (8 bits would not fit: 76.8 kB more)
    assert bits[sensitive] == 4 == max(bits.values())
    assert A.summed_loss(losses, bits) < A.summed_loss(losses, {n: 3 for n in names})
    floor = s.bytes({n: 2 for n in names})
    assert A.choose(losses, s, floor) == {n: 2 for n in names}
    with pytest.raises(UserError, match="below the smallest allocation"):
        A.choose(losses, s, floor - 1)
    assert set(A.choose(losses, s, s.bytes({n: 16 for n in names})).values()) == {16}


def test_plan_allocate_on_dev_then_quantize_measures_what_it_predicted(kit, tmp_path, capsys):
    from iwslt_mc.cli import main

    s = A.Sizer(kit / "model", "2027", G, A.allocatable_modules(kit / "model"))
    budget = s.bytes({n: 3 for n in s.keys})
    out = tmp_path / "bits.json"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rc = main(["plan", "--base", str(kit / "model"), "--target", str(budget), "--edition", "2027",
               "--allocate", str(out), "--data", str(kit / "data"), "--split", "dev", "--limit", "2",
               "--bits", "2,4,16", "--group-size", str(G)])
    assert rc == 0
    alloc = A.read_allocation(out)
    assert alloc.predicted <= budget and alloc.budget == budget and alloc.measure == "torch_save_bytes"
    assert set(alloc.modules.values()) <= {2, 4, 16} and "dev, 2 utterances" in alloc.data
    assert all(alloc.sensitivity[n]["16"] == 0.0 and alloc.sensitivity[n]["2"] >= alloc.sensitivity[n]["4"] - 1e-6
               for n in alloc.modules)
    run_stage(make_stage("quantize", {"method": "ct", "symmetric": True, "allocation": str(out)}),
              kit / "model", tmp_path / "q", StageContext(**QUIET))
    assert sizer.measure(tmp_path / "q", edition="2027").torch_save.bytes == alloc.predicted
    capsys.readouterr()
    assert main(["plan", "--base", str(kit / "model"), "--target", "1MB", "--allocate", str(tmp_path / "x.json"),
                 "--data", str(kit / "data"), "--split", "test"]) == 2
    assert "not on the test split" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def _write(path, **over):
    raw = {"format": A.FORMAT, "group_size": G, "modules": {"lm_head": 4}, **over}
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.mark.parametrize("over, message", [
    ({"modules": {"model.language_model.layers.9.mlp.up_proj": 4}}, "is not a Linear layer of"),
    ({"modules": {"lm_head": 5}}, "5 bits; method ct packs 2, 3, 4, 8 bits"),
    ({"modules": {"lm_head": 4}, "group_size": 48}, "group_size 48 does not divide the input width 64"),
    ({"format": "x"}, "not a bit allocation"),
])
def test_bad_allocations_fail_in_one_line_before_work(kit, tmp_path, over, message):
    path = _write(tmp_path / "a.json", **over)
    cfg = json.loads((kit / "model" / "config.json").read_text())
    with pytest.raises(UserError, match=message) as e:
        stage = make_stage("quantize", {"method": "ct", "symmetric": True, "allocation": path})
        stage.plan(cfg, StageContext(**QUIET), "the base")
    assert "\n" not in str(e.value) and "a.json" in str(e.value)


@pytest.mark.parametrize("opts, message", [
    ({"method": "nf4"}, "allocation is for method ct"),
    ({"method": "ct"}, "allocation needs symmetric: true"),
    ({"method": "ct", "symmetric": True, "bits": 3}, "option bits does not go with allocation"),
    ({"method": "ct", "symmetric": True, "group_size": 32}, "group_size 32 differs from the allocation's 16"),
    ({"method": "ct", "symmetric": True, "int8_embeddings": True}, "option int8_embeddings does not go with allocation"),
])
def test_options_that_contradict_an_allocation_fail(tmp_path, opts, message):
    path = _write(tmp_path / "a.json")
    with pytest.raises(UserError, match=message):
        make_stage("quantize", {**opts, "allocation": path})


def test_sizes_parse():
    assert A.parse_size("2.5GiB") == int(2.5 * 2**30) and A.parse_size("900MB") == 900 * 10**6
    assert A.parse_size("1234") == 1234
    with pytest.raises(UserError, match="expected a size"):
        A.parse_size("Bin3")
    with pytest.raises(UserError, match="widths are 2, 3, 4, 8, 16"):
        A.parse_widths("2,5")


def test_reload_gives_the_logits_of_the_model_before_saving(kit, handmade, kit_processor, kit_waves):
    from iwslt_mc.quantization import formats as quant_formats
    from iwslt_mc.families import prompt_text
    from iwslt_mc.stages.quantize import QuantizeOptions

    root, bits = handmade
    inputs = kit_processor(text=prompt_text(kit_processor, "en-de"), audio=kit_waves["dev"][1][1], sampling_rate=16000,
                           return_tensors="pt")
    o = QuantizeOptions.from_dict({"method": "ct", "symmetric": True, "allocation": str(root / "alloc.json")})
    before, _ = quant_formats.ct_quantize(kit / "model", o, log=lambda *a: None, module_bits=bits)
    packed = organizers_load(root / "out").eval()
    assert packed.lm_head.weight_packed.dtype == torch.int32
    with torch.inference_mode():
        assert torch.equal(packed(**inputs).logits, before(**inputs).logits)  # the first forward unpacks
