"""Shared fixtures: the offline demo kit, built once per test session.

Tests never touch the network: the hub is switched off before transformers or datasets is imported.
"""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# plan's per-config cache (iwslt_mc.plancache): a fresh folder per session, not the user's
import tempfile  # noqa: E402

os.environ.setdefault("IWSLT_MC_PLAN_CACHE", tempfile.mkdtemp(prefix="iwslt-mc-plancache."))

import pytest  # noqa: E402


def _kit_variants() -> list[tuple[str, str, dict]]:
    """(variant, family name, build_kit options) of every registered family's test kits."""
    from iwslt_mc.families import families

    return [(v, f.name, opts) for f in families() for v, opts in f.kit_variants.items()]


@pytest.fixture(scope="session")
def _kits(tmp_path_factory):
    """Kit variant -> (path, KitInfo), each built once per session on first use (seed 0)."""
    from iwslt_mc.families import family_named

    built: dict = {}
    variants = {v: (fam, opts) for v, fam, opts in _kit_variants()}

    def get(variant: str):
        if variant not in built:
            fam, opts = variants[variant]
            path = tmp_path_factory.mktemp(variant.replace("_", "") + "kit") / "kit"
            built[variant] = (path, family_named(fam).build_kit(path, seed=0, **opts))
        return built[variant]

    return get


# every registered family's kit variants, in registry order (for ``parametrize("family_kit", [...], indirect=True)``)
KIT_VARIANTS = [v for v, _, _ in _kit_variants()]


@pytest.fixture(scope="session", params=KIT_VARIANTS)
def family_kit(request, _kits):
    """(variant, Family, kit path) for every registered family's kit variants (qwen2_audio, gemma4,
    gemma4_unified, qwen2_5_omni_thinker, ...): tests that hold for any family take this fixture
    (tests/stages/test_family_stages.py, tests/planning/test_family_plans.py, ...). Read-only. A slow body can
    take a subset: ``@pytest.mark.parametrize("family_kit", ["qwen2_audio", "gemma4"], indirect=True)``."""
    from iwslt_mc.families import family_named

    variant = request.param
    fam = next(f for v, f, _ in _kit_variants() if v == variant)
    return variant, family_named(fam), _kits(variant)[0]


@pytest.fixture(scope="session")
def kit(_kits):
    """Path of a built demo kit (``kit/model``, ``kit/data``, ``kit/data/long``), seed 0. Read-only: copy before changing."""
    return _kits("qwen2_audio")[0]


@pytest.fixture(scope="session")
def gemma_kit(_kits):
    """(path, KitInfo) of the Gemma 4 kit (``gemma4``: audio conformer, vision, PLE, KV sharing), seed 0. Read-only."""
    return _kits("gemma4")


@pytest.fixture(scope="session")
def gemma_unified_kit(_kits):
    """Path of the ``gemma4_unified`` kit (the 12B's layout at kit size), seed 0. Read-only."""
    return _kits("gemma4_unified")[0]


@pytest.fixture(scope="session")
def kit_processor(kit):
    """The kit's ``Qwen2AudioProcessor`` (shared: do not mutate)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(kit / "model")


@pytest.fixture(scope="session")
def kit_model(kit):
    """The kit's model in float32, eval mode (shared: do not mutate; load your own copy to change it)."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return Qwen2AudioForConditionalGeneration.from_pretrained(kit / "model", dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def kit_waves(kit):
    """``{split: [(index, 16 kHz float32 waveform), ...]}`` decoded from the kit's parquet files with soundfile."""
    import pyarrow.parquet as pq

    from iwslt_mc.decoding.audio import load_audio

    out = {}
    for split in ("dev", "eval"):
        table = pq.read_table(kit / "data" / f"{split}.parquet", columns=["index", "audio"]).to_pylist()
        out[split] = [(r["index"], load_audio(r["audio"]["bytes"], name=f"{split}:{r['index']}")) for r in table]
    return out


# ----------------------------------------------------------------------------- bitsandbytes CPU paths

def cpu_has_avx512bf16() -> bool:
    """What bitsandbytes reports for this CPU (the real answer, whatever a test forces)."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def packed_gemv_reference(A, B, out=None, transposed_A=False, transposed_B=False, state=None):
    """``bitsandbytes.functional.gemv_4bit`` for weights in bitsandbytes' CPU-repacked layout, in torch.

    bitsandbytes' own kernel for that layout (``gemv_4bit_inference_cpu_*_bf16`` in
    libbitsandbytes_cpu.so) executes AVX512-BF16 instructions (``vdpbf16ps``) with no fallback,
    and bitsandbytes registers it only on CPUs that have them: elsewhere a repacked layer would be
    multiplied by the generic kernel as if it were not repacked (wrong numbers, no error). This is
    the same computation (unpack with bitsandbytes' own inverse, bf16 absmax, bf16 input and output),
    for forcing the repack path on a CPU without the instruction.
    """
    import copy

    import torch
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse, dequantize_4bit

    qs = copy.copy(state)
    qs.original_nested = False  # keep the unpacked absmax as it is (the inverse would re-quantize it)
    w, qs = _convert_weight_packed_for_cpu_inverse(B, qs)
    qs.absmax = state.absmax.T.reshape(-1).float()  # [K/blocksize, N] bf16 -> row-major blocks
    qs.dtype = torch.float32
    weight = dequantize_4bit(w, qs)
    y = (A.to(torch.bfloat16).float() @ weight.to(torch.bfloat16).float().T).to(torch.bfloat16).to(A.dtype)
    if out is not None:
        out.copy_(y)
        return out
    return y


@pytest.fixture(params=["repack", "no-repack"])
def bnb_cpu_path(request, monkeypatch):
    """Both bitsandbytes CPU paths for 4-bit layers, on any CPU: True = repack, False = dequantize.

    bitsandbytes decides per ``Linear4bit`` when it is built (``support_avx512bf16_for_cpu`` from
    ``has_avx512bf16()``): on AVX512-BF16 CPUs the first no-grad eval forward repacks the weight in
    place for its CPU kernel, elsewhere it dequantizes and multiplies. Tests using this fixture build
    their 4-bit models inside it, so every layer takes the forced path (where its shape allows the
    repack: :func:`iwslt_mc.modelio.fit_4bit_cpu_path`). On a CPU without AVX512-BF16 the repacked
    layers are multiplied by :func:`packed_gemv_reference` instead of bitsandbytes' kernel.
    """
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnb_functional
    import bitsandbytes.nn.modules as bnb_modules

    repack = request.param == "repack"
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: repack)
    if repack and not cpu_has_avx512bf16():
        original = bnb_functional.gemv_4bit

        def gemv_4bit(A, B, out=None, transposed_A=False, transposed_B=False, state=None):
            if getattr(state, "packing_format_for_cpu", False):
                return packed_gemv_reference(A, B, out, transposed_A, transposed_B, state)
            return original(A, B, out=out, transposed_A=transposed_A, transposed_B=transposed_B, state=state)

        monkeypatch.setattr(bnb_functional, "gemv_4bit", gemv_4bit)
    return repack


@pytest.fixture
def stage_refuses(monkeypatch, capsys):
    """``stage_refuses(stage, model_dir, out, sets, msg, *extra)``: ``iwslt-mc stage STAGE`` with ``--set``
    options ``sets`` exits 2 with one stderr line holding ``msg``, before loading the model, and writes no ``out``."""
    from iwslt_mc import cli, modelio

    def check(stage, model_dir, out, sets, msg, *extra):
        monkeypatch.setattr(modelio, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
        argv = ["stage", stage, "--in", str(model_dir), "--out", str(out), *extra]
        for s in sets:
            argv += ["--set", s]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
        assert not out.exists()

    return check


@pytest.fixture(scope="module")
def one_thread():
    """Tests of the tiny kit models gain nothing from threads, and on a shared CPU two threads thrash each other
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gemma_organizers_generate():
    """``gemma_organizers_generate(model_dir, wav, n=8)`` -> (ours, theirs, inputs, processor, audio): the first ``n``
    tokens of our reference decode of ``wav`` (en-de) and of the organizers' steps on a Gemma 4 model (gemma_run.py:
    the family's processor, ``AutoModelForMultimodalLM``, the chat template with enable_thinking=False, one user turn
    text then audio, greedy ``generate``), with the organizers' ``inputs``, processor and audio."""
    import librosa
    import torch
    from transformers import AutoModelForMultimodalLM

    from iwslt_mc import modelio
    from iwslt_mc.decoding.audio import load_audio
    from iwslt_mc.decoding.core import reference_one
    from iwslt_mc.families import family_named
    from iwslt_mc.families.gemma4.prompt import organizers_prompt

    def run(model_dir, wav, n: int = 8):
        ours = reference_one(modelio.load_model(model_dir, device="cpu"), modelio.load_processor(model_dir),
                             load_audio(str(wav)), "en-de", max_new_tokens=n).tokens
        processor = family_named("gemma4").load_processor(model_dir)
        model = AutoModelForMultimodalLM.from_pretrained(str(model_dir), dtype="auto").eval()
        audio, _ = librosa.load(str(wav), sr=16000, mono=True)
        messages = [{"role": "user", "content": [{"type": "text", "text": organizers_prompt("en-de")},
                                                 {"type": "audio", "audio": audio}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False,
                                               tokenize=True, return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
        return ours, out[0][inputs["input_ids"].shape[-1]:].tolist(), inputs, processor, audio

    return run


@pytest.fixture
def kill9():
    """``kill9(cmd, ready, timeout, pause, what=None, env=None, stderr=DEVNULL)``: start ``cmd`` and SIGKILL it as soon
    as ``ready()`` holds (checked every ``pause`` s, for at most ``timeout`` s); fails, saying ``what`` (None: the
    command's piped stderr, tail), when the command ended before. Returns after the killed process is reaped."""
    import signal
    import subprocess
    import time

    def run(cmd, ready, timeout: float, pause: float, what: str | None = None, env=None, stderr=subprocess.DEVNULL):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(pause)
        assert proc.poll() is None, what if what is not None else proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    return run


class TrainingInterrupted(Exception):
    """What :func:`stop_at_step`'s callback raises: a training run stopped mid-way, as a kill would (resume tests)."""


def stop_at_step(step: int):
    """A ``TrainerCallback`` raising :class:`TrainingInterrupted` at the end of optimizer step ``step``
    (``from conftest import stop_at_step, TrainingInterrupted``)."""
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise TrainingInterrupted()

    return Stop()


REQUIRE_COMET = "IWSLT_MC_REQUIRE_COMET"  # set by .ci/run: the COMET environment must build, never skip
COMET_OFFLINE_SIGNS = ("No matching distribution", "Could not find a version", "Failed to establish a new connection",
                       "Temporary failure in name resolution", "Network is unreachable")


@pytest.fixture(scope="session")
def comet_env_dir():
    """The COMET environment for the COMET and QE tests. Without a package index it skips, unless
    ``IWSLT_MC_REQUIRE_COMET=1``: then the failure to build it fails the tests."""
    from iwslt_mc.errors import UserError
    from iwslt_mc.scoring import comet_env

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = comet_env.default_env_dir()
    try:
        comet_env.create_env(env)
        return env
    except UserError as e:
        error = e
    # outside the except block: the failure or skip is reported alone, not chained to pip's error
    if os.environ.get(REQUIRE_COMET) == "1":
        pytest.fail(f"{REQUIRE_COMET}=1 and the COMET environment {env} cannot be created: {error}", pytrace=False)
    if any(s in str(error) for s in COMET_OFFLINE_SIGNS):
        pytest.skip(f"COMET not tested: cannot create the COMET environment {env} (no package index reachable "
                    f"and no cached wheels): {error}")
    raise error
