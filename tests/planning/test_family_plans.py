"""The planner on every registered family's kit (conftest ``family_kit``): a plain config.json (no transformers)
predicts what the transformers config predicts, for several specs, from a cold and a warm plan cache
(iwslt_mc.plancache), the warm one without building a meta model. What only one family has (the real 12B or 7B
layouts, Gemma 4's layer rules) stays in that family's test file."""

from __future__ import annotations

import json

from iwslt_mc.families import meta as family_meta
from iwslt_mc.planning import planner
from iwslt_mc.planning.planner import Spec, predict


def _facts(p):
    """Every number of a prediction, and its planned config as JSON."""
    ts = p.torch_save.to_json() if p.torch_save is not None else p.torch_save_note
    cfg = {k: v for k, v in p.config.to_dict().items() if k != "_name_or_path"}
    return (p.bytes, p.params, p.bin, p.components, p.overhead, p.header_bytes, p.tensors, p.dims,
            sorted(p.entries), ts, json.loads(json.dumps(cfg, default=str)))


def _same(want, got) -> bool:
    """``got`` equals ``want``, except that a planned config may leave out fields (Qwen2-Audio's and Qwen2.5-Omni's
    plain configs omit transformers' generic defaults such as id2label); every field it has must be equal."""
    def within(w, g):
        if isinstance(g, dict):
            return isinstance(w, dict) and all(k in w and within(w[k], v) for k, v in g.items())
        return w == g
    return want[:-1] == got[:-1] and within(want[-1], got[-1])


def test_plain_config_cached_or_not_predicts_what_the_transformers_config_does(family_kit, monkeypatch, tmp_path):
    _, fam, kit = family_kit
    model_dir = kit / "model"
    real = planner.load_base_config(model_dir)  # transformers' config object: the meta model, no cache
    plain = planner.load_base_config(model_dir, plain=True)
    assert type(plain).__name__ == "PlainConfig"
    n = real.text_config.num_hidden_layers
    specs = [dict(), dict(precision="nf4-dq", llm_layers=n - 1), dict(precision="int8", vocab=400), dict(precision="bf16")]
    if fam.supports("drop-vision") and fam.has_vision(json.loads((model_dir / "config.json").read_text())):
        specs.append(dict(precision="int8", drop_vision=True))
    for edition in ("2025", "2027"):
        monkeypatch.setenv("IWSLT_MC_PLAN_CACHE", "off")
        want = [_facts(predict(Spec(**s), real, edition)) for s in specs]
        monkeypatch.setenv("IWSLT_MC_PLAN_CACHE", str(tmp_path / edition))
        cold = [_facts(predict(Spec(**s), plain, edition)) for s in specs]
        with monkeypatch.context() as m:
            m.setattr(family_meta, "meta_skeleton", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no cache")))
            warm = [_facts(predict(Spec(**s), plain, edition)) for s in specs]
        assert all(_same(w, c) and _same(w, h) for w, c, h in zip(want, cold, warm))
        assert all(isinstance(w[9], dict) and w[9]["bytes"] > w[0] * 0.5 for w in want)  # torch.save predicted
