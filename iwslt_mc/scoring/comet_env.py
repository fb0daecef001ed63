"""COMET in its own virtual environment, run as a separate process fed with files.

``unbabel-comet`` pins ``transformers<5``, ``numpy<2``, ``huggingface-hub<1`` and
``torchmetrics<0.11`` (and torchmetrics needs ``pkg_resources``, so ``setuptools<81``): it cannot
share iwslt-mc's environment (transformers 5). :func:`create_env` builds a second venv holding only
COMET and its pins; :func:`run_comet` writes the segments to a JSON file, runs
``iwslt_mc/scoring/comet_worker.py`` with that venv's Python and reads the scores back.

Where the environment lives (first that applies):

1. the ``--env`` option / ``env_dir`` argument;
2. ``$IWSLT_MC_COMET_ENV``;
3. ``.venv-comet/`` in the source checkout, when iwslt-mc runs from one (next to ``.venv/``);
4. ``$XDG_CACHE_HOME/iwslt-mc/comet-venv`` (default ``~/.cache/iwslt-mc/comet-venv``).

Versions: the exact ones of ``lock/comet.txt`` (and ``lock/torch.txt`` when torch is installed here), as
pip constraints, unless ``IWSLT_MC_UNLOCKED=1`` (see ``tools/refresh_lock.sh``).

A finished environment holds ``iwslt-mc-comet.json`` (requirements, lock digest, versions, timings); a
directory without it is an unfinished build and is rebuilt, and so is one made under another lock.
Stdlib only at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import InputFileError, UserError

COMET_VERSION = "2.2.7"
# The pins unbabel-comet declares, written out so pip never has to backtrack, plus two it needs
# but does not declare: setuptools<81 (COMET and torchmetrics 0.10 import pkg_resources, removed
# in setuptools 81) and sentencepiece<0.2.1 (0.2.1's protobuf module needs protobuf>=5, COMET pins
# protobuf<5; transformers needs it to turn a SentencePiece model into a fast tokenizer).
REQUIREMENTS = (
    f"unbabel-comet=={COMET_VERSION}",
    "transformers>=4.17,<5",
    "numpy>=1.20,<2",
    "huggingface-hub>=0.19.3,<1",
    "torchmetrics>=0.10.2,<0.11",
    "protobuf>=4.24.4,<5",
    "sentencepiece>=0.2.0,<0.2.1",
    "setuptools<81",
)
# The CPU build of torch lies on local disk on the project's machines (as in setup.sh).
CPU_TORCH = "torch==2.13.0"
# The lock (tools/refresh_lock.sh): the exact versions of the COMET environment the suite passed with, and
# torch's (used when this environment installs torch itself). Installed as pip constraints unless
# IWSLT_MC_UNLOCKED is set, or when iwslt-mc does not run from a checkout that has them.
LOCK_DIR = Path(__file__).resolve().parents[2] / "lock"  # the checkout: iwslt_mc/scoring/ -> the repository root
COMET_LOCK = LOCK_DIR / "comet.txt"
TORCH_LOCK = LOCK_DIR / "torch.txt"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
MARKER = "iwslt-mc-comet.json"
BUILDING = ".iwslt-mc-comet-building"
WORKER = Path(__file__).with_name("comet_worker.py")


def default_env_dir() -> Path:
    """Where the COMET environment lives when no ``--env`` is given (see the module docstring)."""
    env = os.environ.get("IWSLT_MC_COMET_ENV")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]  # iwslt_mc/scoring/ -> the repository root
    if (checkout / "pyproject.toml").is_file() and (checkout / "iwslt_mc").is_dir():
        return checkout / ".venv-comet"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "iwslt-mc" / "comet-venv"


def env_python(env_dir: str | os.PathLike) -> Path:
    return Path(env_dir) / "bin" / "python"


def read_marker(env_dir: str | os.PathLike) -> dict | None:
    p = Path(env_dir) / MARKER
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def locked() -> bool:
    """Whether installs follow the lock (:data:`COMET_LOCK`): yes unless ``IWSLT_MC_UNLOCKED`` is set or there is none."""
    return os.environ.get("IWSLT_MC_UNLOCKED", "0") in ("", "0") and COMET_LOCK.is_file()


def lock_digest() -> str | None:
    """sha256 of the pins in force (the lock files without their comments; None: unlocked); a finished
    environment records it."""
    if not locked():
        return None
    import hashlib

    h = hashlib.sha256()
    for p in (COMET_LOCK, TORCH_LOCK):
        text = p.read_text(encoding="utf-8") if p.is_file() else ""
        h.update("".join(f"{ln.strip()}\n" for ln in text.splitlines() if ln.strip() and not ln.startswith("#")).encode())
    return h.hexdigest()


def _constraints(path: Path) -> list[str]:
    return ["-c", str(path)] if locked() and path.is_file() else []


def is_ready(env_dir: str | os.PathLike) -> bool:
    """True when ``env_dir`` is a finished COMET environment made with the current requirements and lock."""
    marker = read_marker(env_dir)
    return (marker is not None and marker.get("requirements") == list(REQUIREMENTS)
            and marker.get("lock") == lock_digest() and env_python(env_dir).exists())


def has_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _base_python() -> str:
    # A venv made from inside a venv should hang off the real interpreter, not off .venv.
    return getattr(sys, "_base_executable", None) or sys.executable


def _imports(python: str, module: str) -> bool:
    return subprocess.run([python, "-I", "-c", f"import {module}"], capture_output=True).returncode == 0


@contextlib.contextmanager
def _lock(env_dir: Path):
    """Serialise builders (two test sessions in one checkout) with an flock keyed by the env's path.

    The lock lives in the temp dir so it never shows up as an untracked file in a checkout.
    """
    import fcntl
    import hashlib

    key = hashlib.sha1(str(env_dir).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"iwslt-mc-comet-{key}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip(python: Path, *args: str, log) -> None:
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install", *args]
    log(f"setup-comet: pip install {' '.join(args)}")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tail = "\n".join(r.stdout.strip().splitlines()[-15:])
        raise UserError(f"pip install {' '.join(args)} failed in {python.parent.parent}:\n{tail}")


def create_env(env_dir: str | os.PathLike | None = None, *, python: str | None = None,
               torch_requirement: str | None = None, force: bool = False, log=None) -> dict:
    """Create (or reuse) the COMET environment; returns its marker record.

    Idempotent: a finished environment with the current requirements is kept unless ``force``.
    torch: ``torch_requirement`` or ``$IWSLT_MC_TORCH`` when given; else a torch importable by the
    base interpreter is reused (``--system-site-packages``, as setup.sh does, so a CUDA build is not
    downloaded twice); else the default CUDA build on a GPU machine, the CPU build without one.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    env_dir = Path(env_dir) if env_dir is not None else default_env_dir()
    env_dir = env_dir.expanduser().absolute()
    with _lock(env_dir):
        if not force and is_ready(env_dir):
            rec = read_marker(env_dir)
            rec["status"] = "present"
            return rec
        if env_dir.exists():
            ours = (env_dir / MARKER).exists() or (env_dir / BUILDING).exists() or not any(env_dir.iterdir())
            if not env_dir.is_dir() or not ours:
                raise UserError(f"{env_dir}: exists and is not an iwslt-mc COMET environment "
                                f"(remove it or choose another --env)")
            log(f"setup-comet: removing the unfinished or outdated environment {env_dir}")
            shutil.rmtree(env_dir)
        t0 = time.time()
        timings: dict[str, float] = {}
        base = python or _base_python()
        reuse_torch = torch_requirement is None and not os.environ.get("IWSLT_MC_TORCH") and _imports(base, "torch")
        env_dir.mkdir(parents=True)
        (env_dir / BUILDING).write_text("")
        venv_cmd = [base, "-m", "venv", *(["--system-site-packages"] if reuse_torch else []), str(env_dir)]
        log(f"setup-comet: creating {env_dir} ({'reusing the base interpreter torch' if reuse_torch else 'own torch'}; "
            f"{f'locked: {COMET_LOCK}' if locked() else 'unlocked'})")
        r = subprocess.run(venv_cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(f"{env_dir}: python -m venv failed: {r.stderr.strip().splitlines()[-1:]}")
        py = env_python(env_dir)
        timings["venv"] = round(time.time() - t0, 1)

        t = time.time()
        if not _imports(str(py), "torch"):
            req = torch_requirement or os.environ.get("IWSLT_MC_TORCH")
            locked_torch = _locked_torch()
            if req:
                _pip(py, req, log=log)
            elif has_gpu():
                _pip(py, locked_torch or "torch", *_constraints(TORCH_LOCK), log=log)
            else:
                try:
                    _pip(py, locked_torch or CPU_TORCH, *_constraints(TORCH_LOCK), log=log)
                except UserError:
                    _pip(py, locked_torch or "torch", *_constraints(TORCH_LOCK), "--index-url", CPU_TORCH_INDEX, log=log)
        timings["torch"] = round(time.time() - t, 1)

        t = time.time()
        _pip(py, *REQUIREMENTS, *_constraints(COMET_LOCK), log=log)
        timings["comet"] = round(time.time() - t, 1)

        probe = ("import json, comet, torch, transformers, numpy, pytorch_lightning as pl; "
                 "print(json.dumps({'comet': comet.__version__, 'torch': torch.__version__, "
                 "'transformers': transformers.__version__, 'numpy': numpy.__version__, "
                 "'pytorch_lightning': pl.__version__, 'cuda': torch.cuda.is_available()}))")
        r = subprocess.run([str(py), "-I", "-c", probe], capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(f"{env_dir}: COMET does not import after install: "
                            f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
        timings["total"] = round(time.time() - t0, 1)
        rec = {
            "requirements": list(REQUIREMENTS),
            "lock": lock_digest(),
            "versions": json.loads(r.stdout.strip().splitlines()[-1]),
            "base_python": base,
            "system_site_packages": reuse_torch,
            "seconds": timings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = env_dir / f".{MARKER}.tmp"
        tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, env_dir / MARKER)
        (env_dir / BUILDING).unlink()
        rec["status"] = "created"
        log(f"setup-comet: ready in {timings['total']:.0f} s (comet {rec['versions']['comet']}, "
            f"torch {rec['versions']['torch']}, transformers {rec['versions']['transformers']})")
        return rec


def _locked_torch() -> str | None:
    """The ``torch==X`` line of :data:`TORCH_LOCK` when locked, else None."""
    if not (locked() and TORCH_LOCK.is_file()):
        return None
    for line in TORCH_LOCK.read_text(encoding="utf-8").splitlines():
        if line.startswith("torch=="):
            return line.strip()
    return None


def require_env(env_dir: str | os.PathLike | None = None) -> Path:
    env_dir = Path(env_dir) if env_dir is not None else default_env_dir()
    if not is_ready(env_dir):
        raise UserError(f"the COMET environment {env_dir} is not set up: run 'iwslt-mc setup-comet"
                        f"{'' if env_dir == default_env_dir() else f' --env {env_dir}'}' first")
    return env_dir


def _run_worker(env_dir: Path, mode: str, request: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="iwslt-mc-comet-") as tmp:
        inp, outp = Path(tmp) / "request.json", Path(tmp) / "result.json"
        inp.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
        # -I: the worker's folder (iwslt_mc/) must not land on sys.path, or a module of ours could
        # shadow a library COMET imports; it also ignores PYTHONPATH pointing into .venv.
        cmd = [str(env_python(env_dir)), "-I", str(WORKER), mode, str(inp), str(outp)]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (progress) passes through
        result = None
        if outp.exists():
            result = json.loads(outp.read_text(encoding="utf-8"))
        if result is None or r.returncode != 0 or "error" in result:
            msg = (result or {}).get("error") or f"exited with status {r.returncode} (see the messages above)"
            raise UserError(f"COMET worker ({env_dir}): {msg}")
        return result


def run_comet(checkpoint: str, src: list[str], mt: list[str], ref: list[str] | None, *,
              env_dir: str | os.PathLike | None = None, batch_size: int | None = None,
              gpus: int | None = None, qe: bool = False) -> dict:
    """Score segments with a COMET checkpoint in the COMET environment.

    ``checkpoint``: a ``.ckpt`` file, a model directory holding ``checkpoints/model.ckpt`` (as
    downloaded from the hub), or a hub id such as ``Unbabel/wmt22-comet-da`` (needs the network).
    Returns ``{"scores": [...] (input order), "system_score": float, "model": ..., "device": ...,
    "batch_size": ..., "versions": {...}}``. Batch size defaults to 64 on a GPU, 16 on the CPU.
    """
    env = require_env(env_dir)
    n = len(mt)
    if len(src) != n or (ref is not None and len(ref) != n):
        raise ValueError("src, mt and ref must have the same number of segments")
    request = {"checkpoint": str(checkpoint), "src": src, "mt": mt, "ref": ref,
               "batch_size": batch_size, "gpus": gpus, "qe": qe}
    result = _run_worker(env, "score", request)
    if len(result["scores"]) != n:
        raise UserError(f"COMET worker returned {len(result['scores'])} scores for {n} segments")
    return result


# class_identifier values of unbabel-comet 2.2.7 (comet.models.str2model) and whether they need references.
REFERENCE_FREE_CLASSES = ("referenceless_regression_metric",)
REFERENCE_CLASSES = ("regression_metric", "ranking_metric")
UNIFIED_CLASSES = ("unified_metric", "xcomet_metric")  # reference-free when input_segments lacks "ref"


def _hparams_file(ckpt: Path) -> Path | None:
    for p in (ckpt.parent.parent / "hparams.yaml", ckpt.parent / "hparams.yaml"):
        if p.is_file():
            return p
    return None


def checkpoint_kind(checkpoint: str) -> str | None:
    """``"qe"`` (reference-free), ``"reference"`` (needs references), ``"both"`` (a unified model
    trained on [mt, src, ref]: scores with or without references), or None for a hub id (known only
    once loaded).

    Read from the checkpoint's ``hparams.yaml`` (``class_identifier``, ``input_segments``), without
    loading the model. Raises UserError for a local checkpoint whose hparams name no COMET class.
    """
    resolved = resolve_checkpoint(checkpoint)
    p = Path(resolved)
    if not p.is_file():
        return None
    hp_file = _hparams_file(p)
    import yaml

    try:
        hp = yaml.safe_load(hp_file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputFileError(hp_file, f"not a readable COMET hparams.yaml ({str(e).splitlines()[0]})") from None
    cls = hp.get("class_identifier") if isinstance(hp, dict) else None
    if cls in REFERENCE_FREE_CLASSES:
        return "qe"
    if cls in REFERENCE_CLASSES:
        return "reference"
    if cls in UNIFIED_CLASSES:
        segments = hp.get("input_segments") or ["mt", "src", "ref"]
        # as UnifiedMetric.requires_references: only [mt, ref] models cannot do without references
        return "reference" if list(segments) == ["mt", "ref"] else ("qe" if "ref" not in segments else "both")
    raise InputFileError(hp_file, f"class_identifier {cls!r} is not a COMET model class "
                                  f"(known: {', '.join(REFERENCE_FREE_CLASSES + REFERENCE_CLASSES + UNIFIED_CLASSES)})")


def require_qe_checkpoint(checkpoint: str, env_dir: str | os.PathLike | None = None) -> str:
    """Check, before any work, that ``checkpoint`` is a reference-free (QE) COMET model and that the
    COMET environment is ready; returns the resolved checkpoint. One-line UserError otherwise.

    A unified model trained on [mt, src, ref] (XCOMET, COMET-22 unified) is accepted: it scores
    without references too. A hub id passes here and is checked by the worker once loaded.
    """
    resolved = resolve_checkpoint(checkpoint)
    kind = checkpoint_kind(resolved)
    if kind == "reference":
        raise UserError(f"{checkpoint}: not a quality-estimation (reference-free) COMET model: it needs "
                        f"references (use a COMET-Kiwi-style checkpoint, e.g. wmt22-cometkiwi-da)")
    require_env(env_dir)
    return resolved


def checkpoint_name(checkpoint: str) -> str:
    """A short name for reports: the model folder of ``MODEL/checkpoints/model.ckpt``, else the path/hub id."""
    p = Path(checkpoint)
    if p.name.endswith(".ckpt") and p.parent.name == "checkpoints" and p.parent.parent.name:
        return p.parent.parent.name
    if p.is_dir() or (not p.suffix and not p.exists()):
        return p.name or str(checkpoint)
    return p.name


def run_qe(checkpoint: str, src: list[str], mt: list[str], *, env_dir: str | os.PathLike | None = None,
           batch_size: int | None = None, gpus: int | None = None) -> dict:
    """Reference-free scores (quality estimation) of ``mt`` given ``src``: one worker process, the
    model loaded once for all segments. Same result as :func:`run_comet` (``kind`` is "qe"); the
    worker refuses a model that needs references."""
    return run_comet(checkpoint, src, mt, None, env_dir=env_dir, batch_size=batch_size, gpus=gpus, qe=True)


def score_many(checkpoint: str, src: list[str], candidates: dict[str, list[str]], ref: list[str] | None = None, *,
               env_dir: str | os.PathLike | None = None, batch_size: int | None = None, gpus: int | None = None,
               qe: bool = False, details: dict | None = None) -> dict[str, float]:
    """System scores of many candidates' outputs of the same segments in ONE worker call.

    ``candidates``: ``{name: [mt per segment]}`` (each as long as ``src``); ``ref``: references, or
    None for a reference-free (QE) model (``qe=True`` also makes the worker refuse a model needing
    references). The (src, mt, ref) triples all candidates share are scored once: the model is
    loaded once and predicts the distinct triples in one batched pass, so N candidates cost one
    load instead of N. Returns ``{name: system score}`` (the mean of its segment scores, as COMET's
    system score); ``details``, when given, is filled with ``{"scores": {name: [segment scores]},
    "unique": distinct triples scored, "total": segments asked for, "seconds": worker timings,
    "model", "kind", "versions", "device", "batch_size"}``.
    """
    n = len(src)
    if ref is not None and len(ref) != n:
        raise ValueError("src and ref must have the same number of segments")
    for name, mt in candidates.items():
        if len(mt) != n:
            raise ValueError(f"candidate {name!r}: {len(mt)} outputs for {n} segments")
    index: dict[tuple, int] = {}
    u_src, u_mt, u_ref = [], [], []
    where: dict[str, list[int]] = {}
    for name, mt in candidates.items():
        pos = []
        for i, m in enumerate(mt):
            key = (src[i], m, None if ref is None else ref[i])
            if key not in index:
                index[key] = len(u_mt)
                u_src.append(src[i])
                u_mt.append(m)
                u_ref.append(key[2])
            pos.append(index[key])
        where[name] = pos
    if not u_mt:  # nothing to score (no segments): no process
        require_env(env_dir)
        return {name: float("nan") for name in candidates}
    r = run_comet(checkpoint, u_src, u_mt, None if ref is None else u_ref, env_dir=env_dir,
                  batch_size=batch_size, gpus=gpus, qe=qe)
    seg = {name: [r["scores"][j] for j in pos] for name, pos in where.items()}
    out = {name: (sum(v) / len(v) if v else float("nan")) for name, v in seg.items()}
    if details is not None:
        details.update(scores=seg, unique=len(u_mt), total=n * len(candidates),
                       **{k: r.get(k) for k in ("seconds", "model", "kind", "versions", "device", "batch_size")})
    return out


def resolve_checkpoint(checkpoint: str) -> str:
    """A local ``.ckpt`` path for a file or a downloaded model directory; a hub id is passed on.

    Raises UserError for a path that does not exist, or for a hub id while ``HF_HUB_OFFLINE`` is set.
    """
    p = Path(checkpoint).expanduser()
    if p.is_dir():
        ckpt = p / "checkpoints" / "model.ckpt"
        if not ckpt.is_file():
            raise UserError(f"{p}: a COMET model directory needs checkpoints/model.ckpt (and hparams.yaml)")
        return str(ckpt.absolute())
    if p.is_file():
        if not (p.parent.parent / "hparams.yaml").is_file() and not (p.parent / "hparams.yaml").is_file():
            raise UserError(f"{p}: no hparams.yaml next to the checkpoint or one folder up (COMET layout: "
                            f"MODEL/hparams.yaml, MODEL/checkpoints/model.ckpt)")
        return str(p.absolute())
    looks_like_hub_id = checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise UserError(f"{checkpoint}: COMET checkpoint not found")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise UserError(f"{checkpoint}: not a local checkpoint and HF_HUB_OFFLINE is set "
                        f"(give the path of a downloaded model, e.g. .../wmt22-comet-da/checkpoints/model.ckpt)")
    return checkpoint


def make_tiny_checkpoint(out_dir: str | os.PathLike, *, env_dir: str | os.PathLike | None = None,
                         seed: int = 0, qe: bool = False) -> Path:
    """Build a tiny random COMET regression checkpoint offline (for tests and the demo); ``qe``: a
    reference-free COMET-Kiwi-style one (``UnifiedMetric`` on [mt, src]) instead.

    Runs inside the COMET environment (its encoder config and tokenizer must be written by
    transformers 4). Layout: ``out/encoder/`` (tiny XLM-R config + SentencePiece tokenizer, the
    ``pretrained_model``), ``out/hparams.yaml``, ``out/checkpoints/model.ckpt``. Returns the .ckpt path.
    """
    env = require_env(env_dir)
    out = Path(out_dir).absolute()
    result = _run_worker(env, "make-tiny", {"out_dir": str(out), "seed": seed, "qe": qe})
    return Path(result["checkpoint"])
