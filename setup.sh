#!/usr/bin/env bash
# Set up iwslt-mc in .venv/ (editable install). Safe to rerun; keeps an installed torch.
#   ./setup.sh           runtime + test dependencies
# Environment: PYTHON (default python3), IWSLT_MC_TORCH (a pip requirement to force a torch build).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

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
    echo "setup: GPU found: installing the default (CUDA) torch build"
    "${PIP[@]}" install torch
  else
    # No GPU: the CPU build. torch==2.13.0 is on local disk on the project's machines; elsewhere
    # fall back to PyTorch's CPU wheel index rather than PyPI's multi-GB CUDA build.
    echo "setup: no GPU: installing the CPU build of torch"
    "${PIP[@]}" install torch==2.13.0 2>/dev/null \
      || "${PIP[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

# torch is now installed and satisfies the package's lower bound, so pip keeps it.
"${PIP[@]}" install -e ".[dev]"
"$VENV/bin/python" -c "import iwslt_mc, torch, transformers; print(f'setup: iwslt-mc {iwslt_mc.__version__}, torch {torch.__version__}, transformers {transformers.__version__} in $VENV')"

# espeak-ng is only needed to regenerate the shipped speech fixture (tools/make_kit_speech.py).
