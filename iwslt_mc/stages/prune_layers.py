"""prune-layers: remove LLM decoder layers and/or audio-encoder layers.

Which layers: an explicit list (``llm_layers``, ``audio_layers``; indices of the input model), or a
strategy with a count (``remove`` LLM layers, ``audio_remove`` audio layers):

- ``middle``: a contiguous block in the middle (``(n - N) // 2`` onwards; 12..19 of 32 for N = 8),
- ``top``: the top N layers, as in the QE-model compression study,
- ``iterative``: the greedy importance search of the IWSLT 2025 Qwen2-Audio submission: each round
  removes the layer whose removal scores best on a held-out set (chrF++ for German, chrF for
  Chinese by default), never the first or last layer. LLM layers are searched first, then audio
  layers (with the chosen LLM layers removed). See :mod:`iwslt_mc.pruning.importance` for how a
  round is made cheap without changing the selection (engine ``shared``: all candidates of a round
  in one batched loop, the prefill below each candidate's layer shared), and the ``teacher-forced``
  alternative. ``screen: segments`` (off by default) races the candidates: every one decoded on a few
  segments, those still within a few standard errors of the leader on a few more, and so on, the
  finalists on all (:class:`iwslt_mc.pruning.importance.ScreenPlan`), falling back to every candidate when
  too many are close; its choice is not guaranteed equal (docs/bench/prune_search.md measures how often).

The search log (every candidate's score, every round's choice) is written to the work directory as
it goes, so an interrupted search resumes where it stopped (and a rerun asking for more layers
continues from the rounds already done); a copy lands in the output as ``prune_search.jsonl``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..floor.layers import fmt_layers, middle_block, top_block
from ..floor.modeldir import read_config
from .base import Stage, StageContext, StageOptions

SEARCH_LOG = "prune_search.jsonl"


@dataclass
class PruneLayersOptions(StageOptions):
    llm_layers: list[int] | None = field(default=None, metadata={
        "help": "LLM decoder layers to remove (indices of the input model), e.g. [13, 3, 20]"})
    audio_layers: list[int] | None = field(default=None, metadata={
        "help": "audio-encoder layers to remove (indices of the input model)"})
    strategy: Literal["middle", "top", "iterative"] | None = field(default=None, metadata={
        "help": "choose the layers instead of listing them: middle (contiguous middle block), top (the top N), "
                "iterative (greedy importance search on held-out data from --data)"})
    remove: int = field(default=0, metadata={"help": "number of LLM layers the strategy removes"})
    audio_remove: int = field(default=0, metadata={"help": "number of audio-encoder layers the strategy removes"})
    protect_first_last: bool = field(default=True, metadata={
        "help": "iterative: never remove the first or last layer"})
    heldout: int = field(default=100, metadata={
        "help": "iterative: held-out segments scored per candidate (a seeded sample of the data)"})
    split: str | None = field(default="test", metadata={
        "help": "iterative: split of the data to draw the held-out set from ('test' = the published held-out split; "
                "none = all)"})
    metric: str = field(default="auto", metadata={
        "help": "iterative: score of a candidate: auto (chrF++ for German, chrF for Chinese), chrf, chrf++, bleu, "
                "comet:CHECKPOINT or qe:CHECKPOINT (a reference-free COMET model); COMET/QE score a round's candidates "
                "in one COMET process"})
    scoring: Literal["decode", "teacher-forced"] = field(default="decode", metadata={
        "help": "iterative: decode (greedy translation scored by the metric, as published) or teacher-forced "
                "(mean log-probability of the reference: one forward pass per candidate, much cheaper, may rank differently)"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "iterative: cap on generated tokens per segment (none = only max_length, as published)"})
    max_length: int = field(default=1024, metadata={
        "help": "iterative: prompt + output token limit per segment, as in the published decoding"})
    batch_size: int = field(default=16, metadata={"help": "iterative: segments decoded together"})
    engine: Literal["shared", "cached", "naive"] = field(default="shared", metadata={
        "help": "iterative: shared (a whole round decoded in one batched loop, audio encoded once, the prompt prefill "
                "below each candidate's layer computed once; same choices as naive), cached (audio encoded once, one "
                "candidate at a time, batched decoding) or naive (the published per-candidate batch-1 loop; slow, "
                "for checking)"})
    screen: Literal["off", "segments"] = field(default="off", metadata={
        "help": "iterative, shared engine, chrF/chrF++/BLEU: off (every candidate decoded on every held-out segment: the "
                "exact search) or segments (a race: every candidate decoded on the first screen_every segments of a "
                "seeded order, those within screen_z standard errors of the leader on the next screen_every, and so "
                "on, the finalists on all; falls back to decoding every candidate when more than half survive; "
                "cheaper, the choice is not guaranteed equal)"})
    screen_every: int = field(default=8, metadata={
        "help": "iterative, screen segments: held-out segments decoded between two comparisons"})
    screen_segments: list[int] = field(default_factory=list, metadata={
        "help": "iterative, screen segments: explicit segment counts of the comparisons, increasing (instead of "
                "every screen_every)"})
    screen_z: float = field(default=3.0, metadata={
        "help": "iterative, screen segments: a candidate is dropped when it trails the leader by more than this many "
                "standard errors of the pair's score difference (as a Student-t quantile for the segments decoded: "
                "z = 3 is 4.53 standard errors at 8 segments, 3.26 at 32)"})
    round_rows: int = field(default=256, metadata={
        "help": "iterative, shared engine: (candidate, segment) rows decoded together; lower it if a round runs "
                "out of GPU memory (each row holds a KV cache)"})

    def validate(self) -> None:
        for k in ("remove", "audio_remove"):
            if getattr(self, k) < 0:
                raise UserError(f"stage prune-layers: option {k!r} must be at least 0")
        for k in ("llm_layers", "audio_layers"):
            v = getattr(self, k)
            if v is not None:
                if any(i < 0 for i in v):
                    raise UserError(f"stage prune-layers: option {k!r}: layer indices start at 0, got {min(v)}")
                if len(set(v)) != len(v):
                    raise UserError(f"stage prune-layers: option {k!r} lists a layer twice")
        if self.strategy is None:
            if self.remove or self.audio_remove:
                raise UserError("stage prune-layers: 'remove'/'audio_remove' need a 'strategy' (middle, top or iterative)")
            if not self.llm_layers and not self.audio_layers:
                raise UserError("stage prune-layers: nothing to remove (give llm_layers/audio_layers, or a strategy with remove)")
        else:
            if self.llm_layers is not None or self.audio_layers is not None:
                raise UserError("stage prune-layers: give either explicit layer lists or a strategy, not both")
            if not self.remove and not self.audio_remove:
                raise UserError(f"stage prune-layers: strategy {self.strategy} needs remove (LLM) and/or audio_remove > 0")
        for k in ("heldout", "batch_size", "max_length", "round_rows"):
            if getattr(self, k) < 1:
                raise UserError(f"stage prune-layers: option {k!r} must be at least 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UserError("stage prune-layers: option 'max_new_tokens' must be at least 1")
        if self.engine == "naive" and self.scoring == "teacher-forced":
            raise UserError("stage prune-layers: teacher-forced scoring needs the cached or shared engine "
                            "(engine: shared)")
        from ..scoring.metrics import get_metric

        if not self.metric.startswith(("comet:", "qe:")):
            get_metric(self.metric)
        if self.screen != "off":
            st = self.screen_segments
            if self.screen_every < 1:
                raise UserError(f"stage prune-layers: option 'screen_every' must be at least 1, got {self.screen_every}")
            if st and (any(n < 1 for n in st) or sorted(set(st)) != list(st)):
                raise UserError(f"stage prune-layers: option 'screen_segments' must be increasing counts of at least 1, "
                                f"got {st}")
            if not self.screen_z > 0:
                raise UserError(f"stage prune-layers: option 'screen_z' must be above 0, got {self.screen_z}")
            if self.engine != "shared" or self.scoring != "decode":
                raise UserError("stage prune-layers: screen needs engine shared and scoring decode")
            if self.metric not in ("auto", "chrf", "chrf++", "bleu"):
                raise UserError(f"stage prune-layers: screen needs a metric with per-segment statistics (auto, chrf, "
                                f"chrf++, bleu), not {self.metric}")

    def smoke(self) -> "PruneLayersOptions":
        import dataclasses

        return dataclasses.replace(self, heldout=min(self.heldout, 4),
                                   max_new_tokens=min(self.max_new_tokens or 8, 8))


class PruneLayers(Stage):
    name = "prune-layers"
    Options = PruneLayersOptions
    techniques = ["layer pruning"]

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        o = self.options
        cfg = read_config(in_dir)
        self._check_config(cfg, str(in_dir))
        if o.llm_layers or (o.strategy == "middle" and o.remove):
            from ..families import family_for  # the family's rules (Gemma 4: KV sharing), from the config alone

            family_for(in_dir).check_layer_removal(in_dir, o.llm_layers, middle=o.remove if o.strategy == "middle" else 0)
        if o.strategy == "iterative":
            from ..floor.languages import check_lang
            from ..scoring.metrics import check_metric

            check_lang(ctx.lang)
            check_metric(o.metric)
            if not ctx.data:
                raise UserError("stage prune-layers: strategy iterative needs held-out data (--data SPEC, or data: in the recipe)")

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> dict:
        from .base import config_without_layers

        o = self.options
        n_llm = self._check_config(cfg, where)
        if o.strategy is None:
            llm = list(o.llm_layers or [])
        else:  # the searched layers are not known before the run: the count is what later stages see
            llm = (top_block if o.strategy == "top" else middle_block)(n_llm, o.remove) if o.remove else []
        return config_without_layers(cfg, llm, len(o.audio_layers or []) + o.audio_remove)

    def _check_config(self, cfg: dict, in_dir: str) -> int:
        """The checks against the input's layer counts; returns its number of LLM layers."""
        o = self.options
        n_llm = int(cfg.get("text_config", {}).get("num_hidden_layers", 0))
        audio_cfg = cfg.get("audio_config") or {}
        # the audio encoder's layer count: encoder_layers (Qwen2-Audio) or num_hidden_layers (Gemma 4's conformer)
        n_audio = int(audio_cfg.get("encoder_layers", audio_cfg.get("num_hidden_layers", 0)) or 0)
        if (o.audio_layers or o.audio_remove) and not n_audio:
            raise UserError(f"stage prune-layers: {in_dir} has no audio-encoder layers to remove "
                            f"(model_type {cfg.get('model_type')!r})")
        for what, idx, n in (("llm_layers", o.llm_layers, n_llm), ("audio_layers", o.audio_layers, n_audio)):
            if idx:
                bad = [i for i in idx if i >= n]
                if bad:
                    raise UserError(f"stage prune-layers: {what} index {bad[0]} out of range "
                                    f"({in_dir} has {n} layers: 0..{n - 1})")
                if len(set(idx)) >= n:
                    raise UserError(f"stage prune-layers: {what} would remove all {n} layers of {in_dir}")
        for what, count, n in (("remove", o.remove, n_llm), ("audio_remove", o.audio_remove, n_audio)):
            if o.strategy is None or not count:
                continue
            limit = n - 2 if (o.strategy == "iterative" and o.protect_first_last) else n - 1
            if count > limit:
                why = " (the first and last are protected)" if limit == n - 2 else " (at least one must stay)"
                raise UserError(f"stage prune-layers: {what}={count} but {in_dir} has {n} layers: "
                                f"at most {max(limit, 0)} can go{why}")
        return n_llm

    # ------------------------------------------------------------------------------------------

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from .. import modelio
        from ..families import family_for
        from ..training.common import checkpoint_dtype

        o = self.options
        fam = family_for(in_dir)
        own = fam.run_prune_layers(self, in_dir, out_dir, ctx)  # a family with its own surgery (Gemma 4)
        if own is not None:
            return own
        surgery, find_layout = fam.surgery(), fam.layout
        ctx.log(f"prune-layers: loading {in_dir}")
        # float16/bf16 weights run in float32 on a CPU (the search/calibration passes); saved as stored
        run_dtype = modelio.runtime_dtype(in_dir, ctx.resolved_device())
        model = modelio.load_model(in_dir, dtype=run_dtype, device=ctx.resolved_device())
        processor = modelio.load_processor(in_dir)
        layout = find_layout(model)
        n_llm, n_audio = layout.num_llm_layers, layout.num_audio_layers
        extras: dict = {}
        search_info = None

        if o.strategy is None:
            llm = sorted(o.llm_layers or [])
            audio = sorted(o.audio_layers or [])
            how_llm = how_audio = "given"
        elif o.strategy in ("middle", "top"):
            pick = middle_block if o.strategy == "middle" else top_block
            llm = pick(n_llm, o.remove) if o.remove else []
            audio = pick(n_audio, o.audio_remove) if o.audio_remove else []
            how_llm = how_audio = f"{o.strategy} block"
        else:
            llm, audio, search_info = self._search(model, processor, in_dir, out_dir, ctx)
            how_llm = how_audio = "iterative"
            extras["search"] = search_info

        per_llm = surgery.llm_layer_params(layout)
        per_audio = surgery.audio_layer_params(layout)
        if audio:
            surgery.remove_audio_layers(model, audio)
        if llm:
            surgery.remove_llm_layers(model, llm)
        ctx.log(f"prune-layers: removed LLM layers [{fmt_layers(llm)}], audio layers [{fmt_layers(audio)}]; saving")
        # back to the stored dtype: exact, the float16/bf16 values went through float32
        modelio.save_model(model, processor, out_dir, dtype=checkpoint_dtype(in_dir) if run_dtype else None)

        techniques = []
        if llm:
            techniques.append(self._technique("LLM", llm, how_llm, n_llm, search_info))
        if audio:
            techniques.append(self._technique("audio-encoder", audio, how_audio, n_audio, search_info))
        extras.update(
            techniques=techniques,
            removed_llm_layers=llm, removed_audio_layers=audio,
            llm_layers_before=n_llm, llm_layers_after=n_llm - len(llm),
            audio_layers_before=n_audio, audio_layers_after=n_audio - len(audio),
            params_per_llm_layer=per_llm, params_per_audio_layer=per_audio,
        )
        if search_info:
            extras["data"] = search_info.pop("data")
        return extras

    def _technique(self, what: str, idx: list, how: str, n: int, info: dict | None) -> str:
        if how == "iterative" and info:
            scr = ", candidates screened on fewer segments first" if info.get("screen", "off") != "off" else ""
            return (f"iterative {what} layer pruning (removed layers {fmt_layers(idx)} of {n}, in that order, "
                    f"by {info['criterion']} on {info['heldout']} held-out segments{scr})")
        if how == "middle block":
            return f"{what} layer pruning (removed the middle block {idx[0]}-{idx[-1]} of {n} layers)"
        if how == "top block":
            return f"{what} layer pruning (removed the top {len(idx)} of {n} layers: {idx[0]}-{idx[-1]})"
        return f"{what} layer pruning (removed layers {fmt_layers(sorted(idx))} of {n})"

    def search_technique(self, what: str, idx: list, n: int, info: dict) -> str:
        """The technique line of an iterative search that removed ``idx`` (in the order chosen) of ``n`` layers."""
        return self._technique(what, idx, "iterative", n, info)

    def search_layers(self, model, processor, in_dir: Path, out_dir: Path, ctx: StageContext):
        """The iterative search on a loaded ``model`` (a family's own run calls it): (LLM layers, audio layers,
        search info) as :meth:`run` records them."""
        return self._search(model, processor, in_dir, out_dir, ctx)

    def _search(self, model, processor, in_dir: Path, out_dir: Path, ctx: StageContext):
        import numpy as np

        from ..training.data import describe_data, load_examples
        from ..floor.modeldir import model_fingerprint
        from ..training.calibration import heldout_segments
        from ..pruning import importance as imp

        o = self.options
        examples = load_examples(ctx.data, split=o.split, seed=ctx.seed, lang=ctx.lang)
        if not examples:
            raise UserError(f"stage prune-layers: no examples in {ctx.data} (split {o.split})")
        if len(examples) > o.heldout:
            pick = sorted(np.random.default_rng(ctx.seed).permutation(len(examples))[: o.heldout].tolist())
            examples = [examples[i] for i in pick]
        ctx.log(f"prune-layers: held-out set of {len(examples)} segments; encoding audio once")
        segments = heldout_segments(examples, ctx.lang)
        from ..families import family_of_model

        fam = family_of_model(model)
        engine_cls = imp.ENGINES[o.engine] if fam.in_place_layer_removal else imp.RebuildEngine
        if engine_cls is imp.RebuildEngine:
            ctx.log(f"prune-layers: {fam.label} layers cannot be taken out in place: each candidate is a pruned "
                    f"copy (engine {o.engine} not used)")
        extra = {"round_rows": o.round_rows} if engine_cls is imp.SharedEngine else {}
        engine = engine_cls(model, processor, segments, ctx.lang, max_new_tokens=o.max_new_tokens,
                            max_length=o.max_length, batch_size=o.batch_size, **extra)
        if getattr(engine, "fallback", None):
            ctx.log(f"prune-layers: decoding candidates one at a time ({engine.fallback})")
        scorer = imp.CandidateScorer(engine, metric=o.metric, scoring=o.scoring)
        key = {
            "model": model_fingerprint(in_dir), "lang": ctx.lang, "metric": o.metric, "scoring": o.scoring,
            "heldout": [s.id for s in segments], "max_new_tokens": o.max_new_tokens, "max_length": o.max_length,
            "protect_first_last": o.protect_first_last, "seed": ctx.seed,
        }
        screen = None
        if o.screen != "off":
            screen = imp.ScreenPlan(stages=tuple(o.screen_segments), every=o.screen_every, z=o.screen_z,
                                    seed=ctx.seed)
            key["screen"] = screen.as_dict()  # a screened search's rounds are not an exact search's
        work = Path(ctx.work_dir) if ctx.work_dir else out_dir
        log = imp.SearchLog(work / SEARCH_LOG, key, log=ctx.log)
        baseline = log.memo.get(("baseline",))
        if baseline is None:
            baseline = scorer()
            log.add({"type": "baseline", "score": baseline})
        ctx.log(f"prune-layers: baseline {scorer.label} {baseline:.4g}")
        from ..families import layout_of

        layout = layout_of(model)
        n_llm = layout.num_llm_layers

        def valid(removed) -> bool:  # a removal the family allows (Gemma 4: KV sharing, a global last layer)
            try:
                fam.config_after_layer_removal(model.config, [i for i in range(n_llm) if i not in set(removed)])
            except UserError:
                return False
            return True

        llm = imp.iterative_search(scorer, kind="llm", n_layers=n_llm, remove=o.remove,
                                   protect_first_last=o.protect_first_last, log=log, progress=ctx.log,
                                   screen=screen, valid=valid) if o.remove else []
        audio = imp.iterative_search(scorer, kind="audio", n_layers=layout.num_audio_layers, remove=o.audio_remove,
                                     protect_first_last=o.protect_first_last, log=log, fixed_llm=llm,
                                     progress=ctx.log) if o.audio_remove else []
        shutil.copy2(log.path, out_dir / SEARCH_LOG)
        rounds = [r for r in log.lines if r.get("type") == "round"
                  and ((r["kind"] == "llm" and r["round"] <= o.remove) or (r["kind"] == "audio" and r["round"] <= o.audio_remove))]
        final = rounds[-1]["score"] if rounds else baseline
        data = describe_data(ctx.data, o.split)
        for d in data:
            d["use"] = f"held-out scoring of layer removal ({len(segments)} segments, seed {ctx.seed})"
        info = {
            "criterion": scorer.label, "heldout": len(segments), "baseline_score": baseline, "final_score": final,
            "rounds": [{"kind": r["kind"], "round": r["round"], "chosen": r["chosen"], "score": r["score"],
                        **({"screen": {k: r["screen"][k] for k in ("fallback", "decoded_in_full", "candidates",
                                                                      "proxy_rank_of_chosen")}} if "screen" in r else {})}
                       for r in rounds],
            "screen": screen.as_dict() if screen else "off",
            "candidates_scored": sum(1 for r in log.lines if r.get("type") == "candidate"),
            "resumed_candidates": log.resumed, "engine": o.engine, "log": SEARCH_LOG, "data": data,
        }
        return llm, audio, info
