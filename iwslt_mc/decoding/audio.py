"""Audio input: any file soundfile can read (WAV, FLAC, OGG/Opus, ...), or encoded bytes, to 16 kHz mono float32."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from ..errors import InputFileError

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


# libsndfile's log for a WAV whose data chunk is longer than the file: "data : 160000 (should be 3200)".
_DATA_SHOULD_BE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
# Sizes streaming writers put in a header they cannot go back to fill in (not a truncation).
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 1}


def truncation(f) -> str | None:
    """Why an open ``soundfile.SoundFile`` is a truncated file, or None. libsndfile clamps a WAV whose header
    declares more audio than the file holds to what is there (a 5 s recording cut to 0.1 s reads as 0.1 s,
    silently); its header log says so, and that is read here."""
    m = _DATA_SHOULD_BE.search(getattr(f, "extra_info", "") or "")
    if not m:
        return None
    declared, present = int(m.group(1)), int(m.group(2))
    if declared <= present or declared in _UNKNOWN_SIZES or present <= 0:
        return None
    sr = f.samplerate
    want = f.frames * declared / present / sr
    return (f"truncated: its header declares {want:.2f} s of audio, the file holds {f.frames / sr:.2f} s "
            f"({present:,} of {declared:,} data bytes); copy or convert it again from the original")


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
        cut = truncation(f)
        if cut:
            raise InputFileError(label, cut)
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
