"""Gemma 4 decoding defaults that fit the model: audio tokens per second on the kits' processors, the
family's longest audio piece (18 s, 450 audio tokens, for gemma4_unified / gemma-4-12B-it; 30 s for the
conformer layout), and decode cutting a longer segment at pauses into such pieces."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from iwslt_mc.families import family_named


def _audio_tokens(processor, seconds: float) -> int:
    fam = family_named("gemma4")
    text = fam.prompt_text(processor, "en-de")
    inp = processor(text=text, audio=[np.zeros(int(seconds * 16000), np.float32)], sampling_rate=16000,
                    return_tensors="pt")
    return int((inp["input_ids"] == processor.audio_token_id).sum())


def test_audio_tokens_per_second_and_longest_piece_on_the_kits(gemma_kit, gemma_unified_kit):
    """Both layouts make 25 audio tokens per second (40 ms each); the unified processor does not cap them
    (decode's old 30 s window gave the 12B 750, past the ~450-500 where its audio fades), the conformer's caps
    at 750 (30 s). The family's longest piece: 18 s = 450 tokens for gemma4_unified, 30 s for gemma4."""
    from iwslt_mc.planning.planner import load_base_config
    from iwslt_mc.families.qwen2_audio.plan import qwen2_audio_7b_config

    fam = family_named("gemma4")
    uni, conf = gemma_unified_kit / "model", gemma_kit[0] / "model"
    pu, pc = fam.load_processor(uni), fam.load_processor(conf)
    assert [_audio_tokens(pu, s) for s in (1, 18, 30, 40)] == [25, 450, 750, 1000]
    assert [_audio_tokens(pc, s) for s in (1, 18, 30, 40)] == [25, 450, 750, 750]
    cu, cc = load_base_config(uni), load_base_config(conf)
    assert fam.max_segment_seconds(cu) == 18.0 and fam.max_segment_seconds(cc) == 30.0
    assert _audio_tokens(pu, fam.max_segment_seconds(cu)) == fam.UNIFIED_MAX_AUDIO_TOKENS == 450
    assert _audio_tokens(pc, fam.max_segment_seconds(cc)) == 750  # its processor's cap: nothing dropped
    # the 12B layout is gemma4_unified: 18 s
    from iwslt_mc.families.gemma4 import gemma4_12b_config

    assert fam.max_segment_seconds(gemma4_12b_config()) == 18.0
    qwen = family_named("qwen2_audio")
    assert qwen.max_segment_seconds(qwen2_audio_7b_config()) == 30.0  # unchanged: Qwen2-Audio's encoder window


def _kit_waves(kit_dir):
    import pyarrow.parquet as pq

    from iwslt_mc.decoding.audio import load_audio

    rows = []
    for split in ("dev", "eval"):
        table = pq.read_table(kit_dir / "data" / f"{split}.parquet", columns=["index", "audio"]).to_pylist()
        rows += [load_audio(r["audio"]["bytes"], name=f"{split}:{r['index']}") for r in table]
    return rows


def test_unified_decode_cuts_segments_longer_than_18s_into_pieces(gemma_unified_kit, tmp_path, capsys):
    """A 20-30 s segment: one piece of up to 30 s before; now pieces of at most 18 s, cut in pauses, decoded and
    joined into the segment's one line, and the message names the 18 s."""
    from iwslt_mc.cli import main

    waves = _kit_waves(gemma_unified_kit)
    gap = np.zeros(int(0.7 * 16000), np.float32)
    parts, total, spans = [gap], len(gap), []
    for w in waves:
        if (total + len(w) + len(gap)) / 16000 > 29.0:
            break
        parts += [w, gap]
        spans.append((total / 16000, (total + len(w)) / 16000))
        total += len(w) + len(gap)
    wave = np.concatenate(parts)
    seconds = len(wave) / 16000
    assert 18.0 < seconds <= 30.0  # one piece under the old 30 s window
    d = tmp_path / "LONGSEG"
    d.mkdir()
    sf.write(str(d / "a.wav"), wave, 16000, subtype="FLOAT")
    (d / "FILE_ORDER").write_text("a.wav\n")
    (d / "LONGSEG.yaml").write_text(f"- {{wav: a.wav, offset: 0.0, duration: {seconds:.3f}}}\n")
    out = tmp_path / "hyp.de"
    capsys.readouterr()
    assert main(["decode", str(gemma_unified_kit / "model"), "--lang", "en-de", "--audio", str(d), "--out", str(out),
                 "--max-new-tokens", "4", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    recs = [json.loads(x) for x in (out.parent / (out.name + ".jsonl")).read_text().splitlines()]
    seg = next(r for r in recs if r["type"] == "segment")
    pieces = seg["pieces"]
    assert len(pieces) >= 2 and all(p["duration"] <= 18.0 for p in pieces)
    for p in pieces:  # cut in pauses: no utterance split between two pieces
        inside = [s for s in spans if s[0] < p["start"] + p["duration"] and s[1] > p["start"]]
        assert all(p["start"] <= a and b <= p["start"] + p["duration"] for a, b in inside)
    assert len(out.read_text().splitlines()) == 1
    assert recs[-1]["max_segment_seconds"] == 18.0 and recs[-1]["split_segments"] == [seg["id"]]
    assert f"1 segment(s) longer than 18 s were cut at pauses into {len(pieces)} pieces" in " ".join(err.split())



def test_quantize_computes_in_bf16_on_gemma4_unless_told(gemma_unified_kit, tmp_path):
    """Gemma advises bf16 (the organizers' nf4-2q computes in fp16): a Gemma 4 model quantized to NF4 without a
    compute dtype computes in bf16 (its config.json, read back by from_pretrained), and the provenance says so;
    fp16 only when asked. The compute dtype leaves the torch.save size unchanged."""
    from iwslt_mc.sizing import sizer
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    ctx = StageContext(device="cpu", log=lambda s: None)
    sizes = {}
    for name, opts in (("default", {"method": "nf4"}), ("fp16", {"method": "nf4", "compute_dtype": "fp16"})):
        out = tmp_path / name
        run_stage(make_stage("quantize", opts), gemma_unified_kit / "model", out, ctx)
        q = json.loads((out / "config.json").read_text())["quantization_config"]
        prov = json.loads((out / "provenance.json").read_text())["stages"][-1]
        short, full = {"default": ("bf16", "bfloat16"), "fp16": ("fp16", "float16")}[name]
        assert (q["bnb_4bit_compute_dtype"], q["bnb_4bit_use_double_quant"]) == (full, True)
        assert f"({short} compute)" in prov["techniques"][0]
        sizes[name] = sizer.measure(out, "2027").torch_save.bytes
    assert sizes["default"] == sizes["fp16"]


def test_unified_distill_and_training_hear_at_most_18s(gemma_unified_kit, kit, tmp_path, monkeypatch):
    """The 18 s of decode hold in distillation and training too (Family.max_segment_seconds through
    families.max_audio_seconds): the unified teacher translates a 25 s clip's first 18 s (450 audio tokens,
    not 750), and fine-tuning encodes the same 18 s; a 5 s clip is untouched. Qwen2-Audio keeps 30 s."""
    from types import SimpleNamespace

    from iwslt_mc.decoding import core as decoding
    from iwslt_mc.training import training
    from iwslt_mc.training.data import Example, write_parquet
    from iwslt_mc.families import max_audio_seconds
    from iwslt_mc.planning.planner import load_base_config
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    rng = np.random.default_rng(0)
    long_wave = (0.1 * rng.standard_normal(25 * 16000)).astype(np.float32)
    short_wave = long_wave[: 5 * 16000]
    exs = [Example("long", long_wave, "a long talk", "ein langer Vortrag"),
           Example("short", short_wave, "a short one", "ein kurzer")]
    data = tmp_path / "data"
    write_parquet(exs, data / "train.parquet")

    heard, real_translate = [], decoding.translate

    def spy(model, processor, waves, *a, **k):
        heard.extend(len(w()) / 16000 for w in waves)
        return real_translate(model, processor, waves, *a, **k)

    monkeypatch.setattr(decoding, "translate", spy)
    ctx = StageContext(device="cpu", log=lambda s: None, lang="en-de", data=[str(data)], work_dir=tmp_path / "w1")
    run_stage(make_stage("distill", {"max_new_tokens": 4, "keep_references": True}), gemma_unified_kit / "model",
              tmp_path / "distilled", ctx)
    assert sorted(heard) == [5.0, 18.0]

    tokens, real_encode = [], training.encode_example

    def enc(processor, wave, *a, **k):
        item = real_encode(processor, wave, *a, **k)
        tokens.append(sum(t == processor.audio_token_id for t in item["input_ids"]))
        return item

    monkeypatch.setattr(training, "encode_example", enc)
    logs = []
    ctx = StageContext(device="cpu", log=logs.append, lang="en-de", data=[str(data)], work_dir=tmp_path / "w2")
    run_stage(make_stage("finetune", {"mode": "full", "max_steps": 1, "batch_size": 2}), gemma_unified_kit / "model",
              tmp_path / "ft", ctx)
    assert sorted(set(tokens)) == [125, 450]  # 5 s and 18 s at 25 tokens a second
    assert any(m.endswith("; 1 clips over 18 s will be truncated to 18 s") for m in logs)
    assert max_audio_seconds(gemma_unified_kit / "model") == 18.0 and max_audio_seconds(kit / "model") == 30.0
    assert max_audio_seconds(SimpleNamespace(config=load_base_config(kit / "model"))) == 30.0
    assert max_audio_seconds(SimpleNamespace()) == 30.0
