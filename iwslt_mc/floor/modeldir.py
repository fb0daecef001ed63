"""A model directory as files, read without torch or transformers: its ``config.json`` (a dict, or a
:class:`PlainConfig`), the model type it names, which of its files are pickled weights. The family seam
(:func:`iwslt_mc.families.family_for`), the planner, the sizer, the stages and the loaders read it here.

:class:`PlainConfig`: a model's ``config.json`` as a plain object, attribute access without transformers.
The planner reads a base's widths, layer counts and vocabulary from its config and changes them (fewer
layers, narrower widths) to predict sizes. A transformers config object costs importing transformers
(seconds); :class:`PlainConfig` holds the same values read from the JSON, with the fields a family leaves
to its config class's defaults filled in by the family (:meth:`iwslt_mc.families.Family.plain_config`),
and offers what the planner uses of a transformers config: attributes (``getattr(cfg, "head_dim", None)``),
``copy.deepcopy``, ``to_dict()`` and ``to_json_string()``. Nested ``*_config`` objects (``text_config``,
``audio_config``) are PlainConfigs too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

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


class PlainConfig(SimpleNamespace):
    """A config.json dict as attributes (see the module docstring)."""

    @classmethod
    def from_dict(cls, d: dict, defaults: dict | None = None) -> "PlainConfig":
        """``d`` with ``defaults`` (same nesting) filled in where ``d`` has no value or None for a sub-config."""
        out = {}
        defaults = defaults or {}
        for k in set(d) | set(defaults):
            v = d.get(k, defaults.get(k))
            if k.endswith("_config") and (isinstance(v, dict) or (v is None and isinstance(defaults.get(k), dict))):
                v = cls.from_dict(v or {}, defaults.get(k) if isinstance(defaults.get(k), dict) else None)
            out[k] = v
        return cls(**out)

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, PlainConfig) else json.loads(json.dumps(v)))
                for k, v in sorted(vars(self).items())}

    def to_json_string(self, use_diff: bool = False) -> str:
        """The JSON (sorted keys, indent 2); ``use_diff`` is accepted for transformers' signature and ignored."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def get_text_config(self):
        return getattr(self, "text_config", None) or self
