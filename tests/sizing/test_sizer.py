"""Sizer: exact bytes, logical parameters, components, bins at every edge, clear errors."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iwslt_mc.floor import modeldir
from iwslt_mc.sizing import sizer
from iwslt_mc.cli import main
from iwslt_mc.errors import InputFileError, UserError
from iwslt_mc.sizing.track import GB, MB

# Reference figures for Qwen2-Audio-7B-Instruct (shared/reference/qwen2-audio.md).
FULL_PARAMS = 8_397_094_912
FULL_COMPONENTS = {
    "audio_encoder": 636_968_960,
    "projector": 5_246_976,
    "llm_layers": 6_476_660_736,
    "embed_tokens": 639_107_072,
    "lm_head": 639_107_072,
    "other": 4_096,
}


def write_exact_size(path: Path, total: int) -> Path:
    """A valid one-tensor safetensors file of exactly ``total`` bytes; the data is a sparse hole."""
    k = total - 8 - 128
    text = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "U8", "shape": [k], "data_offsets": [0, k]}},
                      separators=(",", ":")).encode()
    assert len(text) <= 128
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 128) + text + b" " * (128 - len(text)))
        f.truncate(total)
    return path


def safetensors_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


# ----------------------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def quantized(kit, tmp_path_factory):
    """The kit model saved in bf16, nf4 with double quantization, and int8; with num_parameters() of each."""
    import torch
    from transformers import BitsAndBytesConfig, Qwen2AudioForConditionalGeneration

    root = tmp_path_factory.mktemp("sizer_models")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(kit / "model", dtype=torch.bfloat16)
    model.save_pretrained(root / "bf16")
    out = {"bf16": (root / "bf16", model.num_parameters())}
    configs = {
        "nf4-dq": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=torch.bfloat16),
        "int8": BitsAndBytesConfig(load_in_8bit=True),
    }
    for name, q in configs.items():
        qm = Qwen2AudioForConditionalGeneration.from_pretrained(root / "bf16", quantization_config=q,
                                                                dtype=torch.bfloat16, device_map="cpu")
        qm.save_pretrained(root / name)  # before any forward: see the AMX repacking pitfall
        out[name] = (root / name, qm.num_parameters())
    return out


def test_kit_model_size_and_params(kit, kit_model):
    rep = sizer.measure(kit / "model")
    assert rep.bytes == safetensors_bytes(kit / "model")
    assert rep.params == kit_model.num_parameters()
    assert rep.files == ["model.safetensors"]
    assert sum(c["params"] for c in rep.components.values()) == rep.params
    assert sum(c["bytes"] for c in rep.components.values()) + rep.header_bytes == rep.bytes
    assert rep.components["llm_layers"]["params"] == sum(p.numel() for p in kit_model.model.language_model.layers.parameters())
    assert rep.components["audio_encoder"]["params"] == sum(p.numel() for p in kit_model.model.audio_tower.parameters())
    assert rep.components["lm_head"]["params"] == kit_model.lm_head.weight.numel()
    assert set(rep.dtypes) == {"F32"} and rep.dtypes["F32"]["elements"] == rep.params
    assert rep.overhead == 0 and rep.bin == "Bin5"
    assert "edition:2025" in rep.signature and "files:1" in rep.signature


@pytest.mark.parametrize("name", ["nf4-dq", "int8"])
def test_quantized_logical_params(quantized, name):
    from safetensors import safe_open

    path, num_parameters = quantized[name]
    rep = sizer.measure(path)
    assert rep.bytes == safetensors_bytes(path)
    assert rep.params == num_parameters == quantized["bf16"][1]
    # overhead is exactly the quant-state tensors (counted here independently by their names)
    state_suffixes = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format",
                      ".quant_state.bitsandbytes__nf4")
    with safe_open(path / "model.safetensors", "np") as f:
        state = [k for k in f.keys() if k.endswith(state_suffixes)]
    assert state
    header, hb = modeldir.read_header(path / "model.safetensors")
    assert rep.overhead == sum(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in state)
    n_linear = 4 * 7 + 2 * 6 + 1  # LLM q,k,v,o,gate,up,down; audio q,k,v,out,fc1,fc2; projector
    assert rep.quantized == {("bnb-nf4" if name == "nf4-dq" else "bnb-int8"): n_linear}
    # embeddings and lm_head stay bf16 under transformers' default
    assert rep.components["lm_head"]["bytes"] == 2 * rep.components["lm_head"]["params"]
    assert rep.bytes < sizer.measure(quantized["bf16"][0]).bytes


def test_sharded_and_unindexed(quantized, tmp_path):
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(quantized["bf16"][0], dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / modeldir.INDEX_NAME).exists()
    rep = sizer.measure(tmp_path / "sharded")
    assert rep.files == shards
    assert rep.bytes == safetensors_bytes(tmp_path / "sharded")
    assert rep.params == quantized["bf16"][1]
    # without the index every *.safetensors file is counted
    (tmp_path / "sharded" / modeldir.INDEX_NAME).unlink()
    assert sizer.measure(tmp_path / "sharded").params == rep.params
    # a shard the index lists but that is missing: error naming it
    (tmp_path / "sharded" / modeldir.INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(InputFileError, match="gone.safetensors"):
        sizer.measure(tmp_path / "sharded")


# ----------------------------------------------------------------------------- full size, sparse

def test_full_size_architecture_sparse(tmp_path):
    from iwslt_mc.planning.planner import Spec, predict, write_placeholder

    write_placeholder(tmp_path / "full", predict(Spec()))
    assert (tmp_path / "full" / "model.safetensors").stat().st_size > 16 * GB
    t0 = time.perf_counter()
    rep = sizer.measure(tmp_path / "full")
    elapsed = time.perf_counter() - t0
    assert rep.params == FULL_PARAMS
    assert {c: v["params"] for c, v in rep.components.items()} == FULL_COMPONENTS
    assert rep.bytes == (tmp_path / "full" / "model.safetensors").stat().st_size
    assert rep.bin is None and any("not eligible" in w for w in rep.warnings)
    assert elapsed < 1.0


# ----------------------------------------------------------------------------- bins at the edges

@pytest.mark.parametrize("total,expected", [
    (200 * MB, "Bin4"), (200 * MB - 1, "Bin5"),
    (500 * MB, "Bin3"), (500 * MB - 1, "Bin4"),
    (1 * GB, "Bin2"), (1 * GB - 1, "Bin3"),
    (2 * GB, "Bin1"), (2 * GB - 1, "Bin2"),
    (4 * GB, None), (4 * GB - 1, "Bin1"),
    (1000, "Bin5"),
])
def test_bin_edges_with_exact_file_sizes(tmp_path, total, expected):
    path = write_exact_size(tmp_path / "model.safetensors", total)
    assert path.stat().st_size == total
    rep = sizer.measure(tmp_path)
    assert rep.bytes == total and rep.bin == expected
    assert rep.params == total - 136


@pytest.mark.parametrize("total,decimal,binary", [
    (1_050_000_000, "Bin2", "Bin3"),  # >= 1 GB but < 1 GiB
    (205_000_000, "Bin4", "Bin5"),  # >= 200 MB but < 200 MiB
    (4_100_000_000, None, "Bin1"),  # no bin, but < 4 GiB
])
def test_binary_units_warning(tmp_path, total, decimal, binary):
    rep = sizer.measure(write_exact_size(tmp_path / "m.safetensors", total))
    assert (rep.bin, rep.bin_binary) == (decimal, binary)
    assert any("binary units" in w and str(binary) in w for w in rep.warnings)


def test_no_binary_warning_far_from_edges_and_no_bins_in_2026(tmp_path):
    write_exact_size(tmp_path / "m.safetensors", 1_500_000_000)
    rep = sizer.measure(tmp_path)
    assert rep.bin == "Bin2" and not any("binary" in w for w in rep.warnings)
    rep26 = sizer.measure(tmp_path, edition="2026")
    assert rep26.bin is None and rep26.edition == "2026" and rep26.bytes == rep.bytes
    assert not any("eligible" in w for w in rep26.warnings)


# ----------------------------------------------------------------------------- errors and CLI

def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    # a pickle that would create a file if anything unpickled it
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputFileError, match="convert to safetensors"):
        sizer.measure(tmp_path)
    assert main(["size", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pytorch_model.bin" in err[0] and "safetensors" in err[0]
    assert not marker.exists()
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(InputFileError, match="model.pt"):
        sizer.measure(tmp_path / "model.pt")


@pytest.mark.parametrize("content,problem", [
    (b"\x10\x00", "truncated"),
    (struct.pack("<Q", 10_000) + b"{}", "truncated or corrupt"),
    (struct.pack("<Q", 8) + b"{not json", "not valid JSON"),
    (struct.pack("<Q", 96) + json.dumps({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}).encode().ljust(96),
     "truncated safetensors file"),
    (struct.pack("<Q", 96) + json.dumps({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 40]}}).encode().ljust(96)
     + bytes(40), "expected 400"),
])
def test_corrupt_files_one_line_error_naming_the_file(tmp_path, capsys, content, problem):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=problem) as e:
        sizer.measure(tmp_path)
    assert str(path) in str(e.value)
    assert main(["size", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]


def test_missing_and_empty(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        sizer.measure(tmp_path / "nope")
    with pytest.raises(InputFileError, match="no weight files"):
        sizer.measure(tmp_path)
    with pytest.raises(UserError, match="unknown edition"):
        sizer.measure(tmp_path, edition="2030")


def test_cli_json_shape(kit, capsys):
    assert main(["size", str(kit / "model"), "--json", "--edition", "2025"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key, typ in [("bytes", int), ("params", int), ("bin", str), ("edition", str), ("components", dict),
                     ("files", list), ("signature", str)]:
        assert isinstance(out[key], typ), key
    assert out["edition"] == "2025" and out["files"] == ["model.safetensors"]
    assert out["bytes"] == safetensors_bytes(kit / "model")
    assert set(out["components"]) <= {"audio_encoder", "projector", "llm_layers", "embed_tokens", "lm_head", "other"}


def test_cli_table(kit, capsys):
    assert main(["size", str(kit / "model"), "--edition", "2025"]) == 0
    out = capsys.readouterr().out
    rep = sizer.measure(kit / "model")
    assert f"{rep.bytes:,}" in out and f"{rep.params:,}" in out and "Bin5" in out and rep.signature in out
    ts = rep.torch_save
    assert f"torch.save:    {ts.bytes:,} bytes ({ts.bytes / 1e9:.3f} GB, {ts.bytes / 2**30:.3f} GiB)" in out
    assert ts.signature in out and f"{ts.bytes_cpu:,} loaded on a CPU" in out


@pytest.mark.parametrize("edition,bins", [("2025", True), ("2026", False), ("2027", False), (None, False)])
def test_cli_editions(kit, capsys, edition, bins):
    """2025 shows the bin; 2026/2027 (the default) have none and name their primary measure: torch.save GiB in 2027."""
    argv = ["size", str(kit / "model")] + (["--edition", edition] if edition else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    rep = sizer.measure(kit / "model")
    assert ("bin:           Bin5" in out) == bins and ("Bin" in out) == bins
    assert f"edition:{edition or '2027'}" in out
    if edition in ("2027", None):
        assert f"primary size measure {rep.torch_save.bytes / 2**30:.3f} GiB (torch.save)" in out
    elif edition == "2026":
        assert f"primary size measure {rep.torch_save.bytes / 1e9:.3f} GB (torch.save)" in out
    assert main(argv + ["--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["torch_save"]["bytes"] == rep.torch_save.bytes and js["gib"] == round(rep.bytes / 2**30, 6)
    assert (js["bin"] is not None) == bins and js["ranking"] == ("bins" if bins else "pareto")


def test_sizer_imports_neither_torch_nor_numpy(kit):
    """Sizing, the torch.save measure and the architecture check included (modelio is imported lazily)."""
    code = ("import sys, iwslt_mc.sizing.sizer, iwslt_mc.commands.size; "
            "rep = iwslt_mc.sizing.sizer.measure(sys.argv[1]); assert rep.torch_save.bytes > rep.bytes; "
            "bad = [m for m in ('torch', 'numpy', 'transformers', 'safetensors') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code, str(kit / "model")], check=True, cwd=Path(__file__).resolve().parents[2])


def test_no_config_json_still_sizes(tmp_path):
    write_exact_size(tmp_path / "model.safetensors", 300 * MB)
    rep = sizer.measure(tmp_path / "model.safetensors")
    assert rep.bin == "Bin4" and rep.components == {**{c: {"params": 0, "bytes": 0} for c in
                                                        ("audio_encoder", "projector", "llm_layers", "embed_tokens", "lm_head")},
                                                     "other": {"params": 300 * MB - 136, "bytes": 300 * MB - 136}}
    assert any("config.json" in w for w in rep.warnings)


# ----------------------------------------------------------------------------- the organizers' torch.save measure

ARCHIVE = "tmpabcdefgh"  # 11 characters, as tempfile.NamedTemporaryFile's "tmpXXXXXXXX"


@pytest.fixture(scope="module")
def variants(kit, quantized, tmp_path_factory):
    """Model directories the organizers could be handed: the kit (fp32), bf16, NF4 without and with double
    quantization, int8, a vocabulary-trimmed kit (stage trim-vocab) and a stage-quantized trimmed kit."""
    import torch
    from transformers import BitsAndBytesConfig, Qwen2AudioForConditionalGeneration

    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    root = tmp_path_factory.mktemp("ts_variants")
    qm = Qwen2AudioForConditionalGeneration.from_pretrained(
        quantized["bf16"][0], dtype=torch.bfloat16, device_map="cpu",
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"))
    qm.save_pretrained(root / "nf4")
    quiet = dict(log=lambda *a: None)
    run_stage(make_stage("trim-vocab", {}), kit / "model", root / "trimmed",
              StageContext(lang="en-de", data=[str(kit / "data")], **quiet))
    run_stage(make_stage("quantize", {"method": "nf4", "double_quant": True, "skip": []}), root / "trimmed",
              root / "trimmed-nf4", StageContext(device="cpu", **quiet))
    return {"kit-fp32": kit / "model", "bf16": quantized["bf16"][0], "nf4": root / "nf4",
            "nf4-dq": quantized["nf4-dq"][0], "int8": quantized["int8"][0], "trimmed": root / "trimmed",
            "trimmed-nf4-dq-lm_head": root / "trimmed-nf4"}


def real_torch_save(model_dir: Path, out: Path, *, cuda_tags: bool = False) -> tuple[int, bytes]:
    """Load as the organizers do (transformers, dtype auto) and torch.save the state dict to ``out``/tmpabcdefgh.pt.

    ``cuda_tags``: write the storage locations a model on one GPU gets ("cuda:0", a new string per storage;
    bitsandbytes' packed quant_state and weight_format tensors are created on the CPU even there), by
    wrapping torch's location_tag: the pickle and zip are then those of a GPU save (this machine has none).
    """
    import zipfile

    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype="auto", device_map="cpu")
    sd = model.state_dict()
    path = out / f"{ARCHIVE}.pt"
    orig = torch.serialization.location_tag
    if cuda_tags:
        cpu_born = {v.untyped_storage().data_ptr() for k, v in sd.items()
                    if ".weight.quant_state." in k or k.endswith(".weight_format")}
        index = 0

        def tag(storage):
            return "cpu" if storage.data_ptr() in cpu_born else "cuda:" + str(index)
        torch.serialization.location_tag = tag
    try:
        torch.save(sd, path)
    finally:
        torch.serialization.location_tag = orig
    with zipfile.ZipFile(path) as z:
        pkl = z.read(f"{ARCHIVE}/data.pkl")
    return path.stat().st_size, pkl


@pytest.mark.parametrize("name", ["kit-fp32", "bf16", "nf4", "nf4-dq", "int8", "trimmed", "trimmed-nf4-dq-lm_head"])
def test_torch_save_measure_equals_a_real_torch_save(variants, name, tmp_path):
    from iwslt_mc.sizing import torchsave

    d = variants[name]
    rep = sizer.measure(d, edition="2027")
    ts = rep.torch_save
    assert ts is not None and ts.method == "metadata", rep.torch_save_note
    real_cpu, pkl_cpu = real_torch_save(d, tmp_path)
    assert ts.bytes_cpu == real_cpu
    real_gpu, pkl_gpu = real_torch_save(d, tmp_path, cuda_tags=True)
    assert ts.bytes == real_gpu and real_gpu > real_cpu
    # the pickle is the same byte for byte, not only its length
    header = modeldir.read_header(Path(d) / "model.safetensors")[0]
    tensors = [(k, v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"]
    entries, modules = torchsave.state_dict_layout(tensors, json.loads((Path(d) / "config.json").read_text()))
    assert torchsave.pickle_state_dict(entries, modules, "cpu") == pkl_cpu
    assert torchsave.pickle_state_dict(entries, modules, "cuda:0") == pkl_gpu
    assert "computed:metadata" in ts.signature and "location:cuda:0" in ts.signature
    # another archive name length gives another size: the organizers' 11-character temp name matters
    sizes = torchsave.storage_sizes(entries)
    assert torchsave.zip_bytes(len(pkl_cpu), sizes, "archive") != real_cpu == torchsave.zip_bytes(len(pkl_cpu), sizes)


def test_trimmed_and_quantized_variants_really_differ(variants):
    reps = {n: sizer.measure(d) for n, d in variants.items()}
    assert reps["trimmed"].components["embed_tokens"]["params"] < reps["kit-fp32"].components["embed_tokens"]["params"]
    assert reps["trimmed-nf4-dq-lm_head"].quantized == {"bnb-nf4": 42}  # lm_head quantized too
    assert len({r.torch_save.bytes for r in reps.values()}) == len(reps)


def test_zip64_layout_past_4_gib_and_long_integers(tmp_path):
    """Storages of 2**32 - 1 and more bytes, and offsets past 4 GiB: torch's own writer in its
    metadata-only mode (skip_data: the same records and headers, data left as holes) agrees."""
    import collections
    import zipfile

    import torch

    from iwslt_mc.sizing import torchsave

    sizes = [3 * 2**30, 2**32 + 5, 1000, 2**32 - 1, 7]
    sd = collections.OrderedDict((f"t{i}", torch.empty(n, dtype=torch.uint8)) for i, n in enumerate(sizes))
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    path = tmp_path / f"{ARCHIVE}.pt"
    with torch.serialization.skip_data():
        torch.save(sd, path)
    with zipfile.ZipFile(path) as z:
        pkl = z.read(f"{ARCHIVE}/data.pkl")
    entries = [torchsave.Entry(f"t{i}", "U8", (n,), i) for i, n in enumerate(sizes)]
    assert torchsave.pickle_state_dict(entries, [""], "cpu") == pkl
    assert torchsave.zip_bytes(len(pkl), sizes) == path.stat().st_size > 11 * 2**30


def test_not_exact_cases_say_why_and_stream_measures_them(kit, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "extra"
    shutil_copy_model(kit / "model", d)
    sd = load_file(d / "model.safetensors")
    import torch

    sd["audio_tower.not_a_module.weight"] = torch.zeros(3)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    rep = sizer.measure(d)
    assert rep.torch_save is None and "not_a_module" in rep.torch_save_note and "drop" in rep.torch_save_note
    # the edition that ranks by torch.save measures it for real (transformers drops the extra tensor)
    assert main(["size", str(d), "--json", "--edition", "2027"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["torch_save"]["method"] == "streamed" and "computed:streamed" in out["torch_save"]["signature"]
    assert out["torch_save"]["bytes"] == real_torch_save(kit / "model", tmp_path)[0]
    # a missing tensor would be initialized by transformers: not exact either
    del sd["audio_tower.not_a_module.weight"], sd["audio_tower.layer_norm.bias"]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    assert "lacks model.audio_tower.layer_norm.bias" in sizer.measure(d).torch_save_note


def shutil_copy_model(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


def test_full_size_torch_save_from_metadata_is_fast(tmp_path):
    from iwslt_mc.planning.planner import Spec, predict, write_placeholder

    for precision in ("bf16", "nf4-dq"):
        pred = predict(Spec(precision=precision))
        write_placeholder(tmp_path / precision, pred)
        cpu = []  # CPU time of this process: the cost of the computation, whatever else the machine runs
        for _ in range(3):
            t0 = time.process_time()
            rep = sizer.measure(tmp_path / precision)
            cpu.append(time.process_time() - t0)
        assert rep.torch_save is not None and min(cpu) < 1.0, (precision, cpu)
        # one storage per tensor; pickle + zip records cost a few hundred bytes a tensor more than safetensors
        assert rep.torch_save.storages == rep.tensors
        assert 100 * rep.tensors < rep.torch_save.bytes - rep.bytes < 400 * rep.tensors
        assert pred.torch_save is not None and pred.torch_save.bytes == rep.torch_save.bytes


# ----------------------------------------------------------------------------- another architecture

@pytest.fixture()
def bert_dir(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8}))
    write_exact_size(d / "model.safetensors", 300 * MB)
    return d


def test_size_refuses_another_architecture(bert_dir, capsys):
    with pytest.raises(InputFileError, match="not a Qwen2-Audio model"):
        sizer.measure(bert_dir)
    for argv in (["size", str(bert_dir)], ["size", str(bert_dir), "--edition", "2025", "--json"],
                 ["plan", "--base", str(bert_dir)], ["plan", "--base", str(bert_dir), "--target", "Bin3"]):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        first = captured.err.strip().splitlines()[0]
        assert "not a Qwen2-Audio model (model_type 'bert'" in first and str(bert_dir) in first


def test_a_config_without_model_type_is_sized_without_the_torch_save_measure(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    write_exact_size(tmp_path / "model.safetensors", 300 * MB)
    rep = sizer.measure(tmp_path)
    assert rep.bytes == 300 * MB and rep.bin == "Bin4"
    assert rep.torch_save is None and "model_type None" in rep.torch_save_note
