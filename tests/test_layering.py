"""The house rules the unify moves set up, read from the source (no imports run): stages do not import one
another, one language table, one metric registry, one greedy decoding core."""

import ast
from pathlib import Path

from iwslt_mc.stages import REGISTRY

PKG = Path(__file__).resolve().parent.parent / "iwslt_mc"
STAGE_MODULES = {entry.split(":")[0] for entry in REGISTRY.values()}


def _imports(path: Path):
    """(level, module, names) of every ``from ... import ...`` in ``path``, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]


def _defs(name: str) -> list[str]:
    """Modules of iwslt_mc that define a top-level function, class or variable ``name``."""
    out = []
    for p in sorted(PKG.rglob("*.py")):
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            targets = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
                [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
            if name in targets:
                out.append(str(p.relative_to(PKG)))
    return out


def test_no_stage_imports_another_stage():
    assert len(STAGE_MODULES) == len(REGISTRY) > 10
    found = []
    for p in sorted((PKG / "stages").glob("*.py")):
        for level, module, names in _imports(p):
            if level != 1:
                continue
            targets = [module.split(".")[0]] if module else names
            found += [f"{p.name} imports {t}" for t in targets if t in STAGE_MODULES and t != p.stem]
    assert found == []


def test_one_language_table_one_metric_registry_one_greedy_core():
    assert _defs("check_lang") == ["floor/languages.py"]
    assert _defs("TARGET_LANGUAGE") == ["floor/languages.py"]
    assert _defs("register_metric") == _defs("register_scorer") == ["scoring/metrics.py"]
    assert _defs("_METRICS") == _defs("_SCORERS") == []
    for name in ("eos_ids", "greedy_config", "decode_text", "greedy_from_embeds"):
        assert _defs(name) == ["decoding/core.py"], name
    assert _defs("_eos_ids") == []


def test_stage_helpers_live_outside_stages():
    for name in ("checkpoint_dtype", "load_dtype", "freeze_components", "count_params", "FREEZABLE",
                 "repacked_layers", "teacher_fingerprint", "layer_counts", "load_training_data"):
        assert _defs(name) == ["training/common.py"], name
    for name in ("calibration_pass", "calibration_segments", "heldout_segments"):
        assert _defs(name) == ["training/calibration.py"], name
