"""quantize on the kit (bitsandbytes on the CPU): reload with from_pretrained alone equals a fresh quantization.

4-bit tests run on both bitsandbytes CPU paths (``bnb_cpu_path``: repacked for the AVX512-BF16 kernel,
or dequantized), whatever this CPU has. The kit's FFN width (176) is what the repack cannot take.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iwslt_mc import modelio
from iwslt_mc.families import prompt_text
from iwslt_mc.stages import make_stage
from iwslt_mc.stages.base import StageContext, run_stage
from iwslt_mc.stages.quantize import (changed_by_inference, quantize_model, repacked_layers, save_quantized,
                                      skip_pattern)

pytest.importorskip("bitsandbytes")

QUIET = dict(log=lambda *a: None, device="cpu")
NF4 = {"method": "nf4", "double_quant": True, "skip": ["lm_head", "audio_tower"]}


def _plain_reload(path):
    """``from_pretrained`` alone reads the checkpoint; the per-layer CPU path is then fitted as ``load_model`` does."""
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(str(path)).eval()
    modelio.fit_4bit_cpu_path(model)
    return model


# Linear4bit layers of the kit (NF4 options above): the repack needs out % 32 == 0 and in % 64 == 0
KIT_REPACKABLE = {f"model.language_model.layers.{i}.self_attn.{p}" for i in range(4) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
KIT_REPACKABLE |= {"model.multi_modal_projector.linear"}
KIT_NOT_REPACKABLE = {f"model.language_model.layers.{i}.mlp.{p}" for i in range(4) for p in ("gate_proj", "up_proj", "down_proj")}


def _expected_repacked(repack: bool) -> list[str]:
    return sorted(KIT_REPACKABLE) if repack else []


def _sha256s(d) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def dev_inputs(kit_processor, kit_waves):
    return kit_processor(text=prompt_text(kit_processor, "en-de"), audio=kit_waves["dev"][1][1], sampling_rate=16000,
                         return_tensors="pt")


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def nf4_dir(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "nf4"
    rec = run_stage(make_stage("quantize", NF4), kit / "model", out, StageContext(**QUIET))
    return out, rec


def test_nf4_reloads_with_from_pretrained_alone_equals_fresh_quantization_and_generates(kit, kit_model, nf4_dir, dev_inputs,
                                                                                       bnb_cpu_path):
    out, rec = nf4_dir
    cfg = json.loads((out / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "bitsandbytes" and q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4"
    assert q["bnb_4bit_use_double_quant"] is True and q["bnb_4bit_compute_dtype"] == "bfloat16"
    reloaded = _plain_reload(out)
    lm = reloaded.model.language_model
    assert type(lm.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert type(reloaded.model.audio_tower.layers[0].fc1).__name__ == "Linear"  # skipped
    assert type(reloaded.lm_head).__name__ == "Linear"
    fresh = quantize_model(kit / "model", NF4)
    assert torch.equal(_logits(reloaded, dev_inputs), _logits(fresh, dev_inputs))
    # it is quantized: close to the float model, not equal
    diff = (_logits(reloaded, dev_inputs) - _logits(kit_model, dev_inputs)).abs().max().item()
    assert 0 < diff < 1.0
    # the logical parameter count does not change; the bytes do (LLM linear layers are 4-bit now)
    assert rec["params_after"] == rec["params_before"] == kit_model.num_parameters()
    assert rec["bytes_after"] < rec["bytes_before"]
    assert rec["quantized_linear_layers"] == 4 * 7 + 1  # q k v o gate up down per LLM layer, and the projector
    assert "NF4" in rec["techniques"][0] and "double quantization" in rec["techniques"][0]
    assert "lm_head, audio_tower" in rec["techniques"][0]
    with torch.inference_mode():
        gen = reloaded.generate(**dev_inputs, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == dev_inputs["input_ids"].shape[1] + 5
    # the forced path was taken, layer by layer: the odd-width MLP layers never repack
    assert sorted(repacked_layers(reloaded)) == sorted(repacked_layers(fresh)) == _expected_repacked(bnb_cpu_path)


def test_saved_checkpoint_is_the_same_after_inference(kit, tmp_path, dev_inputs, bnb_cpu_path):
    """quantize -> save and quantize -> decode -> save write the same bytes, on both CPU paths."""
    a = quantize_model(kit / "model", NF4)
    save_quantized(a, None, tmp_path / "a")
    b = quantize_model(kit / "model", NF4)
    with torch.inference_mode():
        b.generate(**dev_inputs, max_new_tokens=4, do_sample=False)
    assert sorted(repacked_layers(b)) == _expected_repacked(bnb_cpu_path)  # the inference did repack (or not)
    # and, on both paths, cast the fp32 biases of q/k/v and the projector to the bf16 compute dtype
    biased = {n for n in KIT_REPACKABLE if not n.endswith("o_proj")}
    assert changed_by_inference(b) == sorted(biased | set(_expected_repacked(bnb_cpu_path)))
    msgs = []
    save_quantized(b, None, tmp_path / "b", log=msgs.append)
    sums = _sha256s(tmp_path / "a")
    assert "model.safetensors" in sums and sums == _sha256s(tmp_path / "b")
    assert msgs and "fresh quantization" in msgs[0]
    assert torch.equal(_logits(_plain_reload(tmp_path / "a"), dev_inputs), _logits(_plain_reload(tmp_path / "b"), dev_inputs))


def test_both_cpu_paths_compute_the_same_layer_within_bf16(kit, dev_inputs, bnb_cpu_path):
    """On the repack path, layers that repack give logits within bf16 rounding of the dequantize path; not equal."""
    forced = quantize_model(kit / "model", NF4)
    generic = quantize_model(kit / "model", NF4)
    for m in generic.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    a, b = _logits(forced, dev_inputs), _logits(generic, dev_inputs)
    assert sorted(repacked_layers(forced)) == _expected_repacked(bnb_cpu_path) and not repacked_layers(generic)
    if bnb_cpu_path:
        assert 0 < (a - b).abs().max().item() < 0.02 * b.abs().max().item()
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_packed_reference_matches_the_bitsandbytes_kernel(quant_type):
    """The torch stand-in that forces the repack path on CPUs without AVX512-BF16 computes what the kernel does."""
    import bitsandbytes as bnb
    from conftest import cpu_has_avx512bf16, packed_gemv_reference

    if not cpu_has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes' repacked-layout kernel cannot run here")
    torch.manual_seed(0)
    lin = bnb.nn.Linear4bit(192, 96, bias=True, compute_dtype=torch.float32, quant_type=quant_type)
    lin.weight = bnb.nn.Params4bit(torch.randn(96, 192), requires_grad=False, quant_type=quant_type,
                                   module=lin)._quantize("cpu")
    lin.support_avx512bf16_for_cpu = True
    x = torch.randn(2, 3, 192)
    with torch.inference_mode():
        y = lin.eval()(x)  # bitsandbytes repacks and runs its kernel
        assert lin.weight.quant_state.packing_format_for_cpu
        ref = packed_gemv_reference(x, lin.weight.data, state=lin.weight.quant_state) + lin.bias
    # the kernel and the stand-in round differently in bf16 (1-2 ulps); a layout error would be ~100%
    assert (y - ref).abs().max().item() < 0.01 * y.abs().max().item()


@pytest.fixture(scope="module")
def few_wavs(tmp_path_factory, kit_waves):
    """Three eval utterances of the kit as WAV files and a text list of them (a short ``--audio``)."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("wavs")
    waves = [w for _, w in kit_waves["eval"][:3]]
    for i, w in enumerate(waves):
        sf.write(d / f"u{i}.wav", w, 16000)
    (d / "audio.txt").write_text("".join(f"u{i}.wav\n" for i in range(len(waves))), encoding="utf-8")
    return d / "audio.txt", waves


@pytest.mark.parametrize("method", ["nf4", "fp4"])
def test_4bit_kit_model_decodes_on_both_cpu_paths(kit, tmp_path, few_wavs, bnb_cpu_path, method):
    """The decode command on a 4-bit kit model (FFN width 176): one line per segment, as translate() gives."""
    from iwslt_mc import cli
    from iwslt_mc.decoding.core import one_line, translate

    audio, waves = few_wavs
    qdir = tmp_path / method
    run_stage(make_stage("quantize", dict(NF4, method=method)), kit / "model", qdir, StageContext(**QUIET))
    out = tmp_path / "hyp.de"
    assert cli.main(["decode", str(qdir), "--lang", "en-de", "--audio", str(audio), "--out", str(out),
                     "--max-new-tokens", "6", "--no-progress", "--batch-size", "3"]) == 0
    got = out.read_text(encoding="utf-8").splitlines()
    model = modelio.load_model(qdir, device="cpu")
    hyps = translate(model, modelio.load_processor(qdir), waves, "en-de", batch_size=3, max_new_tokens=6)
    assert len(got) == len(waves) == 3
    assert got == [one_line(h.text) for h in hyps]
    assert sum(h.n_tokens for h in hyps) > 0
    assert sorted(repacked_layers(model)) == _expected_repacked(bnb_cpu_path)


def _repack_like_an_avx512_cpu(model) -> int:
    """What the first no-grad CPU forward does to 4-bit layers on AVX512-bf16/AMX machines (not this one, maybe)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    n = 0
    for mod in model.modules():
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        if qs is not None and qs.shape[0] % 32 == 0 and qs.shape[1] % qs.blocksize == 0:
            mod.weight.data, mod.weight.quant_state = _convert_weight_packed_for_cpu(mod.weight.data, qs)
            n += 1
    return n


def test_repacked_weights_are_not_saved(kit, tmp_path, dev_inputs):
    fresh = _logits(quantize_model(kit / "model", NF4), dev_inputs)
    naive = quantize_model(kit / "model", NF4)
    assert _repack_like_an_avx512_cpu(naive) > 0 and repacked_layers(naive)
    modelio.save_model(naive, None, tmp_path / "naive")
    # the pitfall: saving repacked weights writes a different checkpoint
    assert not torch.equal(_logits(_plain_reload(tmp_path / "naive"), dev_inputs), fresh)
    safe = quantize_model(kit / "model", NF4)
    _repack_like_an_avx512_cpu(safe)
    msgs = []
    save_quantized(safe, None, tmp_path / "safe", log=msgs.append)
    assert msgs and "fresh quantization" in msgs[0]
    assert torch.equal(_logits(_plain_reload(tmp_path / "safe"), dev_inputs), fresh)


def test_int8_reload_equals_fresh_and_cast_warning_is_silenced(kit, tmp_path, dev_inputs, caplog):
    out = tmp_path / "int8"
    rec = run_stage(make_stage("quantize", {"method": "int8"}), kit / "model", out, StageContext(**QUIET))
    reloaded = _plain_reload(out)
    assert type(reloaded.model.audio_tower.layers[0].fc1).__name__ == "Linear8bitLt"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["load_in_8bit"] is True
    fresh = quantize_model(kit / "model", {"method": "int8"})
    with caplog.at_level(logging.WARNING):
        assert torch.equal(_logits(reloaded, dev_inputs), _logits(fresh, dev_inputs))
    assert not [r for r in caplog.records if "will be cast" in r.getMessage()]
    assert "LLM.int8" in rec["techniques"][0] and rec["bytes_after"] < rec["bytes_before"]


def test_skip_patterns_match_from_the_start():
    from transformers.quantizers.quantizers_utils import should_convert_module

    p = [skip_pattern("audio_tower")]
    assert not should_convert_module("model.audio_tower.layers.0.fc1", p)
    assert should_convert_module("model.language_model.layers.0.mlp.up_proj", p)
    assert not should_convert_module("lm_head", [skip_pattern("lm_head")])
    assert should_convert_module("model.xlm_head", [skip_pattern("lm_head")])
    assert not should_convert_module("model.language_model.layers.0.mlp.up_proj", [skip_pattern("layers.0.mlp")])
    assert should_convert_module("model.language_model.layers.10.mlp.up_proj", [skip_pattern("layers.1.mlp")])
    assert should_convert_module("model.audio_tower.layers.0.fc1", ["audio_tower"])  # why plain names are rewritten


@pytest.mark.parametrize("sets,msg", [
    (["skip=[audio_towr]"], "matches no module"),
    (["method=int4"], "must be one of"),
    (["skip=['re:(']"], "invalid regex"),
    (["compute_dtype=fp8"], "must be one of"),
    (["dbl=true"], "unknown option 'dbl'"),
])
def test_bad_options(kit, tmp_path, stage_refuses, sets, msg):
    stage_refuses("quantize", kit / "model", tmp_path / "o", sets, msg)


NOISE = ("kernels-community", "MatMul8bitLt", "will be cast", "Loading weights", "Writing model shards", "it/s]",
         "Compressing model", "Decompressing")


@pytest.mark.parametrize("method", ["int8", "nf4", "ct"])
def test_cli_quantize_and_decode_print_only_our_lines(kit, tmp_path, few_wavs, method):
    """No bitsandbytes kernel hint, no int8 cast warnings, no transformers or compressed-tensors bars ("Compressing
    model"): CLI subprocesses, output captured."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    q = tmp_path / method
    runs = [["decode", str(q), "--lang", "en-de", "--audio", str(few_wavs[0]), "--out", str(tmp_path / "hyp.de"),
             "--max-new-tokens", "4", "--no-progress"]]
    if method in ("nf4", "ct"):  # the stage's own load and save too
        # ct: lm_head skipped (the default), the embeddings quantized
        sets = ["method=ct", "group_size=16", "quantize_embeddings=true"] if method == "ct" else [f"method={method}"]
        runs.insert(0, ["stage", "quantize", "--in", str(kit / "model"), "--out", str(q)] + [x for v in sets for x in ("--set", v)])
    else:
        run_stage(make_stage("quantize", {"method": method}), kit / "model", q, StageContext(**QUIET))
    outs = []
    for argv in runs:
        r = subprocess.run([sys.executable, "-m", "iwslt_mc", *argv], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout + r.stderr)
    for text in outs:
        assert not [line for line in text.splitlines() if any(n in line for n in NOISE)], text[-2000:]
        assert "Traceback" not in text
    if method == "nf4":
        assert "quantize: loading" in outs[0] and "written:" in outs[0]
    if method == "ct":
        assert "quantize: 42 weights quantized to 4-bit" in outs[0] and "written:" in outs[0]
    assert len((tmp_path / "hyp.de").read_text(encoding="utf-8").splitlines()) == 3


# Run as `python -c DRIVER ARGV...`: the CLI, with every model load followed by lines a library release
# could add (an INFO, a WARNING and a FutureWarning raised in the kernels package, none known to us) and
# one real ERROR, so the test does not depend on what the installed versions happen to print.
NEW_LIBRARY_LINES_DRIVER = """
import logging, os, sys, warnings
import iwslt_mc.modelio as modelio
loaded = modelio.load_model
def load_and_log(*a, **k):
    model = loaded(*a, **k)
    import kernels
    where = os.path.join(os.path.dirname(kernels.__file__), "_new_module.py")
    logging.getLogger("kernels._internals.hf_hub").info("kernels INFO: a line this release added")
    logging.getLogger("kernels._internals.hf_hub").warning("kernels WARNING: a notice this release added")
    warnings.warn_explicit("kernels FutureWarning: this will change", FutureWarning, where, 1)
    logging.getLogger("kernels._internals.hf_hub").error("kernels ERROR: a real failure")
    return model
modelio.load_model = load_and_log
from iwslt_mc.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("library_log", [None, "warning"])
def test_new_library_lines_stay_out_of_a_quantize_and_decode_but_errors_show(kit, tmp_path, few_wavs, library_log):
    """A line a new library release adds (logging or a Python warning, any wording) does not reach the output of
    ``stage quantize`` or ``decode``; an ERROR of the same logger does. ``IWSLT_MC_LIBRARY_LOG=warning`` shows them."""
    pytest.importorskip("kernels")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("IWSLT_MC_DEBUG", None)
    env.pop("IWSLT_MC_LIBRARY_LOG", None)
    if library_log:
        env["IWSLT_MC_LIBRARY_LOG"] = library_log
    q = tmp_path / "int8"
    runs = [["stage", "quantize", "--in", str(kit / "model"), "--out", str(q), "--set", "method=int8"],
            ["decode", str(q), "--lang", "en-de", "--audio", str(few_wavs[0]), "--out", str(tmp_path / "hyp.de"),
             "--max-new-tokens", "2", "--no-progress"]]
    for argv in runs:
        r = subprocess.run([sys.executable, "-c", NEW_LIBRARY_LINES_DRIVER, *argv], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        lines = (r.stdout + r.stderr).splitlines()
        assert [ln for ln in lines if "kernels ERROR: a real failure" in ln] == ["kernels ERROR: a real failure"]
        added = [ln for ln in lines if "this release added" in ln or "this will change" in ln]
        if library_log is None:
            assert added == [], "\n".join(added)
        else:  # the INFO stays below the chosen level
            assert len(added) == 2, added
            assert added[0] == "kernels WARNING: a notice this release added"
            assert added[1].endswith("_new_module.py:1: FutureWarning: kernels FutureWarning: this will change")
    assert len((tmp_path / "hyp.de").read_text(encoding="utf-8").splitlines()) == 3


def test_real_errors_of_the_silenced_loggers_still_show(caplog):
    from iwslt_mc.output import silence_library_noise

    silence_library_noise()
    lines = {"bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast from %s to float16 during quantization",
             "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community: %s."}
    with caplog.at_level(logging.WARNING):
        for name, noise in lines.items():
            logging.getLogger(name).warning(noise, "x")
            logging.getLogger(name).error("something else went wrong in %s", name)
    assert [r.getMessage() for r in caplog.records] == [f"something else went wrong in {n}" for n in lines]


def test_quantizing_a_quantized_model_is_refused(nf4_dir, tmp_path):
    from iwslt_mc.errors import UserError

    out, _ = nf4_dir
    with pytest.raises(UserError, match="already quantized"):
        run_stage(make_stage("quantize", {}), out, tmp_path / "o", StageContext(**QUIET))
