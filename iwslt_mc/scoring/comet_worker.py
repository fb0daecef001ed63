"""COMET worker: runs inside the COMET environment (transformers 4), never inside iwslt-mc's.

Started by :mod:`iwslt_mc.scoring.comet_env` as ``ENV/bin/python -I comet_worker.py MODE REQUEST RESULT``
with JSON files in and out. It imports nothing from iwslt_mc (whose modules need transformers 5)
and only the standard library at top level.

Modes:
- ``score``: request ``{"checkpoint", "src", "mt", "ref", "batch_size", "gpus", "qe"}``; result
  ``{"scores", "system_score", "model", "kind", "device", "batch_size", "versions"}``, scores in
  input order. ``qe``: the model must be reference-free (quality estimation, e.g. COMET-Kiwi); it is
  then given no references. ``kind``: "qe" or "reference" (what the loaded model needs).
- ``make-tiny``: request ``{"out_dir", "seed", "qe"}``; writes a tiny random COMET regression model
  (a tiny XLM-R encoder config and SentencePiece tokenizer in ``out_dir/encoder``, which is the
  checkpoint's ``pretrained_model``) so the COMET path can be tested offline; with ``qe`` a
  COMET-Kiwi-style reference-free model instead (``UnifiedMetric``, inputs ``[mt, src]``, sigmoid
  output); result ``{"checkpoint"}``.

A failure a user can fix is written as ``{"error": "one line"}`` and exit status 2.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path


class WorkerError(Exception):
    pass


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _versions() -> dict:
    import comet
    import torch
    import transformers

    return {"comet": comet.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _load_model(checkpoint: str):
    from comet import download_model, load_from_checkpoint

    _quiet()  # again: Lightning sets its loggers to INFO when imported
    path = Path(checkpoint)
    if not path.exists():  # a hub id; comet_env only lets one through when online
        try:
            path = Path(download_model(checkpoint))
        except Exception as e:
            raise WorkerError(f"{checkpoint}: cannot download the COMET model ({str(e).splitlines()[0]})") from None
    # Local files only when offline: the encoder config/tokenizer named by the checkpoint's
    # `pretrained_model` must then be a local directory or already in the Hugging Face cache.
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    try:
        return load_from_checkpoint(str(path), local_files_only=offline)
    except pickle.UnpicklingError:
        # torch>=2.6 loads only tensors and plain containers by default; checkpoints written by
        # older Lightning versions pickle more. Fall back to a full load, as COMET did before.
        print(f"comet_worker: {path}: safe (weights-only) load failed; loading it as a trusted "
              f"checkpoint", file=sys.stderr, flush=True)
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        return load_from_checkpoint(str(path), local_files_only=offline)
    except (OSError, ValueError) as e:  # transformers: missing files; huggingface_hub: not a repo id
        raise WorkerError(f"{path}: cannot load the COMET model's encoder ({str(e).splitlines()[0]})") from None


def score(req: dict) -> dict:
    import torch

    t0 = time.time()
    model = _load_model(req["checkpoint"])
    gpus = req.get("gpus")
    if gpus is None:
        gpus = 1 if torch.cuda.is_available() else 0
    batch_size = req.get("batch_size") or (64 if gpus else 16)
    samples = []
    for i, (s, m) in enumerate(zip(req["src"], req["mt"])):
        sample = {"src": s, "mt": m}
        if req.get("ref") is not None:
            sample["ref"] = req["ref"][i]
        samples.append(sample)
    load_s = time.time() - t0
    needs_ref = bool(model.requires_references())
    if req.get("qe") and needs_ref:
        raise WorkerError(f"{req['checkpoint']}: not a quality-estimation model: "
                          f"{type(model).__name__} needs references")
    if req.get("ref") is None and needs_ref:
        raise WorkerError(f"{req['checkpoint']}: {type(model).__name__} needs references and none were given")
    if not needs_ref:
        for sample in samples:
            sample.pop("ref", None)
    t1 = time.time()
    out = model.predict(samples, batch_size=batch_size, gpus=gpus, progress_bar=sys.stderr.isatty())
    scores = [float(x) for x in out.scores]
    return {
        "scores": scores,
        "system_score": float(out.system_score),
        "model": str(req["checkpoint"]),
        "kind": "reference" if needs_ref else "qe",
        "n": len(scores),
        "device": f"cuda x{gpus}" if gpus else "cpu",
        "batch_size": batch_size,
        "seconds": {"load": round(load_s, 2), "predict": round(time.time() - t1, 2)},
        "versions": _versions(),
    }


# A little text in the three languages the track uses, enough for a SentencePiece model whose
# pieces cover every character a test may feed.
_TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech translation models are compressed to fit into small storage bins.",
    "We evaluate with BLEU, chrF and COMET after resegmentation.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Sprachübersetzungsmodelle werden komprimiert, damit sie klein genug sind.",
    "Wir bewerten mit BLEU, chrF und COMET nach der Neusegmentierung.",
    "Äpfel, Öl und Übung: größer, schöner, weiß.",
    "快速的棕色狐狸跳过了懒狗。",
    "语音翻译模型被压缩以适应较小的存储空间。",
    "我们在重新分段后使用评测指标进行评估。",
    "0123456789 ,.;:!?-()'\"",
]


def _spread_estimator(model, seed: int) -> None:
    """Make a random QE model's scores differ visibly between segments (tests set thresholds between them).

    A random tiny encoder gives nearly the same sentence embedding for every input, so a random head
    scores everything about alike (differences near 1e-5). The first layer of the head is set to
    standardise the embeddings seen on the tiny corpus (centre, scale per feature), the second to
    random weights of unit scale: scores then spread over (0, 1) while staying a deterministic
    function of the input.
    """
    import torch

    seen = []
    handle = model.estimator.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    pairs = [{"src": _TINY_CORPUS[i], "mt": _TINY_CORPUS[j]} for i in range(len(_TINY_CORPUS))
             for j in range(len(_TINY_CORPUS)) if i != j]
    try:
        model.predict(pairs, batch_size=32, gpus=0, progress_bar=False)
    finally:
        handle.remove()
    x = torch.cat(seen).float()
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-8)
    linears = [m for m in model.estimator.modules() if isinstance(m, torch.nn.Linear)]
    first, last = linears[0], linears[-1]
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        w = torch.randn(first.weight.shape, generator=g) / first.weight.shape[1] ** 0.5 / sigma
        first.weight.copy_(w)
        first.bias.copy_(-(w @ mu))
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 2.0 / last.weight.shape[1] ** 0.5)
        last.bias.zero_()


def make_tiny(req: dict) -> dict:
    import pytorch_lightning as pl
    import sentencepiece as spm
    import torch
    import yaml
    from transformers import XLMRobertaConfig, XLMRobertaTokenizer, XLMRobertaTokenizerFast

    from comet.models import RegressionMetric, UnifiedMetric

    final = Path(req["out_dir"])
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise WorkerError(f"{final}: exists and is not empty")
    seed = int(req.get("seed", 0))
    # Built next to its final place and renamed at the end: never a half-written checkpoint.
    out = final.with_name(f".{final.name}.partial")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    enc = out / "encoder"
    enc.mkdir(parents=True, exist_ok=True)
    corpus = enc / "corpus.txt"
    corpus.write_text("\n".join(_TINY_CORPUS * 4) + "\n", encoding="utf-8")
    # XLM-R's tokenizer expects SentencePiece's default ids (<unk>=0, <s>=1, </s>=2) and shifts them.
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(enc / "sentencepiece.bpe"), vocab_size=256,
        model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, seed_sentencepiece_size=10000,
        minloglevel=2, num_threads=1)
    corpus.unlink()
    slow = XLMRobertaTokenizer(vocab_file=str(enc / "sentencepiece.bpe.model"), model_max_length=512)
    slow.save_pretrained(str(enc))
    fast = XLMRobertaTokenizerFast.from_pretrained(str(enc))  # converted from the slow one, locally
    fast.save_pretrained(str(enc))
    config = XLMRobertaConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    config.save_pretrained(str(enc))

    torch.manual_seed(seed)
    if req.get("qe"):
        # COMET-Kiwi's layout (wmt22-cometkiwi-da): a unified metric fed [mt, src], no reference.
        model = UnifiedMetric(
            encoder_model="XLM-RoBERTa", pretrained_model=str(enc), load_pretrained_weights=False,
            hidden_sizes=[32], sent_layer="mix", layer_transformation="softmax", word_layer=2,
            dropout=0.0, final_activation="sigmoid", input_segments=["mt", "src"])
        identifier = "unified_metric"
        _spread_estimator(model, seed)
    else:
        model = RegressionMetric(
            encoder_model="XLM-RoBERTa", pretrained_model=str(enc), load_pretrained_weights=False,
            hidden_sizes=[32], layer="mix", pool="avg", layer_transformation="softmax",
            dropout=0.0, final_activation=None)
        identifier = "regression_metric"
    hparams = dict(model.hparams)
    hparams["class_identifier"] = identifier
    hparams["pretrained_model"] = str(final / "encoder")  # where it will be after the rename
    (out / "hparams.yaml").write_text(yaml.safe_dump(hparams, sort_keys=True), encoding="utf-8")
    ckpt = out / "checkpoints" / "model.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    # The fields Lightning's load_from_checkpoint reads; written by hand because a Trainer would
    # want to fit first.
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0}, ckpt)
    if final.exists():
        final.rmdir()
    os.replace(out, final)
    return {"checkpoint": str(final / "checkpoints" / "model.ckpt"), "pretrained_model": str(final / "encoder"),
            "versions": _versions()}


MODES = {"score": score, "make-tiny": make_tiny}


def _quiet() -> None:
    """Keep stderr for progress and real problems: drop known-harmless import noise."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    _quiet()
    if len(argv) != 3 or argv[0] not in MODES:
        print(f"usage: comet_worker.py {{{','.join(MODES)}}} REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    mode, req_path, out_path = argv[0], Path(argv[1]), Path(argv[2])
    req = json.loads(req_path.read_text(encoding="utf-8"))
    try:
        result = MODES[mode](req)
    except WorkerError as e:
        _write_json(out_path, {"error": str(e)})
        return 2
    _write_json(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
