"""Decoder: fast == reference token for token (fp32), one line per segment, resume, bad input, data-parallel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from iwslt_mc import cli
from iwslt_mc.decoding import core as decoding
from iwslt_mc.decoding import runner
from iwslt_mc.decoding.core import audio_token_count, one_line, plan_batches, translate
from iwslt_mc.families import prompt_text

NEW = 8  # random weights never stop on their own: keep generations short

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def all_waves(kit_waves):
    return [w for split in ("dev", "eval") for _, w in kit_waves[split]]


@pytest.fixture(scope="module")
def reference(kit_model, kit_processor, all_waves):
    return translate(kit_model, kit_processor, all_waves, "en-de", mode="reference", max_new_tokens=NEW)


def test_fast_equals_reference_token_for_token(kit_model, kit_processor, all_waves, reference):
    lengths = [len(w) / 16000 for w in all_waves]
    batches = plan_batches(lengths, 5)
    # the batches really mix prompt lengths, so left padding and the masks are exercised
    assert any(len({audio_token_count(len(all_waves[i])) for i in b}) > 1 for b in batches)
    fast = translate(kit_model, kit_processor, all_waves, "en-de", mode="fast", batch_size=5, max_new_tokens=NEW)
    assert len(fast) == len(reference) == 16
    assert all(1 <= h.n_tokens <= NEW for h in reference) and sum(h.n_tokens == NEW for h in reference) > 8
    assert [h.tokens for h in fast] == [h.tokens for h in reference]
    assert [h.text for h in fast] == [h.text for h in reference]
    assert len({tuple(h.tokens) for h in reference}) > 8  # outputs depend on the audio


def test_static_cache_and_prompt_inclusive_max_length(kit_model, kit_processor, all_waves, reference):
    waves = all_waves[:5]
    # the CUDA defaults, forced on: static cache, short last batch padded, next batch prepared in a thread
    static = translate(kit_model, kit_processor, waves, "en-de", mode="fast", batch_size=3, max_new_tokens=NEW,
                       static_cache=True, prefetch=True)
    assert [h.tokens for h in static] == [h.tokens for h in reference[:5]]
    # max_length counts the prompt (as published): each segment gets max_length - its own prompt length
    text = prompt_text(kit_processor, "en-de")
    plens = [kit_processor(text=text, audio=w, sampling_rate=16000, return_tensors="pt")["input_ids"].shape[1]
             for w in waves]
    assert len(set(plens)) > 1
    limit = max(plens) + 3
    ref = translate(kit_model, kit_processor, waves, "en-de", mode="reference", max_length=limit, max_new_tokens=NEW)
    fast = translate(kit_model, kit_processor, waves, "en-de", mode="fast", batch_size=5, max_length=limit,
                     max_new_tokens=NEW)
    assert [h.tokens for h in fast] == [h.tokens for h in ref]
    assert [h.tokens for h in ref] == [h.tokens[: limit - p] for h, p in zip(reference[:5], plens)]
    assert any(h.n_tokens == limit - p < NEW for h, p in zip(ref, plens))


def test_reference_is_the_published_recipe(kit_model, kit_processor, all_waves, reference):
    """Same tokens and text as the seed paper's code written out by hand."""
    import torch

    text = prompt_text(kit_processor, "en-de")
    assert "Translate the English speech into German:" in text and text.rstrip().endswith("assistant")
    inputs = kit_processor(text=text, audio=all_waves[3], sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        ids = kit_model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    ids = ids[:, inputs.input_ids.size(1):]
    resp = kit_processor.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
    assert reference[3].tokens == ids[0].tolist()
    assert reference[3].text == resp.strip()


def test_one_line():
    assert one_line("a\nb\r\nc\u2028d") == "a b c d"
    assert one_line("") == ""
    assert len(("x" + one_line("1\n2\x0b3\x1c4\u2029") + "\n").splitlines()) == 1


# ---------------------------------------------------------------------------------------------- CLI


def decode(kit, out, *extra, audio=None):
    return cli.main(["decode", str(kit / "model"), "--lang", "en-de", "--audio", str(audio or f"{kit / 'data'}?split=eval"),
                     "--out", str(out), "--max-new-tokens", str(NEW), "--no-progress", *extra])


def lines(path: Path) -> list[str]:
    data = path.read_bytes().decode("utf-8")
    assert data.endswith("\n")
    return data[:-1].split("\n")


@pytest.fixture(scope="module")
def eval_run(kit, tmp_path_factory, reference):
    out = tmp_path_factory.mktemp("full") / "hyp.de"
    assert decode(kit, out, "--batch-size", "3") == 0
    return out


def test_decode_dataset_writes_one_line_per_segment(eval_run, reference):
    got = lines(eval_run)
    assert got == [one_line(h.text) for h in reference[8:]]  # the eval split = the last 8 kit utterances
    log = [json.loads(x) for x in Path(str(eval_run) + ".jsonl").read_text().splitlines()]
    assert log[0]["type"] == "header" and log[0]["segments"] == 8 and log[0]["mode"] == "fast"
    segs = [r for r in log if r["type"] == "segment"]
    assert [r["index"] for r in segs] == list(range(8))
    assert [r["text"] for r in segs] == [h.text for h in reference[8:]]
    assert [r["n_tokens"] for r in segs] == [h.n_tokens for h in reference[8:]]
    assert all(r["seconds"] > 0 and r["duration"] > 1 for r in segs)
    assert log[-1]["type"] == "summary" and log[-1]["rtf"] > 0
    assert log[-1]["tokens"] == sum(h.n_tokens for h in reference[8:])


def test_decode_long_forms(kit, tmp_path, eval_run):
    long = kit / "data" / "long"
    out = tmp_path / "yaml.de"
    assert decode(kit, out, "--json", audio=long / "talk.yaml") == 0
    assert lines(out) == lines(eval_run)  # the YAML slices are the same utterances as the eval split
    out2 = tmp_path / "wav.de"
    assert decode(kit, out2, "--mode", "reference", audio=long / "talk.wav") == 0
    log = [json.loads(x) for x in Path(str(out2) + ".jsonl").read_text().splitlines()]
    segs = [r for r in log if r["type"] == "segment"]
    assert len(lines(out2)) == len(segs) >= 2
    assert all(r["duration"] <= 30 for r in segs) and segs[0]["id"].endswith("talk.wav#1")


def test_resume_after_interruption_gives_the_same_file(kit, tmp_path, eval_run, monkeypatch):
    out = tmp_path / "hyp.de"
    real = decoding.iter_translate
    calls = []

    def interrupted(*a, **k):
        for n, item in enumerate(real(*a, **k)):
            if n == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(decoding, "iter_translate", interrupted)
    assert decode(kit, out, "--batch-size", "2") == 130
    assert not out.exists()  # nothing half-written where the final file goes
    log = Path(str(out) + ".jsonl")
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["type"] for r in recs] == ["header", "segment", "segment", "segment"]
    with log.open("ab") as f:  # killed in the middle of writing a record
        f.write(b'{"type": "segment", "index": 5, "te')

    def counting(model, processor, waves, *a, **k):
        calls.append(len(waves))
        return real(model, processor, waves, *a, **k)

    monkeypatch.setattr(decoding, "iter_translate", counting)
    assert decode(kit, out) == 2  # a log exists: refuse without --resume
    assert decode(kit, out, "--resume", "--max-new-tokens", "5") == 2  # another setting: refuse
    assert calls == []
    assert decode(kit, out, "--resume", "--batch-size", "4", "--json") == 0
    assert calls == [5]  # only the segments missing from the log
    assert out.read_bytes() == eval_run.read_bytes()
    final = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["index"] for r in final if r["type"] == "segment"] == list(range(8))
    assert final[-1]["resumed"] == 3 and final[-1]["decoded"] == 5


def test_bad_input_stops_before_decoding_or_is_skipped(kit, tmp_path, capsys):
    long = kit / "data" / "long"
    shutil.copy(long / "talk.wav", tmp_path / "talk.wav")
    y = tmp_path / "talk.yaml"
    text = (long / "talk.yaml").read_text().splitlines()
    y.write_text("\n".join(text[:2] + ["- {duration: 5.0, offset: 36.0, speaker_id: spk1, wav: talk.wav}"]) + "\n")
    out = tmp_path / "hyp.de"
    capsys.readouterr()
    assert decode(kit, out, audio=y) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{y}: segment 3: talk.wav 36.00s+5.00s ends at 41.00s, past the end of the audio" in err
    assert not Path(str(out) + ".jsonl").exists()  # stopped before decoding

    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(str(tmp_path / "ok.wav"), np.zeros(16000, np.float32) + 0.01, 16000)
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(500))
    lst = tmp_path / "list.txt"
    lst.write_text("ok.wav\nmissing.wav\nempty.wav\ncorrupt.flac\n")
    assert decode(kit, out, audio=lst) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iwslt-mc decode: error: ") and len(err.splitlines()) == 1
    assert "line 2: missing.wav: audio file not found (and 2 more bad segments)" in err
    lst.write_text("ok.wav\nmissing.wav\nempty.wav\ncorrupt.flac\nok.wav\n")
    assert decode(kit, out, "--skip-bad", audio=lst) == 0
    err = capsys.readouterr().err
    assert "3 bad segment(s) will be empty lines" in err and "corrupt.flac" in err
    got = lines(out)
    assert len(got) == 5 and got[1:4] == ["", "", ""] and got[0] and got[4] == got[0]
    recs = [json.loads(x) for x in Path(str(out) + ".jsonl").read_text().splitlines()]
    assert [bool(r.get("error")) for r in recs if r["type"] == "segment"] == [False, True, True, True, False]


def test_data_parallel_two_processes(kit, tmp_path, eval_run):
    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate launcher not installed")
    # --multi_gpu makes accelerate start the processes with torchrun; with --device cpu they use gloo.
    out = tmp_path / "dp.de"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "iwslt_mc", "decode",
           str(kit / "model"), "--lang", "en-de", "--audio", f"{kit / 'data'}?split=eval", "--out", str(out),
           "--max-new-tokens", str(NEW), "--batch-size", "3", "--no-progress", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.read_bytes() == eval_run.read_bytes()
    assert not list(tmp_path.glob("dp.de.rank*.jsonl"))  # merged into dp.de.jsonl
    recs = [json.loads(x) for x in Path(str(out) + ".jsonl").read_text().splitlines()]
    assert recs[-1]["world_size"] == 2 and recs[-1]["decoded"] == 8 and [r["index"] for r in recs if r["type"] == "segment"] == list(range(8))


def test_custom_prompt(kit_model, kit_processor, all_waves, reference):
    waves = all_waves[:3]
    instr = "Describe the sounds you hear, in one word, loudly and clearly please!"
    ref = translate(kit_model, kit_processor, waves, "en-de", mode="reference", max_new_tokens=NEW, prompt=instr)
    fast = translate(kit_model, kit_processor, waves, "en-de", mode="fast", max_new_tokens=NEW, prompt=instr)
    assert [h.tokens for h in fast] == [h.tokens for h in ref]
    assert [h.tokens for h in ref] != [h.tokens for h in reference[:3]]  # the prompt reaches the model


# ------------------------------------------------------------- bad models and outputs: one line, exit 2


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _no_weights_loaded(monkeypatch):
    """Fail the test if any weight is read."""
    from iwslt_mc import modelio

    def refuse(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(modelio, "load_model", refuse)
    monkeypatch.setattr("transformers.Qwen2AudioForConditionalGeneration.from_pretrained", refuse)


def test_decode_refuses_another_architecture_before_loading(kit, tmp_path, monkeypatch, capsys):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    shutil.copy(kit / "model" / "model.safetensors", bert / "model.safetensors")
    _no_weights_loaded(monkeypatch)
    capsys.readouterr()
    assert cli.main(["decode", str(bert), "--lang", "en-de", "--audio", str(kit / "data" / "testsets" / "KITCLIPS"),
                     "--out", str(tmp_path / "hyp.de")]) == 2
    assert _error_line(capsys).startswith(f"iwslt-mc decode: error: {bert}: not a Qwen2-Audio model (model_type 'bert'")
    assert not (tmp_path / "hyp.de.jsonl").exists()

    # a hub id: its config.json (fetched or cached) is read first, and no weight
    import huggingface_hub

    calls = []

    def fake_download(repo, filename, **kw):
        calls.append((repo, filename))
        return str(bert / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert cli.main(["decode", "google-bert/bert-base-uncased", "--lang", "en-de", "--audio",
                     str(kit / "data" / "testsets" / "KITCLIPS"), "--out", str(tmp_path / "hyp.de")]) == 2
    assert _error_line(capsys).startswith("iwslt-mc decode: error: google-bert/bert-base-uncased: not a Qwen2-Audio "
                                          "model (model_type 'bert'")
    assert calls == [("google-bert/bert-base-uncased", "config.json")]


def test_decode_refuses_a_truncated_safetensors_file(kit, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    shutil.copytree(kit / "model", model)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size // 2)
    _no_weights_loaded(monkeypatch)
    capsys.readouterr()
    args = ["decode", str(model), "--lang", "en-de", "--audio", str(kit / "data" / "testsets" / "KITCLIPS"),
            "--out", str(tmp_path / "hyp.de")]
    assert cli.main(args) == 2
    line = _error_line(capsys)
    assert line.startswith(f"iwslt-mc decode: error: {weights}: truncated safetensors file (its header describes "
                           f"{size:,} bytes, the file has {size // 2:,})")
    with weights.open("r+b") as f:
        f.truncate(4)
    assert cli.main(args) == 2
    assert _error_line(capsys) == (f"iwslt-mc decode: error: {weights}: truncated safetensors file (4 bytes, "
                                   "not even the 8-byte header length)")


def test_decode_does_not_overwrite_a_file_without_a_log(kit, tmp_path, eval_run, capsys):
    out = tmp_path / "hyp.de"
    out.write_text("my notes\n")
    capsys.readouterr()
    assert decode(kit, out) == 2
    assert _error_line(capsys) == (f"iwslt-mc decode: error: {out}: already exists and has no decode log "
                                   "(hyp.de.jsonl): pass --overwrite to replace it")
    assert decode(kit, out, "--resume") == 2
    assert "already exists and has no decode log" in _error_line(capsys)
    assert out.read_text() == "my notes\n" and not Path(str(out) + ".jsonl").exists()
    assert decode(kit, out, "--overwrite") == 0
    assert out.read_bytes() == eval_run.read_bytes()


def test_a_truncated_wav_is_refused_not_decoded_as_a_short_clip(kit, tmp_path, capsys):
    """A 5 s WAV cut to 0.1 s (interrupted copy): libsndfile reads what is there as 0.1 s of audio; its header
    says 5 s. One line naming the file, before any decoding; --skip-bad makes it an empty line."""
    from iwslt_mc.decoding.audio import load_audio
    from iwslt_mc.errors import InputFileError

    sf.write(str(tmp_path / "ok.wav"), np.zeros(16000, np.float32) + 0.01, 16000, subtype="PCM_16")
    sf.write(str(tmp_path / "full.wav"), np.zeros(5 * 16000, np.float32) + 0.01, 16000, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:44 + 3200])
    assert sf.info(str(tmp_path / "cut.wav")).frames == 1600  # what soundfile alone says: 0.1 s
    with pytest.raises(InputFileError, match=r"cut.wav: truncated: its header declares 5.00 s of audio, the file "
                                             r"holds 0.10 s \(3,200 of 160,000 data bytes\)"):
        load_audio(tmp_path / "cut.wav")
    assert len(load_audio(tmp_path / "full.wav")) == 5 * 16000
    lst = tmp_path / "list.txt"
    lst.write_text("ok.wav\ncut.wav\n")
    out = tmp_path / "hyp.de"
    capsys.readouterr()
    assert decode(kit, out, audio=lst) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2: cut.wav: truncated: its header declares 5.00 s" in err[0], err
    assert not out.exists() and not Path(str(out) + ".jsonl").exists()


def test_a_second_decode_of_the_same_output_is_refused_while_the_first_runs(kit, tmp_path, eval_run, capsys):
    """Two `decode --resume` on one output would append to one log at once: the second is refused in one line
    while the first holds the output's lock (fcntl.flock), and nothing of the first run's files changes."""
    out = tmp_path / "hyp.de"
    log = Path(str(out) + ".jsonl")
    shutil.copy(eval_run, out)
    shutil.copy(str(eval_run) + ".jsonl", log)
    before = (out.read_bytes(), log.read_bytes())
    with runner.output_lock(out):  # what a running decode holds (another open file description: a real conflict)
        assert (tmp_path / ".hyp.de.lock").read_text() == str(os.getpid())
        capsys.readouterr()
        assert decode(kit, out, "--batch-size", "3", "--resume") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"iwslt-mc decode: error: {out}: another iwslt-mc decode (pid {os.getpid()}) is writing it now "
                       "(lock .hyp.de.lock): wait for it to finish, or choose another --out"]
        assert (out.read_bytes(), log.read_bytes()) == before
    assert not (tmp_path / ".hyp.de.lock").exists()
    # released: the resume runs (everything was done: the same file), and leaves no lock file
    assert decode(kit, out, "--batch-size", "3", "--resume") == 0
    assert out.read_bytes() == before[0] and not (tmp_path / ".hyp.de.lock").exists()


def test_resume_accepts_a_log_of_the_older_partial_fingerprint(kit, tmp_path, eval_run):
    from iwslt_mc.floor.modeldir import legacy_model_fingerprint

    out = tmp_path / "hyp.de"
    log = Path(str(out) + ".jsonl")
    recs = [json.loads(x) for x in Path(str(eval_run) + ".jsonl").read_text().splitlines()]
    recs[0]["model_fingerprint"] = legacy_model_fingerprint(kit / "model")
    log.write_text("".join(json.dumps(r) + "\n" for r in recs[:4]))  # header + 3 segments: interrupted
    assert decode(kit, out, "--batch-size", "3", "--resume") == 0
    assert out.read_bytes() == eval_run.read_bytes()
    recs[0]["model_fingerprint"] = "0123456789abcdef"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs[:4]))
    assert decode(kit, out, "--batch-size", "3", "--resume") == 2
