"""The lock (lock/, tools/lock.py): consistent with pyproject.toml and the COMET requirements, torch kept apart."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from iwslt_mc.scoring import comet_env

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
lock_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock_tool)


def _pins(name: str) -> dict[str, str]:
    return lock_tool.read_pins(ROOT / "lock" / name)


def test_torch_group_is_torch_and_what_only_it_needs():
    inv = {n: {"name": n, "version": "1", "requires": r, "editable": False} for n, r in {
        "torch": ["sympy", "networkx", "jinja2", "typing-extensions", "filelock"],
        "sympy": ["mpmath"], "mpmath": [], "networkx": [], "jinja2": ["markupsafe"], "markupsafe": [],
        "typing-extensions": [], "filelock": [],
        "transformers": ["filelock", "torch"],  # reaching torch does not make torch's needs its own
        "pydantic": ["typing-extensions"],
    }.items()}
    assert lock_tool.torch_group(inv) == {"torch", "sympy", "mpmath", "networkx", "jinja2", "markupsafe"}
    assert lock_tool.torch_group({"numpy": inv["mpmath"]}) == set()


def test_lock_files_pin_every_dependency_once_and_leave_torch_to_setup():
    main, torch, comet = _pins("constraints.txt"), _pins("torch.txt"), _pins("comet.txt")
    assert "torch" not in main and "torch" not in comet
    assert re.fullmatch(r"\d+\.\d+\.\d+", torch["torch"])  # no +cpu label: a CUDA build of it matches too
    assert not set(main) & set(torch)
    for pins in (main, torch, comet):
        assert all(re.fullmatch(r"[0-9A-Za-z.!+]+", v) for v in pins.values()), pins
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for r in reqs:  # a dependency added without refreshing the lock fails here
        name = lock_tool.norm(r.name)
        version = {**main, **torch}.get(name)
        assert version is not None, f"{r.name} is not in lock/: run tools/refresh_lock.sh"
        assert r.specifier.contains(version, prereleases=True), f"lock/ has {r.name}=={version}, pyproject wants {r}"
    for r in map(Requirement, comet_env.REQUIREMENTS):
        name = lock_tool.norm(r.name)
        if name in ("setuptools",):  # never pinned (as pip freeze)
            continue
        assert r.specifier.contains(comet[name], prereleases=True), f"lock/comet.txt has {r.name}=={comet[name]}"


def test_check_names_each_difference(tmp_path, monkeypatch, capsys):
    venv = tmp_path / "v"
    inv = {"torch": {"name": "torch", "version": "9.0.0+cpu", "requires": ["sympy"], "editable": False},
           "sympy": {"name": "sympy", "version": "1.0", "requires": [], "editable": False},
           "numpy": {"name": "numpy", "version": "2.0.0", "requires": [], "editable": False},
           "extra": {"name": "extra", "version": "1.0", "requires": [], "editable": False},
           "iwslt-mc": {"name": "iwslt-mc", "version": "0.1.0", "requires": ["numpy"], "editable": True}}
    (tmp_path / "lock").mkdir()
    (tmp_path / "lock" / "constraints.txt").write_text("# c\nnumpy==2.1.0\nrich==15.0.0\n")
    (tmp_path / "lock" / "torch.txt").write_text("torch==9.0.0\nsympy==1.0\n")
    monkeypatch.setattr(lock_tool, "LOCK", tmp_path / "lock")
    monkeypatch.setattr(lock_tool, "inventory", lambda v: inv)
    assert lock_tool.check(type("A", (), {"venv": str(venv), "comet_venv": None})) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"lock: {venv}: extra==1.0 installed, not in the lock",
                   f"lock: {venv}: numpy 2.0.0 installed, 2.1.0 locked",
                   f"lock: {venv}: rich==15.0.0 locked, not installed",
                   "lock: MISMATCH: 4 locked versions compared, 3 differ"]
    # another torch: torch and what only it needs are not compared
    inv["torch"]["version"] = "8.1.0+cu121"
    inv["sympy"]["version"] = "0.9"
    del inv["extra"]
    (tmp_path / "lock" / "constraints.txt").write_text("numpy==2.0.0\n")
    assert lock_tool.check(type("A", (), {"venv": str(venv), "comet_venv": None})) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "lock: OK: 1 locked versions compared, 0 differ"
