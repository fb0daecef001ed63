"""Surgery on a loaded Qwen2.5-Omni thinker: remove LLM decoder layers, remove audio-encoder layers, keep a
subset of the vocabulary. Each returns a new model that ``from_pretrained`` alone loads back once saved:
the config is rebuilt first, then a fresh model of that config receives the kept weights
(``load_state_dict``: nothing silently dropped or left random)."""

from __future__ import annotations

import re

# in-memory names (Qwen2_5OmniThinkerForConditionalGeneration.state_dict())
LLM_LAYER = re.compile(r"^(.*language_model\.layers\.)(\d+)(\..*)$")
AUDIO_LAYER = re.compile(r"^(.*audio_tower\.layers\.)(\d+)(\..*)$")
# token ids a thinker config names: top level, and the text config's
TOP_ID_KEYS = ("audio_token_index", "image_token_index", "video_token_index", "audio_start_token_id",
               "audio_end_token_id", "vision_start_token_id", "vision_end_token_id", "user_token_id",
               "bos_token_id", "eos_token_id", "pad_token_id")
TEXT_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def rebuild(model, config, state_dict):
    """A fresh model of ``config`` (``model``'s class and float dtype) holding ``state_dict`` exactly."""
    import copy

    import torch

    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    with torch.device("cpu"):
        new = type(model)(config)
    new = new.to(dtype)
    missing, unexpected = new.load_state_dict(state_dict, strict=False)
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"Qwen2.5-Omni surgery: missing {missing[:3]}, unexpected {unexpected[:3]}")
    new.generation_config = copy.deepcopy(model.generation_config)  # select_vocab renumbers the copy's ids
    return new.eval()


def kept_layers(remove, n: int, what: str) -> list[int]:
    """The layers left of ``n`` after removing ``remove`` (UserError when one is out of range or none is left)."""
    from ...errors import UserError

    remove = sorted(set(remove))
    if any(i < 0 or i >= n for i in remove) or len(remove) >= n:
        raise UserError(f"{what} to remove {remove}: the model has {n} (0..{n - 1}), at least one must stay")
    return [i for i in range(n) if i not in remove]


def renumbered_state(model, pattern, kept: list[int]) -> dict:
    """``model``'s state dict without the layers ``pattern`` numbers (group 2) that are not in ``kept``, the
    kept ones renumbered 0, 1, ..."""
    new_index = {old: new for new, old in enumerate(kept)}
    sd = {}
    for k, v in model.state_dict().items():
        m = pattern.match(k)
        if m is None:
            sd[k] = v
        elif int(m.group(2)) in new_index:
            sd[f"{m.group(1)}{new_index[int(m.group(2))]}{m.group(3)}"] = v
    return sd


def remove_llm_layers(model, remove):
    """(a new model without decoder layers ``remove``, the kept old indices)."""
    from .rules import config_after_layer_removal

    kept = kept_layers(remove, model.config.text_config.num_hidden_layers, "LLM layers")
    config = config_after_layer_removal(model.config, kept)
    return rebuild(model, config, renumbered_state(model, LLM_LAYER, kept)), kept


def remove_audio_layers(model, remove):
    """(a new model without audio-encoder layers ``remove``, the kept old indices)."""
    from .rules import config_after_audio_layer_removal

    kept = kept_layers(remove, model.config.audio_config.encoder_layers, "audio layers")
    config = config_after_audio_layer_removal(model.config, kept)
    return rebuild(model, config, renumbered_state(model, AUDIO_LAYER, kept)), kept


def config_ids(d: dict) -> set[int]:
    """Every token id a thinker config dict names (top level and text config)."""
    ids = set()
    for part, keys in ((d, TOP_ID_KEYS), (d.get("text_config") or {}, TEXT_ID_KEYS)):
        for k in keys:
            v = part.get(k)
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, int) and not isinstance(x, bool) and x >= 0:
                    ids.add(x)
    return ids


def remap_ids(d: dict, old2new: dict) -> None:
    """Renumber the ids of a config dict (an id that is not kept becomes None)."""
    for part, keys in ((d, TOP_ID_KEYS), (d.get("text_config") or {}, TEXT_ID_KEYS)):
        for k in keys:
            v = part.get(k)
            if isinstance(v, list):
                part[k] = [old2new[x] for x in v if x in old2new]
            elif isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                part[k] = old2new.get(v)


def select_vocab(model, keep_ids: list[int]):
    """(a new model keeping token rows ``keep_ids`` (sorted old ids; new id = position) of the token
    embeddings and ``lm_head``, every id of the config and generation config renumbered, old -> new)."""
    import torch

    old2new = {old: new for new, old in enumerate(keep_ids)}
    rows = model.config.text_config.vocab_size
    d = model.config.to_dict()
    remap_ids(d, old2new)
    d["text_config"]["vocab_size"] = len(keep_ids)
    config = type(model.config).from_dict(d)
    idx = torch.tensor(keep_ids)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith(("embed_tokens.weight", "lm_head.weight")) and v.shape[0] == rows:
            v = v.index_select(0, idx).clone()
        sd[k] = v
    new = rebuild(model, config, sd)
    gc = new.generation_config
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        v = getattr(gc, k, None)
        if isinstance(v, list):
            setattr(gc, k, [old2new[x] for x in v if x in old2new])
        elif isinstance(v, int):
            setattr(gc, k, old2new.get(v))
    return new, old2new
