"""Segmenter (long audio -> <= 30 s segments at pauses) and the --audio SPEC resolver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from iwslt_mc.errors import InputFileError
from iwslt_mc.decoding.inputs import check_segments, detect_kind, resolve_audio
from iwslt_mc.decoding.segmenter import segment_audio, speech_intervals

SR = 16000


def tones_with_gaps(seed: int = 0, total: float = 75.0):
    """Tone bursts of 2-9 s separated by silent gaps of 0.15-1.2 s; returns wave and gap intervals (s)."""
    rng = np.random.default_rng(seed)
    parts, gaps, speech, t = [], [], [], 0
    while t < total * SR:
        n = int(rng.uniform(2, 9) * SR)
        f = rng.uniform(150, 400)
        parts.append(0.3 * np.sin(2 * np.pi * f * np.arange(n) / SR) * (1 + 0.3 * np.sin(np.arange(n) / 900)))
        speech.append((t / SR, (t + n) / SR))
        t += n
        g = int(rng.uniform(0.15, 1.2) * SR)
        parts.append(np.zeros(g))
        gaps.append((t / SR, (t + g) / SR))
        t += g
    return np.concatenate(parts).astype(np.float32), gaps[:-1], speech


def covered(spans, start, end, tol=0.03):
    return any(s.start - tol <= start and end <= s.end + tol for s in spans)


def test_tones_with_gaps_cut_only_in_silence():
    wave, gaps, speech = tones_with_gaps()
    assert len(wave) / SR > 70
    spans = segment_audio(wave)
    assert len(spans) >= 3
    assert all(0 < s.duration <= 30.0 for s in spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))  # in order, no overlap
    for s, e in speech:  # every burst lies inside one segment: never cut inside "speech"
        assert covered(spans, s, e), (s, e, spans)
    for a, b in zip(spans, spans[1:]):  # each cut falls inside a real gap
        assert any(gs - 0.03 <= a.end and b.start <= ge + 0.03 for gs, ge in gaps), (a, b)


def test_first_cut_is_the_longest_pause():
    # 3 bursts of 12 s (36 s total > 30 s): the 1.0 s gap wins over the 0.3 s one wherever it is.
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(12 * SR) / SR)).astype(np.float32)
    for first, second in ((0.3, 1.0), (1.0, 0.3)):
        wave = np.concatenate([tone, np.zeros(int(first * SR), np.float32), tone,
                               np.zeros(int(second * SR), np.float32), tone])
        spans = segment_audio(wave)
        assert len(spans) == 2
        long_gap_start = 24 + first if second == 1.0 else 12
        assert long_gap_start - 0.05 <= spans[0].end and spans[1].start <= long_gap_start + 1.05


def test_speech_without_pauses_is_force_cut_within_limit():
    wave = (0.3 * np.sin(2 * np.pi * 220 * np.arange(75 * SR) / SR)).astype(np.float32)
    spans = segment_audio(wave)
    assert [round(s.duration, 2) for s in spans] == [25.0, 25.0, 25.0]  # fewest pieces, even split
    assert spans[0].start == 0 and spans[-1].end == 75.0
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))  # contiguous: nothing lost


def test_short_and_silent_input():
    tone = (0.3 * np.sin(np.arange(5 * SR) / 10)).astype(np.float32)
    spans = segment_audio(np.concatenate([np.zeros(SR, np.float32), tone, np.zeros(SR, np.float32)]))
    assert len(spans) == 1 and spans[0].start == pytest.approx(0.8, abs=0.05) and spans[0].end == pytest.approx(6.2, abs=0.05)
    assert segment_audio(np.zeros(0, np.float32)) == []
    silent = segment_audio(np.zeros(40 * SR, np.float32))  # no speech found: still covered, within limit
    assert all(s.duration <= 30 for s in silent) and silent[0].start == 0 and silent[-1].end == 40


def test_kit_long_wav(kit):
    from iwslt_mc.decoding.audio import load_audio

    long = kit / "data" / "long"
    wave = load_audio(long / "talk.wav")
    assert len(wave) / SR > 30  # the kit's talk needs at least one cut
    spans = segment_audio(wave)
    assert len(spans) >= 2 and all(s.duration <= 30 for s in spans)
    ref = yaml.safe_load((long / "talk.yaml").read_text())
    for seg in ref:  # every utterance of the talk inside one segment, none cut
        assert covered(spans, seg["offset"] + 0.05, seg["offset"] + seg["duration"] - 0.05), seg
    for s, e in speech_intervals(wave):
        assert covered(spans, s / SR, e / SR)


# ---------------------------------------------------------------------------- --audio SPEC


def write_wav(path: Path, seconds: float, sr: int = SR, channels: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = 0.2 * np.sin(2 * np.pi * 200 * np.arange(n) / sr) + 0.01 * rng.standard_normal(n)
    x = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(str(path), x.astype(np.float32), sr, subtype="PCM_16")
    return path


def test_spec_kinds(kit, tmp_path):
    data, long = kit / "data", kit / "data" / "long"
    assert detect_kind(str(data)) == "dataset"
    assert detect_kind(str(data / "eval.parquet")) == "dataset"
    assert detect_kind(str(long / "talk.yaml")) == "yaml"
    assert detect_kind(str(long)) == "yaml"  # a folder with one YAML
    assert detect_kind(str(long / "talk.wav")) == "audio"
    lst = tmp_path / "files.txt"
    lst.write_text(f"# test files\n{long / 'talk.wav'}\n")
    assert detect_kind(str(lst)) == "list"
    with pytest.raises(InputFileError, match="not found"):
        detect_kind(str(tmp_path / "nope.wav"))

    ev = resolve_audio(f"{data}?split=eval")
    ym = resolve_audio(str(long / "talk.yaml"))
    assert ev.kind == "dataset" and len(ev.segments) == 8
    assert ym.kind == "yaml" and [s.id for s in ym.segments][:2] == ["talk.wav#1", "talk.wav#2"]
    assert not check_segments(ev) and not check_segments(ym)
    # the YAML slices are the eval utterances: same lengths, same samples
    for a, b in zip(ev.segments, ym.segments):
        wa, wb = a.waveform(), b.waveform()
        assert abs(len(wa) - len(wb)) <= 160
        m = min(len(wa), len(wb))
        assert np.corrcoef(wa[:m], wb[:m])[0, 1] > 0.99
    single = resolve_audio(str(long / "talk.wav"))
    assert single.kind == "audio" and len(single.segments) >= 2
    assert all(s.duration <= 30 for s in single.segments) and "cut at pauses" in single.notes[0]


def test_list_resamples_and_resolves_relative_paths(tmp_path):
    sub = tmp_path / "audio"
    sub.mkdir()
    write_wav(sub / "a.wav", 2.0, sr=44100, channels=2)
    write_wav(sub / "b.flac", 3.0, sr=8000)
    lst = tmp_path / "list.txt"
    lst.write_text("audio/a.wav\n\n# skipped\naudio/b.flac\n")
    inp = resolve_audio(str(lst))
    assert [s.id for s in inp.segments] == ["audio/a.wav", "audio/b.flac"]
    assert not check_segments(inp)
    a, b = (s.waveform() for s in inp.segments)
    assert a.dtype == np.float32 and a.ndim == 1 and len(a) == pytest.approx(2 * SR, abs=2)
    assert len(b) == pytest.approx(3 * SR, abs=2)
    assert inp.seconds == pytest.approx(5.0, abs=0.01)


def test_bad_inputs_are_named(tmp_path, kit):
    write_wav(tmp_path / "good.wav", 1.0)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    zero = tmp_path / "zero.wav"
    sf.write(str(zero), np.zeros(0, np.float32), SR)
    lst = tmp_path / "list.txt"
    lst.write_text("good.wav\nmissing.wav\nempty.wav\ncorrupt.wav\nzero.wav\n")
    inp = resolve_audio(str(lst))
    bad = check_segments(inp)
    assert [s.id for s in bad] == ["missing.wav", "empty.wav", "corrupt.wav", "zero.wav"]
    msgs = [s.problem for s in bad]
    assert msgs[0] == f"{lst}: line 2: missing.wav: audio file not found"
    assert "line 3" in msgs[1] and "empty" in msgs[1]
    assert "line 4" in msgs[2] and "cannot decode" in msgs[2]
    assert "line 5" in msgs[3] and "0 samples" in msgs[3]
    assert all("\n" not in m for m in msgs)

    y = tmp_path / "talk.yaml"
    y.write_text("- {duration: 0.5, offset: 0.2, wav: good.wav}\n- {duration: 2.0, offset: 0.5, wav: good.wav}\n")
    inp = resolve_audio(str(y))
    bad = check_segments(inp)
    assert [s.id for s in bad] == ["good.wav#2"]
    assert bad[0].problem.startswith(f"{y}: segment 2: good.wav 0.50s+2.00s ends at 2.50s, past the end")
    y.write_text("- {duration: 1.0, wav: good.wav}\n")
    with pytest.raises(InputFileError, match="segment 1: missing offset"):
        resolve_audio(str(y))


def test_yaml_finds_wavs_in_the_must_c_layout(tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "wav").mkdir()
    write_wav(tmp_path / "wav" / "ted_1.wav", 4.0, sr=22050)
    y = tmp_path / "txt" / "tst.yaml"
    y.write_text("- {duration: 1.5, offset: 0.5, speaker_id: s, wav: ted_1.wav}\n"
                 "- {duration: 2.0, offset: 2.0, speaker_id: s, wav: ted_1.wav}\n")
    inp = resolve_audio(str(y))
    assert not check_segments(inp)
    assert [s.source for s in inp.segments] == [str((tmp_path / "wav" / "ted_1.wav").resolve())] * 2
    assert [len(s.waveform()) for s in inp.segments] == [24000, 32000]
