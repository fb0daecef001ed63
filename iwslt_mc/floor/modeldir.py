"""A model directory as files, read without torch or transformers: the model type its ``config.json`` names,
and which of its files are pickled weights. The family seam (:func:`iwslt_mc.families.family_for`), the
sizer and the loaders read it here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputFileError

# Weight files in a pickle format: refused by the sizer and the loaders (pickles are never loaded).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_model_type(model_dir: str | os.PathLike) -> str | None:
    """``model_type`` from a model directory's config.json (None when it has none)."""
    f = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputFileError(f, "not UTF-8 text") from None
    except ValueError as e:
        raise InputFileError(f, f"not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise InputFileError(f, "not a JSON object")
    mt = cfg.get("model_type")
    return mt if isinstance(mt, str) else None
