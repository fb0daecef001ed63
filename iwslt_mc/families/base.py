"""The family interface: everything that differs between base model families, behind one seam.

A family (one folder under ``iwslt_mc/families/``, one line in the registry of
:mod:`iwslt_mc.families`) says: the ``model_type`` values it accepts; the transformers class that loads
it; where the parts of a loaded model are (:meth:`Family.find_parts`, :meth:`Family.layout`); which
component a checkpoint key belongs to (the sizer); the surgery the stages run on it; the stages and
strategies it supports (:meth:`Family.supports`); the planner's view of a config (dims, inventory,
prediction, a built-in reference model); the ``torch.save(model.state_dict())`` layout the organizers'
size measure sees; the prompt and decoding defaults; and how to write an offline demo kit.

Stages, the planner, the sizer and the commands ask a family (``family_for(model_dir)``,
``family_of_config(config)``), never compare a family's name. Methods whose default here raises
:class:`NotImplementedError` are required; the others have the default a family without that feature
needs. No torch or transformers import at module level (in a family's folder neither).
"""

from __future__ import annotations

from typing import Any, ClassVar

# Every stage of iwslt_mc.stages (the registry there); a family supports a subset (Family.stages).
ALL_STAGES = ("prune-layers", "prune-ffn", "prune-hidden", "trim-vocab", "quantize", "finetune", "merge",
              "distill", "kd", "replace-layers", "drop-vision")


class Family:
    """One base-model family. Subclasses set the class attributes and implement the required methods."""

    # -- identity
    name: ClassVar[str] = ""  # registry name, as recipes write it (``family:`` line)
    label: ClassVar[str] = ""  # human name, e.g. "Qwen2-Audio"
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json ``model_type`` values of this family
    # class-name prefixes of the family's processors (``Qwen2Audio`` -> Qwen2AudioProcessor)
    processor_prefixes: ClassVar[tuple[str, ...]] = ()
    components: tuple[str, ...] = ()  # sizer/planner components, in report order

    # -- what the family supports
    # the stage names (iwslt_mc.stages registry) that handle this family; run_stage refuses the others
    stages: ClassVar[tuple[str, ...]] = ()
    # stage name -> the strategies that stage offers on this family (a stage absent here: all of its own)
    strategies: ClassVar[dict[str, tuple[str, ...]]] = {}

    def supports(self, stage: str, strategy: str | None = None) -> bool:
        """True when stage ``stage`` (a registry name such as ``"prune-ffn"``) handles this family, and, with
        ``strategy``, offers that strategy on it (:attr:`strategies`)."""
        if stage not in self.stages:
            return False
        return strategy is None or stage not in self.strategies or strategy in self.strategies[stage]

    # -- loading
    def loader_class(self):
        """The transformers class whose ``from_pretrained`` loads a directory of this family."""
        raise NotImplementedError

    def model_from_config(self, config):
        """A model of this family built from ``config`` (random or, under ``torch.device("meta")``, empty)."""
        cls = self.loader_class()
        return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)

    def load_processor(self, model_dir):
        """The processor saved in ``model_dir`` (default: ``AutoProcessor.from_pretrained``)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(model_dir))

    def save_processor(self, processor, out_dir) -> None:
        """Write ``processor`` into ``out_dir`` so that :meth:`load_processor` reads it back."""
        processor.save_pretrained(str(out_dir))

    # -- parts of a loaded model
    def find_parts(self, model) -> dict:
        """Qualified module names of the parts of a loaded model: ``llm_layers``, ``embed_tokens``,
        ``per_layer_embeddings``, ``lm_head``, ``lm_head_tied`` (bool), ``audio_encoder``,
        ``vision_encoder``, ``projector`` (absent parts are None); optionally ``audio_layers`` (the audio encoder's
        layer stack, which quantize's AutoRound tunes block by block with ``quantize_audio``)."""
        raise NotImplementedError

    def layout(self, model):
        """Handles to the parts of a loaded model (an object with ``decoder_layers``, ``audio_layers``,
        ``embed_tokens``, ``lm_head``, ``projector``, their ``*_name`` and ``num_llm_layers`` /
        ``num_audio_layers``), used by the layout-based stages (:meth:`surgery`). Families whose stages run
        their own code (:meth:`run_prune_layers`) may leave it unimplemented."""
        raise NotImplementedError(f"{self.label}: no generic layout")

    # -- checkpoint keys
    def component_for_key(self, key: str) -> str:
        """The component (one of :attr:`components`) a checkpoint / state-dict key belongs to."""
        raise NotImplementedError

    def llm_layer_index(self, key: str) -> int | None:
        """The LLM decoder layer a checkpoint key belongs to (None: none); the planner's generic path."""
        return None

    def audio_layer_index(self, key: str) -> int | None:
        """The audio-encoder layer a checkpoint key belongs to (None: none); the planner's generic path."""
        return None

    # -- surgery
    def surgery(self):
        """The module of layout-based surgery the generic stage paths call (``remove_llm_layers``,
        ``remove_audio_layers``, ``llm_layers_removed``, ``audio_layers_removed``, ``llm_layer_params``,
        ``audio_layer_params``, ``ffn_widths``, ``llm_mlp_widths``, ``prune_llm_mlp``, ``prune_audio_ffn``, ``select_vocab``,
        ``llm_attention_shape``, ``audio_attention_shape``, ``hidden_readers``, ``prune_llm_hidden`` (returns the
        narrowed model: the same one or a new one), ``prune_audio_hidden``; optionally ``attention_heads`` (per
        decoder layer: o_proj, query heads, head size, value weight, group size: for layers that differ) and
        ``kept_heads`` (per-layer query heads kept, passed to ``prune_llm_hidden``))."""
        raise NotImplementedError(f"{self.label}: no generic surgery")

    def check_ffn_pruning(self, cfg: dict, llm: bool, audio: bool) -> None:
        """Refuse (UserError, naming the architectural reason) narrowing the LLM MLPs (``llm``) or the audio
        encoder's FFNs (``audio``) of a model with config.json dict ``cfg``. Default: both can be narrowed."""

    # True when prune-hidden narrows the LLM's attention heads with its residual width (by default
    # ``heads x new/old width`` in whole GQA groups; ``llm_heads`` sets it); False: every head is kept unless
    # ``llm_heads`` is given (the attention width is not tied to hidden_size; :meth:`check_hidden_pruning` checks it)
    prune_hidden_heads: ClassVar[bool] = True

    def check_hidden_pruning(self, cfg: dict, heads, audio: bool) -> None:
        """Refuse (UserError, one line naming the reason) pruning the LLM's attention heads to ``heads`` query
        heads (None/0: not asked) or narrowing the audio encoder's width (``audio``) of a model with config.json
        dict ``cfg`` (prune-hidden). Default: both can be done."""

    def config_after_head_pruning(self, cfg: dict, heads: int) -> dict | None:
        """``cfg`` (a copy) with ``heads`` query heads, for families whose layers' key/value heads do not all
        follow ``num_key_value_heads`` (prune-hidden's plan); None (default): the generic update suffices."""
        return None

    def reference_widths(self) -> dict:
        """``hidden`` (LLM residual width) and ``audio_hidden`` (audio-encoder width, None: none prunable) of the
        family's full-size reference model: ``build --smoke`` turns a recipe's explicit prune-hidden widths into
        ratios of it. Default: from :meth:`reference_config`."""
        ref = self.reference_config(plain=True)
        a = getattr(ref, "audio_config", None)
        return {"hidden": ref.text_config.hidden_size, "audio_hidden": getattr(a, "d_model", None) if a is not None else None}

    # True when the LLM, run on the prompt embeddings captured at its input (inputs_embeds), computes what the
    # whole model's forward does (Qwen2-Audio); False when the model's forward gives the decoder more than
    # those (Gemma 4: per-layer token embeddings from the ids, multimodal attention masks), so calibration
    # runs whole teacher-forced examples through the model instead
    llm_on_captured_embeds: ClassVar[bool] = True

    def config_after_layer_removal(self, config, kept: list[int]):
        """``config`` (a copy) for a model that keeps decoder layers ``kept`` (sorted old indices); UserError
        when the family forbids that removal."""
        raise NotImplementedError

    def smoke_replace_block(self, config, kept: list[int], count: int, keep: int) -> list[int]:
        """The block of ``count`` consecutive LLM layers (indices of the stage's input) ``build --smoke`` gives a
        recipe's replace-layers stage, whose block was written for the full-size model, on a smaller base with
        config ``config`` of which the recipe's earlier stages left layers ``kept`` (old indices); the block's
        layer at position ``keep`` stays, the others go. UserError when the family's rules allow none. Default:
        the first ``count`` layers."""
        return list(range(count))

    def check_layer_removal(self, model_dir, remove, middle: int = 0) -> None:
        """Refuse (UserError), from the config alone, removing LLM layers ``remove`` (or, with ``middle``, a
        block of that many layers nearest the middle) from the model in ``model_dir``. Default: any is fine."""

    # True when a loaded model's layers can be taken out and put back in place, without a copy (the surgery's
    # ``llm_layers_removed``/``audio_layers_removed``: prune-layers' iterative search scores candidates so);
    # False: each candidate of the search is a pruned copy (:meth:`pruned_copy`), and replace-layers trains with
    # the block's other layers bypassed in place (each receives what the model gives that layer), then removes
    # them with :meth:`pruned_copy`
    in_place_layer_removal: ClassVar[bool] = True

    def pruned_copy(self, model, removed_llm, removed_audio=()):
        """A new model: ``model`` without LLM layers ``removed_llm`` and audio-encoder layers ``removed_audio``, on
        its device (UserError when the family forbids that removal). Needed where :attr:`in_place_layer_removal`
        is False."""
        raise NotImplementedError(f"{self.label}: no pruned copy")

    def run_prune_layers(self, stage, in_dir, out_dir, ctx) -> dict | None:
        """The family's own prune-layers run (returns the provenance extras), or None: the stage's generic
        path (:meth:`layout` and :meth:`surgery`) runs."""
        return None

    def trim_vocab_kept_ids(self, stage, in_dir, processor, tok_json: dict, config: dict, generation_config,
                            ctx):
        """The family's own trim-vocab keep set (``(kept ids, ...)`` as its :meth:`run_trim_vocab` computes
        them), or None: the stage's generic rule."""
        return None

    def run_trim_vocab(self, stage, in_dir, out_dir, ctx) -> dict | None:
        """The family's own trim-vocab run (returns the provenance extras), or None: the generic path."""
        return None

    def has_vision(self, config: dict) -> bool:
        """True when the config.json dict ``config`` has a vision encoder (drop-vision removes it)."""
        return False

    def drop_vision(self, model):
        """``model`` without its vision encoder and projector (a new model; config without vision)."""
        raise NotImplementedError(f"{self.label} has no vision encoder")

    # -- torch.save measure (the organizers' size)
    def torch_save_layout(self, tensors, config: dict, float_dtype: str | None):
        """``(entries, modules)``: the in-memory state dict (:class:`iwslt_mc.sizing.statedict.Entry` list, in
        order) and its ``_metadata`` module names, for a checkpoint given as ``(disk key, safetensors dtype,
        shape)`` with its config.json dict; raises :class:`~iwslt_mc.sizing.statedict.NotExact` when it
        cannot place them exactly."""
        raise NotImplementedError

    def memory_key(self, disk_key: str) -> str:
        """The state-dict key transformers gives the checkpoint key ``disk_key`` when it loads this family's
        model (default: the same name)."""
        return disk_key

    def torch_save_layout_name(self, config: dict) -> str:
        """The layout part of the measure's signature (which layout :meth:`torch_save_layout` used)."""
        raise NotImplementedError

    # -- prompt and decoding
    def messages(self, lang: str, instruction_text: str | None = None, audio=None) -> list[dict]:
        """The chat messages of one translation request (``audio``: the waveform where the family's
        template takes it inline, else a placeholder)."""
        raise NotImplementedError

    def prompt_text(self, processor, lang: str, instruction_text: str | None = None) -> str:
        """The generation prompt string (``add_generation_prompt=True``), audio placeholder included."""
        return processor.apply_chat_template(self.messages(lang, instruction_text), add_generation_prompt=True,
                                             tokenize=False, **self.chat_template_kwargs)

    chat_template_kwargs: ClassVar[dict] = {}
    # the token that ends an assistant turn (training targets end with it; generation stops at it)
    turn_end_token: ClassVar[str] = "<|im_end|>"
    # processor outputs aligned with ``input_ids`` (training extends them over the target tokens with 0)
    token_aligned_inputs: ClassVar[tuple[str, ...]] = ()
    # kd's hidden-state term (layer taps through :meth:`layout`); word-level KD works for every family
    hidden_state_kd: ClassVar[bool] = False
    # None: the caller's/generation config's limits apply unchanged
    default_max_new_tokens: ClassVar[int | None] = None

    def turn_end_id(self, tokenizer) -> int:
        """Id of :attr:`turn_end_token` in ``tokenizer``; its eos when it has no such token."""
        i = tokenizer.convert_tokens_to_ids(self.turn_end_token)
        return tokenizer.eos_token_id if i is None or i == tokenizer.unk_token_id else i

    def max_segment_seconds(self, config) -> float:
        """The longest audio piece decode gives the model at once (longer segments are cut at pauses into
        pieces of at most this, decoded and joined into one line); training and distillation cut there too."""
        return 30.0

    # -- hub names (the packager's base-model id)
    hub_org: ClassVar[str] = ""  # hub organisation (``Qwen``)
    hub_name_prefix: ClassVar[str] = ""  # lower-case folder-name prefix of its model ids (``qwen2-audio``)

    def hub_id(self, folder_name: str) -> str | None:
        """``ORG/NAME`` when a folder is named as one of the family's hub models (``Qwen2-Audio-7B-Instruct``)."""
        if self.hub_org and folder_name.lower().startswith(self.hub_name_prefix):
            return f"{self.hub_org}/{folder_name}"
        return None

    # -- recipes
    # the family's shipped recipes, (name, file in recipes/), in the order ``iwslt-mc ls`` lists them
    recipes: ClassVar[tuple[tuple[str, str], ...]] = ()

    # -- planner
    # True when ``plan --target`` can search this family's bases (the planner's generic prediction)
    target_search: ClassVar[bool] = False
    # the family's shipped recipes in the order a plan's suggestion prefers them (trained before zero-shot)
    recipe_preference: ClassVar[tuple[str, ...]] = ()

    def reference_label(self) -> str:
        """The name of the built-in reference model :meth:`reference_config` describes, or "" if none."""
        return ""

    def reference_config(self, plain: bool = True):
        """The family's built-in full-size reference architecture (``plain``: a
        :class:`~iwslt_mc.floor.modeldir.PlainConfig`, else a transformers config), or None when the planner
        needs ``--base`` for this family."""
        return None

    def reference_dims(self) -> dict:
        """Layer counts and FFN widths of the family's full-size reference model (recipes' counts are written
        for it; ``build --smoke`` scales them to a smaller base by these): ``llm_layers``, ``audio_layers``,
        ``ffn_dim``, ``audio_ffn_dim`` (None: the reference has none)."""
        raise NotImplementedError

    def base_dims(self, cfg) -> dict | None:
        """Layer counts, widths and vocabulary of a base config as the planner's Spec defaults, or None: the
        planner's generic reading (``text_config.num_hidden_layers`` etc.) applies."""
        return None

    def predict(self, spec, base_config, edition: str, *, base_name: str | None = None):
        """The :class:`~iwslt_mc.floor.sizes.Prediction` of ``spec`` (the planner's Spec) applied to
        ``base_config`` without its torch.save measure (the planner adds it), or None: the planner's generic
        prediction (from :meth:`plan_inventory`) applies."""
        return None

    def plain_config(self, raw: dict):
        """``raw`` (a config.json dict) as a :class:`~iwslt_mc.floor.modeldir.PlainConfig` the planner reads
        without importing transformers (ValueError when a field is unusable); None: the planner loads the
        transformers config instead."""
        return None

    def plan_inventory(self, config, *, ffn_dim=None, audio_ffn_dim=None, vocab=None):
        """The planner's tensor templates of ``config`` computed from its widths: (on-disk key, shape, is a
        Linear weight, is the token embedding) with one layer per repeated stack; None: the planner builds
        the model on the meta device to enumerate them."""
        return None

    # True when the family's LLM layers differ in size (Gemma 4: sliding/global), so which ones stay is part
    # of a prediction: ``build`` then tracks the kept indices through :meth:`kept_after_prune`
    tracks_kept_layers: ClassVar[bool] = False

    def kept_after_prune(self, cfg, kept: list[int], options: dict) -> list[int] | None:
        """The base's LLM layers (old indices, sorted) still there after a prune-layers stage with
        ``options``, given ``kept`` before it; None when the stage searches (not known in advance). Only
        called for families with :attr:`tracks_kept_layers`."""
        raise NotImplementedError

    # -- kit
    kit_options: ClassVar[tuple[str, ...]] = ()  # the keyword options :meth:`build_kit` accepts
    # the kits the tests build for this family: variant name -> build_kit options (every model type it
    # accepts should have one; tests/conftest.py's ``family_kit`` runs the shared tests on each)
    kit_variants: ClassVar[dict[str, dict]] = {}

    def build_kit(self, out_dir, seed: int = 0, **options) -> Any:
        """Write the family's offline demo kit into ``out_dir`` (model, processor, data, test sets) and
        return its :class:`~iwslt_mc.kit.KitInfo`; ``options`` are the family's :attr:`kit_options`."""
        raise NotImplementedError


def predict_from_inventory(spec, edition, tensors, component_names, family: str, *, dims: dict, cfg,
                           base_name: str | None = None):
    """The planner's :class:`~iwslt_mc.floor.sizes.Prediction` of a one-file safetensors checkpoint from a
    family's tensor inventory (``(key, shape, component, linear, embedding)`` rows), each tensor stored at the
    spec's precision of its component (quantized precisions only where the format quantizes that tensor).
    Shared by the families whose :meth:`Family.predict` walks their own inventory."""
    from .. import __version__
    from ..floor.sizes import Prediction, disk_tensors, is_quant_precision, safetensors_header_bytes
    from ..sizing.track import size_bin

    fdt = spec.storage_float
    entries, params, overhead = [], 0, 0
    components = {c: {"params": 0, "bytes": 0} for c in component_names}
    for key, shape, comp, linear, emb in tensors:
        prec = spec.precision_of(comp)
        if is_quant_precision(prec) and not (linear or (emb and comp == "embed_tokens")):
            prec = fdt
        ents, n, ovh = disk_tensors(key, shape, prec, fdt)
        entries.extend(ents)
        components[comp]["params"] += n
        components[comp]["bytes"] += sum(e[3] for e in ents)
        params += n
        overhead += ovh
    header = safetensors_header_bytes(entries, {"format": "pt"})
    total = header + sum(e[3] for e in entries)
    components = {c: v for c, v in components.items() if v["bytes"] or c not in ("other", "lm_head")}
    signature = (f"predicted|edition:{edition.key}|format:safetensors-1-file|family:{family}"
                 f"|units:decimal|version:iwslt-mc-{__version__}")
    return Prediction(spec=spec, edition=edition.key, bytes=total, params=params, bin=size_bin(total, edition),
                      components=components, overhead=overhead, header_bytes=header, tensors=len(entries),
                      dims=dims, base=base_name or "config", signature=signature, entries=entries, config=cfg)


def trim_vocab_keep(stage, processor, tok_json: dict, config: dict, generation_config, ctx, prompt_text,
                    extra: list[list[int]]):
    """(kept token ids, prompts, texts, data records) of trim-vocab for a family with its own keep rule
    (:meth:`Family.trim_vocab_kept_ids`): the stage's rules (:meth:`TrimVocab.keep_set`) over the family's
    prompts (``prompt_text(processor, lang)`` for every target language) and the stage's text, plus the
    family's ``extra`` id lists. Shared by Gemma 4 and Qwen2.5-Omni."""
    from ..floor.languages import TARGET_LANGUAGE

    tok = processor.tokenizer
    languages = stage._languages(ctx)
    texts, data_used = stage._texts(ctx, languages)
    prompts = [prompt_text(processor, lang) for lang in TARGET_LANGUAGE]
    enc = tok(prompts + texts, add_special_tokens=False)["input_ids"]
    rows = int((config.get("text_config") or {}).get("vocab_size", 0))
    keep = stage.keep_set(tok, tok_json, enc + extra, [generation_config] if generation_config is not None else [],
                          stage.options, rows)
    return keep, prompts, texts, data_used


def run_rebuilt_trim_vocab(stage, in_dir, out_dir, ctx, *, kept_ids, select_vocab, rows_note: str,
                           technique_note: str = "") -> dict:
    """trim-vocab for a family whose surgery rebuilds the model (:meth:`Family.run_trim_vocab`): the keep set
    of ``kept_ids`` (the family's :meth:`Family.trim_vocab_kept_ids`), the rows selected by ``select_vocab(model,
    keep) -> (new model, old2new)``, the tokenizer files rewritten and checked by the stage. ``rows_note``: which
    rows the log line names; ``technique_note``: what the technique line adds after the token counts. Returns
    the provenance extras. Shared by Gemma 4 and Qwen2.5-Omni."""
    import json
    from pathlib import Path

    model = stage.load_model(in_dir, device="cpu")
    processor = stage.load_processor(in_dir)
    tok_json = json.loads((Path(in_dir) / "tokenizer.json").read_text("utf-8"))
    rows_before = model.config.text_config.vocab_size
    keep, prompts, texts, data_used = kept_ids(stage, in_dir, processor, tok_json, model.config.to_dict(),
                                               model.generation_config, ctx)
    new_json, old2new = stage.trim_tokenizer_json(tok_json, keep)
    enc = processor.tokenizer(prompts + texts, add_special_tokens=False)["input_ids"]
    new, old2new = select_vocab(model, keep)
    ctx.log(f"trim-vocab: {rows_before} -> {len(keep)} token rows ({rows_note}); saving")
    stage.save_model(new, processor, out_dir)
    stage._rewrite_tokenizer_files(Path(out_dir), new_json, old2new)
    stage._check_trimmed(Path(out_dir), prompts + texts, enc, old2new, len(keep))
    saved = stage.stored_bytes(in_dir) - stage.stored_bytes(out_dir)
    return {"techniques": [f"vocabulary trimming ({rows_before:,} -> {len(keep):,} tokens{technique_note}; "
                           f"{saved:,} bytes saved)"],
            "data": data_used, "vocab_before": rows_before, "vocab_after": len(keep), "bytes_saved": saved,
            "text_segments": len(texts), "languages": stage._languages(ctx)}
