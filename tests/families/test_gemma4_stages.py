"""The stages Qwen2-Audio has, on Gemma 4 (both kits: ``gemma4`` with its conformer audio encoder, PLE and KV
sharing, and the 12B's encoder-free ``gemma4_unified``): each runs through the family seam and the model
runs afterwards with the planner's prediction equal to the bytes built, or the stage refuses in one line
naming the architectural reason (issue 33, item 2)."""

from __future__ import annotations

import pytest

from conftest import TrainingInterrupted, stop_at_step

QUIET = dict(device="cpu", log=lambda *a: None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["gemma4", "gemma4_unified"])
def gkit(request, _kits):
    """The kit folder of each Gemma 4 variant (read-only)."""
    return _kits(request.param)[0]


def _load(model_dir):
    import torch
    from transformers import AutoModelForMultimodalLM

    return AutoModelForMultimodalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def _clip(kit):
    from iwslt_mc.decoding.audio import load_audio

    return load_audio(kit / "data" / "testsets" / "KITCLIPS" / "clip-a.wav")


def _logits(model, processor, wave):
    """The logits of the organizers' prompt with ``wave`` (one forward pass of the whole model)."""
    import torch

    from iwslt_mc.decoding.core import prepare_batch

    inputs = prepare_batch(processor, [wave], "en-de").inputs
    inputs = {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in inputs.items()}
    with torch.inference_mode():
        return model(**inputs, use_cache=False).logits


def _runs(model_dir, kit, n=6):
    """Greedy decoding of one kit clip after a stage: ``n`` new tokens (random weights never stop early)."""
    from iwslt_mc import modelio
    from iwslt_mc.decoding.core import reference_one

    model, proc = modelio.load_model(model_dir, device="cpu"), modelio.load_processor(model_dir)
    return reference_one(model, proc, _clip(kit), "en-de", max_new_tokens=n).tokens


def _predicted_exactly(out, spec_kwargs, base):
    """The planner's prediction of ``base`` with ``spec_kwargs`` equals what the sizer measures in ``out``."""
    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer

    rep = sizer.measure(out)
    pred = planner.predict(planner.Spec(precision="fp32", **spec_kwargs), planner.load_base_config(base), "2025")
    assert (pred.bytes, pred.params) == (rep.bytes, rep.params)
    return rep


# ------------------------------------------------------------------------------------------------ prune-ffn


def test_prune_ffn_gemma4_weight_importance_is_exact(gkit, tmp_path):
    """Kept units are the top weight-norm ones of every layer; the narrowed model computes exactly what the
    original does with the dropped units' down_proj columns zeroed; it decodes; the plan is exact."""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage
    from iwslt_mc.stages.prune_ffn import top_units, weight_importance

    base = gkit / "model"
    out = tmp_path / "narrow"
    rec = run_stage(make_stage("prune-ffn", {"llm_width": 100, "multiple_of": 1}), base, out, StageContext(**QUIET))
    assert rec["llm_width_before"] == 128 and rec["llm_width_after"] == 100 and rec["audio_width_after"] is None
    assert rec["techniques"] == ["structured LLM MLP pruning (128 -> 100 units per layer, weight-norm importance)"]
    old, new = _load(base), _load(out)
    assert new.config.text_config.intermediate_size == 100
    keep = [top_units(s, 100) for s in weight_importance(old, audio=False)[0]]
    for lo, ln, k in zip(old.model.language_model.layers, new.model.language_model.layers, keep):
        assert tuple(ln.mlp.gate_proj.weight.shape) == (100, 64) and tuple(ln.mlp.down_proj.weight.shape) == (64, 100)
        assert torch.equal(ln.mlp.up_proj.weight, lo.mlp.up_proj.weight[k])
        assert torch.equal(ln.mlp.down_proj.weight, lo.mlp.down_proj.weight[:, k])
        dropped = torch.ones(128, dtype=torch.bool)
        dropped[k] = False
        with torch.no_grad():
            lo.mlp.down_proj.weight[:, dropped] = 0
    proc = modelio.load_processor(base)
    wave = _clip(gkit)
    torch.testing.assert_close(_logits(new, proc, wave), _logits(old, proc, wave), rtol=1e-5, atol=1e-5)
    assert len(_runs(out, gkit)) == 6
    _predicted_exactly(out, {"ffn_dim": 100}, base)


def test_prune_ffn_gemma4_activation_importance(gkit, tmp_path):
    """Activation importance runs whole teacher-forced examples through Gemma 4 (its decoder needs more than
    the captured prompt embeddings); the units it keeps differ from the weight-norm ones, and the result
    loads, decodes and is planned exactly (rounded down to a multiple of 64 by default)."""
    import torch

    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    base = gkit / "model"
    ctx = StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET)
    out = tmp_path / "act"
    rec = run_stage(make_stage("prune-ffn", {"llm_width": 100, "importance": "activation", "calibration": 4}),
                    base, out, ctx)
    assert rec["llm_width_after"] == 64  # 100 rounded down to a multiple of 64
    assert rec["data"][0]["use"].startswith("calibration of FFN unit importance (4 segments, seed 0)")
    w = tmp_path / "w"
    run_stage(make_stage("prune-ffn", {"llm_width": 64}), base, w, StageContext(**QUIET))
    a, b = _load(out), _load(w)
    assert any(not torch.equal(x.mlp.up_proj.weight, y.mlp.up_proj.weight)
               for x, y in zip(a.model.language_model.layers, b.model.language_model.layers))
    assert len(_runs(out, gkit)) == 6
    _predicted_exactly(out, {"ffn_dim": 64}, base)


def test_prune_ffn_gemma4_refuses_the_audio_width_in_one_line(gkit, tmp_path, monkeypatch):
    from iwslt_mc.errors import UserError
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    from iwslt_mc.floor.modeldir import read_model_type

    unified = read_model_type(gkit / "model") == "gemma4_unified"
    monkeypatch.setattr("iwslt_mc.modelio.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    want = (r"^stage prune-ffn: audio_width: this Gemma 4 model has no audio encoder \(gemma4_unified: raw audio "
            r"frames enter through embed_audio\)$" if unified else
            r"^stage prune-ffn: audio_width: Gemma 4's audio encoder has no FFN-width setting \(its conformer FFNs "
            r"are 4 x hidden_size, fixed in transformers' Gemma4AudioFeedForward\), so a narrower one would not "
            r"load back$")
    with pytest.raises(UserError, match=want):
        run_stage(make_stage("prune-ffn", {"llm_width": 64, "audio_width": 64}), gkit / "model", tmp_path / "x",
                  StageContext(**QUIET))
    assert not (tmp_path / "x").exists()


def test_prune_ffn_gemma4_double_wide_kv_shared_layers(gemma_kit, tmp_path):
    """With ``use_double_wide_mlp`` the KV-sharing layers are twice as wide: they keep twice the units, so the
    narrowed model loads back from its config alone."""
    import torch
    from transformers import AutoConfig

    from iwslt_mc.families.gemma4 import surgery
    from iwslt_mc.stages.prune_ffn import top_units, weight_importance

    cfg = AutoConfig.from_pretrained(str(gemma_kit[0] / "model"))
    cfg.text_config.use_double_wide_mlp = True
    torch.manual_seed(0)
    from transformers import AutoModelForMultimodalLM

    model = AutoModelForMultimodalLM.from_config(cfg).eval()
    widths = [l.mlp.gate_proj.weight.shape[0] for l in model.model.language_model.layers]
    assert widths == [128, 128, 256, 256]  # the last two layers share KV (num_kv_shared_layers=2)
    assert surgery.llm_mlp_widths(model, 96) == [96, 96, 192, 192]
    imp = weight_importance(model, audio=False)[0]
    surgery.prune_llm_mlp(model, [top_units(s, w) for s, w in zip(imp, surgery.llm_mlp_widths(model, 96))])
    model.save_pretrained(tmp_path / "m")
    back = AutoModelForMultimodalLM.from_pretrained(str(tmp_path / "m"))
    assert back.config.text_config.intermediate_size == 96
    assert [l.mlp.down_proj.weight.shape[1] for l in back.model.language_model.layers] == [96, 96, 192, 192]
    with pytest.raises(ValueError, match="every layer must keep the same number of MLP units"):
        surgery.prune_llm_mlp(model, [torch.arange(50)] * 4)


# ------------------------------------------------------------------------------------------------ hidden-state KD


def test_kd_hidden_states_on_gemma4(gkit, tmp_path):
    """kd with the hidden-state term on Gemma 4: a student made from the kit (layer 2 removed, MLPs narrowed to a
    quarter) matches its layers to the teacher's by lineage (student 1 stands for teacher 2, the last of the
    layers it replaces), the conformer layers one to one on the ``gemma4`` kit (none on the encoder-free kit);
    the hidden term falls (after Adam's first, sign-sized step, which overshoots near the teacher), the
    student reloads and decodes."""
    import json

    from iwslt_mc.floor.modeldir import read_model_type
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    unified = read_model_type(gkit / "model") == "gemma4_unified"
    ctx = StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET)
    run_stage(make_stage("prune-layers", {"llm_layers": [2]}), gkit / "model", tmp_path / "pruned", ctx)
    student = tmp_path / "student"
    run_stage(make_stage("prune-ffn", {"llm_width": 32, "multiple_of": 1}), tmp_path / "pruned", student, ctx)
    opts = {"teacher": str(gkit / "model"), "alpha": 1.0, "hidden_weight": 1.0, "lr": 1e-3, "max_steps": 8,
            "batch_size": 1, "limit": 1, "scheduler": "constant", "progress": False}  # one example: steps compare
    out = tmp_path / "kd"
    rec = run_stage(make_stage("kd", opts), student, out, ctx)
    want = {"llm": [[0, 0], [1, 2], [2, 3]]} if unified else {"llm": [[0, 0], [1, 2], [2, 3]], "audio": [[0, 0], [1, 1]]}
    assert rec["layer_maps"] == want
    assert "hidden-state MSE (weight 1; llm layers 0->0, 1->2, 2->3" in rec["techniques"][0]
    hidden = [json.loads(line)["hidden"] for line in (out / "kd_history.jsonl").read_text().splitlines()]
    assert len(hidden) == 8 and hidden[-1] < 0.7 * hidden[0], hidden
    assert all(b < a for a, b in zip(hidden[1:], hidden[2:])), hidden
    assert len(_runs(out, gkit)) == 6


def test_kd_hidden_states_refuses_audio_only_on_an_encoder_free_model(gemma_unified_kit, tmp_path, monkeypatch):
    from iwslt_mc.errors import UserError
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    monkeypatch.setattr("iwslt_mc.modelio.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    m = gemma_unified_kit / "model"
    with pytest.raises(UserError, match=r"^stage kd: hidden-state KD of audio: the student .* or the teacher .* has no "
                                        r"such layers \(an encoder-free model has no audio-encoder layers; match "
                                        r"hidden: \[llm\]\)$"):
        run_stage(make_stage("kd", {"teacher": str(m), "hidden_weight": 1.0, "hidden": ["audio"]}), m, tmp_path / "x",
                  StageContext(lang="en-de", data=[str(gemma_unified_kit / "data")], **QUIET))
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------ layer search


def test_iterative_layer_search_on_gemma4(gkit, tmp_path):
    """The greedy search on Gemma 4: each round's candidates are exactly the removals KV sharing and the global
    last layer allow; each candidate (a pruned copy) scores what the explicitly pruned model decodes to; the
    best is removed; the output is the explicit prune-layers of the chosen layers."""
    import json

    from safetensors.torch import load_file

    from iwslt_mc import modelio
    from iwslt_mc.decoding.core import translate
    from iwslt_mc.errors import UserError
    from iwslt_mc.families import family_named
    from iwslt_mc.scoring.metrics import get_metric
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage
    from iwslt_mc.training.calibration import heldout_segments
    from iwslt_mc.training.data import load_examples

    base = gkit / "model"
    ctx = StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET)
    opts = {"strategy": "iterative", "remove": 2, "protect_first_last": False, "heldout": 1000, "split": None,
            "max_new_tokens": 8}
    out = tmp_path / "searched"
    rec = run_stage(make_stage("prune-layers", opts), base, out, ctx)
    lines = [json.loads(line) for line in (out / "prune_search.jsonl").read_text().splitlines()]
    cfg = modelio.load_model(base, device="cpu").config
    fam = family_named("gemma4")

    def allowed(removed):
        try:
            fam.config_after_layer_removal(cfg, [i for i in range(4) if i not in removed])
            return True
        except UserError:
            return False

    removed = []
    for rnd in (1, 2):
        cands = {r["candidate"]: r["score"] for r in lines if r["type"] == "candidate" and r["round"] == rnd}
        assert sorted(cands) == [c for c in range(4) if c not in removed and allowed(removed + [c])]
        chosen = next(r["chosen"] for r in lines if r["type"] == "round" and r["round"] == rnd)
        assert cands[chosen] == max(cands.values())
        removed.append(chosen)
    assert rec["removed_llm_layers"] == removed and rec["llm_layers_after"] == 2
    assert rec["techniques"] == [f"iterative LLM layer pruning (removed layers {removed[0]}, {removed[1]} of 4, in that "
                                 f"order, by chrF++ on {rec['search']['heldout']} held-out segments)"]
    # round 1's score is the chrF++ of the model pruned by hand, decoded on the held-out set
    one = tmp_path / "one"
    run_stage(make_stage("prune-layers", {"llm_layers": [removed[0]]}), base, one, ctx)
    segs = heldout_segments(load_examples([str(gkit / "data")], split=None, seed=0, lang="en-de"), "en-de")
    assert [s.id for s in segs] == lines[0]["key"]["heldout"]
    hyps = translate(modelio.load_model(one, device="cpu"), modelio.load_processor(one), [s.wave for s in segs],
                     "en-de", mode="reference", max_new_tokens=8)
    score = get_metric("auto")([h.text for h in hyps], [s.reference for s in segs], [s.source for s in segs], "en-de")
    assert score == pytest.approx(rec["search"]["rounds"][0]["score"], abs=1e-9)
    explicit = tmp_path / "explicit"
    run_stage(make_stage("prune-layers", {"llm_layers": removed}), base, explicit, ctx)
    a, b = load_file(out / "model.safetensors"), load_file(explicit / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert len(_runs(out, gkit)) == 6


def test_iterative_search_audio_layers_and_teacher_forced_on_gemma4(gemma_kit, tmp_path):
    """The conformer layers are searched too (with the chosen LLM layer kept out), and teacher-forced scoring
    runs whole examples through each pruned copy: every round removes its best-scoring candidate."""
    import json

    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    kit = gemma_kit[0]
    ctx = StageContext(lang="en-de", data=[str(kit / "data")], **QUIET)
    opts = {"strategy": "iterative", "remove": 1, "audio_remove": 1, "protect_first_last": False, "heldout": 4,
            "split": None, "scoring": "teacher-forced"}
    out = tmp_path / "tf"
    rec = run_stage(make_stage("prune-layers", opts), kit / "model", out, ctx)
    lines = [json.loads(line) for line in (out / "prune_search.jsonl").read_text().splitlines()]
    audio = {r["candidate"]: r["score"] for r in lines if r["type"] == "candidate" and r["kind"] == "audio"}
    assert sorted(audio) == [0, 1] and rec["removed_audio_layers"] == [max(audio, key=audio.get)]
    assert all(s < 0 for s in audio.values()) and audio[0] != audio[1]  # mean log-probabilities, not a constant
    assert rec["removed_llm_layers"] == [2]  # the only single layer KV sharing and the global last layer allow
    assert rec["audio_layers_after"] == 1 and rec["llm_layers_after"] == 3
    assert "by mean reference log-prob (teacher-forced)" in rec["techniques"][0]
    assert len(_runs(out, kit)) == 6


def test_build_prune_ffn_recipe_is_planned_exactly_on_gemma4(gkit, tmp_path):
    """A Gemma 4 recipe with prune-ffn (after a layer removal) builds what ``predict_recipe`` says, to the byte;
    the planner refuses --audio-ffn-dim with the architectural reason."""
    from iwslt_mc.build import build, predict_recipe
    from iwslt_mc.errors import UserError
    from iwslt_mc.planning import planner
    from iwslt_mc.recipes import load_recipe
    from iwslt_mc.sizing import sizer

    p = tmp_path / "r.yaml"
    p.write_text("name: r\nfamily: gemma4\nstages:\n"
                 "  - {id: a, stage: prune-layers, options: {llm_layers: [2]}}\n"
                 "  - {id: b, stage: prune-ffn, options: {llm_width: 80, multiple_of: 16}}\n")
    recipe = load_recipe(str(p))
    pred = predict_recipe(recipe, str(gkit / "model"), condition="constrained", lang="en-de", data={}, edition="2025")
    assert pred["dims"]["ffn_dim"] == 80 and pred["dims"]["llm_kept"] == [0, 1, 3]
    res = build(recipe, lang="en-de", base=str(gkit / "model"), data={}, condition="constrained", out=tmp_path / "b",
                log=lambda *a: None)
    assert res.size["bytes"] == pred["bytes"] == sizer.measure(res.model_dir).bytes
    unified = res.prediction["dims"]["audio_layers"] is None
    with pytest.raises(UserError, match=r"^--audio-ffn-dim: this Gemma 4 model has no audio encoder \(gemma4_unified\)$"
                       if unified else r"^--audio-ffn-dim: Gemma 4's audio encoder has no FFN-width setting"):
        planner.predict(planner.Spec(audio_ffn_dim=64), planner.load_base_config(gkit / "model"), "2025")


# ------------------------------------------------------------------------------------------------ prune-hidden


def test_prune_hidden_gemma4_every_dimension_kept_is_exact(gkit):
    """Keeping every residual dimension (in a shuffled order) gives a model that computes exactly the original's
    logits: nothing built from hidden_size is cut twice or missed, and the run-time factors are unchanged."""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.families import surgery_of

    base = gkit / "model"
    old = _load(base)
    new = surgery_of(old).prune_llm_hidden(_load(base), torch.randperm(64, generator=torch.Generator().manual_seed(0)))
    proc, wave = modelio.load_processor(base), _clip(gkit)
    assert torch.equal(_logits(new, proc, wave), _logits(old, proc, wave))


def test_prune_hidden_gemma4_keeps_the_kept_channels_of_embeddings_and_the_logit_scale(gkit):
    """Narrowed 64 -> 40: every tensor with the hidden width follows (embed_tokens and the tied lm_head, PLE
    projections and norm, the audio/vision projectors, attention/MLP in/out, all RMSNorms); the embedding scale
    Gemma computes from hidden_size at run time (sqrt(hidden)) is compensated, so the narrowed model's token
    embeddings are the unpruned model's on the kept channels (to float32 rounding); the tied lm_head's factor is
    taken back in the final norm (the logits of a hidden state equal the unpruned head's on the kept channels),
    and the PLE context projection keeps its hidden_size**-0.5 scale."""
    import torch

    from iwslt_mc.families import surgery_of

    base = gkit / "model"
    old = _load(base)
    dims = torch.randperm(64, generator=torch.Generator().manual_seed(1))[:40].sort().values
    new = surgery_of(old).prune_llm_hidden(_load(base), dims)
    assert new.config.text_config.hidden_size == 40
    lo, ln = old.model.language_model, new.model.language_model
    assert float(ln.embed_tokens.embed_scale) == pytest.approx(40 ** 0.5)  # what transformers computes on load
    fresh = type(old)(new.config)  # every run-time (non-persistent) buffer is what a model of the narrowed config computes
    keys = fresh.state_dict().keys()
    run_time = [(n, b) for n, b in fresh.named_buffers() if n not in keys]
    assert len(run_time) >= 2 and [n for n, _ in new.named_buffers() if n not in keys] == [n for n, _ in run_time]
    mine = dict(new.named_buffers())
    for name, b in run_time:
        assert mine[name].dtype == b.dtype and torch.equal(mine[name], b), name
    ids = torch.arange(old.config.text_config.vocab_size)[None]
    with torch.no_grad():
        e_old, e_new = lo.embed_tokens(ids)[..., dims], ln.embed_tokens(ids)
    eps = torch.finfo(torch.float32).eps
    assert ((e_new - e_old).abs() <= 2 * eps * e_old.abs()).all()  # kept channels equal, to float rounding
    assert new.get_output_embeddings().weight is ln.embed_tokens.weight  # still tied
    # every tensor with the hidden width follows (the state dict's shapes: only residual axes change)
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert old_sd.keys() == new_sd.keys()
    changed = {k for k in old_sd if old_sd[k].shape != new_sd[k].shape}
    for k in changed:
        assert [(a, b) for a, b in zip(old_sd[k].shape, new_sd[k].shape) if a != b] == [(64, 40)], k
    assert changed == {k for k in old_sd if ("language_model" in k and 64 in old_sd[k].shape)
                       or k.endswith("embedding_projection.weight") or k == "lm_head.weight"}
    for layer in ln.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, layer.pre_feedforward_layernorm,
                     layer.post_feedforward_layernorm):
            assert norm.weight.shape == (40,)
        assert layer.self_attn.q_proj.weight.shape[1] == 40 and layer.self_attn.o_proj.weight.shape[0] == 40
        assert layer.mlp.gate_proj.weight.shape[1] == 40 and layer.mlp.down_proj.weight.shape[0] == 40
    assert new.model.embed_audio.embedding_projection.weight.shape[0] == 40
    vision = getattr(new.model.embed_vision, "embedding_projection", None) or new.model.embed_vision.multimodal_embedder.embedding_projection
    assert vision.weight.shape[0] == 40
    # the logits of a hidden state: the unpruned head's (final norm weight x tied embedding) on the kept channels
    h = torch.randn(3, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        normed = h * torch.pow(h.pow(2).mean(-1, keepdim=True) + old.config.text_config.rms_norm_eps, -0.5)
        want = (normed * lo.norm.weight[dims]) @ lo.embed_tokens.weight[:, dims].T
        got = new.lm_head(ln.norm(h))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if getattr(lo, "per_layer_model_projection", None) is not None:  # gemma4: the PLE context projection
        x = torch.randn(3, 40, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            want = (x @ lo.per_layer_model_projection.weight[:, dims].T) * 64 ** -0.5
            got = ln.per_layer_model_projection(x) * ln.per_layer_model_projection_scale
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        assert ln.layers[0].per_layer_input_gate.weight.shape[1] == 40 and ln.layers[0].per_layer_projection.weight.shape[0] == 40


def test_prune_hidden_gemma4_stage_reloads_decodes_and_is_planned_exactly(gkit, tmp_path):
    """The stage (activation importance) narrows 64 -> 40 keeping every head; the output reloads with
    from_pretrained alone and decodes; the planner predicts its safetensors bytes and the 2027 torch.save measure
    exactly; a head count no layer type can serve and the audio width are refused in one line before loading."""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.errors import UserError
    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    base, out = gkit / "model", tmp_path / "narrow"
    rec = run_stage(make_stage("prune-hidden", {"llm_ratio": 0.625, "importance": "activation", "calibration": 2}),
                    base, out, StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET))
    assert rec["shape_after"]["hidden"] == 40 and rec["shape_after"]["heads"] == 4
    assert rec["techniques"] == ["LLM hidden-size pruning (64 -> 40 dimensions, every attention head kept, "
                                 "activation importance on 2 segments)"]
    model = _load(out)
    assert model.config.text_config.hidden_size == 40
    assert len(_runs(out, gkit)) == 6
    _predicted_exactly(out, {"hidden": 40}, base)
    bf16 = tmp_path / "bf16"
    modelio.load_model(out, dtype=torch.bfloat16, device="cpu").save_pretrained(bf16)
    pred = planner.predict(planner.Spec(precision="bf16", hidden=40), planner.load_base_config(base), "2027")
    rep = sizer.measure(bf16, "2027")
    assert pred.bytes == rep.bytes and pred.torch_save.bytes == rep.torch_save.bytes
    with pytest.raises(UserError, match=r"^stage prune-hidden: llm_heads=3 must be a multiple of the GQA group size 2 "
                                        r"of Gemma 4's sliding_attention layers \(4 query / 2 key-value heads\), or less"):
        make_stage("prune-hidden", {"llm_hidden": 40, "llm_heads": 3}).check(base, StageContext(**QUIET))
    unified = rec["shape_before"]["audio_hidden"] is None and not (model.config.audio_config.to_dict().get("num_hidden_layers"))
    with pytest.raises(UserError, match=r"^stage prune-hidden: audio_hidden/audio_ratio: " +
                       (r"this Gemma 4 model has no audio encoder" if unified else r"Gemma 4's conformer ties")):
        make_stage("prune-hidden", {"audio_ratio": 0.5}).check(base, StageContext(**QUIET))


def test_prune_heads_gemma4_kv_sharing_layers_keep_their_source_heads(gkit):
    """Every head kept: the logits are identical. Two query heads of four: each non-sharing layer keeps the key/value
    head its scores (with those of the layers reading it) favour, here a different one for the sliding source (KV
    head 1) and the global source (KV head 0); each KV-sharing layer keeps exactly its source's (same indices):
    its q_proj rows and o_proj columns are the original ones of that group's query heads, at its own head size."""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.families.gemma4 import surgery
    from iwslt_mc.families.gemma4.layout import find_layout

    model = _load(gkit / "model")
    processor = modelio.load_processor(gkit / "model")
    wave = _clip(gkit)
    ref = _logits(model, processor, wave)
    t = model.config.text_config
    # what the head importance reads: a sharing layer's values are its source's (layer 3 reads layer 1)
    heads = surgery.attention_heads(find_layout(model))
    assert [h[1:3] for h in heads] == [(4, 16), (4, 32), (4, 16), (4, 32)]
    assert heads[3][3] is model.model.language_model.layers[1].self_attn.v_proj.weight
    every = [torch.arange(4)] * 4
    same = surgery.prune_llm_hidden(model, torch.arange(64), every)
    assert torch.equal(_logits(same, processor, wave), ref)
    # layer 0 (sliding) favours KV head 1, layer 1 (global) KV head 0; layers 2 and 3 read them (KV sharing)
    scores = [torch.tensor([0.0, 0.1, 1.0, 0.9]), torch.tensor([1.0, 0.8, 0.0, 0.2]), torch.zeros(4), torch.zeros(4)]
    keep = surgery.kept_heads(model, scores, 2)
    assert [k.tolist() for k in keep] == [[2, 3], [0, 1], [2, 3], [0, 1]]
    new = surgery.prune_llm_hidden(model, torch.arange(64), keep)
    nt = new.config.text_config
    assert (nt.num_attention_heads, nt.num_key_value_heads) == (2, 1)
    assert [(nt.per_layer_config[i].num_key_value_heads, nt.per_layer_config[i].head_dim) for i in range(4)] == \
        [(1, 16), (1, 32), (1, 16), (1, 32)]
    old_l, new_l = model.model.language_model.layers, new.model.language_model.layers
    for i, (kv, hd) in enumerate([(1, 16), (0, 32), (1, 16), (0, 32)]):
        q_rows = torch.arange(2 * kv * hd, 2 * (kv + 1) * hd)  # the group's two query heads
        a, b = old_l[i].self_attn, new_l[i].self_attn
        assert torch.equal(b.q_proj.weight, a.q_proj.weight[q_rows]), i
        assert torch.equal(b.o_proj.weight, a.o_proj.weight[:, q_rows]), i
        assert torch.equal(b.q_norm.weight, a.q_norm.weight), i  # per head_dim: unaffected
        if i < 2:  # the sources: their key/value head kv
            kv_rows = torch.arange(kv * hd, (kv + 1) * hd)
            assert torch.equal(b.k_proj.weight, a.k_proj.weight[kv_rows]) and torch.equal(b.v_proj.weight, a.v_proj.weight[kv_rows])
        else:
            assert not hasattr(b, "k_proj")
    out = _logits(new, processor, wave)
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.equal(out, ref)
    # a sharing layer may not keep another KV head than its source
    with pytest.raises(ValueError, match="layer 2 reads layer 0's keys/values"):
        surgery.prune_llm_hidden(model, torch.arange(64), [keep[0], keep[1], torch.tensor([0, 1]), keep[3]])


@pytest.mark.parametrize("importance", ["weight", "activation"])
def test_prune_heads_gemma4_stage_reloads_decodes_and_is_planned_exactly(gkit, tmp_path, importance):
    """prune-hidden with ``llm_heads`` 2 of 4 (and the width 64 -> 48): the output loads with from_pretrained alone,
    every layer has one key/value head of its type's size (2 query heads), the KV-sharing layers keep their
    source's; it decodes; the planner (``plan --heads 2 --hidden 48``) predicts its bytes and the 2027 torch.save
    measure exactly, and ``build --dry-run``'s config (the stage's plan) is the built one's."""
    import json

    from iwslt_mc.floor.modeldir import read_config
    from iwslt_mc.planning import planner
    from iwslt_mc.sizing import sizer
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    base, out = gkit / "model", tmp_path / "heads"
    opts = {"llm_hidden": 48, "llm_heads": 2, "importance": importance, "calibration": 2}
    stage = make_stage("prune-hidden", opts)
    planned_cfg = stage.plan(read_config(base), StageContext(**QUIET), "x")
    rec = run_stage(stage, base, out, StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET))
    assert rec["techniques"] == [f"LLM hidden-size pruning (64 -> 48 dimensions, 4 -> 2 attention heads of 16, "
                                 f"{'weight-norm importance' if importance == 'weight' else 'activation importance on 2 segments'})"]
    model = _load(out)
    for i, layer in enumerate(model.model.language_model.layers):
        hd = 32 if i % 2 else 16
        a = layer.self_attn
        assert (a.q_proj.weight.shape, a.o_proj.weight.shape) == ((2 * hd, 48), (48, 2 * hd))
        if i < 2:
            assert a.k_proj.weight.shape == a.v_proj.weight.shape == (hd, 48)
    built = json.loads((out / "config.json").read_text())["text_config"]
    for k in ("num_attention_heads", "num_key_value_heads", "hidden_size", "per_layer_config"):
        assert planned_cfg["text_config"][k] == built[k], k
    assert len(_runs(out, gkit)) == 6
    _predicted_exactly(out, {"hidden": 48, "heads": 2}, base)
    pred = planner.predict(planner.Spec(precision="fp32", hidden=48, heads=2), planner.load_base_config(base), "2027")
    rep = sizer.measure(out, "2027")
    assert pred.torch_save.bytes == rep.torch_save.bytes


def test_build_prune_hidden_recipe_smoke_on_gemma4(gkit, tmp_path):
    """A Gemma 4 recipe with prune-hidden written for the 12B (llm_hidden 2880 of 3840) builds with --smoke on the
    kit (scaled to 48 of 64) after a layer removal, to the bytes ``predict_recipe`` says."""
    from iwslt_mc.build import build, predict_recipe
    from iwslt_mc.recipes import load_recipe
    from iwslt_mc.sizing import sizer

    p = tmp_path / "r.yaml"
    p.write_text("name: r\nfamily: gemma4\nstages:\n"
                 "  - {id: a, stage: prune-layers, options: {llm_layers: [2]}}\n"
                 "  - {id: b, stage: prune-hidden, options: {llm_hidden: 2880}}\n")
    recipe = load_recipe(str(p))
    kw = dict(condition="constrained", lang="en-de", data={})
    pred = predict_recipe(recipe, str(gkit / "model"), edition="2027", smoke=True, **kw)
    assert pred["dims"]["hidden"] == 48 and pred["dims"]["llm_kept"] == [0, 1, 3]
    res = build(recipe, base=str(gkit / "model"), out=tmp_path / "b", smoke=True, log=lambda *a: None, **kw)
    assert _load(res.model_dir).config.text_config.hidden_size == 48
    assert res.size["bytes"] == pred["bytes"] == sizer.measure(res.model_dir).bytes


# ------------------------------------------------------------------------------------------------ replace-layers

REPLACE = {"dtype": "float32", "batch_size": 2, "lr": 1e-3, "scheduler": "constant", "save_steps": 1000,
           "progress": False, "max_steps": 12, "ce_weight": 0, "mse_weight": 1.0, "search_examples": 4}


def test_replace_layers_block_target_is_what_the_original_block_computes(gkit):
    """With the block's other layers bypassed (Gemma 4's path: each layer has its own per-layer-embedding slice,
    attention type and KV-sharing role), the target the stage trains to is exactly what the unmodified model's
    block outputs: every original layer runs on its own position's arguments (layer 1 global, layer 2 sliding
    and reading layer 0's keys/values), and the kept layer's output is what the model gives the next layer."""
    import copy

    import torch

    from iwslt_mc import modelio
    from iwslt_mc.stages.replace_layers import SlotTap, bypass
    from iwslt_mc.training import training
    from iwslt_mc.training.data import load_examples

    base = gkit / "model"
    model, proc = _load(base), modelio.load_processor(base)
    examples = load_examples([str(gkit / "data")], split=None, seed=0, lang="en-de")[:2]
    ds = training.SpeechTranslationDataset(examples, proc, "en-de")
    batch = training.Collator(training.pad_token_id(proc))([ds[0], ds[1]])
    batch = {k: v for k, v in batch.items() if k != "labels"}
    stack = model.model.language_model.layers
    got = {}
    hooks = [stack[i].register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o)) for i in (0, 2)]
    with torch.no_grad():
        model(**batch, use_cache=False)
    for h in hooks:
        h.remove()
    originals = [copy.deepcopy(stack[i]) for i in (1, 2)]
    tap = SlotTap(stack[1], [1, 2], 1)
    bypass(stack, [2], tap)
    with torch.no_grad():
        model(**batch, use_cache=False)
        target = tap.target(originals)
    assert sorted(tap.calls) == [1, 2]
    assert tap.calls[1][1]["attention_mask"] is not tap.calls[2][1]["attention_mask"]  # a mask per attention type
    assert torch.equal(tap.calls[1][0][0], got[0])  # the block's input: layer 0's output
    torch.testing.assert_close(target, got[2], rtol=0, atol=0)
    torch.testing.assert_close(tap.out, stack[1](got[0], *tap.calls[1][0][1:],
                                                 **{k: v for k, v in tap.calls[1][1].items()}), rtol=0, atol=0)


def test_replace_layers_on_gemma4(gkit, tmp_path):
    """Layers 1-2 (global, then sliding and KV-sharing) become one, from layer 1, trained alone on the block's
    target: the block error falls, every other tensor equals the explicit removal of layer 2 (PLE slices with
    it), the model has 3 layers, reloads, decodes, and its bytes are the planner's prediction for layers
    0, 1, 3 kept."""
    from safetensors.torch import load_file

    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    base = gkit / "model"
    ctx = StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET)
    out = tmp_path / "r"
    rec = run_stage(make_stage("replace-layers", dict(REPLACE, layers=[1, 2], init="first")), base, out, ctx)
    err = rec["block_error"]
    assert err["after"] < 0.8 * err["before"], err
    assert rec["replaced_llm_layers"] == [1, 2] and rec["kept_layer"] == 1
    assert (rec["layers_before"], rec["layers_after"]) == (4, 3)
    pruned = tmp_path / "p"
    run_stage(make_stage("prune-layers", {"llm_layers": [2]}), base, pruned, ctx)
    a, b = load_file(pruned / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    changed = sorted(k for k in a if not a[k].equal(b[k]))
    assert changed and all("language_model.layers.1." in k for k in changed), changed
    m = _load(out)
    assert m.config.text_config.num_hidden_layers == 3 and len(m.config.text_config.layer_types) == 3
    assert len(_runs(out, gkit)) == 6
    _predicted_exactly(out, {"llm_layers": 3, "llm_kept": [0, 1, 3]}, base)


def test_replace_layers_search_on_gemma4_scores_only_allowed_blocks(gemma_unified_kit, tmp_path):
    """position: search scores only the blocks whose collapse KV sharing and the global last layer allow (from
    layer ``first``: 1-2 alone of 0-1, 1-2, 2-3), each by the CE of the model with the block collapsed, which
    is the CE of the explicitly pruned model; the output has 3 layers and decodes."""
    import json

    import torch

    from iwslt_mc import modelio
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage
    from iwslt_mc.stages.replace_layers import ReplaceLayers

    kit = gemma_unified_kit
    ctx = StageContext(lang="en-de", data=[str(kit / "data")], **QUIET)
    out = tmp_path / "s"
    opts = dict(REPLACE, count=2, position="search", protect_first_last=False, init="first", max_steps=1)
    rec = run_stage(make_stage("replace-layers", opts), kit / "model", out, ctx)
    lines = [json.loads(x) for x in (out / "replace_search.jsonl").read_text().splitlines()]
    assert [r["block"] for r in lines] == [[1, 2]] and rec["replaced_llm_layers"] == [1, 2]
    pruned = tmp_path / "p"
    run_stage(make_stage("prune-layers", {"llm_layers": [2]}), kit / "model", pruned, ctx)
    stage = make_stage("replace-layers", opts)
    stage.check(kit / "model", ctx)
    probe = stage._probe_batches(stage._examples, modelio.load_processor(kit / "model"), ctx)
    m = _load(pruned)
    with torch.no_grad():
        ce = sum(float(m(**b, use_cache=False).loss) for b in probe) / len(probe)
    assert ce == pytest.approx(lines[0]["ce"], rel=1e-5)
    assert isinstance(stage, ReplaceLayers) and len(_runs(out, kit)) == 6


def test_replace_layers_refuses_a_block_kv_sharing_forbids(gkit, tmp_path, monkeypatch):
    """Collapsing 1-2 into layer 2 removes layer 1, whose keys/values layer 3 reads: refused in one line naming
    the reason, before any weight is loaded; so is a chosen block when none the family allows is left."""
    from iwslt_mc.errors import UserError
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    monkeypatch.setattr("iwslt_mc.modelio.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    ctx = StageContext(lang="en-de", data=[str(gkit / "data")], **QUIET)
    with pytest.raises(UserError, match=r"^stage replace-layers: LLM layers 1-2 cannot become one layer \(layer 2 kept\): "
                                        r"cannot remove layer 1: kept layer 3 reads its keys/values from it \(KV sharing, "
                                        r"num_kv_shared_layers=2\)$"):
        run_stage(make_stage("replace-layers", dict(REPLACE, layers=[1, 2])), gkit / "model", tmp_path / "x", ctx)
    with pytest.raises(UserError, match=r"^stage replace-layers: LLM layers 2-3 cannot become one layer \(layer 2 kept\): "
                                        r"the last kept layer \(2\) is a sliding_attention layer; Gemma 4's last layer "
                                        r"must be a full_attention \(global\) layer$"):
        run_stage(make_stage("replace-layers", dict(REPLACE, layers=[2, 3], init="first")), gkit / "model",
                  tmp_path / "x", ctx)
    with pytest.raises(UserError, match=r"^stage replace-layers: no block of 2 LLM layers in .* can become one layer "
                                        r"\(initialised from last\); e\.g\. 1-2: cannot remove layer 1: kept layer 3 "
                                        r"reads its keys/values from it"):
        run_stage(make_stage("replace-layers", dict(REPLACE, count=2)), gkit / "model", tmp_path / "x", ctx)
    assert not (tmp_path / "x").exists()


def test_build_replace_layers_recipe_is_planned_exactly_on_gemma4(gkit, tmp_path):
    """A Gemma 4 recipe with replace-layers (a given block) tracks which layers stay, as prune-layers does (its
    sliding and global layers differ in size): ``predict_recipe`` says layers 0, 1, 3 and the bytes built."""
    from iwslt_mc.build import build, predict_recipe
    from iwslt_mc.recipes import load_recipe
    from iwslt_mc.sizing import sizer

    p = tmp_path / "r.yaml"
    p.write_text("name: r\nfamily: gemma4\nstages:\n"
                 "  - {id: a, stage: replace-layers, data: [acl6060], options: {layers: [1, 2], init: first, "
                 "max_steps: 2, batch_size: 2, search_examples: 2, dtype: float32, progress: false}}\n")
    recipe = load_recipe(str(p))
    data = {"acl6060": str(gkit / "data")}
    pred = predict_recipe(recipe, str(gkit / "model"), condition="constrained", lang="en-de", data=data, edition="2025")
    assert pred["dims"]["llm_kept"] == [0, 1, 3] and pred["dims"]["llm_layers"] == 3
    res = build(recipe, lang="en-de", base=str(gkit / "model"), data=data, condition="constrained",
                out=tmp_path / "b", log=lambda *a: None)
    assert res.size["bytes"] == pred["bytes"] == sizer.measure(res.model_dir).bytes


def test_build_smoke_rewrites_a_given_replace_layers_block_to_one_kv_sharing_allows(gkit, tmp_path):
    """``build --smoke`` of a recipe whose replace-layers block was written for the 12B (layers 20-23, init last)
    asks the family for a block its rules allow on the kit: [0, 1] and [1, 2] would leave a KV-sharing layer
    without its source, so the block is [2, 3] (layer 2 removed); the build makes what ``predict_recipe`` says."""
    from iwslt_mc.build import build, predict_recipe, scaled_stages
    from iwslt_mc.recipes import load_recipe
    from iwslt_mc.sizing import sizer

    p = tmp_path / "r.yaml"
    p.write_text("name: r\nfamily: gemma4\nstages:\n"
                 "  - {id: a, stage: replace-layers, data: [acl6060], options: {layers: [20, 21, 22, 23], init: last, "
                 "max_steps: 2, batch_size: 2, search_examples: 2, dtype: float32, progress: false}}\n")
    recipe = load_recipe(str(p))
    base = str(gkit / "model")
    assert scaled_stages(recipe, base, smoke=True)[0].options["layers"] == [2, 3]
    data = {"acl6060": str(gkit / "data")}
    kw = dict(condition="constrained", lang="en-de", data=data)
    pred = predict_recipe(recipe, base, edition="2025", smoke=True, **kw)
    assert pred["dims"]["llm_kept"] == [0, 1, 3]
    res = build(recipe, base=base, out=tmp_path / "b", smoke=True, log=lambda *a: None, **kw)
    assert _load(res.model_dir).config.text_config.num_hidden_layers == 3
    assert res.size["bytes"] == pred["bytes"] == sizer.measure(res.model_dir).bytes


def test_first_allowed_block_follows_kv_sharing():
    """Gemma's rule behind the smoke rewrite, on the kit's layout (4 layers, the last 2 KV-sharing) and after a
    layer removal; the default family rule is the first layers."""
    from transformers import Gemma4TextConfig

    from iwslt_mc.errors import UserError
    from iwslt_mc.families import family_named
    from iwslt_mc.families.gemma4.kit import TEXT_CONFIG
    from iwslt_mc.families.gemma4.rules import config_after_layer_removal, first_allowed_block

    t = Gemma4TextConfig(**TEXT_CONFIG)
    assert first_allowed_block(t, 2, 0) == [1, 2] and first_allowed_block(t, 2, 1) == [2, 3]
    assert first_allowed_block(config_after_layer_removal(t, [0, 1, 3]), 2, 0) == [1, 2]  # its shared layer gone too
    with pytest.raises(UserError, match="^no block of 4 consecutive layers"):  # layer 0 alone: a sliding last layer
        first_allowed_block(t, 4, 0)
    assert family_named("qwen2_audio").smoke_replace_block(None, [0, 1, 2, 3], 2, 1) == [0, 1]


def test_replace_audio_layers_on_gemma4(gemma_kit, gemma_unified_kit, tmp_path):
    """The conformer's two layers become one (random start, then every parameter briefly): the block error
    falls, the encoder has one layer, the model decodes and is planned exactly; the encoder-free kit refuses."""
    from iwslt_mc.errors import UserError
    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage

    kit = gemma_kit[0]
    ctx = StageContext(lang="en-de", data=[str(kit / "data")], **QUIET)
    out = tmp_path / "a"
    rec = run_stage(make_stage("replace-layers", dict(REPLACE, component="audio", layers=[0, 1], init="random",
                                                      unfreeze_steps=2)), kit / "model", out, ctx)
    assert rec["block_error"]["after"] < 0.8 * rec["block_error"]["before"], rec["block_error"]
    assert rec["replaced_audio_layers"] == [0, 1] and rec["train"]["unfreeze"]["steps"] == 2
    assert _load(out).config.audio_config.num_hidden_layers == 1
    assert len(_runs(out, kit)) == 6
    _predicted_exactly(out, {"audio_layers": 1}, kit / "model")
    unified = gemma_unified_kit / "model"
    for opts in ({"layers": [0, 1]}, {"count": 2}):
        with pytest.raises(UserError, match=r"^stage replace-layers: .* has no audio-encoder layers \(an encoder-free "
                                            r"model: its audio enters the LLM directly\)$"):
            run_stage(make_stage("replace-layers", dict(opts, component="audio")), unified, tmp_path / "x",
                      StageContext(lang="en-de", data=[str(gemma_unified_kit / "data")], **QUIET))


def test_replace_layers_on_gemma4_resumes_to_the_same_weights(gemma_kit, tmp_path, monkeypatch):
    """Interrupted after step 3 (checkpoint at 2: the bypassed model's state), the rerun resumes from the
    checkpoint and saves bit-identical weights."""
    from safetensors.torch import load_file

    from iwslt_mc.stages import make_stage
    from iwslt_mc.stages.base import StageContext, run_stage
    from iwslt_mc.training import training

    kit = gemma_kit[0]
    ctx = StageContext(lang="en-de", data=[str(kit / "data")], **QUIET)
    opts = dict(REPLACE, layers=[1, 2], init="first", max_steps=5, save_steps=2, limit=8, search_examples=2)
    run_stage(make_stage("replace-layers", opts), kit / "model", tmp_path / "straight", ctx)
    orig = training.train
    monkeypatch.setattr(training, "train", lambda *a, callbacks=(), **kw: orig(*a, callbacks=[*callbacks, stop_at_step(3)], **kw))
    with pytest.raises(TrainingInterrupted):
        run_stage(make_stage("replace-layers", opts), kit / "model", tmp_path / "resumed", ctx)
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(training, "train", orig)
    rec = run_stage(make_stage("replace-layers", opts), kit / "model", tmp_path / "resumed", ctx)
    assert rec["train"]["resumed_from"].endswith("checkpoint-2")
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not a[k].equal(b[k])] == []


# ------------------------------------------------------------------------------------------------ rebuilds


def test_rebuild_without_random_init_equals_the_initialised_build(gkit):
    """A layer-search candidate (the surgery's layer removal) is laid out on the meta device and takes the loaded
    model's tensors themselves (no copy, no random init): every parameter and buffer, non-persistent ones included
    (embedding scale, rotary frequencies, the conformer's timescales), equals what a randomly initialised model
    loaded with the same weights holds, the tie is made, and the logits are the same. (The CPU rebuild without
    random init, for a changed width or vocabulary, is checked by the every-dimension-kept test above.)"""
    import torch

    from iwslt_mc import modelio
    from iwslt_mc.families.gemma4.rules import config_after_layer_removal
    from iwslt_mc.families.gemma4.surgery import pruned_copy

    base = gkit / "model"
    model = _load(base)
    fast = pruned_copy(model, [2])
    slow = type(model)(config_after_layer_removal(model.config, [0, 1, 3])).to(torch.float32)
    missing, unexpected = slow.load_state_dict(fast.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    assert fast.get_output_embeddings().weight is fast.model.language_model.embed_tokens.weight
    lf, lo = fast.model.language_model, model.model.language_model
    assert lf.layers[2].mlp.up_proj.weight.data_ptr() == lo.layers[3].mlp.up_proj.weight.data_ptr()  # shared, not copied
    for (n1, a), (n2, b) in zip(list(fast.named_parameters()) + list(fast.named_buffers()),
                                list(slow.named_parameters()) + list(slow.named_buffers())):
        assert n1 == n2 and a.dtype == b.dtype and torch.equal(a, b), n1
    proc, wave = modelio.load_processor(base), _clip(gkit)
    assert torch.equal(_logits(fast, proc, wave), _logits(slow.eval(), proc, wave))
