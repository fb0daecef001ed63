"""IWSLT test-set folders (the organizers' layout): output order, several test sets in one run,
resume as a whole, one-line errors, and segments longer than the encoder's 30 s window."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from iwslt_mc import cli
from iwslt_mc.decoding import core as decoding
from iwslt_mc.decoding.inputs import resolve_audio

NEW = 8  # random weights never stop on their own: keep generations short

pytestmark = pytest.mark.usefixtures("one_thread")


def decode(kit, *extra):
    return cli.main(["decode", str(kit / "model"), "--lang", "en-de", "--max-new-tokens", str(NEW), "--no-progress",
                     *map(str, extra)])


def lines(path: Path) -> list[str]:
    data = path.read_bytes().decode("utf-8")
    assert data.endswith("\n")
    return data[:-1].split("\n")


def log(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(str(path) + ".jsonl").read_text("utf-8").splitlines()]


def first_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def testsets(kit):
    return kit / "data" / "testsets"


@pytest.fixture(scope="module")
def both(kit, testsets, tmp_path_factory):
    """Both kit test sets decoded in one command into one folder."""
    out = tmp_path_factory.mktemp("both")
    assert decode(kit, "--audio", testsets / "KITTALKS", "--audio", testsets / "KITCLIPS", "--out-dir", out,
                  "--batch-size", "3") == 0
    return out


def test_order_is_file_order_then_yaml_order(kit, testsets, both, tmp_path):
    folder = testsets / "KITTALKS"
    order = (folder / "FILE_ORDER").read_text().split()
    assert order == ["talk2.wav", "talk1.wav"]
    yaml_lines = (folder / "KITTALKS.yaml").read_text().splitlines()
    assert "talk1.wav" in yaml_lines[0] and "talk2.wav" in yaml_lines[-1]  # the YAML has talk1 first
    got = lines(both / "KITTALKS.de")
    assert [r["id"] for r in log(both / "KITTALKS.de") if r["type"] == "segment"] == \
        ["talk2.wav#1", "talk2.wav#2", "talk1.wav#1", "talk1.wav#2", "talk1.wav#3"]

    # Each WAV alone (its own YAML with its segments only, in the YAML's order)
    alone = {}
    for wav in order:
        shutil.copy(folder / wav, tmp_path / wav)
        y = tmp_path / f"{Path(wav).stem}.yaml"
        y.write_text("".join(line + "\n" for line in yaml_lines if f"wav: {wav}" in line))
        out = tmp_path / f"{wav}.de"
        assert decode(kit, "--audio", y, "--out", out) == 0
        alone[wav] = lines(out)
    assert [len(alone[w]) for w in order] == [2, 3]
    assert got == alone["talk2.wav"] + alone["talk1.wav"]
    assert got != alone["talk1.wav"] + alone["talk2.wav"]  # the YAML's order would give another file

    # References are in the output order, one line per segment
    assert len((folder / "KITTALKS.de").read_text("utf-8").splitlines()) == len(got) == 5


def test_without_yaml_one_line_per_wav_in_file_order(kit, testsets, both, tmp_path):
    folder = testsets / "KITCLIPS"
    order = (folder / "FILE_ORDER").read_text().split()
    assert order == ["clip-c.wav", "clip-a.wav", "clip-b.wav"] and not list(folder.glob("*.yaml"))
    alone = {}
    for wav in order:
        out = tmp_path / f"{wav}.de"
        assert decode(kit, "--audio", folder / wav, "--out", out) == 0
        alone[wav] = lines(out)
    got = lines(both / "KITCLIPS.de")
    assert got == [alone[w][0] for w in order]
    assert got != [alone[w][0] for w in sorted(order)]
    head = log(both / "KITCLIPS.de")[0]
    assert head["testset"] == "KITCLIPS" and head["audio_kind"] == "testset"
    assert sorted(head["references"]) == ["de", "en", "zh"]


def test_several_testsets_resume_as_a_whole(kit, testsets, both, tmp_path, monkeypatch, capsys):
    out = tmp_path / "hyp"
    real = decoding.iter_translate
    calls = []

    def interrupted(model, processor, waves, *a, **k):
        calls.append(len(waves))
        for n, item in enumerate(real(model, processor, waves, *a, **k)):
            if len(calls) == 2 and n == 1:  # inside the second test set, after one segment
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(decoding, "iter_translate", interrupted)
    args = ["--audio", testsets / "KITTALKS", "--audio", testsets / "KITCLIPS", "--out-dir", out, "--batch-size", "3"]
    assert decode(kit, *args) == 130
    assert (out / "KITTALKS.de").read_bytes() == (both / "KITTALKS.de").read_bytes()
    assert not (out / "KITCLIPS.de").exists()
    assert [r["type"] for r in log(out / "KITCLIPS.de")] == ["header", "segment"]

    calls.clear()
    monkeypatch.setattr(decoding, "iter_translate", lambda m, p, waves, *a, **k: (calls.append(len(waves)), real(m, p, waves, *a, **k))[1])
    capsys.readouterr()
    assert decode(kit, *args) == 2  # logs exist: refuse without --resume
    assert "a decode log already exists: pass --resume" in first_error_line(capsys)
    assert decode(kit, *args, "--resume", "--json") == 0
    assert calls == [2]  # only the two segments missing from KITCLIPS's log; KITTALKS untouched
    summaries = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["decoded"], s["resumed"]) for s in summaries] == [("KITTALKS", 0, 5), ("KITCLIPS", 2, 1)]
    for name in ("KITTALKS.de", "KITCLIPS.de"):
        assert (out / name).read_bytes() == (both / name).read_bytes()


def test_names_and_outputs(kit, testsets, tmp_path, capsys):
    assert decode(kit, "--audio", testsets / "KITTALKS", "--audio", testsets / "KITCLIPS", "--out", tmp_path / "x.de") == 2
    assert first_error_line(capsys).endswith("--out names one file but --audio is given 2 times: use --out-dir DIR")
    assert decode(kit, "--audio", testsets / "KITCLIPS", "--audio", testsets / "KITCLIPS", "--out-dir", tmp_path) == 2
    assert "two inputs are both named 'KITCLIPS'" in first_error_line(capsys)
    # NAME=SPEC names an input; a ?split=... query is not mistaken for a name
    clip = testsets / "KITCLIPS" / "clip-a.wav"
    assert decode(kit, "--audio", f"one={clip}", "--audio", f"{kit / 'data'}?split=dev", "--out-dir", tmp_path) == 0
    assert len(lines(tmp_path / "one.de")) == 1 and len(lines(tmp_path / "data.de")) == 8


def _copy_testset(testsets, tmp_path, name="KITTALKS") -> Path:
    d = tmp_path / name
    shutil.copytree(testsets / name, d)
    return d


def test_bad_testsets_are_one_line_errors(kit, testsets, tmp_path, capsys):
    d = _copy_testset(testsets, tmp_path)
    out = tmp_path / "out"
    (d / "FILE_ORDER").write_text("talk2.wav\ntalk3.wav\ntalk1.wav\n")
    assert decode(kit, "--audio", d, "--out-dir", out) == 2
    assert first_error_line(capsys) == f"iwslt-mc decode: error: {d / 'FILE_ORDER'}: line 2: talk3.wav: no such WAV in {d}"

    (d / "FILE_ORDER").write_text("talk2.wav\n")
    assert decode(kit, "--audio", d, "--out-dir", out) == 2
    assert first_error_line(capsys) == (f"iwslt-mc decode: error: {d / 'KITTALKS.yaml'}: segment 1: talk1.wav is not "
                                        f"listed in {d / 'FILE_ORDER'}")

    (d / "FILE_ORDER").write_text("talk2.wav\ntalk1.wav\n")
    shutil.copy(d / "KITTALKS.yaml", d / "other.yaml")
    assert decode(kit, "--audio", d, "--out-dir", out) == 2
    assert first_error_line(capsys) == (f"iwslt-mc decode: error: {d}: 2 segmentation YAMLs (KITTALKS.yaml, other.yaml): "
                                        "a test set has one; pass the one to use as --audio FOLDER/NAME.yaml")
    # naming the YAML chooses it, and FILE_ORDER beside it still sets the order
    inp = resolve_audio(str(d / "other.yaml"))
    assert inp.kind == "testset" and inp.name == "KITTALKS"
    assert [s.id for s in inp.segments][:2] == ["talk2.wav#1", "talk2.wav#2"]

    (d / "FILE_ORDER").write_text("\n\n")
    with pytest.raises(Exception, match="FILE_ORDER: empty"):
        resolve_audio(str(d / "other.yaml"))
    assert not out.exists()  # nothing decoded, nothing written


def _long_talk(kit_waves, n: int = 9):
    """Utterances with 0.7 s pauses: > 30 s of audio with pauses to cut at; returns (wave, [start, end] each)."""
    waves = [w for _, w in kit_waves["dev"] + kit_waves["eval"]][:n]
    gap = np.zeros(int(0.7 * 16000), np.float32)
    parts, spans, pos = [gap], [], len(gap)
    for w in waves:
        parts += [w, gap]
        spans.append((pos / 16000, (pos + len(w)) / 16000))
        pos += len(w) + len(gap)
    return np.concatenate(parts), spans


def test_segment_over_30s_is_cut_at_pauses_and_joined_into_one_line(kit, kit_waves, tmp_path, capsys):
    wave, spans = _long_talk(kit_waves)
    total = len(wave) / 16000
    assert total > 35
    d = tmp_path / "LONGSEG"
    d.mkdir()
    sf.write(str(d / "a.wav"), wave, 16000, subtype="FLOAT")
    sf.write(str(d / "b.wav"), wave[: 5 * 16000], 16000, subtype="FLOAT")
    (d / "FILE_ORDER").write_text("b.wav\na.wav\n")
    (d / "LONGSEG.yaml").write_text(f"- {{wav: a.wav, offset: 0.0, duration: {total:.3f}}}\n"
                                    "- {wav: b.wav, offset: 1.0, duration: 3.0}\n")
    out = tmp_path / "hyp"
    capsys.readouterr()
    assert decode(kit, "--audio", d, "--out-dir", out) == 0
    err = capsys.readouterr().err
    got = lines(out / "LONGSEG.de")
    assert len(got) == 2
    recs = log(out / "LONGSEG.de")
    segs = [r for r in recs if r["type"] == "segment"]
    assert [s["id"] for s in segs] == ["b.wav#1", "a.wav#1"]
    pieces = segs[1]["pieces"]
    assert len(pieces) >= 2 and all(p["duration"] <= 30 for p in pieces)
    assert sum(p["duration"] for p in pieces) > 30  # all of the speech is decoded, not the first 30 s
    # cuts fall in pauses: no utterance is split between two pieces
    for p in pieces:
        inside = [s for s in spans if s[0] < p["start"] + p["duration"] and s[1] > p["start"]]
        assert all(p["start"] <= a and b <= p["start"] + p["duration"] for a, b in inside)
    assert got[1] == " ".join(p["text"] for p in pieces if p["text"]) == segs[1]["text"]
    assert segs[1]["n_tokens"] == sum(p["n_tokens"] for p in pieces)
    summary = recs[-1]
    assert summary["split_segments"] == ["a.wav#1"] and summary["pieces"] == len(pieces)
    assert f"1 segment(s) longer than 30 s were cut at pauses into {len(pieces)} pieces" in err and "a.wav#1" in err

    # Each piece decoded as a segment of its own gives the same text
    (d / "LONGSEG.yaml").write_text("".join(f"- {{wav: a.wav, offset: {p['start']}, duration: {p['duration']}}}\n"
                                            for p in pieces))
    out2 = tmp_path / "pieces"
    assert decode(kit, "--audio", d, "--out-dir", out2) == 0
    assert lines(out2 / "LONGSEG.de") == [p["text"] for p in pieces]


def test_long_dataset_example_and_chinese_join(kit, kit_waves, tmp_path):
    wave, _ = _long_talk(kit_waves)
    sf.write(str(tmp_path / "long.wav"), wave, 16000, subtype="FLOAT")
    sf.write(str(tmp_path / "short.wav"), wave[: 4 * 16000], 16000, subtype="FLOAT")
    tsv = tmp_path / "list.tsv"
    tsv.write_text("audio\ttext_en\ttext_zh\nshort.wav\ta\tb\nlong.wav\tc\td\n")
    out = tmp_path / "hyp.zh"
    assert cli.main(["decode", str(kit / "model"), "--lang", "en-zh", "--audio", str(tsv), "--out", str(out),
                     "--max-new-tokens", str(NEW), "--no-progress", "--mode", "reference"]) == 0
    segs = [r for r in log(out) if r["type"] == "segment"]
    assert "pieces" not in segs[0] and len(segs[1]["pieces"]) >= 2
    assert lines(out)[1] == "".join(p["text"] for p in segs[1]["pieces"])  # Chinese: joined without spaces


def test_killed_run_resumes_to_identical_files(kit, testsets, both, tmp_path, kill9):
    """kill -9 while the second test set decodes, then --resume: the same bytes as one uninterrupted run."""
    import os
    import subprocess
    import sys

    out = tmp_path / "hyp"
    cmd = [sys.executable, "-m", "iwslt_mc", "decode", str(kit / "model"), "--lang", "en-de", "--max-new-tokens", str(NEW),
           "--no-progress", "--audio", str(testsets / "KITTALKS"), "--audio", str(testsets / "KITCLIPS"),
           "--out-dir", str(out), "--batch-size", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    second = out / "KITCLIPS.de.jsonl"
    # still decoding when killed
    kill9(cmd, lambda: second.exists() and second.read_text("utf-8").count('"type": "segment"') >= 1, 180, 0.02,
          env=env, stderr=subprocess.PIPE)
    assert (out / "KITTALKS.de").exists() and not (out / "KITCLIPS.de").exists()
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("KITTALKS.de", "KITCLIPS.de"):
        assert (out / name).read_bytes() == (both / name).read_bytes(), name
    tail = json.loads(second.read_text("utf-8").splitlines()[-1])
    assert tail["type"] == "summary" and tail["resumed"] >= 1 and tail["resumed"] + tail["decoded"] == 3


def test_unlisted_wavs_and_unused_wavs_are_noted(testsets, tmp_path, monkeypatch):
    from iwslt_mc.commands.decode import split_name

    d = _copy_testset(testsets, tmp_path, "KITCLIPS")
    (d / "FILE_ORDER").write_text("clip-b.wav\n")
    inp = resolve_audio(str(d))  # no YAML: the listed WAV first, then the others by name (as the organizers do)
    assert [s.id for s in inp.segments] == ["clip-b.wav", "clip-a.wav", "clip-c.wav"]
    assert inp.notes == ["KITCLIPS: 2 WAV(s) not in FILE_ORDER are decoded after the listed ones, in name order: "
                         "clip-a.wav, clip-c.wav"]

    t = _copy_testset(testsets, tmp_path, "KITTALKS")
    (t / "FILE_ORDER").write_text("talk2.wav\ntalk1.wav\nextra.wav\n")
    shutil.copy(t / "talk2.wav", t / "extra.wav")
    inp = resolve_audio(str(t))
    assert len(inp.segments) == 5
    assert inp.notes == ["KITTALKS: 1 WAV(s) in FILE_ORDER have no segment in KITTALKS.yaml and give no line: extra.wav"]
    (t / "KITTALKS.de").write_text("one line\n")
    assert resolve_audio(str(t)).notes[-1] == f"{t / 'KITTALKS.de'}: 1 reference lines for 5 segments"

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a=b.wav").write_bytes(b"")
    assert split_name("a=b.wav") == (None, "a=b.wav")  # an existing path is never split
    assert split_name("tst=test/x.wav") == ("tst", "test/x.wav")
    assert split_name("data?split=eval") == (None, "data?split=eval")
