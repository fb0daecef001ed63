#!/usr/bin/env python
"""Decoding speed: the published ``generate()`` baseline, reference mode and fast mode, in one run.

    python tools/bench_decode.py                                   # kit model, CPU, fp32
    python tools/bench_decode.py --arch full --device cuda         # full-size Qwen2-Audio, random bf16 weights
    python tools/bench_decode.py --arch full --reduced --device cpu --segments 4   # the GPU path, shrunk, on CPU

Models. ``kit``: the demo kit's tiny model (built into a temporary folder unless ``--kit DIR``).
``full``: the Qwen2-Audio-7B-Instruct architecture from its published config values, built on the meta
device and materialized on ``--device`` with random weights (no files needed); the kit's processor
supplies the prompt and audio tokens. ``--reduced`` keeps the full vocabulary (156,032) but shrinks
widths and depths so the same code path runs on a CPU.

Audio: ``--segments`` clips of ``--min-s`` to ``--max-s`` seconds made by concatenating the kit's
recorded utterances (or, without soundfile, amplitude-modulated noise). Every run generates at most
``--max-new-tokens`` tokens per clip (random weights rarely stop on their own), all three runs alike.

Runs, timed end to end (features, prefill, decoding, detokenization):
- ``baseline``: per clip ``processor(...)`` + ``model.generate(**inputs)`` (batch 1, default dynamic
  cache), as the published code does, on ``--baseline-segments`` clips spread over the set;
- ``reference``: :func:`iwslt_mc.decoding.core.translate` ``mode="reference"`` on the same clips;
- ``fast``: ``mode="fast"`` with ``--batch-size`` on all clips (after a warm-up batch that compiles).
segments/s compares runs on different numbers of clips: the subset is every k-th clip of the set.

Agreement of the outputs (same clips): ``agreement_*`` is the share of whole sequences that are identical;
``agreement_detail`` adds the first-token agreement, the mean common-prefix fraction and the share of equal
positions. With random bf16 weights the logits are flat, so near-ties flip under different kernels (batch 16
vs 1, static vs dynamic cache) and one flip changes the rest of a greedy sequence: on an H200 the bf16 run had
0.0 identical sequences. ``--agreement-only --dtype fp32`` (reference vs fast only, TF32 off) is the check
that fast mode computes the same thing.

Batch-1 decode rate (tokens/s of the decoding steps alone, prefill removed by differencing two
generation lengths) for the baseline and for fast mode at batch 1, and the fraction of the
memory-bandwidth limit it reaches: limit = measured copy bandwidth (device-to-device, read + write
counted) / bytes of weights read per token (decoder layers + final norm + lm_head).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SR = 16000
LANG = "en-de"

# Qwen2-Audio-7B-Instruct config.json values (see /work/shared/reference/qwen2-audio.md).
FULL_AUDIO = dict(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                  d_model=1280, max_source_positions=1500, activation_function="gelu")
FULL_TEXT = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=156032, rope_theta=10000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=8192, tie_word_embeddings=False)
REDUCED_AUDIO = dict(FULL_AUDIO, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512, d_model=128)
REDUCED_TEXT = dict(FULL_TEXT, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=688)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- models

def full_model(processor, device: str, dtype, *, reduced: bool, seed: int = 0):
    """The full-size (or reduced) architecture, built on meta and materialized with random weights."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    tok = processor.tokenizer
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    audio = REDUCED_AUDIO if reduced else FULL_AUDIO
    text = dict(REDUCED_TEXT if reduced else FULL_TEXT)
    rope = text.pop("rope_theta")
    text.update(model_type="qwen2", bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
                rope_parameters={"rope_type": "default", "rope_theta": rope})
    config = Qwen2AudioConfig(audio_config=dict(audio, model_type="qwen2_audio_encoder"), text_config=text,
                              audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"))
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    model = model.to(dtype=dtype)
    materialize_random(model, device, seed=seed)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad,
                                               do_sample=False)
    return model.eval()


def materialize_random(model, device: str, *, seed: int = 0, std: float = 0.02) -> None:
    """Allocate a meta-device model on ``device`` and fill it: N(0, std) weights, unit norms, zero biases,
    sinusoid-free but finite positions, and the rotary frequencies recomputed (buffers made on meta are empty)."""
    import torch

    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)
        for mod in model.modules():
            if hasattr(mod, "inv_freq") and hasattr(mod, "rope_init_fn"):
                inv, mod.attention_scaling = mod.rope_init_fn(mod.config, device=device)
                mod.inv_freq = inv.to(device)
                mod.original_inv_freq = inv.clone().to(device)
            elif hasattr(mod, "inv_freq") and hasattr(mod, "compute_default_rope_parameters"):
                inv, mod.attention_scaling = mod.compute_default_rope_parameters(mod.config)
                mod.inv_freq = inv.to(device)
                mod.original_inv_freq = inv.clone().to(device)
            elif hasattr(mod, "rope_init_fns"):  # Gemma 4: one set of frequencies per attention type
                for layer_type, fn in mod.rope_init_fns.items():  # as transformers' Gemma4 _init_weights does
                    inv, _ = fn(mod.config.per_layer_config[layer_type], layer_type=layer_type)
                    getattr(mod, f"{layer_type}_inv_freq").copy_(inv.to(device))
                    getattr(mod, f"{layer_type}_original_inv_freq").copy_(inv.to(device))
            if hasattr(mod, "scalar_embed_scale") and hasattr(mod, "embed_scale"):  # Gemma's scaled embeddings
                mod.embed_scale.fill_(mod.scalar_embed_scale)
        for name, b in model.named_buffers():
            if not torch.isfinite(b.float()).all():
                raise RuntimeError(f"buffer {name} left uninitialized after materializing")


def load_kit(kit_dir: str | None, device: str, dtype):
    from iwslt_mc.families.qwen2_audio.kit import build_kit
    from iwslt_mc.modelio import load_model, load_processor

    if kit_dir is None:
        kit_dir = Path(tempfile.mkdtemp(prefix="bench-kit-")) / "kit"
        build_kit(kit_dir, seed=0)
    model = load_model(Path(kit_dir) / "model", dtype=dtype, device=device)
    return model, load_processor(Path(kit_dir) / "model")


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a batch-1 decoding step reads: every decoder layer, the final norm and lm_head."""
    from iwslt_mc.families.qwen2_audio.layout import find_layout

    lay = find_layout(model)
    mods = list(lay.decoder_layers) + [lay.lm_head]
    norm = getattr(lay, "norm", None)
    if norm is not None:
        mods.append(norm)
    return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())


# ---------------------------------------------------------------------------------------------- audio

def kit_utterances() -> list[np.ndarray]:
    from iwslt_mc.decoding.audio import load_audio

    root = Path(__file__).resolve().parents[1] / "iwslt_mc" / "kitdata" / "audio"
    return [load_audio(p) for p in sorted(root.glob("*.flac"))]


def synth_clips(n: int, lo: float, hi: float, seed: int = 0) -> list[np.ndarray]:
    """``n`` clips of uniform random length in [lo, hi] s: kit utterances joined by short pauses."""
    rng = np.random.default_rng(seed)
    try:
        pool = kit_utterances()
    except Exception:  # no soundfile on this machine: speech-like modulated noise
        pool = [(rng.standard_normal(int(s * SR)) * 0.1 * (1 + np.sin(np.arange(int(s * SR)) / 700))).astype(np.float32)
                for s in rng.uniform(2, 5, 16)]
    clips = []
    for _ in range(n):
        target = int(rng.uniform(lo, hi) * SR)
        parts, total = [], 0
        while total < target:
            u = pool[int(rng.integers(len(pool)))]
            parts += [u, np.zeros(int(rng.uniform(0.2, 0.6) * SR), np.float32)]
            total += len(u) + len(parts[-1])
        clips.append(np.concatenate(parts)[:target].astype(np.float32))
    return clips


# ---------------------------------------------------------------------------------------------- timing

def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy, read and write both counted."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    iters = 10
    t0 = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    sync(device)
    dt = time.perf_counter() - t0
    del src, dst
    return 2 * nbytes * iters / dt


def run_baseline(model, processor, waves, max_new_tokens: int) -> dict:
    """The published loop: processor + generate() per clip, batch 1, default cache, greedy."""
    import torch

    from iwslt_mc.families import prompt_text

    text = prompt_text(processor, LANG)
    tokens, out_tokens = 0, []
    sync(model.device)
    t0 = time.perf_counter()
    for w in waves:
        inputs = processor(text=text, audio=w, sampling_rate=SR, return_tensors="pt").to(model.device)
        inputs["input_features"] = inputs["input_features"].to(model.dtype)
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        ids = ids[:, inputs["input_ids"].size(1):]
        processor.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        out_tokens.append(ids[0].tolist())
        tokens += ids.shape[1]
    sync(model.device)
    return _rates(time.perf_counter() - t0, len(waves), tokens, waves) | {"_tokens": out_tokens}


def run_mode(model, processor, waves, mode: str, batch_size: int, max_new_tokens: int) -> dict:
    from iwslt_mc.decoding.core import translate

    sync(model.device)
    t0 = time.perf_counter()
    hyps = translate(model, processor, waves, LANG, mode=mode, batch_size=batch_size, max_new_tokens=max_new_tokens)
    sync(model.device)
    return _rates(time.perf_counter() - t0, len(waves), sum(h.n_tokens for h in hyps), waves) | {
        "_tokens": [h.tokens for h in hyps]}


def _rates(seconds: float, segments: int, tokens: int, waves) -> dict:
    audio = sum(min(len(w), 30 * SR) for w in waves) / SR
    return {"segments": segments, "tokens": tokens, "seconds": round(seconds, 3),
            "segments_per_s": round(segments / seconds, 3), "tokens_per_s": round(tokens / seconds, 2),
            "rtf": round(seconds / audio, 4)}


def decode_rate(model, processor, wave, how: str, n1: int, n2: int) -> float:
    """Tokens/s of batch-1 decoding steps alone: (n2 - n1) / (t(n2) - t(n1)), each time the best of 3."""
    import torch

    from iwslt_mc.decoding.core import fast_batch
    from iwslt_mc.families import prompt_text

    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # every generation runs its full length
    try:
        if how == "baseline":
            inputs = processor(text=prompt_text(processor, LANG), audio=wave, sampling_rate=SR,
                               return_tensors="pt").to(model.device)
            inputs["input_features"] = inputs["input_features"].to(model.dtype)

            def gen(n):
                with torch.inference_mode():
                    model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        else:
            def gen(n):
                fast_batch(model, processor, [wave], LANG, max_new_tokens=n)

        def timed(n):
            sync(model.device)
            t0 = time.perf_counter()
            gen(n)
            sync(model.device)
            return time.perf_counter() - t0

        gen(n2)  # warm-up (compiles the static-cache step on CUDA)
        t1 = min(timed(n1) for _ in range(3))
        t2 = min(timed(n2) for _ in range(3))
        return (n2 - n1) / (t2 - t1) if t2 > t1 else float("nan")
    finally:
        model.generation_config.eos_token_id = eos


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of whole sequences that are identical (one flipped token anywhere makes a sequence differ)."""
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def common_prefix(x: list[int], y: list[int]) -> int:
    n = 0
    for u, v in zip(x, y):
        if u != v:
            break
        n += 1
    return n


def agreement_detail(a: list[list[int]], b: list[list[int]]) -> dict:
    """Per-token agreement of two runs' outputs on the same clips (greedy decoding: after the first differing
    token the rest of a sequence follows a different history, so the common prefix is the meaningful measure):

    - ``sequences``: share of clips whose whole outputs are identical (:func:`agreement`);
    - ``first_token``: share of clips whose first generated token is the same (prefill and the first step);
    - ``prefix``: mean over clips of common prefix length / the longer output's length (1.0: all identical);
    - ``positions``: share of positions (over the longer output of each clip) holding the same token.
    Empty outputs on both sides count as identical."""
    pairs = list(zip(a, b))
    if not pairs:
        return {"clips": 0, "sequences": 0.0, "first_token": 0.0, "prefix": 0.0, "positions": 0.0}
    longest = [max(len(x), len(y)) for x, y in pairs]
    prefix = [common_prefix(x, y) / m if m else 1.0 for (x, y), m in zip(pairs, longest)]
    same = sum(sum(u == v for u, v in zip(x, y)) for x, y in pairs)
    return {"clips": len(pairs), "sequences": round(agreement(a, b), 4),
            "first_token": round(sum(x[:1] == y[:1] for x, y in pairs) / len(pairs), 4),
            "prefix": round(sum(prefix) / len(pairs), 4),
            "positions": round(same / max(1, sum(longest)), 4) if sum(longest) else 1.0}


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["kit", "full"], default="kit")
    ap.add_argument("--reduced", action="store_true", help="with --arch full: small widths/depths, full vocabulary")
    ap.add_argument("--kit", default=None, help="an existing kit folder (default: build one in a temp folder)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp32 for kit, bf16 for full")
    ap.add_argument("--segments", type=int, default=None, help="clips in the set (default: 64 on cuda, 16 on cpu)")
    ap.add_argument("--baseline-segments", type=int, default=None,
                    help="clips for the baseline and reference runs (default: 16 for full, all for kit)")
    ap.add_argument("--min-s", type=float, default=5.0)
    ap.add_argument("--max-s", type=float, default=20.0)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 on cuda, 24 on cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="fast-mode batch size (default: 16 on cuda, 8 on cpu)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repetitions, best kept (default: 1 on cuda, 3 on cpu)")
    ap.add_argument("--no-decode-rate", action="store_true", help="skip the batch-1 decode-rate measurement")
    ap.add_argument("--agreement-only", action="store_true",
                    help="only reference (batch 1) and fast (--batch-size) on every clip and their per-token agreement: "
                         "no baseline, no decode rate (tools/gpu_check.py runs it in fp32 to tell a fast-path bug "
                         "from bf16 near-tie flips)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (on a shared machine 1 avoids threads thrashing each other)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    dtype_name = args.dtype or ("fp32" if args.arch == "kit" else "bf16")
    dtype = getattr(torch, DTYPES[dtype_name])
    n = args.segments or (64 if cuda else 16)
    new = args.max_new_tokens or (64 if cuda else 24)
    bs = args.batch_size or (16 if cuda else 8)
    repeats = args.repeats or (1 if cuda else 3)
    if dtype_name == "fp32":  # "same outputs" in float32 means float32 matmuls: no TF32 (matmul, cudnn convs)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")

    t0 = time.perf_counter()
    if args.arch == "kit":
        model, processor = load_kit(args.kit, device, dtype_name)
    else:
        from iwslt_mc.families.qwen2_audio.kit import build_processor

        processor = build_processor()
        model = full_model(processor, device, dtype, reduced=args.reduced)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    clips = synth_clips(n, args.min_s, args.max_s)
    k = args.baseline_segments or (min(16, n) if args.arch == "full" else n)
    sub_idx = [round(i * n / k) for i in range(k)]
    subset = [clips[i] for i in sub_idx]

    print(f"# {args.arch}{' reduced' if args.reduced else ''} on {device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), "
          f"{dtype_name}, {params:,} parameters, built in {build_s:.1f} s", flush=True)
    print(f"# {n} clips {args.min_s:g}-{args.max_s:g} s ({sum(map(len, clips)) / SR:.0f} s of audio), "
          f"max_new_tokens {new}, fast batch size {bs}, baseline/reference on {k} clips", flush=True)

    if args.agreement_only:
        return _agreement_only(args, model, processor, clips, device, dtype_name, params, new, bs)

    # warm-ups, so no run pays one-time costs (allocator, kernels, compilation) inside its timing
    run_baseline(model, processor, clips[:1], 4)
    run_mode(model, processor, clips[:1], "reference", 1, 4)
    t = time.perf_counter()
    run_mode(model, processor, clips[:bs], "fast", bs, new)
    warm_fast = time.perf_counter() - t

    res = {}
    runs = {"baseline": lambda: run_baseline(model, processor, subset, new),
            "reference": lambda: run_mode(model, processor, subset, "reference", 1, new),
            "fast": lambda: run_mode(model, processor, clips, "fast", bs, new)}
    for rep in range(repeats):  # interleaved, best of --repeats: a shared machine's noise hits all runs alike
        for name, fn in runs.items():
            r = fn()
            if name not in res or r["seconds"] < res[name]["seconds"]:
                res[name] = r
            print(f"{name:9s} {rep + 1}/{repeats}", {k2: v for k2, v in r.items() if not k2.startswith("_")}, flush=True)

    fast_sub = [res["fast"]["_tokens"][i] for i in sub_idx]
    out = {
        "arch": args.arch + ("-reduced" if args.reduced else ""), "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu", "dtype": dtype_name, "params": params,
        "clips": n, "baseline_clips": k, "audio_seconds": round(sum(map(len, clips)) / SR, 1),
        "max_new_tokens": new, "batch_size": bs, "repeats": repeats, "fast_warmup_seconds": round(warm_fast, 1),
        "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
        "runs": {name: {k2: v for k2, v in r.items() if not k2.startswith("_")} for name, r in res.items()},
        "speedup_segments_per_s_fast_vs_baseline": round(res["fast"]["segments_per_s"] / res["baseline"]["segments_per_s"], 2),
        "agreement_fast_vs_reference": round(agreement(fast_sub, res["reference"]["_tokens"]), 4),
        "agreement_reference_vs_baseline": round(agreement(res["reference"]["_tokens"], res["baseline"]["_tokens"]), 4),
        "agreement_detail": {"fast_vs_reference": agreement_detail(fast_sub, res["reference"]["_tokens"]),
                             "reference_vs_baseline": agreement_detail(res["reference"]["_tokens"],
                                                                       res["baseline"]["_tokens"])},
    }
    import transformers

    out["transformers"] = transformers.__version__
    if not args.no_decode_rate:
        per_token = weight_bytes_per_token(model)
        bw = copy_bandwidth(device, (1 << 30) if cuda else (1 << 28))
        limit = bw / per_token
        rates = {how: decode_rate(model, processor, clips[0], how, 8, 8 + (96 if cuda else 64))
                 for how in ("baseline", "fast")}
        out["batch1_decode"] = {
            "weight_bytes_per_token": per_token, "copy_bandwidth_GBps": round(bw / 1e9, 1),
            "limit_tokens_per_s": round(limit, 1),
            **{f"{h}_tokens_per_s": round(r, 1) for h, r in rates.items()},
            **{f"{h}_fraction_of_limit": round(r / limit, 3) for h, r in rates.items()},
        }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _agreement_only(args, model, processor, clips, device, dtype_name, params, new, bs) -> int:
    """Reference (batch 1) and fast (batch ``bs``) on every clip: their outputs compared token by token."""
    import torch
    import transformers

    cuda = device.startswith("cuda")
    run_mode(model, processor, clips[:1], "reference", 1, 4)  # warm-ups (fast: compiles on CUDA)
    t = time.perf_counter()
    run_mode(model, processor, clips[:bs], "fast", bs, new)
    warm_fast = time.perf_counter() - t
    ref = run_mode(model, processor, clips, "reference", 1, new)
    fast = run_mode(model, processor, clips, "fast", bs, new)
    out = {
        "arch": args.arch + ("-reduced" if args.reduced else ""), "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu", "dtype": dtype_name, "params": params,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32) if cuda else None,
        "clips": len(clips), "max_new_tokens": new, "batch_size": bs, "fast_warmup_seconds": round(warm_fast, 1),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "runs": {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in
                 (("reference", ref), ("fast", fast))},
        "agreement_fast_vs_reference": round(agreement(fast["_tokens"], ref["_tokens"]), 4),
        "agreement_detail": {"fast_vs_reference": agreement_detail(fast["_tokens"], ref["_tokens"])},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
