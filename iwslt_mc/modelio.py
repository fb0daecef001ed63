"""Loading and saving Qwen2-Audio model directories (safetensors only, never pickle)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import InputFileError, UserError
from .floor.modeldir import PICKLE_SUFFIXES, read_config_or_none, read_model_type
from .output import hf_progress_bars_off, silence_library_noise


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """A local model directory with config.json and safetensors weights, or a clear one-line error."""
    p = Path(model_dir)
    if not p.exists():
        raise InputFileError(p, "model directory not found")
    if not p.is_dir():
        raise InputFileError(p, "not a directory (expected a model directory with config.json and *.safetensors)")
    if not (p / "config.json").exists():
        raise InputFileError(p, "no config.json: not a model directory")
    if not any(p.glob("*.safetensors")):
        pickles = [f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise InputFileError(p, f"weights are pickle files ({', '.join(sorted(pickles)[:3])}); convert them to safetensors "
                                    "(e.g. load and save_pretrained(..., safe_serialization=True)); pickles are never loaded")
        raise InputFileError(p, "no *.safetensors weight files")
    require_supported_model(p)
    return p


def require_supported_model(model_dir: str | os.PathLike) -> str:
    """The directory's ``model_type`` if a model family supports it (:mod:`iwslt_mc.families`), else a
    one-line error naming the supported families, before any weight is read."""
    from .families import family_of_model_type, supported_text

    mt = read_model_type(model_dir)
    if family_of_model_type(mt) is None:
        raise InputFileError(Path(model_dir), f"not a Qwen2-Audio model (model_type {mt!r} in config.json; "
                                              f"supported families: {supported_text()})")
    return mt


def is_local(spec: str | os.PathLike) -> bool:
    s = str(spec)
    return os.path.exists(s) or s.startswith((".", "/", "~")) or s.count("/") != 1


def load_model(model_dir: str | os.PathLike, dtype=None, device: str | None = None, **kwargs):
    """Load a model from a local directory (its family's loader class) or a hub id when online (the default
    family's: ``Qwen2AudioForConditionalGeneration``).

    ``dtype`` None keeps the checkpoint's dtype ("auto"). ``device`` e.g. "cpu", "cuda", "auto".
    """
    import torch

    from .families import default_family, family_for

    if is_local(model_dir):
        model_dir = check_model_dir(model_dir)
        loader = family_for(model_dir).loader_class()
    else:
        loader = default_family().loader_class()
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype))
    kw = dict(dtype=dtype if dtype is not None else "auto", use_safetensors=True)
    if device:
        kw["device_map"] = device
    kw.update(kwargs)
    silence_library_noise()
    # a local load draws transformers' "Loading weights" bar inside our own displays; a hub id keeps
    # its download bars
    quiet = hf_progress_bars_off() if is_local(model_dir) else contextlib.nullcontext()
    try:
        with quiet:
            model = loader.from_pretrained(str(model_dir), **kw)
    except OSError as e:
        raise UserError(f"{model_dir}: cannot load model ({str(e).splitlines()[0]})") from None
    if dtype is not None and dtype != "auto" and getattr(model, "is_quantized", False):
        _uniform_float_dtype(model, dtype)
    fit_4bit_cpu_path(model)
    model.eval()
    return model


def meta_model(model_dir: str | os.PathLike):
    """The model of a local directory built from its config alone on the meta device (no weight read):
    its family's class, for module names and weight shapes."""
    import torch
    from transformers import AutoConfig

    from .families import family_for

    fam = family_for(model_dir)
    cfg = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        return fam.model_from_config(cfg)


# bitsandbytes 0.50's CPU repack (``_convert_weight_packed_for_cpu``, block_n 32) and its absmax
# layout ([K / blocksize, N]) need both of these; other layers must take the dequantize-and-matmul path.
CPU_REPACK_BLOCK_N = 32


def fit_4bit_cpu_path(model) -> int:
    """Let bitsandbytes repack a 4-bit layer for its CPU kernel only where the layer's shape allows it.

    bitsandbytes 0.50 ``Linear4bit.forward``, on a CPU, in eval mode without grad, repacks the weight
    in place for its AVX512-BF16 kernel when the layer's ``support_avx512bf16_for_cpu`` is true (set
    from the CPU's instruction set when the layer is built). The repack asserts an output width that
    is a multiple of 32 ("N must be divisible by block_n") and fails on an input width that is not a
    multiple of the quantization block (64); the kit (FFN width 176) and FFN-pruned models have such
    layers. Those layers are switched to the generic path (dequantize, then matmul), which takes any
    shape; every other layer keeps the repack.

    Why keep the repack at all: measured on this project's 2-core AVX512-BF16 machine (bitsandbytes
    0.50.2, without the optional kernels-community kernel, 1 thread, NF4 + double quantization), one
    token through a 4096x4096 layer takes 0.5 ms repacked vs 20-40 ms dequantized (11008x4096: 1.6-2
    vs 57-207 ms; 40-130x), 64 tokens 1.5-5x faster; 256 tokens about equal in bf16 (0.85-1.1x),
    2-3.5x faster in fp32. The repacked kernel computes in bf16 whatever ``bnb_4bit_compute_dtype``
    says (outputs differ by ~0.5% of the largest logit from the dequantized path).

    Returns the number of layers switched to the generic path. Never turns the repack on: a CPU
    without AVX512-BF16 must not take it (the kernel uses the instruction). Any CPU model with 4-bit
    layers also gets :func:`iwslt_mc.quantization.bnb_cpu.fix_cpu_dequantize` (bitsandbytes' native dequantization
    is wrong for widths that are not a multiple of the block size, on every CPU).
    """
    from .quantization.bnb_cpu import fix_cpu_dequantize

    n = 0
    for mod in model.modules():
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        if qs is not None and mod.weight.device.type == "cpu":
            fix_cpu_dequantize()  # installs once; a no-op afterwards
        if not getattr(mod, "support_avx512bf16_for_cpu", False):
            continue
        if qs is not None and getattr(qs, "packing_format_for_cpu", False):
            continue  # already repacked: its shape allowed it
        out_f, in_f = (tuple(qs.shape) if qs is not None else (mod.out_features, mod.in_features))
        block = qs.blocksize if qs is not None else 64
        if out_f % CPU_REPACK_BLOCK_N or in_f % block:
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n


def runtime_dtype(model_dir: str | os.PathLike, device: str | None):
    """The dtype to run a model in when the user asked for none: as stored, except float32 on a CPU
    for float16/bfloat16 weights (half-precision matmuls there are several times slower: 5x for
    the toy teacher). Quantized checkpoints run as stored. Only for jobs that never save the model."""
    import torch

    if device is not None and not str(device).startswith("cpu"):
        return None
    cfg = read_config_or_none(model_dir)
    if cfg is None:
        return None
    q = cfg.get("quantization_config")
    if q and not (q.get("quant_method") == "compressed-tensors" and q.get("dequantize")):
        return None  # compressed-tensors with dequantize unpacks to floats at load: run those as floats
    return torch.float32 if config_dtype(cfg) in (torch.float16, torch.bfloat16) else None


def config_dtype(cfg: dict):
    """The dtype of the unquantized weights a model config names (``dtype``/``torch_dtype``), or None."""
    import torch

    name = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype")
    return getattr(torch, name, None) if isinstance(name, str) else None


def _uniform_float_dtype(model, dtype) -> None:
    """Cast the unquantized floating weights of a loaded 4/8-bit checkpoint to ``dtype``.

    transformers (5.23) honours ``dtype`` only for some of them when the checkpoint is
    pre-quantized (biases and projector follow it; norms, convolutions, embeddings and lm_head keep
    the saved dtype), which leaves a model that fails on mixed dtypes. Quantized tensors (integer
    storage) are left alone.
    """
    for mod in model.modules():
        for p in list(mod.parameters(recurse=False)):
            if p.is_floating_point() and p.dtype != dtype and type(p).__name__ not in ("Params4bit", "Int8Params"):
                p.data = p.data.to(dtype)
        for name, b in list(mod.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point() and b.dtype != dtype and name not in ("SCB",):
                mod._buffers[name] = b.to(dtype)


def load_processor(model_dir: str | os.PathLike):
    from transformers import AutoProcessor

    try:
        if is_local(model_dir) and (Path(model_dir) / "config.json").is_file():
            from .families import family_for

            return family_for(model_dir).load_processor(model_dir)
        return AutoProcessor.from_pretrained(str(model_dir))
    except OSError as e:
        raise UserError(f"{model_dir}: cannot load processor ({str(e).splitlines()[0]})") from None


def save_model(model, processor, out_dir: str | os.PathLike, *, max_shard_size: str = "5GB", dtype=None) -> Path:
    """Save weights (safetensors), config, generation config and processor into ``out_dir``.

    ``dtype`` casts the (unquantized) model to it first, e.g. back to the dtype it was stored in."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    drop_irreversible_conversions(model)
    with hf_progress_bars_off():  # "Writing model shards" would draw inside our own displays
        model.save_pretrained(str(out), safe_serialization=True, max_shard_size=max_shard_size)
        if processor is not None:
            from .families import family_of_processor

            fam = family_of_processor(processor)
            fam.save_processor(processor, out) if fam is not None else processor.save_pretrained(str(out))
    return out


def recast_saved(model_dir: str | os.PathLike, dtype, processor=None) -> None:
    """Rewrite a saved (unquantized) model directory with its weights in ``dtype``, in place.

    For writers that cannot cast on the way out (FSDP's gathered ``save_model`` writes the training
    dtype). The new files are written to a sibling directory first, then replace the old ones.
    """
    import shutil

    src = Path(model_dir)
    tmp = src.with_name(src.name + ".recast")
    shutil.rmtree(tmp, ignore_errors=True)
    model = load_model(src, dtype=dtype, device="cpu")
    save_model(model, processor, tmp)
    del model
    for f in src.iterdir():  # the old shards (their number may change) and index
        if f.name.startswith("model") and (f.suffix == ".safetensors" or f.name.endswith(".safetensors.index.json")):
            f.unlink()
    for f in tmp.iterdir():
        os.replace(f, src / f.name)
    tmp.rmdir()


def drop_irreversible_conversions(model) -> None:
    """Let ``save_pretrained`` save a model that was loaded from a 4-bit checkpoint.

    transformers 5.23 records the load-time conversions on the model and reverses them when saving;
    the bitsandbytes 4-bit deserializer has no reverse and saving raises NotImplementedError. The
    quantizer writes the 4-bit weights and their quant_state itself, so only the key renamings need
    reversing.
    """
    convs = getattr(model, "_weight_conversions", None)
    if not convs:
        return
    keep = []
    for c in convs:
        try:
            c.reverse_transform()
        except NotImplementedError:
            continue
        keep.append(c)
    model._weight_conversions = keep


def copy_processor_files(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy processor/tokenizer files unchanged (for stages that do not touch the tokenizer)."""
    import shutil

    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
             "vocab.json", "merges.txt", "preprocessor_config.json", "processor_config.json",
             "chat_template.json", "chat_template.jinja")
    for n in names:
        f = Path(src) / n
        if f.exists():
            shutil.copy2(f, Path(dst) / n)
