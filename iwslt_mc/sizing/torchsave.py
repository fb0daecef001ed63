"""The organizers' size measure: the bytes of ``torch.save(model.state_dict(), path)``.

The organizers' 2027 scripts load the model with transformers (``from_pretrained``, ``dtype="auto"``,
``device_map="auto"``: one GPU), call ``torch.save(model.state_dict(), f.name)`` on a
``tempfile.NamedTemporaryFile(suffix=".pt")`` and print the file's size in GiB. This module computes
that byte count **exactly from the safetensors headers and config.json, in pure Python** (no torch, no
weights read), by writing the same pickle and laying out the same zip container:

- The state dict as transformers holds it in memory: on-disk names renamed the way transformers
  renames them on load (``language_model.model.layers.N`` -> ``model.language_model.layers.N``,
  ``language_model.lm_head`` -> ``lm_head``, ``audio_tower``/``multi_modal_projector`` under
  ``model.``), in module registration order (a module's own tensors, then its children), float
  tensors in the config's dtype (``dtype="auto"``), bitsandbytes state in the order its modules save
  it (4-bit: ``weight``, ``bias``, ``weight.absmax``, ``weight.quant_map``, ``weight.nested_absmax``,
  ``weight.nested_quant_map``, ``weight.quant_state.bitsandbytes__nf4``; int8: ``weight``, ``bias``,
  ``SCB``, ``weight_format``), one storage per tensor, and the ``_metadata`` attribute
  (``{"version": 1}`` for every module, parameterless ones included).
- ``data.pkl``: that OrderedDict pickled with protocol 2 as ``torch.save`` does it (each tensor a
  ``torch._utils._rebuild_tensor_v2`` reduce with a persistent id ``("storage", <dtype>Storage, key,
  location, numel)``); built byte for byte here (:func:`pickle_state_dict`).
- The zip written by PyTorch's ``PyTorchStreamWriter`` (miniz, zip64 end records always): records
  ``data.pkl``, ``.format_version``, ``.storage_alignment``, ``byteorder``, ``data/0`` ... ``data/N-1``,
  ``version``, ``.data/serialization_id``, all named ``<archive>/<record>`` where ``<archive>`` is the
  file's base name without extension (``tmpXXXXXXXX``: 11 characters for a NamedTemporaryFile); each
  record's data starts on a 64-byte boundary (padding in an ``FB`` extra field), then a 16-byte data
  descriptor (24 with zip64 fields); a central directory entry per record (zip64 extra fields past
  4 GiB); zip64 end record + locator + end record (98 bytes) (:func:`zip_bytes`).

Where the tensors live changes the pickle: a CUDA storage's location is ``"cuda:0"``, a new string
each time (pickled in full), where ``"cpu"`` is one string (pickled once). The organizers' figure is
for a model on one GPU (``location="cuda:0"``); bitsandbytes creates its ``quant_state`` JSON and
``weight_format`` tensors on the CPU even then. ``location="cpu"`` gives the figure of a model loaded
on the CPU.

The pure parts (pickle, zip, layouts) are :mod:`iwslt_mc.floor.statedict`; each family lays out its own
state dict (:meth:`iwslt_mc.families.base.Family.torch_save_layout`). When the checkpoint is not one this
module can lay out exactly (an architecture other than
Qwen2-Audio in the transformers >= 5.10 layout, tensors transformers would drop or add, another
quantization method), :class:`NotExact` says why; :func:`measure_streamed` then measures a real
``torch.save`` (needs torch; one copy of the model in memory; the file is a pipe counted by a reader
process, nothing is written to disk).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..floor.statedict import (CONTAINER, ORGANIZERS_ARCHIVE, ORGANIZERS_LOCATION, Entry, NotExact, ct_in_memory,
                               ct_loads_packed, ct_quantization_config, pickle_state_dict, storage_sizes, zip_bytes)


def ct_dequantize_keeps_params() -> bool:
    """Whether the installed transformers, loading a compressed-tensors checkpoint with ``dequantize: true``, keeps
    each quantized module's ``weight_scale`` / ``weight_zero_point`` / ``weight_shape`` beside the float weight
    (5.17: it wraps the modules before loading and decompresses them after; 5.25 keeps the model dense). Asked of
    transformers: its quantizer prepares a tiny Qwen2-Audio built on the meta device, and the answer is whether
    that added the parameters; remembered per transformers and compressed-tensors version
    (:mod:`iwslt_mc.plancache`). False without torch, transformers or compressed-tensors (nothing loads such a
    checkpoint there)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import plancache

    try:
        key = ["compressed-tensors", version("compressed-tensors")]
    except PackageNotFoundError:
        key = ["compressed-tensors", None]
    got = plancache.get("ct-dequantize-keeps-params", key)
    if isinstance(got, bool):
        return got
    try:
        got = _probe_ct_dequantize()
    except ImportError:
        return False
    plancache.put("ct-dequantize-keeps-params", key, got)
    return got


def _probe_ct_dequantize() -> bool:
    import contextlib
    import io

    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
    from transformers.quantizers.auto import AutoHfQuantizer
    from transformers.utils.quantization_config import CompressedTensorsConfig

    import compressed_tensors  # noqa: F401  (ImportError: no such checkpoint loads here)

    cfg = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", encoder_layers=1, d_model=16, encoder_attention_heads=2,
                          encoder_ffn_dim=16, num_mel_bins=4, max_source_positions=4),
        text_config=dict(model_type="qwen2", num_hidden_layers=1, hidden_size=16, intermediate_size=16,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=16))
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
          "dequantize": True, "ignore": ["re:(?:.*\\.)?lm_head"],
          "config_groups": {"group_0": {"format": "pack-quantized", "targets": ["Linear"], "weights": {
              "num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 8, "dynamic": False}}}}
    quantizer = AutoHfQuantizer.from_config(CompressedTensorsConfig.from_dict(qc), pre_quantized=True)
    quantizer.validate_environment()
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(cfg)
    with contextlib.redirect_stderr(io.StringIO()):  # compressed-tensors' progress bar over the 14 modules
        quantizer.preprocess_model(model)
    return any(k.endswith(".weight_scale") for k in model.state_dict())

def state_dict_layout(tensors: list[tuple[str, str, tuple[int, ...]]], config: dict,
                      float_dtype: str | None = None, ct_shapes: dict | None = None) -> tuple[list[Entry], list[str]]:
    """The in-memory state dict (entries in order) and its ``_metadata`` module list, for a checkpoint given
    as ``(disk key, safetensors dtype, shape)`` and its config.json dict: its family's layout
    (:meth:`iwslt_mc.families.base.Family.torch_save_layout`).

    ``float_dtype`` (a safetensors dtype) overrides the dtype float parameters get (default: the
    config's ``dtype``, as ``dtype="auto"`` does). Raises :class:`NotExact` when the checkpoint holds
    tensors the layout does not place, or lacks tensors the model would create.
    compressed-tensors checkpoints as they load (:func:`ct_in_memory`; ``ct_shapes``: their weight shapes).
    """
    keeps = ct_quantization_config(config) is not None and not ct_loads_packed(config) and ct_dequantize_keeps_params()
    tensors = ct_in_memory(tensors, config, ct_shapes, keeps_params=keeps)
    from ..families import family_of_model_type

    fam = family_of_model_type(config.get("model_type"))
    if fam is None:
        raise NotExact(f"model_type {config.get('model_type')!r}: no exact layout known for it")
    return fam.torch_save_layout(tensors, config, float_dtype)



# ----------------------------------------------------------------------------- results

@dataclass
class TorchSaveSize:
    """The organizers' measure of one model."""

    bytes: int  # on one GPU (the organizers' setup)
    bytes_cpu: int  # the same model loaded on the CPU
    pickle_bytes: int
    storages: int
    method: str  # "metadata" or "streamed"
    signature: str

    def to_json(self) -> dict:
        return {"bytes": self.bytes, "gib": round(self.bytes / 2**30, 6), "gb": round(self.bytes / 1e9, 6),
                "bytes_cpu_load": self.bytes_cpu, "pickle_bytes": self.pickle_bytes, "storages": self.storages,
                "method": self.method, "signature": self.signature}


def signature(method: str, location: str, *, version: str, extra: str = "", layout: str | None = None) -> str:
    """The measure's signature; ``layout``: the family's layout name (default: the default family's)."""
    if layout is None:
        from ..families import default_family

        layout = default_family().torch_save_layout_name({})
    return (f"measure:torch-save-state-dict|computed:{method}|file:{ORGANIZERS_ARCHIVE}.pt|location:{location}"
            f"|layout:{layout}|container:{CONTAINER}{extra}|units:bytes,GiB|version:{version}")


def compute(tensors, config: dict, *, float_dtype: str | None = None, version: str = "",
            ct_shapes: dict | None = None) -> TorchSaveSize:
    """The exact torch.save bytes of a checkpoint's in-memory state dict, from metadata only (for a family
    other than Qwen2-Audio the layout comes from a meta-device model: torch and transformers, no weights).
    ``ct_shapes``: ``"X."`` -> (out, in) of each compressed-tensors weight (its ``weight_shape`` values)."""
    entries, modules = state_dict_layout(tensors, config, float_dtype, ct_shapes)
    sizes = storage_sizes(entries)
    gpu = pickle_state_dict(entries, modules, ORGANIZERS_LOCATION)
    cpu = pickle_state_dict(entries, modules, "cpu")
    from ..families import family_of_model_type

    layout = family_of_model_type(config.get("model_type")).torch_save_layout_name(config)
    return TorchSaveSize(bytes=zip_bytes(len(gpu), sizes), bytes_cpu=zip_bytes(len(cpu), sizes),
                         pickle_bytes=len(gpu), storages=len(sizes), method="metadata",
                         signature=signature("metadata", ORGANIZERS_LOCATION, version=version, layout=layout))


# ----------------------------------------------------------------------------- a real torch.save

def measure_streamed(model_dir, *, device: str | None = None, version: str = "") -> TorchSaveSize:
    """Load the model as the organizers do and count the bytes of a real ``torch.save`` of its state dict.

    Needs torch and transformers; holds one copy of the model (on ``device``: "cuda" when a GPU is
    there, else "cpu"). The file is a named pipe called ``tmpXXXXXXXX.pt`` (the organizers' archive
    name length) counted by a reader process (:func:`torch_save_bytes`): nothing is written to disk.
    """
    import torch

    from ..families import family_for

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loader = family_for(model_dir).loader_class()  # Gemma 4: AutoModelForMultimodalLM, as the organizers load it
    model = loader.from_pretrained(str(model_dir), dtype="auto", device_map=device)
    model.eval()
    n = torch_save_bytes(model.state_dict())
    location = "cpu" if str(device).startswith("cpu") else f"cuda:{torch.device(device).index or 0}"
    sig = signature("streamed", location, version=version,
                    extra=f"|torch:{torch.__version__}|loaded:from_pretrained(dtype=auto,device_map={device})")
    return TorchSaveSize(bytes=n, bytes_cpu=n if location == "cpu" else -1, pickle_bytes=-1, storages=-1,
                         method="streamed", signature=sig)


# The reader: a separate process, so torch.save (which may hold the GIL while it blocks on a full pipe)
# never waits for a thread of its own process (the deadlock of a reader thread).
_COUNTER = ("import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nn = 0\n"
            "while True:\n    b = os.read(fd, 1 << 20)\n    if not b:\n        break\n    n += len(b)\nprint(n)\n")


def torch_save_bytes(obj, *, timeout: float = 60.0) -> int:
    """The size of the file ``torch.save(obj, ".../tmpXXXXXXXX.pt")`` writes, counted without writing it.

    The path is a named pipe read by a child process that only counts. Before torch.save opens it, this
    process holds a write end of its own (opened once the reader is there, so neither side can block on
    an absent peer); it is closed after torch.save, which gives the reader its end of file. A reader that
    dies makes torch.save fail (broken pipe) instead of blocking; one that never opens the pipe within
    ``timeout`` seconds is an error. (``torch.save`` to a file object would need no pipe, but names its
    archive "archive" instead of the file's base name, which changes the byte count.)
    """
    import errno
    import os
    import subprocess
    import sys
    import tempfile
    import time

    import torch

    with tempfile.TemporaryDirectory(prefix="iwslt-mc-torchsave.") as tmp:
        path = os.path.join(tmp, ORGANIZERS_ARCHIVE + ".pt")
        os.mkfifo(path)
        reader = subprocess.Popen([sys.executable, "-I", "-S", "-c", _COUNTER, path], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        guard = None
        try:
            deadline = time.monotonic() + timeout
            while guard is None:
                try:
                    guard = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until the reader has it open
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    if reader.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"torch.save byte counter did not start: {reader.stderr.read().strip()}") from None
                    time.sleep(0.002)
            torch.save(obj, path)
            os.close(guard)
            guard = None
            out, err = reader.communicate(timeout=timeout)
            if reader.returncode != 0:
                raise RuntimeError(f"torch.save byte counter failed: {err.strip()}")
            return int(out)
        finally:
            if guard is not None:
                os.close(guard)
            if reader.poll() is None:
                reader.kill()
                reader.wait()
            for f in (reader.stdout, reader.stderr):
                f.close()
