"""The offline demo kit: determinism, load/generate round trip, data schema, long form, CLI errors."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from iwslt_mc import cli, kit as kitmod
from iwslt_mc.families.qwen2_audio import kit as qkit
from iwslt_mc.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DETERMINISTIC_FILES = ["model/model.safetensors", "model/config.json", "model/generation_config.json",
                       "model/tokenizer.json", "model/tokenizer_config.json", "model/chat_template.jinja",
                       "model/processor_config.json", "data/dev.parquet", "data/eval.parquet",
                       "data/long/talk.wav", "data/long/talk.yaml", "kit.json",
                       "data/testsets/KITTALKS/talk1.wav", "data/testsets/KITTALKS/talk2.wav",
                       "data/testsets/KITTALKS/KITTALKS.yaml", "data/testsets/KITTALKS/FILE_ORDER",
                       "data/testsets/KITCLIPS/clip-c.wav", "data/testsets/KITCLIPS/FILE_ORDER"]


def _segments(kit: Path) -> list[dict]:
    return yaml.safe_load((kit / "data/long/talk.yaml").read_text("utf-8"))


# --- shipped data ---------------------------------------------------------------------------------

def test_shipped_speech_matches_texts():
    rows = kitmod.utterances()
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert len(rows) >= 12
    assert {r["split"] for r in rows} == set(kitmod.SPLITS)
    flacs = sorted((kitmod.KITDATA / "audio").glob("*.flac"))
    assert [p.stem for p in flacs] == [f"{r['index']:03d}" for r in rows]
    for p in flacs:
        info = sf.info(p)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert 1.5 < info.duration < 10, p
    shipped = sum(p.stat().st_size for p in kitmod.KITDATA.rglob("*") if p.is_file())
    assert shipped < 3_000_000  # "a few MB at most" in the repository


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng not installed")
def test_speech_tool_reproduces_shipped_audio():
    r = subprocess.run([sys.executable, str(ROOT / "tools/make_kit_speech.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(kitmod.utterances())} utterances" in r.stdout and "0 changed" in r.stdout


# --- determinism ----------------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_weights(kit, tmp_path, capsys):
    # The second build goes through the CLI (--json), into an existing empty directory.
    again = tmp_path / "again"
    again.mkdir()
    assert cli.main(["kit", str(again), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 0 and summary["path"] == str(again) and summary["seconds"] > 0
    for name in DETERMINISTIC_FILES:
        assert (kit / name).read_bytes() == (again / name).read_bytes(), name
    assert summary["weights_sha256"] == json.loads((kit / "kit.json").read_text())["weights_sha256"]

    other = qkit.build_kit(tmp_path / "seed1", seed=1)
    assert other.seed == 1
    assert (other_w := (tmp_path / "seed1/model/model.safetensors").read_bytes()) != (kit / "model/model.safetensors").read_bytes()
    assert len(other_w) == (kit / "model/model.safetensors").stat().st_size  # same shapes, other values
    # The seed changes only the weights: tokenizer and data are the same.
    for name in ("model/tokenizer.json", "model/config.json", "data/eval.parquet"):
        assert (tmp_path / "seed1" / name).read_bytes() == (kit / name).read_bytes(), name


# --- model and processor --------------------------------------------------------------------------

def test_model_files_and_config(kit, kit_processor):
    from safetensors import safe_open

    cfg = json.loads((kit / "model/config.json").read_text())
    tok = kit_processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in qkit.SPECIAL_TOKENS}
    assert len(set(ids.values())) == 6 and tok.unk_token_id not in ids.values()
    # Special tokens follow the learned vocabulary, in the real tokenizer's order.
    base = ids["<|endoftext|>"]
    assert [ids[t] - base for t in qkit.SPECIAL_TOKENS] == list(range(6)) and base == len(tok) - 6
    assert cfg["audio_token_index"] == ids["<|AUDIO|>"]
    assert cfg["text_config"]["eos_token_id"] == cfg["eos_token_id"] == ids["<|im_end|>"]
    assert cfg["text_config"]["pad_token_id"] == ids["<|endoftext|>"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert cfg["text_config"]["num_key_value_heads"] < cfg["text_config"]["num_attention_heads"]
    assert cfg["audio_config"]["num_mel_bins"] == 128 and cfg["audio_config"]["max_source_positions"] == 1500
    vocab = cfg["text_config"]["vocab_size"]
    assert vocab >= len(tok) and vocab % qkit.VOCAB_MULTIPLE == 0
    assert 1000 <= len(tok) <= 2100

    gen = json.loads((kit / "model/generation_config.json").read_text())
    assert gen["do_sample"] is False and ids["<|im_end|>"] in gen["eos_token_id"]
    assert gen["pad_token_id"] == ids["<|endoftext|>"]

    with safe_open(kit / "model/model.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}
    params = sum(int(np.prod(s)) for s in shapes.values())
    summary = json.loads((kit / "kit.json").read_text())
    assert summary["params"] == params
    # Untied lm_head and embeddings of vocab rows; GQA: k_proj has half the query width.
    emb = [s for k, s in shapes.items() if k.endswith("embed_tokens.weight")]
    head = [s for k, s in shapes.items() if k.endswith("lm_head.weight")]
    assert emb == [(vocab, 64)] and head == [(vocab, 64)]
    k_proj = [s for k, s in shapes.items() if k.endswith("layers.0.self_attn.k_proj.weight") and "audio" not in k]
    assert k_proj == [(32, 64)]


def test_tokenizer_round_trips_all_three_languages(kit_processor):
    tok = kit_processor.tokenizer
    for row in kitmod.utterances():
        for lang in kitmod.LANGS:
            text = row[f"text_{lang}"]
            ids = tok(text).input_ids
            assert tok.decode(ids) == text
            assert len(ids) < len(text.encode("utf-8")) * 0.6, (lang, text)  # BPE merges learned for each language
    unseen = "Quantenchromodynamik 量子色动力学 zebra"
    assert tok.decode(tok(unseen).input_ids) == unseen  # byte-level: nothing is unknown


def test_chat_template_is_qwen2_audio(kit_processor):
    from iwslt_mc.families import prompt_text

    assert prompt_text(kit_processor, "en-de") == (
        "<|im_start|>system\nYou are a professional translator.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "Translate the English speech into German:<|im_end|>\n<|im_start|>assistant\n")
    # Without a system message the template supplies Qwen's default one.
    text = kit_processor.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


def test_load_and_generate_on_kit_audio(kit_processor, kit_model, kit_waves):
    import torch

    from iwslt_mc.families import prompt_text

    _, wave = kit_waves["eval"][0]
    inputs = kit_processor(text=prompt_text(kit_processor, "en-zh"), audio=wave, sampling_rate=16000, return_tensors="pt")
    frames = int(inputs["feature_attention_mask"].sum())
    assert frames == len(wave) // 160
    expected_audio_tokens = (((frames - 1) // 2 + 1) - 2) // 2 + 1
    n_audio = int((inputs["input_ids"] == kit_model.config.audio_token_index).sum())
    assert n_audio == expected_audio_tokens
    with torch.no_grad():
        out1 = kit_model.generate(**inputs, max_new_tokens=6)
        out2 = kit_model.generate(**inputs, max_new_tokens=6)
    prompt_len = inputs["input_ids"].shape[1]
    assert prompt_len < out1.shape[1] <= prompt_len + 6  # at most 6 new tokens (fewer if eos comes)
    assert torch.equal(out1, out2)  # greedy
    assert torch.equal(out1[:, :prompt_len], inputs["input_ids"])
    new = out1[0, prompt_len:]
    assert int(new.max()) < kit_model.config.text_config.vocab_size
    assert isinstance(kit_processor.decode(new, skip_special_tokens=True), str)


def test_thirty_seconds_of_audio_fit(kit, kit_processor, kit_model):
    import torch

    from iwslt_mc.decoding.audio import load_audio
    from iwslt_mc.families import prompt_text

    wave = load_audio(kit / "data/long/talk.wav", start=0.0, duration=30.0)
    inputs = kit_processor(text=prompt_text(kit_processor, "en-de"), audio=wave, sampling_rate=16000, return_tensors="pt")
    assert int((inputs["input_ids"] == kit_model.config.audio_token_index).sum()) == 750
    with torch.no_grad():
        logits = kit_model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], kit_model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


# --- data -----------------------------------------------------------------------------------------

def test_dataset_loads_with_datasets(kit):
    from datasets import Audio, load_dataset

    ds = load_dataset(str(kit / "data"))
    assert sorted(ds) == ["dev", "eval"]
    rows = {r["index"]: r for r in kitmod.utterances()}
    total = 0
    for split in ("dev", "eval"):
        d = ds[split]
        assert d.column_names == ["index", "audio", "text_en", "text_de", "text_zh"]
        assert isinstance(d.features["audio"], Audio)
        d = d.cast_column("audio", Audio(decode=False))
        for r in d:
            ref = rows[r["index"]]
            assert ref["split"] == split
            assert (r["text_en"], r["text_de"], r["text_zh"]) == (ref["text_en"], ref["text_de"], ref["text_zh"])
            wave, sr = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="int16")
            shipped, _ = sf.read(kitmod.KITDATA / "audio" / f"{r['index']:03d}.flac", dtype="int16")
            assert sr == 16000 and np.array_equal(wave, shipped)
            assert any("\u4e00" <= c <= "\u9fff" for c in r["text_zh"])
            total += 1
    assert total == len(rows) >= 12
    assert ds["dev"].num_rows >= 6 and ds["eval"].num_rows >= 6


def _shipped_wave(index: int) -> np.ndarray:
    wave, sr = sf.read(kitmod.KITDATA / "audio" / f"{index:03d}.flac", dtype="float32")
    assert sr == 16000
    return wave


def _check_examples(exs, rows, where: str):
    assert [e.id for e in exs] == [str(r["index"]) for r in rows], where
    for e, r in zip(exs, rows):
        assert (e.text_en, e.text_de, e.text_zh) == (r["text_en"], r["text_de"], r["text_zh"]), where
        assert np.array_equal(e.waveform(), _shipped_wave(r["index"])), f"{where}: row {r['index']}"


def test_project_reader_loads_the_parquet_files_directly(kit, tmp_path):
    """``iwslt_mc.training.data`` reads the kit's parquet (audio as {bytes, path} with a path that names no file
    on disk), a file of it, and parquet whose audio column holds embedded bytes with no path at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from iwslt_mc.training import data

    rows = {s: [r for r in kitmod.utterances() if r["split"] == s] for s in kitmod.SPLITS}
    table = pq.read_table(kit / "data/eval.parquet")
    names = {r["audio"]["path"] for r in table.to_pylist()}
    assert all(n.endswith(".wav") and not (kit / "data" / n).exists() for n in names)  # bytes are the audio
    _check_examples(data.load_examples(str(kit / "data/eval.parquet")), rows["eval"], "eval.parquet")
    _check_examples(data.load_examples(str(kit / "data"), "eval"), rows["eval"], "data dir, split eval")
    _check_examples(data.load_examples(str(kit / "data")), rows["dev"] + rows["eval"], "data dir, all splits")

    # the same rows with the audio cell rewritten: {bytes, path: null}, {bytes} only, plain binary
    audio = table.column("audio").to_pylist()
    blobs = [a["bytes"] for a in audio]
    variants = {
        "null-path": pa.array([{"bytes": b, "path": None} for b in blobs],
                              type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "bytes-only": pa.array([{"bytes": b} for b in blobs], type=pa.struct([("bytes", pa.binary())])),
        "binary": pa.array(blobs, type=pa.binary()),
    }
    for name, col in variants.items():
        f = tmp_path / name / "eval.parquet"
        f.parent.mkdir()
        pq.write_table(table.set_column(table.column_names.index("audio"), "audio", col), f)
        _check_examples(data.load_examples(str(f)), rows["eval"], name)
        _check_examples(data.load_examples(str(f.parent), "eval"), rows["eval"], f"{name} dir")
        report = data.validate_examples(data.load_examples(str(f)), "en-de", decode=False)  # headers of the bytes
        assert report.examples == len(rows["eval"]) and report.seconds > 0


def test_long_form_matches_eval_split(kit, kit_waves):
    segs = _segments(kit)
    eval_rows = [r for r in kitmod.utterances() if r["split"] == kitmod.LONG_SPLIT]
    assert len(segs) == len(eval_rows) == len(kit_waves["eval"])
    talk, sr = sf.read(kit / "data/long/talk.wav", dtype="int16")
    assert sr == 16000 and talk.ndim == 1
    end_prev = 0.0
    for seg, row in zip(segs, eval_rows):
        assert set(seg) == {"duration", "offset", "speaker_id", "wav"} and seg["wav"] == "talk.wav"
        assert seg["offset"] >= end_prev + 0.5 - 1e-9  # a pause of at least 0.5 s between segments
        end_prev = seg["offset"] + seg["duration"]
        start, n = round(seg["offset"] * sr), round(seg["duration"] * sr)
        assert start + n <= len(talk)
        shipped, _ = sf.read(kitmod.KITDATA / "audio" / f"{row['index']:03d}.flac", dtype="int16")
        assert np.array_equal(talk[start:start + n], shipped)
        # The pause right before each segment is silence.
        assert not talk[max(start - 8000, 0):start].any()
    assert len(talk) / sr >= end_prev + 0.5
    for lang in kitmod.LANGS:
        lines = (kit / f"data/long/talk.{lang}").read_text("utf-8").split("\n")
        assert lines[-1] == "" and lines[:-1] == [r[f"text_{lang}"] for r in eval_rows]


def test_long_form_slices_decode_with_load_audio(kit, kit_waves):
    from iwslt_mc.decoding.audio import load_audio

    for seg, (_, wave) in zip(_segments(kit), kit_waves["eval"]):
        piece = load_audio(kit / "data/long" / seg["wav"], start=seg["offset"], duration=seg["duration"])
        assert np.array_equal(piece, wave)


# --- errors and atomicity -------------------------------------------------------------------------

def test_non_empty_or_unwritable_out_dir_is_one_line_error(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    afile = tmp_path / "afile"
    afile.write_text("")
    for bad, words in [(full, "not empty"), (afile / "sub", "cannot write"), (afile, "not a directory")]:
        assert cli.main(["kit", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("iwslt-mc kit: error: ") and str(bad) in err and words in err
    assert (full / "x").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "full"]


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(qkit, "write_data", boom)  # fails after the model was written
    with pytest.raises(RuntimeError, match="disk full"):
        qkit.build_kit(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # no kit, no temporary directory, no empty OUT_DIR
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        qkit.build_kit(tmp_path / "empty")
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and not any((tmp_path / "empty").iterdir())


def test_cli_help_has_examples_without_torch():
    code = ("import sys\nfrom iwslt_mc import cli\n"
            "try:\n    cli.main(['kit', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "examples:" in r.stdout and "--seed" in r.stdout and r.stdout.strip().endswith("NOTORCH")


def test_user_error_type():
    with pytest.raises(UserError):
        qkit.build_kit(ROOT / "pyproject.toml")


# --- test-set folders in the organizers' layout ---------------------------------------------------

def test_testset_folders(kit, kit_waves):
    from iwslt_mc.decoding.audio import load_audio

    root = kit / "data" / "testsets"
    assert sorted(p.name for p in root.iterdir()) == ["KITCLIPS", "KITTALKS"]
    rows = {r["index"]: r for r in kitmod.utterances()}
    dev = dict(kit_waves["dev"])

    talks = root / "KITTALKS"
    assert sorted(p.name for p in talks.iterdir()) == ["FILE_ORDER", "KITTALKS.de", "KITTALKS.en", "KITTALKS.yaml",
                                                       "KITTALKS.zh", "talk1.wav", "talk2.wav"]
    order = (talks / "FILE_ORDER").read_text().splitlines()
    segs = yaml.safe_load((talks / "KITTALKS.yaml").read_text())
    yaml_wavs = list(dict.fromkeys(s["wav"] for s in segs))
    assert order == ["talk2.wav", "talk1.wav"] and yaml_wavs == ["talk1.wav", "talk2.wav"]  # the orders differ
    # every YAML slice is its dev utterance, sample for sample (16-bit WAV)
    expect = {"talk1.wav": [0, 1, 2], "talk2.wav": [3, 4]}
    for wav in yaml_wavs:
        mine = [s for s in segs if s["wav"] == wav]
        assert len(mine) == len(expect[wav])
        for s, i in zip(mine, expect[wav]):
            piece = load_audio(talks / wav, start=s["offset"], duration=s["duration"])
            n = min(len(piece), len(dev[i]))
            assert abs(len(piece) - len(dev[i])) <= 80 and np.abs(piece[:n] - dev[i][:n]).max() < 0.05
    # references follow the output order: FILE_ORDER, then the YAML
    for lang in kitmod.LANGS:
        got = (talks / f"KITTALKS.{lang}").read_text("utf-8").splitlines()
        assert got == [rows[i][f"text_{lang}"] for i in (3, 4, 0, 1, 2)]

    clips = root / "KITCLIPS"
    assert not list(clips.glob("*.yaml"))
    order = (clips / "FILE_ORDER").read_text().splitlines()
    assert order == ["clip-c.wav", "clip-a.wav", "clip-b.wav"]
    ids = {"clip-a.wav": 5, "clip-b.wav": 6, "clip-c.wav": 7}
    for wav, i in ids.items():
        assert np.abs(load_audio(clips / wav) - dev[i]).max() < 1e-3
    assert (clips / "KITCLIPS.de").read_text("utf-8").splitlines() == [rows[ids[w]]["text_de"] for w in order]
    assert json.loads((kit / "kit.json").read_text())["testsets"] == {"KITTALKS": 5, "KITCLIPS": 3}
