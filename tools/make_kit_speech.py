#!/usr/bin/env python3
"""Make the demo kit's English speech with espeak-ng (how ``iwslt_mc/kitdata/audio/*.flac`` was made).

Reads ``iwslt_mc/kitdata/utterances.jsonl`` (index, voice, speed, text_en, ...) and writes one
16 kHz mono 16-bit FLAC per utterance to ``iwslt_mc/kitdata/audio/NNN.flac``. The kit command only
copies these files, so espeak-ng is needed only to remake them (after changing a text or a voice).

Deterministic: espeak-ng's output is a pure function of text, voice and speed, soxr's resampler has
no randomness, and FLAC has no timestamps; rerunning gives the same bytes (``--check`` verifies
that against the shipped files instead of writing).

    python tools/make_kit_speech.py            # remake the shipped audio
    python tools/make_kit_speech.py --check    # exit 1 if any shipped file would change
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

KITDATA = Path(__file__).resolve().parent.parent / "iwslt_mc" / "kitdata"
SAMPLE_RATE = 16000
# Utterances are padded to whole 10 ms so that the long-form offsets and durations are exact
# at two decimals, as in IWSLT segmentation files.
QUANTUM = SAMPLE_RATE // 100
SILENCE_THRESHOLD = 1e-3  # espeak-ng pads with digital silence; trim it, keep 50 ms either side
EDGE = SAMPLE_RATE // 20


def synthesize(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng -> float32 16 kHz mono, edge silence trimmed to 50 ms, length a multiple of 10 ms."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
        data, sr = sf.read(wav, dtype="float32", always_2d=True)
    wave = soxr.resample(data.mean(axis=1), sr, SAMPLE_RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(wave) > SILENCE_THRESHOLD)
    wave = wave[max(loud[0] - EDGE, 0): loud[-1] + EDGE]
    pad = (-len(wave)) % QUANTUM
    return np.concatenate([wave, np.zeros(pad, np.float32)])


def flac_bytes(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = ap.parse_args(argv)
    if not shutil.which("espeak-ng"):
        print("espeak-ng not found (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in (KITDATA / "utterances.jsonl").read_text("utf-8").splitlines() if line.strip()]
    out_dir = KITDATA / "audio"
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = 0
    total_s = 0.0
    for row in rows:
        wave = synthesize(row["text_en"], row["voice"], int(row["speed"]))
        data = flac_bytes(wave)
        total_s += len(wave) / SAMPLE_RATE
        path = out_dir / f"{row['index']:03d}.flac"
        same = path.exists() and path.read_bytes() == data
        changed += not same
        if not args.check and not same:
            path.write_bytes(data)
        print(f"{path.name}: {len(wave) / SAMPLE_RATE:5.2f} s {len(data):7d} B {'same' if same else 'CHANGED'}"
              f"  [{row['voice']} {row['speed']}] {row['text_en']}")
    print(f"{len(rows)} utterances, {total_s:.1f} s of speech, {changed} changed")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
