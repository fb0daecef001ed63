"""Translate speech segments with Qwen2-Audio: the published reference decoding and a fast batched mode.

``reference`` reproduces the seed paper's code exactly: the chat prompt, one segment at a time, greedy,
``max_length=1024`` (prompt included), the prompt tokens cut off, ``skip_special_tokens=True`` and
``strip()``.

``fast`` gives the same tokens (in fp32) with far less work per token: segments sorted by length so a
batch shares one prompt length, left padding, per-row length limits equal to what batch 1 would allow,
and on devices that compile (CUDA) a static KV cache with ``torch.compile`` of the decode step. Mel
features are computed once per segment, in the batch that decodes it.

Both modes yield :class:`Hyp` records in the order segments finish (:func:`iter_translate`) or return
them in input order (:func:`translate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from .prompting import check_lang, prompt_text

MODES = ("reference", "fast")
SAMPLE_RATE = 16000
# The feature extractor keeps 30 s (480,000 samples) and drops the rest, as in the published code.
MAX_SAMPLES = 30 * SAMPLE_RATE
# Line breaks that would split one hypothesis over several lines of the output file.
_LINE_BREAKS = ("\r\n", "\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


@dataclass
class Hyp:
    """One hypothesis: ``text`` (stripped), ``n_tokens`` generated (end-of-turn token included),
    ``seconds`` of decoding attributed to it (batch time / batch size in fast mode), ``tokens`` the ids."""

    text: str
    n_tokens: int
    seconds: float
    tokens: list[int] = field(default_factory=list, repr=False)


def one_line(text: str) -> str:
    """The hypothesis as it goes into the output file: every line break becomes a space."""
    for br in _LINE_BREAKS:
        text = text.replace(br, " ")
    return text


def audio_token_count(n_samples: int) -> int:
    """Audio tokens the processor inserts for ``n_samples`` of 16 kHz audio (capped at 30 s)."""
    frames = min(n_samples, MAX_SAMPLES) // 160
    if frames <= 0:
        return 0
    return (((frames - 1) // 2 + 1) - 2) // 2 + 1


def greedy_config(model, max_length: int):
    """The model's generation config made greedy, as the published decoding (no sampling, no penalty)."""
    import copy

    gc = copy.deepcopy(model.generation_config)
    gc.do_sample = False
    gc.num_beams = 1
    gc.repetition_penalty = 1.0
    gc.temperature = None
    gc.top_p = None
    gc.top_k = None
    gc.max_length = max_length
    gc.max_new_tokens = None
    if gc.pad_token_id is None:
        eos = gc.eos_token_id
        gc.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    return gc


def _eos_ids(gc) -> set[int]:
    eos = gc.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _budget(prompt_len: int, max_length: int, max_new_tokens: int | None) -> int:
    """New tokens batch-1 generate() may produce for this prompt: ``max_length`` counts the prompt."""
    b = max_length - prompt_len
    if max_new_tokens is not None:
        b = min(b, max_new_tokens)
    return max(b, 0)


def _cut(tokens: list[int], budget: int, eos: set[int]) -> list[int]:
    """Tokens as batch-1 generation would return them: stop after the first end token or the budget."""
    out = []
    for t in tokens[:budget]:
        out.append(t)
        if t in eos:
            break
    return out


def _materialize(w):
    import numpy as np

    w = w() if callable(w) else w
    return np.asarray(w, dtype=np.float32)


def _to_model(inputs, model):
    """Move processor output to the model's device; features in the model's floating dtype."""
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    out = {}
    for k, v in inputs.items():
        v = v.to(model.device)
        if k == "input_features":
            v = v.to(dtype)
        out[k] = v
    return out


def _decode_text(processor, tokens: list[int]) -> str:
    return processor.batch_decode([tokens], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0].strip()


def reference_one(model, processor, wave, lang: str, *, max_length: int = 1024, max_new_tokens: int | None = None,
                  prompt: str | None = None) -> Hyp:
    """Published decoding of one segment (batch 1, greedy, ``max_length`` including the prompt)."""
    import torch

    t0 = time.perf_counter()
    text = prompt_text(processor, lang, prompt)
    inputs = processor(text=text, audio=_materialize(wave), sampling_rate=SAMPLE_RATE, return_tensors="pt")
    inputs = _to_model(inputs, model)
    gc = greedy_config(model, max_length)
    plen = inputs["input_ids"].shape[1]
    budget = _budget(plen, max_length, max_new_tokens)
    if budget == 0:
        return Hyp("", 0, time.perf_counter() - t0, [])
    if max_new_tokens is not None:
        gc.max_new_tokens, gc.max_length = budget, None
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=gc)
    tokens = out[0, plen:].tolist()
    return Hyp(_decode_text(processor, tokens), len(tokens), time.perf_counter() - t0, tokens)


class _RowBudget:
    """Stop each row of a left-padded batch after its own budget (what batch 1 would have allowed)."""

    def __init__(self, prompt_len: int, budgets):
        import torch

        self.prompt_len = prompt_len
        self.budgets = torch.as_tensor(budgets)

    def __call__(self, input_ids, scores, **kwargs):
        done = (input_ids.shape[1] - self.prompt_len) >= self.budgets.to(input_ids.device)
        return done


def _can_compile(model) -> bool:
    return model.device.type == "cuda"


def fast_batch(model, processor, waves: list, lang: str, *, max_length: int = 1024, max_new_tokens: int | None = None,
               prompt: str | None = None, static_cache: bool | None = None) -> list[Hyp]:
    """Decode one batch with left padding; every row equals its batch-1 greedy result (up to float rounding)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    t0 = time.perf_counter()
    waves = [_materialize(w) for w in waves]
    text = prompt_text(processor, lang, prompt)
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        fe_kw = {"device": str(model.device)} if model.device.type == "cuda" else {}
        inputs = processor(text=[text] * len(waves), audio=waves, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                           padding=True, **fe_kw)
    finally:
        tok.padding_side = old_side
    inputs = _to_model(inputs, model)
    gc = greedy_config(model, max_length)
    eos = _eos_ids(gc)
    padded_len = inputs["input_ids"].shape[1]
    real_lens = inputs["attention_mask"].sum(-1).tolist()
    budgets = [_budget(int(n), max_length, max_new_tokens) for n in real_lens]
    if max(budgets) == 0:
        dt = (time.perf_counter() - t0) / len(waves)
        return [Hyp("", 0, dt, []) for _ in waves]
    gc.max_new_tokens = max(budgets)
    gc.max_length = None
    if static_cache is None:
        static_cache = _can_compile(model)
    if static_cache:
        # One cache length for every batch, so the compiled decode step is reused instead of recompiled.
        gc.cache_implementation = "static"
    crit = _RowBudget(padded_len, budgets)

    class _Crit(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return crit(input_ids, scores)

    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=gc, stopping_criteria=StoppingCriteriaList([_Crit()]))
    gen = out[:, padded_len:].tolist()
    dt = (time.perf_counter() - t0) / len(waves)
    hyps = []
    for row, budget in zip(gen, budgets):
        tokens = _cut(row, budget, eos)
        hyps.append(Hyp(_decode_text(processor, tokens), len(tokens), dt, tokens))
    return hyps


def _length_of(w, given: float | None) -> float:
    if given is not None:
        return float(given)
    if callable(w):
        return 0.0
    return len(w) / SAMPLE_RATE


def plan_batches(lengths: Sequence[float], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory problems show at once).

    Lengths are compared by the number of audio tokens they produce, which is what sets the prompt length.
    """
    key = [audio_token_count(int(round(s * SAMPLE_RATE))) for s in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (-key[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def iter_translate(model, processor, waves: Sequence, lang: str, *, mode: str = "fast", batch_size: int = 8,
                   max_length: int = 1024, max_new_tokens: int | None = None, prompt: str | None = None,
                   lengths: Sequence[float] | None = None, progress: bool = False,
                   static_cache: bool | None = None) -> Iterator[tuple[int, Hyp]]:
    """Yield ``(index, Hyp)`` as segments finish (input order in reference mode, batch order in fast mode).

    ``waves``: 16 kHz mono float32 arrays, or zero-argument callables returning one (loaded when needed).
    ``lengths``: seconds per segment, used to sort fast-mode batches without loading audio first.
    """
    check_lang(lang)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    n = len(waves)
    if lengths is None:
        lengths = [_length_of(w, None) for w in waves]
    bar = DecodeProgress(n, sum(lengths)) if progress else None
    try:
        if mode == "reference":
            for i, w in enumerate(waves):
                h = reference_one(model, processor, w, lang, max_length=max_length, max_new_tokens=max_new_tokens,
                                  prompt=prompt)
                if bar:
                    bar.advance(1, h.n_tokens)
                yield i, h
        else:
            for idx in plan_batches(lengths, max(1, batch_size)):
                hyps = fast_batch(model, processor, [waves[i] for i in idx], lang, max_length=max_length,
                                  max_new_tokens=max_new_tokens, prompt=prompt, static_cache=static_cache)
                if bar:
                    bar.advance(len(idx), sum(h.n_tokens for h in hyps))
                yield from zip(idx, hyps)
    finally:
        if bar:
            bar.close()


def translate(model, processor, waves: Sequence, lang: str, *, mode: str = "fast", batch_size: int = 8,
              max_length: int = 1024, max_new_tokens: int | None = None, prompt: str | None = None,
              progress: bool = False, lengths: Sequence[float] | None = None,
              static_cache: bool | None = None) -> list[Hyp]:
    """Translate every wave; hypotheses in input order. See the module docstring for the two modes."""
    out: list[Hyp | None] = [None] * len(waves)
    for i, h in iter_translate(model, processor, waves, lang, mode=mode, batch_size=batch_size, max_length=max_length,
                               max_new_tokens=max_new_tokens, prompt=prompt, progress=progress, lengths=lengths,
                               static_cache=static_cache):
        out[i] = h
    return out  # type: ignore[return-value]


class DecodeProgress:
    """A rich progress bar on stderr: segments, segments/s, tokens/s, ETA."""

    def __init__(self, total: int, audio_seconds: float = 0.0, done: int = 0, description: str = "decoding"):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.t0 = time.perf_counter()
        self.tokens = 0
        self.segments = 0
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task(description, total=total, completed=done, rate="")
        self.progress.start()

    def advance(self, segments: int, tokens: int) -> None:
        self.segments += segments
        self.tokens += tokens
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rate = f"{self.segments / dt:.2f} seg/s  {self.tokens / dt:.1f} tok/s"
        self.progress.update(self.task, advance=segments, rate=rate)

    def close(self) -> None:
        self.progress.stop()
