"""Data loading: ACL 60/60 layouts, the published split, CoVoST 2, local lists, mixing, checks."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from iwslt_mc.training import data
from iwslt_mc.errors import InputFileError, UserError


def _wav(seconds: float, sr: int = 16000, channels: int = 1, fmt: str = "WAV", freq: float = 220.0) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if channels > 1:
        wave = np.stack([wave] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt)
    return buf.getvalue()


def _write_parquet(path, rows, audio_type=True):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {k: [r.get(k) for r in rows] for k in rows[0]}
    arrays = {}
    for k, v in cols.items():
        if k == "audio" and audio_type:
            arrays[k] = pa.array(v, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        else:
            arrays[k] = pa.array(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)


def test_kit_reads_as_acl6060(kit, kit_waves):
    exs = data.load_examples(kit / "data")
    assert len(exs) == 16
    # dev before eval, as the published merge; ids from the kit's index column
    assert [e.id for e in exs[:8]] == [str(i) for i, _ in kit_waves["dev"]]
    assert [e.id for e in exs[8:]] == [str(i) for i, _ in kit_waves["eval"]]
    assert exs[0].source == f"{kit / 'data' / 'dev.parquet'}: row 0"
    assert all(e.text_en and e.text_de and e.text_zh for e in exs)
    w = exs[9].waveform()
    assert w.dtype == np.float32 and w.ndim == 1
    np.testing.assert_array_equal(w, kit_waves["eval"][1][1])
    assert data.target_text(exs[0], "en-zh") == exs[0].text_zh
    assert len(data.load_examples(kit / "data", "eval")) == 8
    with pytest.raises(InputFileError, match="no split 'validation'"):
        data.load_examples(kit / "data", "validation")


def test_published_split_matches_datasets_train_test_split(kit):
    import datasets

    parts = [datasets.Dataset.from_parquet(str(kit / "data" / f"{s}.parquet")) for s in ("dev", "eval")]
    merged = datasets.concatenate_datasets(parts).remove_columns(["audio"])
    ref = merged.train_test_split(test_size=4, seed=0)  # 16 examples -> a quarter held out
    train, test = data.load_examples(kit / "data", "train"), data.load_examples(kit / "data", "test")
    assert [e.text_en for e in test] == ref["test"]["text_en"]
    assert [e.text_en for e in train] == ref["train"]["text_en"]
    # the published size: 884 utterances, 100 held out with seed 0
    big = datasets.Dataset.from_dict({"i": list(range(884))}).train_test_split(test_size=100, seed=0)
    tr, te = data.heldout_split(list(range(884)), seed=0)
    assert te == big["test"]["i"] and tr == big["train"]["i"] and len(te) == 100
    # another seed gives another split, reproducibly
    other = data.load_examples(kit / "data", "test", seed=1)
    assert [e.id for e in other] == [e.id for e in data.load_examples(kit / "data", "test", seed=1)]
    assert [e.id for e in other] != [e.id for e in test]
    assert data.load_examples(f"{kit / 'data'}?holdout=6", "test").__len__() == 6


def test_save_to_disk_and_hub_parquet_layouts_read_the_same(kit, tmp_path):
    import datasets

    dd = datasets.DatasetDict({s: datasets.Dataset.from_parquet(str(kit / "data" / f"{s}.parquet")) for s in ("dev", "eval")})
    dd.save_to_disk(str(tmp_path / "disk"))
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for s in ("dev", "eval"):
        shutil.copy(kit / "data" / f"{s}.parquet", hub / f"{s}-00000-of-00001.parquet")
    want = [(e.id, e.text_de, e.waveform().shape) for e in data.load_examples(kit / "data", "test")]
    for spec in (tmp_path / "disk", tmp_path / "hub"):
        got = [(e.id, e.text_de, e.waveform().shape) for e in data.load_examples(spec, "test")]
        assert got == want, spec
    one = data.load_examples(kit / "data" / "eval.parquet")
    assert len(one) == 8 and data.load_examples(kit / "data" / "eval.parquet", "eval")[0].id == one[0].id


def test_local_lists_covost2_and_mixing(kit, tmp_path):
    clips = tmp_path / "cv" / "clips"
    clips.mkdir(parents=True)
    for i in range(10):
        (clips / f"c{i}.flac").write_bytes(_wav(0.5 + 0.1 * i, sr=48000, fmt="FLAC"))
    lines = ["path\tsentence\ttranslation\tclient_id"] + [f"c{i}.flac\tsentence {i}\tSatz {i}\tx" for i in range(10)]
    tsv = tmp_path / "cv" / "covost_v2.en_de.train.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cv = data.load_examples(tsv)
    assert [e.text_de for e in cv] == [f"Satz {i}" for i in range(10)] and cv[3].text_en == "sentence 3"
    assert cv[3].waveform().shape == (int(0.8 * 16000),)  # 48 kHz resampled to 16 kHz
    sample = data.load_examples(f"{tsv}?size=4", seed=3)
    assert len(sample) == 4 and [e.id for e in sample] == [e.id for e in data.load_examples(f"{tsv}?size=4", seed=3)]
    assert [e.id for e in sample] != [e.id for e in data.load_examples(f"{tsv}?size=4", seed=4)]
    zh = tmp_path / "cv" / "covost_v2.en_zh-CN.tsv"  # CoVoST 2's name for Chinese
    zh.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert data.load_examples(zh)[0].text_zh == "Satz 0" and data.load_examples(zh)[0].text_de is None
    anon = tmp_path / "cv" / "pairs.tsv"
    anon.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"\?lang=de"):
        data.load_examples(anon)
    assert data.load_examples(f"{anon}?lang=de")[0].text_de == "Satz 0"
    with pytest.raises(InputFileError, match="clips directory not found"):
        data.load_examples(f"{tsv}?clips={tmp_path / 'nope'}")

    (tmp_path / "talks").mkdir()
    (tmp_path / "talks" / "a.wav").write_bytes(_wav(1.0, sr=8000, channels=2))
    (tmp_path / "talks" / "b.wav").write_bytes(_wav(2.0))
    lst = tmp_path / "talks" / "list.tsv"
    lst.write_text("audio\ttext_en\ttext_de\na.wav\thello\thallo\nb.wav\tbye\ttschüss\n", encoding="utf-8")
    jl = tmp_path / "talks" / "list.jsonl"
    jl.write_text("".join(json.dumps({"audio": n, "text_en": e, "text_zh": z}, ensure_ascii=False) + "\n"
                          for n, e, z in [("a.wav", "hello", "你好"), ("b.wav", "bye", "再见")]), encoding="utf-8")
    t = data.load_examples(lst)
    assert [e.text_de for e in t] == ["hallo", "tschüss"] and t[1].source == f"{lst}: line 3"
    assert t[0].waveform().shape == (16000,)  # 8 kHz stereo -> 16 kHz mono
    assert data.load_examples(jl, lang="en-zh")[1].text_zh == "再见"

    mixed = data.load_examples([f"{kit / 'data'}?split=dev", f"{lst}?repeat=3", f"{tsv}?size=2"], seed=0)
    assert len(mixed) == 8 + 6 + 2
    assert [e.text_en for e in mixed[8:14]] == ["hello", "bye"] * 3
    assert data.describe_data([f"{tsv}?size=2", str(lst)], "train") == [
        {"path": str(tsv), "size": 2, "split": "train"}, {"path": str(lst), "split": "train"}]


def test_long_clips_truncated_and_counted(tmp_path):
    rows = [{"audio": {"bytes": _wav(31.0), "path": None}, "text_en": "long", "text_de": "lang"},
            {"audio": {"bytes": _wav(2.0), "path": None}, "text_en": "short", "text_de": "kurz"}]
    _write_parquet(tmp_path / "d" / "train.parquet", rows)
    exs = data.load_examples(tmp_path / "d")
    assert exs[0].waveform().shape == (data.MAX_SAMPLES,)
    for decode in (True, False):
        rep = data.validate_examples(exs, "en-de", decode=decode)
        assert (rep.examples, rep.truncated, rep.seconds, rep.decoded) == (2, 1, 33.0, decode)


def test_bad_data_one_line_errors(kit, tmp_path):
    good = {"audio": {"bytes": _wav(1.0), "path": None}, "text_en": "a", "text_de": "b"}
    _write_parquet(tmp_path / "noaudio" / "train.parquet", [{"text_en": "a", "text_de": "b"}])
    with pytest.raises(InputFileError, match=r"train\.parquet: no 'audio' column \(columns: text_en, text_de\)"):
        data.load_examples(tmp_path / "noaudio")
    _write_parquet(tmp_path / "node" / "train.parquet", [good])
    with pytest.raises(InputFileError, match="no text_zh column"):
        data.load_examples(tmp_path / "node", lang="en-zh")
    bad_audio = dict(good, audio={"bytes": b"RIFF not really audio", "path": None})
    _write_parquet(tmp_path / "corrupt" / "train.parquet", [good, bad_audio])
    exs = data.load_examples(tmp_path / "corrupt")
    for decode in (True, False):
        with pytest.raises(InputFileError) as e:
            data.validate_examples(exs, "en-de", decode=decode)
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / 'corrupt' / 'train.parquet'}: row 1: cannot decode audio") and "\n" not in msg
    _write_parquet(tmp_path / "empty" / "train.parquet", [good, good, dict(good, text_de="  ")])
    with pytest.raises(InputFileError, match=r"train\.parquet: row 2: empty text_de"):
        data.validate_examples(data.load_examples(tmp_path / "empty"), "en-de")
    lst = tmp_path / "l.tsv"
    lst.write_text("audio\ttext_en\ttext_de\nmissing.wav\ta\tb\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"l\.tsv: line 2: audio .*missing\.wav: audio file not found"):
        data.validate_examples(data.load_examples(lst), "en-de", decode=False)
    with pytest.raises(InputFileError, match="data not found"):
        data.load_examples(tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown option 'sise'"):
        data.load_examples(f"{kit / 'data'}?sise=3")
    with pytest.raises(UserError, match="size must be an integer"):
        data.load_examples(f"{kit / 'data'}?size=many")
    with pytest.raises(UserError, match="no examples"):
        data.validate_examples([], "en-de")


def test_write_parquet_round_trip(kit, tmp_path):
    exs = data.load_examples(kit / "data", "eval")[:3]
    exs[1].meta = {"origin": "teacher", "score": 12.5}
    path = data.write_parquet(exs, tmp_path / "out" / "train.parquet", extra_columns=("origin", "score"))
    back = data.load_examples(path.parent)
    assert [(e.id, e.text_en, e.text_de, e.text_zh) for e in back] == [(e.id, e.text_en, e.text_de, e.text_zh) for e in exs]
    assert back[1].meta == {"origin": "teacher", "score": 12.5} and back[0].meta == {}
    np.testing.assert_array_equal(back[2].waveform(), exs[2].waveform())
    assert data.audio_key(back[2]) == data.audio_key(exs[2])
