"""Audio input: any file soundfile can read (WAV, FLAC, OGG/Opus, ...), or encoded bytes, to 16 kHz mono float32."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import InputFileError

SAMPLE_RATE = 16000


def to_mono_16k(wave: np.ndarray, sr: int) -> np.ndarray:
    """Average channels and resample to 16 kHz (soxr, high quality)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if sr != SAMPLE_RATE and wave.size:
        import soxr

        wave = soxr.resample(wave, sr, SAMPLE_RATE).astype(np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


def load_audio(src: str | Path | bytes, *, name: str | None = None, start: float | None = None,
               duration: float | None = None) -> np.ndarray:
    """Decode ``src`` (path or encoded bytes) to 16 kHz mono float32.

    ``start``/``duration`` (seconds) read a slice without decoding the whole file where the format
    allows. Errors name the file: missing, unreadable/corrupt, empty, or a slice past the end.
    """
    import soundfile as sf

    label = name or (str(src) if not isinstance(src, (bytes, bytearray)) else "<audio bytes>")
    if not isinstance(src, (bytes, bytearray)) and not Path(src).exists():
        raise InputFileError(label, "audio file not found")
    try:
        f = sf.SoundFile(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError with a cryptic message
        raise InputFileError(label, f"cannot decode audio ({str(e).strip() or type(e).__name__})") from None
    with f:
        sr, total = f.samplerate, f.frames
        first = 0 if start is None else int(round(start * sr))
        count = -1 if duration is None else int(round(duration * sr))
        if first < 0 or (start is not None and first >= total and total > 0) or (
                count > 0 and first + count > total + int(0.01 * sr)):
            end = (first + max(count, 0)) / sr
            raise InputFileError(label, f"segment {start or 0:.3f}s+{duration or 0:.3f}s ends at {end:.3f}s, past the end of the audio ({total / sr:.3f}s)")
        try:
            f.seek(first)
            wave = f.read(frames=count, dtype="float32", always_2d=True)
        except Exception as e:
            raise InputFileError(label, f"cannot decode audio ({str(e).strip() or type(e).__name__})") from None
    if wave.shape[0] == 0:
        raise InputFileError(label, "audio is empty (0 samples)")
    return to_mono_16k(wave, sr)
