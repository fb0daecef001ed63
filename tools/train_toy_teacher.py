#!/usr/bin/env python3
"""Train the toy teacher: a small Qwen2-Audio that really translates the toy corpus's English speech.

Steps (each resumable: a finished step's output is reused when the script is run again)::

    WORK/init           randomly initialised Qwen2AudioForConditionalGeneration + processor (tokenizer
                        trained on the corpus's train texts), float32
    WORK/1-listen       the curriculum (``CURRICULUM``), each step a run of the project's own
    WORK/2-phrases      ``finetune`` stage (mode full): 256 phrases to memorisation, all phrases,
    WORK/3-sentences    then the sentences of the corpus's train split, twice (the second at half
    WORK/4-polish       the learning rate); the last is the teacher
    WORK/eval.json      chrF++/BLEU on the test split (greedy, iwslt_mc.decoding.core.translate)
    FIXTURE/            with --fixture: the teacher in float16 (FIXTURE/teacher) and the first 24 test
                        and 64 train utterances, Opus audio (FIXTURE/data)

The architecture is Qwen2-Audio's, scaled down (see ``make_arch``): Whisper-style audio encoder
(sinusoidal positions), average pooling, projector, Qwen2 decoder with grouped-query attention and
an untied lm_head; 128 mel bins with a 4 s feature window (``WhisperFeatureExtractor(chunk_length=4)``:
400 frames, so the encoder's ``max_source_positions`` is 200); a byte-level BPE built by the kit's
tokenizer builder. The finetune stage trains one direction (``ctx.lang``), so the teacher is en-de.

Why a curriculum: trained from scratch on sentences only, the model learns their language-model
prior and ignores the audio (after 2,250 steps on the tiny level, and 1,500 on the small level,
the loss was the same with the audio of another utterance; chrF++ 14-20). A small set learned to
memorisation makes it listen; then it generalises.

Reproduce the committed fixture (CPU, 2 threads: about 45 minutes)::

    python tools/make_toy_corpus.py --out toy/corpus --level tiny --voices 4 --max-seconds 3.9 \\
        --train 8000 --dev 300 --test 300
    python tools/make_toy_corpus.py --out toy/phrases --level phrases --voices 4 --max-seconds 3.9 \\
        --train 3000 --dev 100 --test 100
    OMP_NUM_THREADS=2 python tools/train_toy_teacher.py --corpus toy/corpus --phrases toy/phrases \\
        --work toy/run --fixture tests/fixtures/toy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LANGS = ("en-de", "en-zh")
TRAIN_OPTIONS = {"mode": "full", "dtype": "float32", "batch_size": 8, "lr": 1e-3, "scheduler": "cosine",
                 "weight_decay": 0.01, "save_steps": 250, "save_total_limit": 2, "logging_steps": 25, "progress": False}
# The curriculum: (name, corpus: "phrases" or "sentences", finetune options). A model trained from
# scratch on the sentences alone learns their language-model prior and ignores the audio (2,000+
# steps, chrF++ ~15); a small set of phrases learned to memorisation forces it to listen, all the
# phrases make that generalise, and the sentences then train in a few thousand steps.
CURRICULUM = [
    ("listen", "phrases", {"limit": 256, "max_steps": 1000, "warmup_steps": 20}),
    ("phrases", "phrases", {"max_steps": 600, "warmup_steps": 20}),
    ("sentences", "sentences", {"max_steps": 4000, "warmup_steps": 50}),
    ("polish", "sentences", {"max_steps": 4000, "warmup_steps": 50, "lr": 5e-4}),
]
WINDOW_SECONDS = 4
BPE_VOCAB_SIZE = 2000


def make_arch(window_seconds: int = WINDOW_SECONDS) -> dict:
    """The toy architecture; the encoder sees ``window_seconds`` of audio (50 positions a second after its
    stride-2 convolution, 25 audio tokens a second after pooling)."""
    return {
        "audio": dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512, d_model=128,
                      max_source_positions=window_seconds * 50, activation_function="gelu", dropout=0.0,
                      attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0),
        "text": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=384, max_position_embeddings=8192, rope_theta=10000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=False, hidden_act="silu", attention_dropout=0.0),
    }


ARCH = make_arch()
MAX_NEW_TOKENS = 96  # the longest reference is about 60 tokens


def tokenizer_lines(corpus: Path) -> list[str]:
    """The train split's texts in all three languages (the tokenizer covers English like the real one)."""
    import pyarrow.parquet as pq

    t = pq.read_table(corpus / "train.parquet", columns=["text_en", "text_de", "text_zh"]).to_pydict()
    return [s for col in ("text_en", "text_de", "text_zh") for s in t[col]]


def build_processor(lines: list[str], *, vocab_size: int = BPE_VOCAB_SIZE, window_seconds: int = WINDOW_SECONDS):
    """``Qwen2AudioProcessor`` with a BPE trained on ``lines`` by the kit's builder and a short feature window."""
    from unittest import mock

    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    from iwslt_mc.families.qwen2_audio import kit

    # The kit's builder takes its corpus and size from module globals; point them at the toy corpus
    # so the toy tokenizer is built exactly like the kit's (Qwen2 pre-tokenizer, special tokens last).
    with mock.patch.object(kit, "tokenizer_corpus", lambda: lines), mock.patch.object(kit, "BPE_VOCAB_SIZE", vocab_size):
        tokenizer = kit.build_tokenizer()
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=window_seconds,
                                 n_fft=400, padding_value=0.0, return_attention_mask=True)
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=kit.CHAT_TEMPLATE)


def build_model(tokenizer, *, seed: int = 0, arch: dict | None = None):
    """Randomly initialised float32 ``Qwen2AudioForConditionalGeneration`` with ``arch`` (default ``ARCH``)."""
    from unittest import mock

    import torch
    from transformers.models.whisper.modeling_whisper import sinusoids

    from iwslt_mc.families.qwen2_audio import kit

    arch = arch or ARCH
    with mock.patch.object(kit, "AUDIO_CONFIG", arch["audio"]), mock.patch.object(kit, "TEXT_CONFIG", arch["text"]), \
            mock.patch.object(kit, "MAX_NEW_TOKENS", MAX_NEW_TOKENS):
        model = kit.build_model(tokenizer, seed=seed)
    # The encoder's position table is frozen; the real model (Whisper's) holds sinusoids there, while a
    # model built from a config gets small random values.
    pos = model.model.audio_tower.embed_positions.weight
    with torch.no_grad():
        pos.copy_(sinusoids(*pos.shape))
    return model


def make_init(corpus: Path, out: Path, *, seed: int = 0, vocab_size: int = BPE_VOCAB_SIZE,
              window_seconds: int = WINDOW_SECONDS) -> Path:
    """Write the random initial model directory (with a provenance record) to ``out``."""
    from iwslt_mc.submission import provenance
    from iwslt_mc.fsutil import atomic_directory
    from iwslt_mc.modelio import save_model

    started = time.time()
    processor = build_processor(tokenizer_lines(corpus), vocab_size=vocab_size, window_seconds=window_seconds)
    arch = make_arch(window_seconds)
    model = build_model(processor.tokenizer, seed=seed, arch=arch)
    with atomic_directory(out) as tmp:
        save_model(model, processor, tmp)
        provenance.append(None, tmp, provenance.make_record(
            "toy-init", {"seed": seed, "bpe_vocab_size": vocab_size, "window_seconds": window_seconds, "arch": arch},
            techniques=["small random Qwen2-Audio (toy teacher initialisation)"], data=[str(corpus)],
            started=started, params_after=sum(p.numel() for p in model.parameters())))
    return out


def evaluate(model_dir: Path, corpus, *, split: str = "test", limit: int | None = None, langs=LANGS,
             batch_size: int = 16, max_new_tokens: int | None = MAX_NEW_TOKENS, model=None, processor=None) -> dict:
    """Greedy-decode ``split`` and score it per language (chrF++ de / chrF zh and BLEU, sacrebleu)."""
    import torch

    from iwslt_mc.training import data
    from iwslt_mc import modelio
    from iwslt_mc.decoding import core as decoding
    from iwslt_mc.scoring import scoring

    if model is None:
        model = modelio.load_model(model_dir, dtype=torch.float32, device="cpu")
    processor = processor or modelio.load_processor(model_dir)
    exs = data.load_examples(str(corpus), split, limit=limit)
    waves = [e.waveform() for e in exs]
    out = {"examples": len(exs), "split": split}
    for lang in langs:
        t0 = time.time()
        hyps = decoding.translate(model, processor, waves, lang, mode="fast", batch_size=batch_size,
                                  max_new_tokens=max_new_tokens)
        refs = [data.target_text(e, lang) for e in exs]
        s = scoring.corpus_scores([h.text for h in hyps], refs, lang)
        out[lang] = {"chrf": round(s["chrf"]["score"], 2), "bleu": round(s["bleu"]["score"], 2),
                     "chrf_name": s["chrf"]["name"], "signature": s["chrf"]["signature"],
                     "seconds": round(time.time() - t0, 1), "samples": [
                         {"ref": r, "hyp": h.text} for r, h in list(zip(refs, hyps))[:5]]}
    return out


def train_teacher(init: Path, out: Path, corpus: Path, *, lang: str = "en-de", options: dict | None = None,
                  seed: int = 0, work_dir: Path | None = None) -> dict:
    """Train ``init`` into ``out`` with the project's ``finetune`` stage; returns its provenance record."""
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    stage = make_stage("finetune", {**TRAIN_OPTIONS, **(options or {})})
    ctx = StageContext(lang=lang, data=[str(corpus)], seed=seed, device="cpu",
                       work_dir=work_dir or out.with_name(out.name + ".work"))
    return run_stage(stage, init, out, ctx)


def train_curriculum(init: Path, work: Path, corpora: dict, *, lang: str = "en-de", overrides: dict | None = None,
                     seed: int = 0) -> Path:
    """Run the ``CURRICULUM`` stages in order (each skipped when its output exists); returns the last output.
    ``overrides`` (finetune options) apply to the last stage."""
    model = init
    for i, (name, corpus, options) in enumerate(CURRICULUM, 1):
        out = work / f"{i}-{name}"
        if not out.exists():
            opts = {**options, **(overrides or {})} if i == len(CURRICULUM) else options
            rec = train_teacher(model, out, corpora[corpus], lang=lang, options=opts, seed=seed)
            print(f"{out.name}: {json.dumps(rec.get('train', {}))}", flush=True)
        model = out
    return model


def export_fixture(teacher: Path, fixture: Path, corpus: Path, *, test_rows: int = 24, train_rows: int = 64) -> dict:
    """``fixture/teacher``: the teacher in float16 (safetensors, processor, provenance); ``fixture/data``:
    the first ``test_rows`` test and ``train_rows`` train utterances, audio re-encoded as Ogg Opus."""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.submission import provenance
    from iwslt_mc.fsutil import atomic_directory

    import make_toy_corpus

    started = time.time()
    model = modelio.load_model(teacher, dtype=torch.float32, device="cpu")
    processor = modelio.load_processor(teacher)
    model = model.to(torch.float16)
    model.config.dtype = "float16"
    with atomic_directory(fixture / "teacher", overwrite=True) as tmp:
        modelio.save_model(model, processor, tmp)
        provenance.append(teacher, tmp, provenance.make_record(
            "toy-export", {"dtype": "float16"}, techniques=["cast to float16 for the test fixture"], started=started,
            params_after=sum(p.numel() for p in model.parameters())))
    rows = make_toy_corpus.write_slices(corpus, {"test": test_rows, "train": train_rows}, fixture / "data", opus=True)
    weights = sum(f.stat().st_size for f in (fixture / "teacher").glob("*.safetensors"))
    return {"teacher_bytes": sum(f.stat().st_size for f in (fixture / "teacher").iterdir()),
            "weights_bytes": weights, "data": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[-5:]))
    ap.add_argument("--corpus", type=Path, required=True, help="toy corpus dir (tools/make_toy_corpus.py --level tiny)")
    ap.add_argument("--phrases", type=Path, required=True,
                    help="the curriculum's phrase corpus (tools/make_toy_corpus.py --level phrases)")
    ap.add_argument("--work", type=Path, required=True, help="working dir (init, teacher, eval.json)")
    ap.add_argument("--lang", default="en-de", choices=LANGS, help="direction the teacher learns")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=WINDOW_SECONDS, help="feature window in seconds (corpus audio must fit)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="finetune option for the last curriculum stage (e.g. max_steps=6000)")
    ap.add_argument("--eval-limit", type=int, default=None, help="score only the first N test utterances")
    ap.add_argument("--fixture", type=Path, help="also export the float16 teacher and data slices here")
    args = ap.parse_args(argv)
    from iwslt_mc.floor.options import parse_set

    args.work.mkdir(parents=True, exist_ok=True)
    init = args.work / "init"
    if not init.exists():
        make_init(args.corpus, init, seed=args.seed, window_seconds=args.window)
        print(f"initial model: {init}", flush=True)
    teacher = train_curriculum(init, args.work, {"phrases": args.phrases, "sentences": args.corpus}, lang=args.lang,
                               overrides=parse_set(args.set), seed=args.seed)
    report = {"teacher": evaluate(teacher, args.corpus, limit=args.eval_limit, langs=(args.lang,))}
    if args.fixture:
        report["fixture"] = export_fixture(teacher, args.fixture, args.corpus)
        report["fixture_eval"] = evaluate(args.fixture / "teacher", args.fixture / "data", langs=(args.lang,))
    from iwslt_mc.fsutil import atomic_write_json

    atomic_write_json(args.work / "eval.json", report)
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
