"""The calibrated method (quantize ``method: autoround``, issue 31 item 2) on the kit: AutoRound's
``llm_compressor`` export with the ignore rewrite, MLP included; sized exactly under the organizers' measure
(``torch.save(model.state_dict())`` after ``from_pretrained``); packed after loading; reload gives the logits of
the model before saving; bad options fail in one line before any work. Few iterations, so it stays fast."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch

from iwslt_mc.errors import UserError
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage
from iwslt_mc.stages.quantize import QuantizeOptions

HAVE_AR = importlib.util.find_spec("auto_round") is not None
needs_ar = pytest.mark.skipif(not HAVE_AR, reason="auto-round is not installed (pip install -e '.[calib]')")

FAST = {"method": "autoround", "group_size": 16, "iters": 1, "nsamples": 2, "seqlen": 16, "calibration": "text"}


def _ctx(kit):
    return StageContext(log=lambda *a: None, device="cpu", data=[str(kit / "data")])


@pytest.fixture(scope="module")
def ar_builds(kit, tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("autoround")
    extras = {}
    for bits in (4, 3, 2):
        extras[bits] = run_stage(make_stage("quantize", {**FAST, "bits": bits}), kit / "model", root / f"ar{bits}",
                                 _ctx(kit))
    return root, extras


@needs_ar
@pytest.mark.parametrize("bits", [4, 3, 2])
def test_autoround_is_sized_exactly_and_stays_packed_after_from_pretrained(kit, ar_builds, bits, tmp_path):
    from test_quant_packed import _predicted, organizers_torch_save

    from iwslt_mc.sizing import sizer

    out = ar_builds[0] / f"ar{bits}"
    real, sd = organizers_torch_save(out, tmp_path)
    # every Linear of the 4 LLM decoder blocks, MLP included (176 wide: AutoRound's own rule would keep it float)
    for name in ("mlp.up_proj", "mlp.gate_proj", "mlp.down_proj", "self_attn.q_proj", "self_attn.o_proj"):
        for i in range(4):
            key = f"model.language_model.layers.{i}.{name}."
            assert key + "weight" not in sd and sd[key + "weight_packed"][0] == torch.int32, key
    up = "model.language_model.layers.0.mlp.up_proj."
    assert sd[up + "weight_packed"] == (torch.int32, (176, -(-64 * bits // 32)))
    assert sd[up + "weight_scale"] == (torch.float32, (176, 64 // 16))  # the model's float dtype
    assert not any(k.endswith("weight_zero_point") for k in sd)
    # embeddings, lm_head, audio encoder and projector as stored
    assert sd["model.language_model.embed_tokens.weight"][0] == torch.float32
    assert sd["lm_head.weight"] == (torch.float32, (1600, 64))
    assert sd["model.audio_tower.layers.0.fc1.weight"][0] == torch.float32
    assert sd["model.multi_modal_projector.linear.weight"][0] == torch.float32
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["dequantize"] is False and all(p.startswith("re:") for p in q["ignore"])
    # predicted (planner, before building) == the sizer's figure == a real torch.save of the organizers' load
    measured = sizer.measure(out, edition="2027").torch_save
    assert measured.bytes_cpu == real
    pred = _predicted(kit, {**FAST, "bits": bits})
    assert pred.torch_save is not None, pred.torch_save_note
    assert pred.torch_save.bytes_cpu == real
    assert pred.bytes == sizer.measure(out).bytes  # the 2025 measure (safetensors) too
    assert real < 2_412_693
    assert ar_builds[1][bits]["quantized_linear_layers"] == 28


@needs_ar
def test_autoround_reload_packed_and_unpacked_give_the_same_logits(kit, ar_builds, kit_processor, kit_waves):
    """Reloaded packed (first forward unpacks) and reloaded unpacked (dequantize: true) give the same logits and
    decode, and the weights are quantized near the original. (Not against the model before saving: AutoRound tunes
    in bfloat16 on the CPU and writes each block as it finishes, so no float model of the saved weights exists.)"""
    from transformers import CompressedTensorsConfig, Qwen2AudioForConditionalGeneration

    from iwslt_mc.families import prompt_text

    out = ar_builds[0] / "ar4"
    inputs = kit_processor(text=prompt_text(kit_processor, "en-de"), audio=kit_waves["dev"][1][1],
                           sampling_rate=16000, return_tensors="pt")
    packed = Qwen2AudioForConditionalGeneration.from_pretrained(str(out)).eval()
    assert packed.model.language_model.layers[0].mlp.down_proj.weight_packed.dtype == torch.int32
    unpacked = Qwen2AudioForConditionalGeneration.from_pretrained(
        str(out), quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    with torch.inference_mode():
        a = packed(**inputs).logits
        b = unpacked(**inputs).logits
        assert torch.equal(a, b)
        g1 = packed.generate(**inputs, max_new_tokens=6, do_sample=False)
        g2 = unpacked.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, g2)
    w = unpacked.model.language_model.layers[0].mlp.down_proj.weight
    base = Qwen2AudioForConditionalGeneration.from_pretrained(str(kit / "model")).eval()
    w0 = base.model.language_model.layers[0].mlp.down_proj.weight
    assert not torch.equal(w, w0) and (w - w0).abs().max() < w0.abs().max() / 4  # quantized, near the original


@pytest.mark.parametrize("opts, msg", [
    ({"bits": 8}, "method autoround has 2-4 bits, not bits=8"),
    ({"bits": 1}, "method autoround has 2-4 bits, not bits=1"),
    ({"scales": "mse"}, "option scales does not go with method autoround"),
    ({"quantize_embeddings": True}, "option quantize_embeddings does not go with method autoround"),
    ({"skip": ["audio_tower"]}, "option skip does not go with method autoround"),
    ({"nsamples": 0}, "nsamples must be a positive integer, not 0"),
    ({"calibration": "audio", "seqlen": 64}, "option seqlen is for calibration text"),
    ({"calibration": "video"}, "calibration"),
])
def test_bad_autoround_options_fail_in_one_line(opts, msg):
    with pytest.raises(UserError, match=msg) as e:
        QuantizeOptions.from_dict({"method": "autoround", **opts}, stage="quantize").validate()
    assert "\n" not in str(e.value)


def test_autoround_options_are_refused_by_the_other_methods():
    with pytest.raises(UserError, match="option iters is for method autoround only"):
        QuantizeOptions.from_dict({"method": "ct", "iters": 5}, stage="quantize").validate()
    with pytest.raises(UserError, match="option calibration is for method autoround only"):
        QuantizeOptions.from_dict({"method": "ct", "calibration": "text"}, stage="quantize").validate()
    default = QuantizeOptions.from_dict({"method": "autoround"}, stage="quantize")
    assert default.calibration == "audio"
    # the measured defaults (docs/bench/quant_calibrated.md): the audio encoder quantized where it is calibrated
    # (calibration audio), lm_head float; the other methods never take them
    assert default.quantize_audio is True and default.quantize_lm_head is False
    text = QuantizeOptions.from_dict({"method": "autoround", "calibration": "text"}, stage="quantize")
    assert text.quantize_audio is False
    assert QuantizeOptions.from_dict({"method": "ct"}, stage="quantize").quantize_audio is False


def test_audio_calibration_batches_are_the_models_own_inputs(kit):
    """calibration: audio hands AutoRound what decoding feeds the model: the prompt with its audio placeholders
    expanded and the audio features, then the reference; every sample one length (AutoRound stacks any of them),
    padding masked; batches of the size its calibration counts."""
    from iwslt_mc import modelio
    from iwslt_mc.quantization.calibrated import calibration_batches, calibration_examples

    processor = modelio.load_processor(kit / "model")
    exs = calibration_examples(StageContext(log=lambda *a: None, data=[str(kit / "data")], lang="en-de"), 3)
    assert len(exs) == 3
    batches = calibration_batches(kit / "model", processor, exs, "en-de", 2)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    assert len({b["input_ids"].shape[1] for b in batches}) == 1
    assert "labels" not in batches[0] and batches[0]["input_features"].shape[0] == 2
    audio_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    ids, mask = batches[0]["input_ids"], batches[0]["attention_mask"]
    assert ((ids == audio_id).sum(1) > 10).all()  # the audio placeholders, one per audio frame the tower emits
    from iwslt_mc.training.training import pad_token_id

    assert (ids[mask == 0] == pad_token_id(processor)).all() and (mask.sum(1) >= 1).all()  # right padding, masked
    assert all(m[: int(m.sum())].all() for m in mask)
    tok = processor.tokenizer
    row = ids[0][mask[0] == 1].tolist()
    from iwslt_mc.training.data import target_text

    assert target_text(exs[0], "en-de") in tok.decode(row)  # teacher-forced on the reference
    # a seeded order: the same utterances again
    again = calibration_examples(StageContext(log=lambda *a: None, data=[str(kit / "data")], lang="en-de"), 3)
    assert [e.text_en for e in again] == [e.text_en for e in exs]


@needs_ar
def test_autoround_audio_calibration_runs_the_audio_path_and_stays_packed(kit, ar_builds, tmp_path, monkeypatch):
    """calibration: audio drives the whole model with the audio features (AutoRound records the blocks' inputs
    from that forward; a forward that failed would be skipped, and none succeeding is a one-line error), and
    writes the same format and bytes as the text calibration, sized exactly."""
    from test_quant_packed import organizers_torch_save

    from iwslt_mc.quantization import calibrated
    from iwslt_mc.sizing import sizer

    seen = []
    real_cast = calibrated._cast_floats

    def spy(module, args, kwargs):
        seen.append({k: tuple(v.shape) for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        return real_cast(module, args, kwargs)

    monkeypatch.setattr(calibrated, "_cast_floats", spy)
    logs = []
    out = tmp_path / "ar4-audio"
    opts = {k: v for k, v in FAST.items() if k not in ("seqlen", "calibration")}  # audio: the default
    # the audio encoder kept float here (its default with audio calibration is quantized), to compare with text's
    extra = run_stage(make_stage("quantize", {**opts, "bits": 4, "quantize_audio": False}), kit / "model",
                      out, StageContext(log=logs.append, device="cpu", data=[str(kit / "data")]))
    assert seen and all("input_features" in s and s["input_ids"][0] == 2 for s in seen), seen
    assert extra["quantized_linear_layers"] == 28
    assert any("on 2 utterances (audio prompt + reference" in m for m in logs), logs
    assert "2 utterances of the data: audio prompt and reference translation" in extra["techniques"][0]
    real, sd = organizers_torch_save(out, tmp_path)
    assert sd["model.language_model.layers.0.mlp.up_proj.weight_packed"][0] == torch.int32
    assert sizer.measure(out, edition="2027").torch_save.bytes_cpu == real
    assert sizer.measure(ar_builds[0] / "ar4", edition="2027").torch_save.bytes_cpu == real


def test_missing_library_is_one_line_naming_pip_before_any_work(kit, tmp_path, monkeypatch):
    """plan() (the build's check before any stage runs) and the stage's own check: one line, the pip command."""
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "auto_round" else real(name, *a))
    stage = make_stage("quantize", {**FAST, "bits": 3})
    cfg = json.loads((kit / "model" / "config.json").read_text())
    with pytest.raises(UserError, match=r"needs the auto-round library \(pip install 'auto-round==0.16.1'") as e:
        stage.plan(cfg, _ctx(kit), "kit")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="needs the auto-round library"):
        run_stage(stage, kit / "model", tmp_path / "out", _ctx(kit))
    assert not (tmp_path / "out").exists()


@needs_ar
def test_autoround_checks_before_work(kit, tmp_path):
    with pytest.raises(UserError, match="calibrates on text: give --data"):
        run_stage(make_stage("quantize", FAST), kit / "model", tmp_path / "a",
                  StageContext(log=lambda *a: None, device="cpu"))
    with pytest.raises(UserError, match="group_size 128 does not divide the input width 64 of "
                                        "model.language_model.layers.0.self_attn.q_proj"):
        run_stage(make_stage("quantize", {**FAST, "group_size": 128}), kit / "model", tmp_path / "b", _ctx(kit))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_autoround_is_refused_for_a_family_it_was_not_measured_on(gemma_kit):
    kit_dir, _ = gemma_kit
    cfg = json.loads((kit_dir / "model" / "config.json").read_text())
    with pytest.raises(UserError, match="method autoround is not available for Gemma 4"):
        make_stage("quantize", FAST).plan(cfg, StageContext(log=lambda *a: None), "gemma kit")


# -- every Linear layer: lm_head (quantize_lm_head), the audio encoder's Linear layers and the projector
# (quantize_audio), calibrated on audio (the audio encoder's layers only see audio)
SCOPES = {"all": {"quantize_lm_head": True, "quantize_audio": True},
          "lm": {"quantize_lm_head": True, "quantize_audio": False}, "enc": {}}  # enc: the defaults
FAST_AUDIO = {k: v for k, v in FAST.items() if k not in ("seqlen", "calibration")}


@pytest.fixture(scope="module")
def ar_scope_builds(kit, tmp_path_factory):
    """ar{4,3,2}-all, ar2-lm, ar3-enc (the defaults with audio calibration) on the kit (1 iteration on 2
    utterances)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("autoround-scope")
    out = {}
    for name, bits, scope in (("ar4-all", 4, "all"), ("ar3-all", 3, "all"), ("ar2-all", 2, "all"),
                              ("ar2-lm", 2, "lm"), ("ar3-enc", 3, "enc")):
        opts = {**FAST_AUDIO, "bits": bits, **SCOPES[scope]}
        logs = []
        extra = run_stage(make_stage("quantize", opts), kit / "model", root / name,
                          StageContext(log=logs.append, device="cpu", data=[str(kit / "data")]))
        out[name] = (opts, extra, logs)
    return root, out


@needs_ar
@pytest.mark.parametrize("name", ["ar4-all", "ar3-all", "ar2-all", "ar2-lm", "ar3-enc"])
def test_autoround_scopes_are_sized_exactly_under_every_edition_and_stay_packed(kit, ar_scope_builds, name, tmp_path):
    """lm_head and the audio encoder's Linear layers (and the projector) packed as asked, the rest as stored (the
    input's float32: AutoRound's export said bfloat16 once it quantized layers outside the blocks, and the
    organizers' dtype="auto" load would have cast every float tensor); the planner before building == the
    sizer == a real torch.save of the organizers' load, under every edition's measure."""
    from test_quant_packed import organizers_torch_save

    from iwslt_mc.build import spec_for_stages
    from iwslt_mc.planning import planner
    from iwslt_mc.recipes import StageEntry
    from iwslt_mc.sizing import sizer
    from iwslt_mc.sizing.track import EDITIONS

    root, builds = ar_scope_builds
    opts, extra, logs = builds[name]
    out = root / name
    real, sd = organizers_torch_save(out, tmp_path)
    lm, enc = opts.get("quantize_lm_head", False), opts.get("quantize_audio", True)
    bits = opts["bits"]

    def linear(prefix, rows, cols, is_packed):
        if is_packed:
            assert prefix + "weight" not in sd, prefix
            assert sd[prefix + "weight_packed"] == (torch.int32, (rows, -(-cols * bits // 32))), prefix
            assert sd[prefix + "weight_scale"] == (torch.float32, (rows, cols // 16)), prefix
        else:
            stored(prefix, (rows, cols))

    def stored(prefix, shape):
        assert sd[prefix + "weight"] == (torch.float32, shape), prefix

    linear("model.language_model.layers.3.mlp.down_proj.", 64, 176, True)
    linear("lm_head.", 1600, 64, lm)
    for i in range(2):
        linear(f"model.audio_tower.layers.{i}.fc1.", 128, 64, enc)
        linear(f"model.audio_tower.layers.{i}.fc2.", 64, 128, enc)
        linear(f"model.audio_tower.layers.{i}.self_attn.k_proj.", 64, 64, enc)
    linear("model.multi_modal_projector.linear.", 64, 64, enc)
    stored("model.audio_tower.conv1.", (64, 128, 3))  # no Linear layer: float in every scope
    stored("model.audio_tower.embed_positions.", (1500, 64))
    stored("model.language_model.embed_tokens.", (1600, 64))
    assert not any(k.endswith("weight_zero_point") for k in sd)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "float32"
    assert extra["quantized_linear_layers"] == 28 + lm + 13 * enc  # 2 audio layers x 6 Linear + the projector
    assert extra["unquantized_linear_layers"] == (not lm) + 13 * (not enc)
    assert ("lm_head" in extra["techniques"][0].split(";")[0]) == lm
    assert any(f"{extra['quantized_linear_layers']} of 42 Linear layers packed" in m for m in logs), logs
    # every edition's measure: planner == sizer; the torch.save ones == the organizers' real torch.save
    base = planner.load_base_config(kit / "model")
    spec, notes = spec_for_stages([StageEntry("q", "quantize", opts)], base, base=str(kit / "model"), lang="en-de",
                                  data={}, condition="constrained")
    assert notes == []
    for ed in EDITIONS:
        pred, meas = planner.predict(spec, base, ed), sizer.measure(out, edition=ed)
        assert pred.bytes == meas.bytes, ed
        assert pred.torch_save is not None and meas.torch_save is not None, ed
        assert pred.torch_save.bytes_cpu == meas.torch_save.bytes_cpu == real, ed


@needs_ar
def test_autoround_every_layer_reload_packed_and_unpacked_give_the_same_logits(kit, ar_scope_builds, kit_processor,
                                                                               kit_waves):
    """Every Linear packed (lm_head, audio encoder, projector too): the packed reload's first forward unpacks
    them into the same logits and decode as the unpacked reload, and the audio encoder's and lm_head's weights
    are quantized near the original."""
    from transformers import CompressedTensorsConfig, Qwen2AudioForConditionalGeneration

    from iwslt_mc.families import prompt_text

    out = ar_scope_builds[0] / "ar4-all"
    inputs = kit_processor(text=prompt_text(kit_processor, "en-de"), audio=kit_waves["dev"][1][1],
                           sampling_rate=16000, return_tensors="pt")
    packed = Qwen2AudioForConditionalGeneration.from_pretrained(str(out)).eval()
    assert packed.lm_head.weight_packed.dtype == torch.int32
    assert packed.model.audio_tower.layers[1].fc2.weight_packed.dtype == torch.int32
    unpacked = Qwen2AudioForConditionalGeneration.from_pretrained(
        str(out), quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    with torch.inference_mode():
        assert torch.equal(packed(**inputs).logits, unpacked(**inputs).logits)
        g1 = packed.generate(**inputs, max_new_tokens=6, do_sample=False)
        g2 = unpacked.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, g2)
    base = Qwen2AudioForConditionalGeneration.from_pretrained(str(kit / "model")).eval()
    for get in (lambda m: m.lm_head.weight, lambda m: m.model.audio_tower.layers[0].fc1.weight,
                lambda m: m.model.multi_modal_projector.linear.weight):
        w, w0 = get(unpacked), get(base)
        assert w.dtype == torch.float32
        assert not torch.equal(w, w0) and (w - w0).abs().max() < w0.abs().max() / 4  # quantized, near the original
    assert torch.equal(unpacked.model.audio_tower.conv1.weight, base.model.audio_tower.conv1.weight)
    assert torch.equal(unpacked.model.language_model.embed_tokens.weight, base.model.language_model.embed_tokens.weight)


def test_autoround_scope_is_the_families_parts():
    """quantized_parts: the blocks AutoRound tunes and the Linear layers it packs, from the family's parts."""
    from types import SimpleNamespace as O

    from iwslt_mc.quantization.calibrated import quantized_parts

    parts = {"llm_layers": "m.lm.layers", "lm_head": "lm_head", "lm_head_tied": False, "audio_encoder": "m.audio",
             "audio_layers": "m.audio.layers", "projector": "m.proj"}
    linear = ["m.audio.layers.0.fc1", "m.audio.extra", "m.proj.linear", "m.lm.layers.0.q", "m.lm.layers.1.q",
              "lm_head", "m.vision.q"]
    assert quantized_parts(parts, linear, O(), where="x") == (["m.lm.layers"], ["m.lm.layers.0.q", "m.lm.layers.1.q"])
    blocks, q = quantized_parts(parts, linear, O(quantize_lm_head=True, quantize_audio=True), where="x")
    assert blocks == ["m.lm.layers", "m.audio.layers"]
    assert q == ["m.audio.layers.0.fc1", "m.audio.extra", "m.proj.linear", "m.lm.layers.0.q", "m.lm.layers.1.q",
                 "lm_head"]
    with pytest.raises(UserError, match="quantize_lm_head: lm_head is tied to the token embeddings in x"):
        quantized_parts({**parts, "lm_head_tied": True}, linear, O(quantize_lm_head=True), where="x")
    with pytest.raises(UserError, match="quantize_audio: no audio encoder layers found in x"):
        quantized_parts({**parts, "audio_layers": None}, linear, O(quantize_audio=True), where="x")


@pytest.mark.parametrize("opts, msg", [
    ({"method": "ct", "quantize_lm_head": True},
     "option quantize_lm_head is for method autoround only (method ct: lm_head is quantized unless in skip)"),
    ({"method": "nf4", "quantize_audio": True}, "option quantize_audio is for method autoround only"),
    ({"method": "autoround", "quantize_audio": True, "calibration": "text"},
     "quantize_audio needs calibration: audio"),
    ({"method": "autoround", "quantize_lm_head": "maybe"}, "quantize_lm_head"),
])
def test_bad_scope_options_fail_in_one_line(opts, msg):
    with pytest.raises(UserError, match=re.escape(msg) if "(" in msg else msg) as e:
        QuantizeOptions.from_dict(opts, stage="quantize").validate()
    assert "\n" not in str(e.value)


def test_help_options_documents_the_autoround_scope(capsys):
    from iwslt_mc import cli

    assert cli.main(["stage", "quantize", "--help-options"]) == 0
    text = capsys.readouterr().out
    for word in ("quantize_lm_head", "quantize_audio", "calibration", "autoround"):
        assert word in text


@needs_ar
def test_autoround_on_a_trimmed_vocabulary_packs_lm_head_only_when_asked(kit, tmp_path):
    """A trimmed vocabulary's lm_head has a row count AutoRound's own rule keeps at 16 bits (not a multiple of 32):
    a blocks-only build leaves it float (the rule is lifted only for the layers the stage quantizes), and
    quantize_lm_head packs it; both sized exactly."""
    from test_quant_packed import organizers_torch_save

    from iwslt_mc.sizing import sizer

    ctx = StageContext(log=lambda *a: None, device="cpu", data=[str(kit / "data")])
    trimmed = tmp_path / "trim"
    run_stage(make_stage("trim-vocab", {"use_data": True}), kit / "model", trimmed, ctx)
    rows = json.loads((trimmed / "config.json").read_text())["text_config"]["vocab_size"]
    assert rows % 32
    for lm in (False, True):
        out = tmp_path / f"ar-lm{int(lm)}"
        extra = run_stage(make_stage("quantize", {**FAST_AUDIO, "bits": 3, "quantize_lm_head": lm,
                                                  "quantize_audio": False}), trimmed, out, ctx)
        assert extra["quantized_linear_layers"] == 28 + lm
        real, sd = organizers_torch_save(out, tmp_path)
        assert ("lm_head.weight_packed" in sd) == lm and ("lm_head.weight" in sd) == (not lm)
        assert sizer.measure(out, edition="2027").torch_save.bytes_cpu == real
