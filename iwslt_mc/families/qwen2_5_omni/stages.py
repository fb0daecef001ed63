"""The prune-layers and trim-vocab runs for the Qwen2.5-Omni family (the stages call them through
:meth:`Qwen25OmniFamily.run_prune_layers` / :meth:`Qwen25OmniFamily.run_trim_vocab`): the stages' own
options and rules, this family's surgery (:mod:`.surgery`: a rebuilt model, nothing left random)."""

from __future__ import annotations


def run_prune_layers(stage, in_dir, out_dir, ctx) -> dict:
    """prune-layers on a Qwen2.5-Omni thinker: explicit ``llm_layers``/``audio_layers``, or the ``middle``/``top``
    blocks (``remove``/``audio_remove``); the iterative search is refused (one line)."""
    from ...errors import UserError
    from ...floor.layers import fmt_layers, middle_block, top_block
    from .surgery import remove_audio_layers, remove_llm_layers

    o = stage.options
    if o.strategy == "iterative":
        raise UserError("stage prune-layers: strategy iterative is not supported for Qwen2.5-Omni yet "
                        "(use llm_layers, middle or top)")
    run_dtype = stage.runtime_dtype(in_dir, ctx.resolved_device())
    model = stage.load_model(in_dir, dtype=run_dtype, device="cpu")
    processor = stage.load_processor(in_dir)
    n, n_audio = model.config.text_config.num_hidden_layers, model.config.audio_config.encoder_layers
    if o.strategy is None:
        llm, audio, how = sorted(o.llm_layers or []), sorted(o.audio_layers or []), "given"
    else:
        pick = middle_block if o.strategy == "middle" else top_block
        llm = pick(n, o.remove) if o.remove else []
        audio = pick(n_audio, o.audio_remove) if o.audio_remove else []
        how = f"{o.strategy} block"
    if not llm and not audio:
        raise UserError("stage prune-layers: nothing to remove (give llm_layers/audio_layers, or remove/audio_remove)")
    new, techniques = model, []
    if llm:
        new, _ = remove_llm_layers(new, llm)
        ctx.log(f"prune-layers: removed Qwen2.5-Omni LLM layers [{fmt_layers(llm)}]")
        techniques.append(f"layer pruning: {len(llm)} of {n} Qwen2.5-Omni LLM layers removed ({how}: {fmt_layers(llm)})")
    if audio:
        new, _ = remove_audio_layers(new, audio)
        ctx.log(f"prune-layers: removed Qwen2.5-Omni audio-encoder layers [{fmt_layers(audio)}]")
        techniques.append(f"audio encoder layer pruning: {len(audio)} of {n_audio} layers removed ({how}: {fmt_layers(audio)})")
    ctx.log("prune-layers: saving")
    stage.save_model(new, processor, out_dir, dtype=stage.checkpoint_dtype(in_dir) if run_dtype else None)
    return {"techniques": techniques, "removed_llm_layers": llm, "removed_audio_layers": audio,
            "llm_layers_before": n, "llm_layers_after": n - len(llm),
            "audio_layers_before": n_audio, "audio_layers_after": n_audio - len(audio)}


def kept_ids(stage, in_dir, processor, tok_json: dict, config: dict, generation_config, ctx):
    """(kept token ids, prompts, texts, data records) of trim-vocab on a Qwen2.5-Omni directory: the stage's
    keep rules (prompt, given text, added tokens, byte alphabet, explicit tokens, closed under merges) plus
    every id the thinker config names (audio/vision markers included). Tokenizer and configs only, so
    ``build``'s prediction counts exactly what the stage keeps."""
    from ..base import trim_vocab_keep
    from .rules import prompt_text
    from .surgery import config_ids

    return trim_vocab_keep(stage, processor, tok_json, config, generation_config, ctx, prompt_text,
                           [sorted(config_ids(config))])


def run_trim_vocab(stage, in_dir, out_dir, ctx) -> dict:
    """trim-vocab on a Qwen2.5-Omni thinker: :func:`kept_ids`, the embedding and ``lm_head`` rows selected
    (:func:`.surgery.select_vocab`), the tokenizer files rewritten and checked by the stage."""
    from ..base import run_rebuilt_trim_vocab
    from .surgery import select_vocab

    return run_rebuilt_trim_vocab(stage, in_dir, out_dir, ctx, kept_ids=kept_ids, select_vocab=select_vocab,
                                  rows_note="embeddings and lm_head")
