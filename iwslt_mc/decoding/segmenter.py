"""Split long audio into segments of at most 30 s at pauses, for a model that hears 30 s at a time.

Method (energy based, in the spirit of SHAS's divide-and-conquer, Tsiamas et al. 2022, with an
energy detector in place of its classifier):

1. Speech is every 25 ms frame (10 ms hop) whose RMS energy lies within ``top_db`` dB of the loudest
   frame (``librosa.effects.split``). The gaps between speech intervals are the pauses.
2. A span of speech longer than ``max_seconds`` is cut in its longest pause, preferring pauses that
   leave at least ``min_seconds`` on both sides; each side is split again until every segment fits.
   So a cut never falls inside speech while a pause exists in the span.
3. Only a single stretch of speech longer than ``max_seconds`` with no pause at all is cut inside
   speech, at its quietest frame, keeping both sides within the limit.

Segments keep up to ``pad`` seconds of the surrounding silence (never more than half a pause, so
neighbours never overlap), cover every speech interval, and drop long silences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0
FRAME = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms


@dataclass(frozen=True)
class Span:
    """A segment in seconds: ``start`` and ``end`` (``end - start <= max_seconds``)."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def speech_intervals(wave: np.ndarray, *, sr: int = SAMPLE_RATE, top_db: float = 40.0) -> list[tuple[int, int]]:
    """Non-silent intervals ``(start, end)`` in samples (energy within ``top_db`` dB of the loudest frame)."""
    import librosa

    wave = np.asarray(wave, dtype=np.float32)
    if wave.size == 0 or not np.any(wave):
        return []
    frame, hop = FRAME * sr // SAMPLE_RATE, HOP * sr // SAMPLE_RATE
    iv = librosa.effects.split(wave, top_db=top_db, frame_length=frame, hop_length=hop)
    return [(int(s), int(min(e, wave.size))) for s, e in iv if e > s]


def _frame_rms(wave: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    import librosa

    hop = HOP * sr // SAMPLE_RATE
    rms = librosa.feature.rms(y=wave, frame_length=FRAME * sr // SAMPLE_RATE, hop_length=hop, center=True)[0]
    return rms, hop


def segment_audio(wave: np.ndarray, *, sr: int = SAMPLE_RATE, max_seconds: float = MAX_SECONDS,
                  min_seconds: float = 1.0, pad: float = 0.2, top_db: float = 40.0) -> list[Span]:
    """Segments (in seconds, in order) covering all speech in ``wave``, each at most ``max_seconds`` long.

    A wave with no detectable speech (all silence) is treated as one stretch of speech, so it still
    yields segments rather than nothing.
    """
    wave = np.asarray(wave, dtype=np.float32)
    total = wave.size
    if total == 0:
        return []
    limit = int(max_seconds * sr)
    min_len = int(min_seconds * sr)
    pad_n = int(pad * sr)
    iv = speech_intervals(wave, sr=sr, top_db=top_db) or [(0, total)]
    n = len(iv)

    # Silence each interval may keep on either side: half the neighbouring pause at most.
    left = [min(pad_n, (iv[0][0] if k == 0 else (iv[k][0] - iv[k - 1][1]) // 2)) for k in range(n)]
    right = [min(pad_n, (total - iv[k][1] if k == n - 1 else (iv[k + 1][0] - iv[k][1]) // 2)) for k in range(n)]

    def extent(a: int, b: int) -> tuple[int, int]:
        return iv[a][0] - left[a], iv[b][1] + right[b]

    rms = hop = None
    out: list[tuple[int, int]] = []

    def force_cut(s: int, e: int) -> None:
        """Cut one pause-free stretch [s, e) at its quietest frames so every piece fits the limit."""
        nonlocal rms, hop
        if rms is None:
            rms, hop = _frame_rms(wave, sr)
        while e - s > limit:
            length = e - s
            pieces = -(-length // limit)
            # The first cut leaves a remainder that still fits in pieces - 1 segments.
            lo, hi = length - (pieces - 1) * limit, limit
            f_lo, f_hi = -(-(s + lo) // hop), (s + hi) // hop
            frames = rms[f_lo:f_hi + 1]
            if frames.size == 0:
                cut = s + hi
            else:
                # The quietest frame; among near-equal ones the one nearest an even split.
                quiet = np.flatnonzero(frames <= frames.min() * (1 + 1e-3) + 1e-9) + f_lo
                ideal = (s + length / pieces) / hop
                cut = int(quiet[np.argmin(np.abs(quiet - ideal))]) * hop
            cut = min(max(cut, s + lo), s + hi)
            out.append((s, cut))
            s = cut
        out.append((s, e))

    def split(a: int, b: int) -> None:
        s, e = extent(a, b)
        if e - s <= limit:
            out.append((s, e))
            return
        if a == b:
            cs, ce = iv[a]
            if ce - cs <= limit:  # fits without its margins: trim them evenly
                extra = limit - (ce - cs)
                lpad = min(left[a], extra // 2)
                rpad = min(right[a], extra - lpad)
                out.append((cs - lpad, ce + rpad))
            else:
                force_cut(*extent(a, b))
            return
        gaps = [(iv[k + 1][0] - iv[k][1], k) for k in range(a, b)]
        mid = (s + e) / 2

        def balanced(k: int) -> bool:
            ls, le = extent(a, k)
            rs, re = extent(k + 1, b)
            return le - ls >= min_len and re - rs >= min_len

        pool = [g for g in gaps if balanced(g[1])] or gaps
        # Longest pause; among equal ones the one nearest the middle (fewer further cuts).
        _, k = max(pool, key=lambda g: (g[0], -abs(iv[g[1]][1] - mid)))
        split(a, k)
        split(k + 1, b)

    split(0, n - 1)
    return [Span(round(s / sr, 6), round(e / sr, 6)) for s, e in out]
