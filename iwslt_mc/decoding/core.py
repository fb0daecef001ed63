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

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..floor.languages import check_lang
from ..families import prompt_text

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


def eos_ids(gc) -> set[int]:
    """The end tokens of a generation config (a row stops after the first one)."""
    eos = gc.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def new_tokens_budget(prompt_len: int, max_length: int, max_new_tokens: int | None) -> int:
    """New tokens batch-1 generate() may produce for this prompt: ``max_length`` counts the prompt."""
    b = max_length - prompt_len
    if max_new_tokens is not None:
        b = min(b, max_new_tokens)
    return max(b, 0)


def _new_tokens_limit(model, max_new_tokens: int | None) -> int | None:
    """The caller's limit, else the model's ``generation_config.max_new_tokens`` (which generate() would
    also apply over ``max_length`` in the published code)."""
    if max_new_tokens is not None:
        return max_new_tokens
    fam = _family_default_new_tokens(model)
    return fam if fam is not None else getattr(model.generation_config, "max_new_tokens", None)


def _family_default_new_tokens(model) -> int | None:
    """The model family's own limit (Gemma 4: the organizers' 256 new tokens, and no ``max_length``)."""
    from ..families import family_of_config

    return family_of_config(getattr(model, "config", None)).default_max_new_tokens


def _family_max_length(model, max_length: int) -> int:
    """``max_length``, except for a family whose reference decoding limits new tokens only (Gemma 4)."""
    return max_length if _family_default_new_tokens(model) is None else 1 << 30


def cut_tokens(tokens: list[int], budget: int, eos: set[int]) -> list[int]:
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


def decode_text(processor, tokens: list[int]) -> str:
    """Generated ids to the hypothesis text, as the published decoding (special tokens skipped, stripped)."""
    return processor.batch_decode([tokens], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0].strip()


def left_pad(embeds: list):
    """Prompt embeddings ``[T_i, hidden]`` as one left-padded batch: (inputs_embeds, attention_mask)."""
    import torch

    T = max(e.shape[0] for e in embeds)
    H = embeds[0].shape[-1]
    x = embeds[0].new_zeros(len(embeds), T, H)
    mask = torch.zeros(len(embeds), T, dtype=torch.long, device=embeds[0].device)
    for i, e in enumerate(embeds):
        x[i, T - e.shape[0]:] = e
        mask[i, T - e.shape[0]:] = 1
    return x, mask


def greedy_from_embeds(model, embeds: list, *, max_new_tokens: int | None, max_length: int = 1024,
                       batch_size: int = 16) -> list[list[int]]:
    """Greedy token ids for each prompt embedding, batched with left padding.

    Each row is cut where batch-1 ``generate`` would stop: after the first end token, after
    ``max_new_tokens``, or when prompt + output reach ``max_length``.
    """
    import torch

    gc = greedy_config(model, max_length)
    eos = eos_ids(gc)
    budgets = [new_tokens_budget(e.shape[0], max_length, max_new_tokens) for e in embeds]
    order = sorted(range(len(embeds)), key=lambda i: (-embeds[i].shape[0], i))
    out: list[list[int]] = [[] for _ in embeds]
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = [i for i in order[b:b + batch_size] if budgets[i] > 0]
            if not idx:
                continue
            x, mask = left_pad([embeds[i] for i in idx])
            gc.max_new_tokens = max(budgets[i] for i in idx)
            gc.max_length = None
            gen = model.generate(inputs_embeds=x, attention_mask=mask, generation_config=gc).tolist()
            for i, row in zip(idx, gen):
                out[i] = cut_tokens(row, budgets[i], eos)
    return out


def reference_one(model, processor, wave, lang: str, *, max_length: int = 1024, max_new_tokens: int | None = None,
                  prompt: str | None = None) -> Hyp:
    """Published decoding of one segment (batch 1, greedy, ``max_length`` including the prompt)."""
    import torch

    t0 = time.perf_counter()
    text = prompt_text(processor, lang, prompt)
    inputs = processor(text=text, audio=_materialize(wave), sampling_rate=SAMPLE_RATE, return_tensors="pt")
    inputs = _to_model(inputs, model)
    max_length = _family_max_length(model, max_length)
    gc = greedy_config(model, max_length)
    plen = inputs["input_ids"].shape[1]
    budget = new_tokens_budget(plen, max_length, _new_tokens_limit(model, max_new_tokens))
    if budget == 0:
        return Hyp("", 0, time.perf_counter() - t0, [])
    gc.max_new_tokens, gc.max_length = budget, None
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=gc)
    tokens = out[0, plen:].tolist()
    return Hyp(decode_text(processor, tokens), len(tokens), time.perf_counter() - t0, tokens)


class _RowBudget:
    """Stop each row of a left-padded batch after its own budget (what batch 1 would have allowed)."""

    def __init__(self, prompt_len: int, budgets):
        import torch

        self.prompt_len = prompt_len
        self.budgets = torch.as_tensor(budgets)

    def __call__(self, input_ids, scores, **kwargs):
        if self.budgets.device != input_ids.device:  # once, not a host-to-device copy per step
            self.budgets = self.budgets.to(input_ids.device)
        return (input_ids.shape[1] - self.prompt_len) >= self.budgets


def _can_compile(model) -> bool:
    return model.device.type == "cuda"


# The tokenizer is not safe to use from two threads at once (the Rust side refuses a second borrow):
# batch preparation in the prefetch thread and detokenization in the main thread take turns.
_TOKENIZER_LOCK = threading.Lock()


@dataclass
class PreparedBatch:
    """Processor output for one fast-mode batch (on the CPU), ``real`` rows before padding copies."""

    inputs: dict
    real: int


def prepare_batch(processor, waves: list, lang: str, *, prompt: str | None = None,
                  pad_to: int | None = None) -> PreparedBatch:
    """Load the waves and run the processor with left padding (mel features computed here, once)."""
    waves = [_materialize(w) for w in waves]
    real = len(waves)
    if pad_to and real < pad_to:
        waves = waves + [waves[-1]] * (pad_to - real)
    with _TOKENIZER_LOCK:
        text = prompt_text(processor, lang, prompt)
        tok = processor.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            # Features on the CPU as in reference mode (a GPU STFT differs in the last bits).
            inputs = processor(text=[text] * len(waves), audio=waves, sampling_rate=SAMPLE_RATE,
                               return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old_side
    return PreparedBatch(dict(inputs), real)


def fast_batch(model, processor, waves: list, lang: str, *, max_length: int = 1024, max_new_tokens: int | None = None,
               prompt: str | None = None, static_cache: bool | None = None, pad_to: int | None = None,
               prepared: PreparedBatch | None = None) -> list[Hyp]:
    """Decode one batch with left padding; every row equals its batch-1 greedy result (up to float rounding).

    ``pad_to`` fills a short batch with copies of its last segment (results dropped), so a compiled
    static-cache step keeps its batch shape instead of compiling again for the last batch.
    ``prepared``: the batch's :func:`prepare_batch` result when it was made ahead (then ``waves`` is unused).
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    t0 = time.perf_counter()
    if prepared is None:
        prepared = prepare_batch(processor, waves, lang, prompt=prompt, pad_to=pad_to)
    inputs, real = prepared.inputs, prepared.real
    inputs = _to_model(inputs, model)
    max_length = _family_max_length(model, max_length)
    gc = greedy_config(model, max_length)
    eos = eos_ids(gc)
    padded_len = inputs["input_ids"].shape[1]
    real_lens = inputs["attention_mask"].sum(-1).tolist()
    limit = _new_tokens_limit(model, max_new_tokens)
    budgets = [new_tokens_budget(int(n), max_length, limit) for n in real_lens]
    if max(budgets) == 0:
        dt = (time.perf_counter() - t0) / real
        return [Hyp("", 0, dt, []) for _ in range(real)]
    gc.max_new_tokens = max(budgets)
    gc.max_length = None
    if static_cache is None:
        static_cache = _can_compile(model)
    if static_cache:
        # generate() never shrinks a static cache it made before (transformers keeps the largest length
        # so the compiled step is reused); batches come longest first, so the first batch sizes it.
        gc.cache_implementation = "static"
        gc.max_cache_len = min(max_length, -(-(padded_len + max(budgets)) // 256) * 256)
    crit = _RowBudget(padded_len, budgets)

    class _Crit(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return crit(input_ids, scores)

    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=gc, stopping_criteria=StoppingCriteriaList([_Crit()]))
    gen = out[:real, padded_len:].tolist()
    rows = [cut_tokens(row, budget, eos) for row, budget in zip(gen, budgets)]
    with _TOKENIZER_LOCK:
        texts = [decode_text(processor, tokens) for tokens in rows]
    dt = (time.perf_counter() - t0) / real
    return [Hyp(text, len(tokens), dt, tokens) for text, tokens in zip(texts, rows)]


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
                   static_cache: bool | None = None, prefetch: bool | None = None) -> Iterator[tuple[int, Hyp]]:
    """Yield ``(index, Hyp)`` as segments finish (input order in reference mode, batch order in fast mode).

    ``waves``: 16 kHz mono float32 arrays, or zero-argument callables returning one (loaded when needed).
    ``lengths``: seconds per segment, used to sort fast-mode batches without loading audio first.
    ``static_cache``/``prefetch`` (preparing the next batch in a thread) default to on where the model
    is on CUDA.
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
            batches = plan_batches(lengths, max(1, batch_size))
            static = _can_compile(model) if static_cache is None else static_cache
            pad_to = batch_size if static and len(batches) > 1 else None

            def prep(idx):
                return prepare_batch(processor, [waves[i] for i in idx], lang, prompt=prompt, pad_to=pad_to)

            # On a GPU the next batch's audio loading and mel features run on the CPU while this one decodes.
            if prefetch is None:
                prefetch = _can_compile(model)
            pool = ThreadPoolExecutor(1) if prefetch and len(batches) > 1 else None
            ahead = pool.submit(prep, batches[0]) if pool else None
            t_last = time.perf_counter()
            try:
                for b, idx in enumerate(batches):
                    prepared = ahead.result() if pool else None
                    if pool and b + 1 < len(batches):
                        ahead = pool.submit(prep, batches[b + 1])
                    hyps = fast_batch(model, processor, [waves[i] for i in idx], lang, max_length=max_length,
                                      max_new_tokens=max_new_tokens, prompt=prompt, static_cache=static,
                                      pad_to=pad_to, prepared=prepared)
                    now = time.perf_counter()
                    for h in hyps:  # wall time since the last batch, shared out: what the run really took
                        h.seconds = (now - t_last) / len(hyps)
                    t_last = now
                    if bar:
                        bar.advance(len(idx), sum(h.n_tokens for h in hyps))
                    yield from zip(idx, hyps)
            finally:
                if pool:
                    pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar:
            bar.close()


def translate(model, processor, waves: Sequence, lang: str, *, mode: str = "fast", batch_size: int = 8,
              max_length: int = 1024, max_new_tokens: int | None = None, prompt: str | None = None,
              progress: bool = False, lengths: Sequence[float] | None = None,
              static_cache: bool | None = None, prefetch: bool | None = None) -> list[Hyp]:
    """Translate every wave; hypotheses in input order. See the module docstring for the two modes."""
    out: list[Hyp | None] = [None] * len(waves)
    for i, h in iter_translate(model, processor, waves, lang, mode=mode, batch_size=batch_size, max_length=max_length,
                               max_new_tokens=max_new_tokens, prompt=prompt, progress=progress, lengths=lengths,
                               static_cache=static_cache, prefetch=prefetch):
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
