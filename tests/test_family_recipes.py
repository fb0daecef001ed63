"""Recipes across families, on every registered family's kit (conftest ``family_kit``): a recipe of another family
is refused in one line before any work (build, build --dry-run, plan)."""

from __future__ import annotations

import json

import pytest

from iwslt_mc.cli import main
from iwslt_mc.errors import UserError


def test_a_recipe_of_every_other_family_fails_in_one_line_before_any_work(family_kit, tmp_path, monkeypatch, capsys):
    import re

    from iwslt_mc.build import build
    from iwslt_mc.families import families
    from iwslt_mc.recipes import load_recipe

    _, fam, kit = family_kit
    model_type = json.loads((kit / "model" / "config.json").read_text())["model_type"]
    monkeypatch.setattr("iwslt_mc.modelio.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    others = [f for f in families() if f.name != fam.name]
    assert others
    for other in others:
        name = other.recipes[0][0]
        msg = (f"recipe {name} is for {other.label} models (family: {other.name}), but {kit / 'model'} is a "
               f"{fam.label} model (model_type {model_type!r}); pick a {fam.name} recipe (iwslt-mc ls)")
        with pytest.raises(UserError, match=f"^{re.escape(msg)}$"):
            build(load_recipe(name), lang="en-de", base=str(kit / "model"), data={"acl6060": str(kit / "data")},
                  condition="constrained", out=tmp_path / name, smoke=True, log=lambda *a: None)
        assert not (tmp_path / name).exists()
        # the CLI: dry run and plan refuse the same way, exit 2, one line
        assert main(["build", name, "--lang", "en-de", "--base", str(kit / "model"), "--data", str(kit / "data"),
                     "--dry-run"]) == 2
        assert main(["plan", name, "--base", str(kit / "model")]) == 2
        errs = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(errs) == 2 and all(msg in ln for ln in errs), errs
