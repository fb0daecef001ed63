"""`plan` for Gemma 4 from a plain config.json: what the meta model says (the planned config, its tensors,
the torch.save skeleton) is computed once per config and kept in iwslt_mc.plancache; a repeat reads it
without transformers. The numbers equal those of the transformers config and the meta model for the real 12B
layout (the kits of every family: tests/planning/test_family_plans.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iwslt_mc.planning import planner
from iwslt_mc import plancache
from iwslt_mc.families import meta as family_meta
from iwslt_mc.families.gemma4 import plan as gemma4_plan
from iwslt_mc.planning.planner import Spec, predict

REPO = Path(__file__).resolve().parents[2]
SPECS = [dict(), dict(precision="nf4-dq", llm_layers=2), dict(precision="int8", drop_vision=True), dict(vocab=400)]
CT = dict(precision="ct4", llm_layers=30)  # the kits' widths (8, 16) are narrower than ct4's groups


@pytest.fixture(scope="module")
def g12(tmp_path_factory):
    from iwslt_mc.families.gemma4 import gemma4_12b_config

    d = tmp_path_factory.mktemp("g12")
    (d / "config.json").write_text(gemma4_12b_config().to_json_string(use_diff=False), encoding="utf-8")
    return d


def _facts(p):
    ts = p.torch_save.to_json() if p.torch_save is not None else p.torch_save_note
    cfg = {k: v for k, v in p.config.to_dict().items() if k != "_name_or_path"}
    return (p.bytes, p.params, p.bin, p.components, p.overhead, p.header_bytes, p.tensors, p.dims,
            sorted(p.entries), ts, json.loads(json.dumps(cfg, default=str)))


def _check(model_dir, monkeypatch, tmp_path, edition="2025", specs=SPECS):
    real = planner.load_base_config(model_dir)  # transformers' config object: the meta model, no cache
    plain = planner.load_base_config(model_dir, plain=True)
    assert type(plain).__name__ == "PlainConfig"
    monkeypatch.setenv("IWSLT_MC_PLAN_CACHE", "off")
    want = [_facts(predict(Spec(**s), real, edition)) for s in specs]
    monkeypatch.setenv("IWSLT_MC_PLAN_CACHE", str(tmp_path / "cache"))
    cold = [_facts(predict(Spec(**s), plain, edition)) for s in specs]
    assert len(list((tmp_path / "cache").iterdir())) >= 1 + 2 * len(specs)

    def fail(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(gemma4_plan, "transformers_config", fail)
    monkeypatch.setattr(family_meta, "meta_skeleton", fail)
    warm = [_facts(predict(Spec(**s), plain, edition)) for s in specs]
    assert cold == want
    assert warm == want
    assert any(isinstance(w[9], dict) for w in want)
    assert all(w[9]["bytes"] > w[0] * 0.5 for w in want if isinstance(w[9], dict))


# both Gemma 4 kits (and every other family's), cold and warm cache, 2025 and 2027:
# tests/planning/test_family_plans.py


def test_12b_cached_equals_meta(g12, monkeypatch, tmp_path):
    _check(g12, monkeypatch, tmp_path, edition="2027", specs=SPECS + [CT])


def test_cache_key_changes_with_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("IWSLT_MC_PLAN_CACHE", str(tmp_path))
    plancache.put("k", {"a": 1}, {"x": 2})
    assert plancache.get("k", {"a": 1}) == {"x": 2}
    assert plancache.get("k", {"a": 2}) is None
    monkeypatch.setattr(plancache, "_code_digest", lambda: "changed code")
    assert plancache.get("k", {"a": 1}) is None  # entries of other code are misses
    monkeypatch.undo()
    monkeypatch.setenv("IWSLT_MC_PLAN_CACHE", str(tmp_path))
    assert plancache.get("k", {"a": 1}) == {"x": 2}
    (next(tmp_path.iterdir())).write_text("{not json", encoding="utf-8")
    assert plancache.get("k", {"a": 1}) is None  # a damaged entry is a miss
    monkeypatch.setenv("IWSLT_MC_PLAN_CACHE", "off")
    plancache.put("k", {"a": 3}, 1)
    assert plancache.get("k", {"a": 3}) is None


def test_repeat_plan_imports_neither_torch_nor_transformers(g12, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), IWSLT_MC_PLAN_CACHE=str(tmp_path / "cache"))
    code = ("import sys, io, contextlib\nfrom iwslt_mc.cli import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    rc = main(['plan', 'gemma4-small', '--base', sys.argv[1], '--json'])\n"
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))[:3])\n"
            "print(buf.getvalue())")
    runs = [subprocess.run([sys.executable, "-c", code, str(g12)], env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    first, second = (r.stdout.split("\n", 1) for r in runs)
    assert first[0].startswith("0 ['t") and second[0] == "0 []", (runs[0].stderr[-2000:], runs[1].stderr[-2000:])
    assert first[1] == second[1] and json.loads(second[1])
