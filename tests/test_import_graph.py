"""The house's import rules, checked on the source by tools/import_graph.py (nothing is imported)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
ig = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ig)


@pytest.fixture(scope="module")
def graph():
    mods, edges, external = ig.parse(ig.ROOT)
    return mods, edges, external, ig.rule_violations(edges, external)


def _tree(tmp_path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------- the tool itself

def test_tool_sees_lazy_relative_and_registry_imports_and_finds_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "a.py": "def f():\n    from .b import g\n",
        "b.py": "from . import c\n",
        "c.py": "import pkg.a\nimport torch\n",
        "families/__init__.py": 'REGISTRY = ("one:One",)\n',
        "families/one.py": "from ..b import g\n",
        "stages/__init__.py": 'REGISTRY = {"x": "x:X"}\n',
        "stages/x.py": "from .y import z\n",
        "stages/y.py": "",
    })
    mods, edges, external = ig.parse(root)
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.b"] == {"pkg.c"} and edges["pkg.c"] == {"pkg.a"}
    assert external["pkg.c"] == {"torch"}
    assert edges["pkg.families"] == {"pkg.families.one"}  # a registry line is an import
    assert edges["pkg.stages"] == {"pkg.stages.x"}
    assert ig.cycles(edges) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert ig.path(edges, "pkg.families", "pkg.c") == ["pkg.families", "pkg.families.one", "pkg.b", "pkg.c"]
    rules = ig.rule_violations(edges, external, "pkg")
    assert rules["stage-imports-stage"] == ["pkg.stages.x -> pkg.stages.y"]


def test_tool_rules_catch_a_heavy_floor_and_a_family_above_stages(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "", "errors.py": "", "planner.py": "",
        "floor/__init__.py": "", "floor/ok.py": "from ..errors import E\nfrom . import other\n", "floor/other.py": "",
        "floor/bad.py": "def f():\n    import transformers\n    from .. import planner\n",
        "families/__init__.py": "", "families/fam.py": "def g():\n    from ..planner import p\n",
    })
    _, edges, external = ig.parse(root)
    r = ig.rule_violations(edges, external, "pkg")
    assert r["floor-no-heavy"] == ["pkg.floor.bad -> transformers"]
    assert r["floor-imports-only-floor"] == ["pkg.floor.bad -> pkg.planner"]
    assert r["families-below-stages"] == ["pkg.families.fam -> pkg.planner"]


def test_cli_exit_status_and_why(tmp_path):
    root = _tree(tmp_path, {"__init__.py": "", "a.py": "from . import b\n", "b.py": "from . import a\n"})
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py"), "--root", str(root)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "1 cycle(s)" in r.stdout and "cycle of 2: pkg.a, pkg.b" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py"), "--root", str(root), "--why",
                        "pkg.a", "pkg.b"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "pkg.a -> pkg.b"


# ----------------------------------------------------------------------------- the rules on iwslt_mc/

def test_floor_is_pure(graph):
    _, _, _, rules = graph
    assert rules["floor-no-heavy"] == []
    assert rules["floor-imports-only-floor"] == []


def test_families_import_nothing_from_stages_planning_or_commands(graph):
    _, _, _, rules = graph
    assert rules["families-below-stages"] == []


def test_no_import_cycle(graph):
    _, edges, _, _ = graph
    assert ig.cycles(edges) == []


def test_no_module_imports_one_that_depends_on_it(graph):
    """No arrow runs back up: for every import A -> B, B does not reach A."""
    _, edges, _, _ = graph
    back = [f"{a} -> {b}" for a in sorted(edges) for b in sorted(edges[a]) if ig.path(edges, b, a)]
    assert back == []


def test_no_stage_imports_another_stage(graph):
    _, _, _, rules = graph
    assert rules["stage-imports-stage"] == []


def test_no_family_name_outside_families():
    """Outside iwslt_mc/families/, a family's name appears only in the registry and user-facing text (help,
    examples, messages): no code compares a family's name."""
    import re

    code = []
    for f in sorted((ROOT / "iwslt_mc").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if rel.startswith("iwslt_mc/families/"):
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"""(==|!=|\bin\b)\s*\(?["'](qwen2_audio|gemma4|gemma4_unified)["']""", line) or \
                    re.search(r"""["'](qwen2_audio|gemma4|gemma4_unified)["']\s*(==|!=)""", line) or \
                    re.search(r"(import|from)\s+\S*(qwen2_audio|gemma4)", line) or \
                    re.search(r"""family_named\(["']""", line):
                code.append(f"{rel}:{i}: {line.strip()}")
    assert code == []
