"""Prompt embeddings: what the LLM of a speech model receives (token embeddings with the audio features
merged in by the model's own code), captured once and reused by the layer search and calibration, and
teacher-forced scoring of references after them."""

from __future__ import annotations

from typing import Sequence


class _Stop(Exception):
    pass


def capture_prompt_embeds(model, inputs) -> tuple:
    """Run ``model`` on processor ``inputs`` only up to the LLM and return (inputs_embeds, attention_mask).

    The embeddings are what the decoder stack receives: token embeddings with the projected audio
    features merged in by the model's own code.
    """
    from ..families import layout_of as find_layout

    layout = find_layout(model)
    got = {}

    def hook(module, args, kwargs):
        got["embeds"] = kwargs.get("inputs_embeds")
        got["mask"] = kwargs.get("attention_mask")
        raise _Stop

    h = layout.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    if got.get("embeds") is None:
        raise RuntimeError("could not capture the decoder's inputs_embeds")
    return got["embeds"], got["mask"]


def _model_inputs(processor, waves, lang, model):
    from ..families import prompt_text

    text = prompt_text(processor, lang)
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        inputs = processor(text=[text] * len(waves), audio=list(waves), sampling_rate=16000, return_tensors="pt",
                           padding=True)
    finally:
        tok.padding_side = side
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return {k: (v.to(model.device, dtype) if k == "input_features" else v.to(model.device)) for k, v in inputs.items()}


def encode_prompts(model, processor, segments: Sequence, lang: str, *, batch_size: int = 8) -> list:
    """Per segment, the prompt embeddings ``[T_i, hidden]`` the LLM sees (audio encoded once, batched)."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(segments), batch_size):
            chunk = segments[i:i + batch_size]
            inputs = _model_inputs(processor, [s.wave for s in chunk], lang, model)
            embeds, mask = capture_prompt_embeds(model, inputs)
            for row in range(len(chunk)):
                keep = mask[row].bool()
                out.append(embeds[row][keep].clone())
    return out


def teacher_forced_logprob(model, embeds: list, targets: list, *, batch_size: int = 16) -> float:
    """Mean log-probability per target token of ``targets[i]`` (token ids) after prompt ``embeds[i]``."""
    import torch

    from ..families import layout_of as find_layout

    layout = find_layout(model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for b in range(0, len(embeds), batch_size):
            rows = list(range(b, min(b + batch_size, len(embeds))))
            seqs, spans = [], []
            for i in rows:
                tgt = torch.as_tensor(targets[i], dtype=torch.long, device=embeds[i].device)
                # the last target is only predicted, never fed
                seqs.append(torch.cat([embeds[i], layout.embed_tokens(tgt[:-1]).to(embeds[i].dtype)]))
                spans.append((embeds[i].shape[0] - 1, tgt))
            T = max(s.shape[0] for s in seqs)
            x = seqs[0].new_zeros(len(seqs), T, seqs[0].shape[-1])
            mask = torch.zeros(len(seqs), T, dtype=torch.long, device=x.device)
            for j, s in enumerate(seqs):  # right padding: real positions start at 0 as in batch 1
                x[j, :s.shape[0]] = s
                mask[j, :s.shape[0]] = 1
            hidden = layout.language_model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
            for j, (start, tgt) in enumerate(spans):
                h = hidden[j, start:start + len(tgt)]
                logp = torch.log_softmax(layout.lm_head(h).float(), dim=-1)
                total += logp.gather(1, tgt[:, None]).sum().item()
                count += len(tgt)
    return total / max(count, 1)
