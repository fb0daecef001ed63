"""Base model families behind one seam (DESIGN.md: "Base models are families behind one seam").

A :class:`Family` says what differs between base models: the ``model_type`` values it accepts, the
transformers class that loads it, where the parts of a loaded model are, which component a checkpoint
key belongs to (for the sizer), how the config changes when layers are removed, the prompt and decoding
defaults, the planner's prediction from a config, and how to make a demo kit. One implementation per
family; a model directory's family comes from ``model_type`` in its ``config.json``
(:func:`family_for`). No torch or transformers import at module level.
"""

from __future__ import annotations

import os
from pathlib import Path


class Family:
    """The interface; see :mod:`iwslt_mc.families.qwen2_audio` and :mod:`iwslt_mc.families.gemma4`."""

    name: str = ""
    label: str = ""  # human name, e.g. "Qwen2-Audio"
    model_types: tuple[str, ...] = ()
    components: tuple[str, ...] = ()  # sizer/planner components, in report order

    # -- loading
    def loader_class(self):
        """The transformers class whose ``from_pretrained`` loads a directory of this family."""
        raise NotImplementedError

    def model_from_config(self, config):
        """A model of this family built from ``config`` (random or, under ``torch.device("meta")``, empty)."""
        cls = self.loader_class()
        return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)

    def load_processor(self, model_dir):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(model_dir))

    def save_processor(self, processor, out_dir) -> None:
        processor.save_pretrained(str(out_dir))

    # -- parts of a loaded model
    def find_parts(self, model) -> dict:
        """Qualified module names of the parts of a loaded model (absent parts are None)."""
        raise NotImplementedError

    # -- checkpoint keys
    def component_for_key(self, key: str) -> str:
        raise NotImplementedError

    # -- surgery
    def config_after_layer_removal(self, config, kept: list[int]):
        """``config`` (a copy) for a model that keeps decoder layers ``kept`` (sorted old indices)."""
        raise NotImplementedError

    # -- prompt and decoding
    def messages(self, lang: str, instruction_text: str | None = None, audio=None) -> list[dict]:
        raise NotImplementedError

    def prompt_text(self, processor, lang: str, instruction_text: str | None = None) -> str:
        return processor.apply_chat_template(self.messages(lang, instruction_text), add_generation_prompt=True,
                                             tokenize=False, **self.chat_template_kwargs)

    chat_template_kwargs: dict = {}
    # the token that ends an assistant turn (training targets end with it; generation stops at it)
    turn_end_token: str = "<|im_end|>"
    # processor outputs aligned with ``input_ids`` (training extends them over the target tokens with 0)
    token_aligned_inputs: tuple[str, ...] = ()

    # kd's hidden-state term (layer taps through iwslt_mc.layout); word-level KD works for every family
    hidden_state_kd: bool = False

    def turn_end_id(self, tokenizer) -> int:
        """Id of :attr:`turn_end_token` in ``tokenizer``; its eos when it has no such token."""
        i = tokenizer.convert_tokens_to_ids(self.turn_end_token)
        return tokenizer.eos_token_id if i is None or i == tokenizer.unk_token_id else i
    # None: the caller's/generation config's limits apply unchanged
    default_max_new_tokens: int | None = None

    def max_segment_seconds(self, config) -> float:
        """The longest audio piece decode gives the model at once (longer segments are cut at pauses into
        pieces of at most this, decoded and joined into one line): Qwen2-Audio's encoder hears 30 s."""
        return 30.0

    # hub organisation and the folder-name prefix of its model ids (``Qwen``, ``qwen2-audio``)
    hub_org: str = ""
    hub_name_prefix: str = ""

    def hub_id(self, folder_name: str) -> str | None:
        """``ORG/NAME`` when a folder is named as one of the family's hub models (``Qwen2-Audio-7B-Instruct``)."""
        if self.hub_org and folder_name.lower().startswith(self.hub_name_prefix):
            return f"{self.hub_org}/{folder_name}"
        return None

    # -- planner
    def predict(self, spec, base_config, edition: str, *, base_name: str | None = None):
        raise NotImplementedError

    def plain_config(self, raw: dict):
        """``raw`` (a config.json dict) as a :class:`~iwslt_mc.configjson.PlainConfig` the planner reads
        without importing transformers (ValueError when a field is unusable); None: the planner loads the
        transformers config instead."""
        return None

    def plan_inventory(self, config, *, ffn_dim=None, audio_ffn_dim=None, vocab=None):
        """The planner's tensor templates of ``config`` computed from its widths: (on-disk key, shape, is a
        Linear weight, is the token embedding) with one layer per repeated stack; None: the planner builds
        the model on the meta device to enumerate them."""
        return None

    def reference_dims(self) -> dict:
        """Layer counts and FFN widths of the family's full-size reference model (recipes' counts are written
        for it; ``build --smoke`` scales them to a smaller base by these)."""
        raise NotImplementedError

    # -- kit
    def build_kit(self, out_dir, seed: int = 0, **options):
        """Write the family's demo kit; ``options`` are family-specific (Qwen2-Audio: ``vocab``)."""
        raise NotImplementedError


def _registry() -> dict[str, Family]:
    from .gemma4 import Gemma4Family
    from .qwen2_5_omni import Qwen25OmniFamily
    from .qwen2_audio import Qwen2AudioFamily

    fams = [Qwen2AudioFamily(), Gemma4Family(), Qwen25OmniFamily()]
    return {f.name: f for f in fams}


FAMILY_NAMES = ("qwen2_audio", "gemma4", "qwen2_5_omni")  # kept in step with _registry (tested)


def families() -> list[Family]:
    return list(_registry().values())


def family_named(name: str) -> Family:
    from ..errors import UserError

    reg = _registry()
    if name not in reg:
        raise UserError(f"unknown model family {name!r} (supported: {', '.join(reg)})")
    return reg[name]


def supported_text() -> str:
    """``qwen2_audio [qwen2_audio], gemma4 [gemma4, gemma4_unified]``: the families and their model types."""
    return ", ".join(f"{f.name} [{', '.join(f.model_types)}]" for f in families())


def family_of_model_type(model_type: str | None) -> Family | None:
    for f in families():
        if model_type in f.model_types:
            return f
    return None


def family_for(model_dir: str | os.PathLike) -> Family:
    """The family of a model directory, from ``model_type`` in its config.json; a one-line error otherwise."""
    from ..errors import InputFileError
    from ..modelio import read_model_type

    p = Path(model_dir)
    if not (p / "config.json").is_file():
        raise InputFileError(p, "no config.json: not a model directory")
    mt = read_model_type(p)
    fam = family_of_model_type(mt)
    if fam is None:
        raise InputFileError(p, f"unsupported model family (model_type {mt!r} in config.json; "
                                f"supported families: {supported_text()})")
    return fam


def family_of_config(config) -> Family:
    """The family of a transformers config object (the Qwen2-Audio family when it names none)."""
    mt = getattr(config, "model_type", None)
    return family_of_model_type(mt) or family_named("qwen2_audio")


def max_audio_seconds(model) -> float:
    """The longest audio ``model`` (a loaded model, or a model directory) is given at once, training and
    distillation included: its family's :meth:`Family.max_segment_seconds` for its config (30 s without one)."""
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model))
    else:
        config = getattr(model, "config", None)
    return 30.0 if config is None else family_of_config(config).max_segment_seconds(config)


def family_of_processor(processor) -> Family | None:
    """The family a loaded processor belongs to, from its class name (None: unknown, use the defaults)."""
    name = type(processor).__name__
    if name.startswith("Gemma4"):
        return family_named("gemma4")
    if name.startswith("Qwen2Audio"):
        return family_named("qwen2_audio")
    return None


def key_mapping_for(weights_dir) -> tuple[tuple[str, ...], object]:
    """(components, key -> component) for the weights in ``weights_dir``: its family's when its config.json
    names a supported one, else the Qwen2-Audio rules (a bare safetensors file has no config)."""
    from ..modelio import read_model_type

    fam = None
    if (Path(weights_dir) / "config.json").is_file():
        try:
            fam = family_of_model_type(read_model_type(weights_dir))
        except Exception:  # an unreadable config is the sizer's concern elsewhere, not the key mapping's
            fam = None
    fam = fam or family_named("qwen2_audio")
    return tuple(fam.components), fam.component_for_key
