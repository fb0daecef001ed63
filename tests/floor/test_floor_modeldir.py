"""The floor's one model-directory reader (iwslt_mc/floor/modeldir.py): pure (no torch, no transformers),
the same fingerprints as before it moved there, the same one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iwslt_mc.errors import UserError
from iwslt_mc.floor import modeldir

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "tests" / "fixtures" / "toy" / "teacher"


def _synthetic(d: Path) -> Path:
    """A model directory whose bytes are fixed here: two shards, a config, a template, a provenance."""
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "qwen2_audio", "x": 1}\n')
    (d / "chat_template.jinja").write_text("hello")
    (d / "provenance.json").write_text('{"a": 2}')  # not part of the fingerprint
    (d / "model-00001-of-00002.safetensors").write_bytes(bytes(range(256)) * 40)
    (d / "model-00002-of-00002.safetensors").write_bytes(b"\x07" * 3000)
    for f in d.glob("*.safetensors"):
        os.utime(f, (f.stat().st_mtime - 3600,) * 2)  # not "racy": its digest may be cached
    return d


def test_fingerprints_are_the_ones_modelio_computed_before_the_move(tmp_path):
    # the values below were computed by iwslt_mc.modelio (commit 970f66a) on the same bytes
    d = _synthetic(tmp_path / "m")
    assert modeldir.model_fingerprint(d) == "392a4cb1c72ebe49"
    assert modeldir.legacy_model_fingerprint(d) == "4a74c721530a41e4"
    assert (d / modeldir.FINGERPRINT_CACHE).is_file()  # cached beside the weights; the cached value agrees
    assert modeldir.model_fingerprint(d) == "392a4cb1c72ebe49"
    (d / "provenance.json").write_text('{"a": 3}')
    assert modeldir.model_fingerprint(d) == "392a4cb1c72ebe49"


def test_reader_imports_neither_torch_nor_transformers():
    code = textwrap.dedent(f"""
        import sys
        from iwslt_mc.floor import modeldir
        d = {str(TEACHER)!r}
        base, files, _ = modeldir.weight_files(d)
        header, n = modeldir.read_header(base / files[0])
        cfg = modeldir.read_config(d)
        modeldir.PlainConfig.from_dict(cfg).to_json_string()
        print(modeldir.read_model_type(d), files, n > 8, modeldir.legacy_model_fingerprint(d),
              sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["qwen2_audio", "['model.safetensors']", "True", "0540962d7c6b3e74", "[]"]


def test_read_config_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match=r"config\.json: not found \(not a model directory\)"):
        modeldir.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(UserError, match=r"config\.json: invalid JSON \(Expecting property name"):
        modeldir.read_config(tmp_path)
    assert modeldir.read_config_or_none(tmp_path) is None
    (tmp_path / "config.json").write_text("[1, 2]")
    assert modeldir.read_config_or_none(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x"}))
    assert modeldir.read_config_or_none(tmp_path) == {"model_type": "x"} == modeldir.read_config(tmp_path)
    assert modeldir.read_config_or_none(tmp_path / "missing") is None


def test_floor_may_use_the_leaves_and_the_leaves_are_held_to_the_floor_rules(tmp_path):
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    ig = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ig)
    root = tmp_path / "pkg"
    files = {"__init__.py": "", "errors.py": "", "planner.py": "",
             "fsutil.py": "def f():\n    from . import planner\n    import torch\n",
             "floor/__init__.py": "", "floor/ok.py": "from ..fsutil import f\nfrom ..errors import E\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _, edges, external = ig.parse(root)
    r = ig.rule_violations(edges, external, "pkg")
    assert r["floor-imports-only-floor"] == ["pkg.fsutil -> pkg.planner"]
    assert r["floor-no-heavy"] == ["pkg.fsutil -> torch"]


def test_require_positive_names_the_first_bad_field():
    cfg = modeldir.PlainConfig.from_dict({"text_config": {"hidden_size": 64, "head_dim": None, "layers": True}})
    assert cfg.require_positive({"text_config": ("hidden_size",)}, optional={"text_config": ("head_dim",)}) is cfg
    with pytest.raises(ValueError, match=r"^text_config.layers is True, not a positive integer$"):
        cfg.require_positive({"text_config": ("hidden_size", "layers")})
    cfg.text_config.head_dim = 0
    with pytest.raises(ValueError, match=r"^text_config.head_dim is 0, not a positive integer$"):
        cfg.require_positive({}, optional={"text_config": ("head_dim",)})
    with pytest.raises(ValueError, match=r"^text_config.vocab_size is None, not a positive integer$"):
        cfg.require_positive({"text_config": ("vocab_size",)})
