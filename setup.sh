#!/usr/bin/env bash
# Set up iwslt-mc in .venv/ (editable install). Safe to rerun; keeps an installed torch.
#   ./setup.sh                       runtime + test dependencies at the locked versions (lock/)
#   IWSLT_MC_UNLOCKED=1 ./setup.sh   the same without the lock: the newest versions pyproject.toml allows
# Environment: PYTHON (default python3), IWSLT_MC_TORCH (a pip requirement to force a torch build),
# IWSLT_MC_VENV (default .venv; tools/refresh_lock.sh makes a fresh one beside it).
# The lock (lock/constraints.txt, written by tools/refresh_lock.sh) holds the exact versions the test suite
# passed with, torch excepted: torch is chosen per machine below; when this script installs it, it takes
# lock/torch.txt's version (and the pins of the packages only torch needs), and a torch already there (e.g. a
# CUDA build on a GPU box) is kept, so the lock installs next to another torch too.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${IWSLT_MC_VENV:-.venv}
LOCK=(-c lock/constraints.txt)
TORCH_LOCK=(-c lock/torch.txt)
if [ "${IWSLT_MC_UNLOCKED:-0}" != "0" ]; then
  echo "setup: IWSLT_MC_UNLOCKED set: installing without the lock (the newest allowed versions)"
  LOCK=() TORCH_LOCK=()
  TORCH_REQ=torch CPU_TORCH_REQ=torch==2.13.0 CPU_TORCH_INDEX_REQ=torch
else
  # the locked torch (its CPU build lies on local disk on the project's machines)
  TORCH_REQ=$(grep -m1 '^torch==' lock/torch.txt) CPU_TORCH_REQ=$TORCH_REQ CPU_TORCH_INDEX_REQ=$TORCH_REQ
fi

if [ ! -x "$VENV/bin/python" ]; then
  # Reuse a torch already installed for this Python (e.g. a CUDA build on a GPU box) instead of
  # downloading another multi-GB copy.
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: torch $("$PY" -c 'import torch; print(torch.__version__)') found; venv will see it (--system-site-packages)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip >/dev/null 2>&1 || true

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${IWSLT_MC_TORCH:-}" ]; then
    "${PIP[@]}" install "$IWSLT_MC_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU found: installing the default (CUDA) torch build ($TORCH_REQ)"
    "${PIP[@]}" install "$TORCH_REQ" ${TORCH_LOCK[@]+"${TORCH_LOCK[@]}"}
  else
    # No GPU: the CPU build. It is on local disk on the project's machines; elsewhere fall back to
    # PyTorch's CPU wheel index rather than PyPI's multi-GB CUDA build.
    echo "setup: no GPU: installing the CPU build of torch ($CPU_TORCH_REQ)"
    "${PIP[@]}" install "$CPU_TORCH_REQ" ${TORCH_LOCK[@]+"${TORCH_LOCK[@]}"} 2>/dev/null \
      || "${PIP[@]}" install "$CPU_TORCH_INDEX_REQ" ${TORCH_LOCK[@]+"${TORCH_LOCK[@]}"} --index-url https://download.pytorch.org/whl/cpu
  fi
fi

# torch is now installed and satisfies the package's lower bound, so pip keeps it.
if ! "${PIP[@]}" install -e ".[dev]" ${LOCK[@]+"${LOCK[@]}"}; then
  if [ ${#LOCK[@]} -gt 0 ]; then
    echo "setup: error: the locked versions (lock/constraints.txt, made on CPython 3.11 / Linux x86_64) did not install here;" \
         "IWSLT_MC_UNLOCKED=1 ./setup.sh installs the newest allowed versions instead" >&2
  fi
  exit 1
fi
MODE=unlocked
[ ${#LOCK[@]} -gt 0 ] && MODE="locked: lock/constraints.txt"
"$VENV/bin/python" -c "import iwslt_mc, torch, transformers; print(f'setup: iwslt-mc {iwslt_mc.__version__}, torch {torch.__version__}, transformers {transformers.__version__} in $VENV ($MODE)')"

# espeak-ng is only needed to regenerate the shipped speech fixture (tools/make_kit_speech.py).
