"""The offline demo kit's shared part: the small speech set every family's kit ships with.

A family's kit (:meth:`iwslt_mc.families.base.Family.build_kit`, the ``kit.py`` of its folder under
``iwslt_mc/families/``) writes its tiny random model and processor into ``OUT_DIR/model``, this module's
data into ``OUT_DIR/data``::

      data/                         ACL 60/60 schema, hub layout: splits "dev" and "eval"
        README.md                   dataset card whose `configs:` block names the two splits
        dev.parquet eval.parquet    columns index (int64), audio (Audio: {bytes, path}, 16 kHz WAV),
                                    text_en, text_de, text_zh
        long/                       the eval split as one talk, IWSLT long-audio style
          talk.wav                  the eval utterances in order, with pauses between them
          talk.yaml                 `- {duration: D, offset: O, speaker_id: spk1, wav: talk.wav}` per segment
          talk.en talk.de talk.zh   references, one segment per line
        testsets/                   two IWSLT test-set folders in the organizers' layout (dev-split speech)
          KITTALKS/                 talk1.wav talk2.wav, FILE_ORDER (talk2.wav first), KITTALKS.yaml
                                    (talk1's segments first: the YAML's order is not the output order),
                                    KITTALKS.en .de .zh (references in the output order)
          KITCLIPS/                 clip-a.wav clip-b.wav clip-c.wav, one utterance each, no YAML,
                                    FILE_ORDER clip-c, clip-a, clip-b; KITCLIPS.en .de .zh

Read the data with ``datasets.load_dataset(str(OUT_DIR / "data"))`` (a DatasetDict with "dev" and
"eval", like the hub's ACL 60/60) and cast ``audio`` to ``Audio(decode=False)``: datasets 5 decodes
audio with torchcodec, which does not load here; decode the bytes with ``iwslt_mc.decoding.audio.load_audio``.

The speech (``kitdata/audio/*.flac``) was made with espeak-ng by ``tools/make_kit_speech.py``;
the German and Chinese references were written by the project.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .fsutil import atomic_write_text

KITDATA = Path(__file__).resolve().parent / "kitdata"
SAMPLE_RATE = 16000
SPLITS = ("dev", "eval")
LONG_SPLIT = "eval"
LANGS = ("en", "de", "zh")

# Pauses of the long-form talk, in seconds (whole 10 ms, so the YAML's offsets are exact).
LEADING_SILENCE = 0.5
PAUSES = (0.6, 1.0, 0.8, 1.4, 0.5, 1.2, 0.7, 0.9)
TRAILING_SILENCE = 1.0

# The test-set folders (dev utterances by index). TESTSET_TALKS: WAV -> its utterances, in the YAML's
# order; FILE_ORDER lists the WAVs in another order. TESTSET_CLIPS: one utterance per WAV, no YAML.
TESTSET_TALKS = ("KITTALKS", {"talk1.wav": (0, 1, 2), "talk2.wav": (3, 4)}, ("talk2.wav", "talk1.wav"))
TESTSET_CLIPS = ("KITCLIPS", {"clip-a.wav": 5, "clip-b.wav": 6, "clip-c.wav": 7}, ("clip-c.wav", "clip-a.wav", "clip-b.wav"))


@dataclass
class KitInfo:
    """What ``build_kit`` wrote (also saved as ``kit.json``)."""

    path: str
    seed: int
    params: int
    model_bytes: int
    weights_sha256: str
    vocab_size: int
    tokenizer_size: int
    utterances: dict = field(default_factory=dict)
    speech_seconds: float = 0.0
    long_segments: int = 0
    long_seconds: float = 0.0
    testsets: dict = field(default_factory=dict)  # name -> segments (output lines)
    data_bytes: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def utterances() -> list[dict]:
    """The shipped utterances: index, split, voice, speed, text_en, text_de, text_zh (audio not read)."""
    rows = [json.loads(line) for line in (KITDATA / "utterances.jsonl").read_text("utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["index"])


def _audio_path(index: int) -> Path:
    return KITDATA / "audio" / f"{index:03d}.flac"


def tokenizer_corpus() -> list[str]:
    """Training text for the kit's BPE: the references plus ``kitdata/corpus/*.txt``, in a fixed order."""
    lines = []
    for row in utterances():
        lines += [row[f"text_{lang}"] for lang in LANGS]
    corpus = KITDATA / "corpus"
    if corpus.is_dir():
        for p in sorted(corpus.glob("*.txt")):
            lines += [ln.strip() for ln in p.read_text("utf-8").splitlines() if ln.strip()]
    return lines

def _wav_bytes(wave) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _read_pcm16(path: Path):
    import soundfile as sf

    wave, sr = sf.read(path, dtype="int16")
    if sr != SAMPLE_RATE or wave.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {sr} Hz, shape {wave.shape}")
    return wave


DATASET_CARD = """---
configs:
- config_name: default
  data_files:
  - split: dev
    path: dev.parquet
  - split: eval
    path: eval.parquet
---
# iwslt-mc demo speech set (ACL 60/60 schema)

English speech made with espeak-ng; German and Chinese references written by the iwslt-mc project.
Fields: `index`, `audio` (16 kHz mono WAV bytes), `text_en`, `text_de`, `text_zh`.
Splits as on the hub's ACL 60/60: `dev` and `eval`. `long/` holds the eval split as one talk
(`talk.wav`, segmentation `talk.yaml`, references `talk.en`, `talk.de`, `talk.zh`).
`testsets/KITTALKS` and `testsets/KITCLIPS` are IWSLT test-set folders in the organizers' layout
(WAVs, `FILE_ORDER`, at most one segmentation YAML, references in the output order), from dev speech.
"""


def write_data(data_dir: Path) -> dict:
    """Write the parquet splits and the long-audio form; returns counts and durations."""
    import numpy as np
    from datasets import Audio, Dataset, Features, Value

    # The audio column is built as a plain {bytes, path} struct and then cast to Audio: encoding
    # through the Audio feature directly needs torchcodec, which is not usable here.
    features = Features({
        "index": Value("int64"), "audio": {"bytes": Value("binary"), "path": Value("string")},
        "text_en": Value("string"), "text_de": Value("string"), "text_zh": Value("string"),
    })
    rows = utterances()
    waves = {r["index"]: _read_pcm16(_audio_path(r["index"])) for r in rows}
    data_dir.mkdir(parents=True)
    counts = {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        counts[split] = len(part)
        table = {
            "index": [r["index"] for r in part],
            "audio": [{"bytes": _wav_bytes(waves[r["index"]]), "path": f"{r['index']:03d}.wav"} for r in part],
            **{f"text_{lang}": [r[f"text_{lang}"] for r in part] for lang in LANGS},
        }
        ds = Dataset.from_dict(table, features=features).cast_column("audio", Audio(sampling_rate=SAMPLE_RATE))
        ds.to_parquet(str(data_dir / f"{split}.parquet"))
    atomic_write_text(data_dir / "README.md", DATASET_CARD)

    long_dir = data_dir / "long"
    long_dir.mkdir()
    talk = [r for r in rows if r["split"] == LONG_SPLIT]
    pieces, segments, pos = [np.zeros(round(LEADING_SILENCE * SAMPLE_RATE), np.int16)], [], round(LEADING_SILENCE * SAMPLE_RATE)
    for i, r in enumerate(talk):
        w = waves[r["index"]]
        segments.append((pos, len(w)))
        pieces.append(w)
        pos += len(w)
        gap = round((PAUSES[i % len(PAUSES)] if i + 1 < len(talk) else TRAILING_SILENCE) * SAMPLE_RATE)
        pieces.append(np.zeros(gap, np.int16))
        pos += gap
    (long_dir / "talk.wav").write_bytes(_wav_bytes(np.concatenate(pieces)))
    yaml_lines = [f"- {{duration: {n / SAMPLE_RATE:.2f}, offset: {start / SAMPLE_RATE:.2f}, speaker_id: spk1, wav: talk.wav}}"
                  for start, n in segments]
    atomic_write_text(long_dir / "talk.yaml", "\n".join(yaml_lines) + "\n")
    for lang in LANGS:
        atomic_write_text(long_dir / f"talk.{lang}", "".join(r[f"text_{lang}"] + "\n" for r in talk))
    return {
        "utterances": counts,
        "speech_seconds": round(sum(len(w) for w in waves.values()) / SAMPLE_RATE, 2),
        "long_segments": len(segments),
        "long_seconds": round(pos / SAMPLE_RATE, 2),
        "testsets": write_testsets(data_dir / "testsets", {r["index"]: r for r in rows}, waves),
    }


def _talk(waves: list, pauses) -> tuple:
    """Utterances joined with silences (leading, between, trailing): (int16 wave, [(start, samples)])."""
    import numpy as np

    pieces, spans, pos = [], [], 0
    for w, gap in zip(waves, pauses):
        n = round(gap * SAMPLE_RATE)
        pieces += [np.zeros(n, np.int16), w]
        spans.append((pos + n, len(w)))
        pos += n + len(w)
    pieces.append(np.zeros(round(TRAILING_SILENCE * SAMPLE_RATE), np.int16))
    return np.concatenate(pieces), spans


def write_testsets(root: Path, rows: dict, waves: dict) -> dict:
    """The two test-set folders of the module docstring; returns {name: segments}."""
    out = {}
    name, talks, order = TESTSET_TALKS
    d = root / name
    d.mkdir(parents=True)
    yaml_lines, per_wav = [], {}
    for wav, idx in talks.items():
        wave, spans = _talk([waves[i] for i in idx], [LEADING_SILENCE, *PAUSES[:len(idx) - 1]])
        (d / wav).write_bytes(_wav_bytes(wave))
        per_wav[wav] = idx
        yaml_lines += [f"- {{duration: {n / SAMPLE_RATE:.2f}, offset: {start / SAMPLE_RATE:.2f}, "
                       f"speaker_id: {Path(wav).stem}, wav: {wav}}}" for start, n in spans]
    atomic_write_text(d / f"{name}.yaml", "\n".join(yaml_lines) + "\n")
    atomic_write_text(d / "FILE_ORDER", "".join(w + "\n" for w in order))
    ordered = [i for wav in order for i in per_wav[wav]]
    for lang in LANGS:
        atomic_write_text(d / f"{name}.{lang}", "".join(rows[i][f"text_{lang}"] + "\n" for i in ordered))
    out[name] = len(ordered)

    name, clips, order = TESTSET_CLIPS
    d = root / name
    d.mkdir(parents=True)
    for wav, i in clips.items():
        (d / wav).write_bytes(_wav_bytes(waves[i]))
    atomic_write_text(d / "FILE_ORDER", "".join(w + "\n" for w in order))
    for lang in LANGS:
        atomic_write_text(d / f"{name}.{lang}", "".join(rows[clips[w]][f"text_{lang}"] + "\n" for w in order))
    out[name] = len(order)
    return out


def write_family_kit(out_dir, seed: int, build, *, family: str, technique: str, save_processor) -> KitInfo:
    """Write a family's kit to ``out_dir`` (new or empty) and return its :class:`KitInfo`: the tiny random model
    and processor that ``build()`` returns, as ``(model, processor)``, saved into ``model/`` (the processor by
    ``save_processor(processor, directory)``) with a provenance record (``technique``; ``{model_type}`` in it
    stands for the model's), :func:`write_data` into ``data/``, and ``kit.json`` (what the seed determines,
    under ``family`` and the model's ``model_type``). All or nothing: built in a temporary sibling directory and
    renamed into place; on failure or interruption ``out_dir`` is left as it was (absent, or empty).
    Shared by the Gemma 4 and Qwen2.5-Omni kits."""
    import time

    from .fsutil import atomic_directory, atomic_write_json, prepare_output_dir, sha256_file
    from .submission import provenance

    started = time.time()
    created = not Path(out_dir).exists()
    out = prepare_output_dir(out_dir).resolve()  # absolute: "." has no name to build a sibling of
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with _quiet_progress(), atomic_directory(out, overwrite=True) as tmp:
            model, processor = build()
            model_type = model.config.model_type
            model_dir = tmp / "model"
            model.save_pretrained(model_dir)
            save_processor(processor, model_dir)
            params = sum(p.numel() for p in model.parameters())
            provenance.append(None, model_dir, provenance.make_record(
                "kit", {"seed": seed, "family": family, "model_type": model_type},
                techniques=[technique.format(model_type=model_type)], started=started, params_after=params))
            data = write_data(tmp / "data")
            weights = model_dir / "model.safetensors"
            info = KitInfo(path=str(out), seed=seed, params=params, model_bytes=weights.stat().st_size,
                           weights_sha256=sha256_file(weights), vocab_size=model.config.text_config.vocab_size,
                           tokenizer_size=len(processor.tokenizer), data_bytes=_dir_bytes(tmp / "data"), **data)
            atomic_write_json(tmp / "kit.json", {"family": family, "model_type": model_type,
                                                 **{k: v for k, v in info.to_json().items() if k not in ("path", "seconds")}})
            _publish_modes(tmp)
    except BaseException:
        if created:  # prepare_output_dir made it: remove it again
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    info.seconds = round(time.time() - started, 2)
    return info


def _publish_modes(root: Path) -> None:
    """Temporary files and directories are created private (0600/0700); give the kit the usual modes."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def _quiet_progress():
    """No per-file progress bars from datasets and transformers for a build of a few seconds."""
    import datasets.utils.logging as ds_logging
    import transformers.utils.logging as tf_logging

    ds_on, tf_on = ds_logging.is_progress_bar_enabled(), tf_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if ds_on:
            ds_logging.enable_progress_bar()
        if tf_on:
            tf_logging.enable_progress_bar()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
