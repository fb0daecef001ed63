"""drop-vision: remove the vision encoder (and its projector) of a model whose family has one (Gemma 4).

A speech-translation submission never feeds images, so the vision tower is dead weight. The output's
config has no ``vision_config`` and loads with ``from_pretrained`` alone; text and audio paths are
untouched, so speech translation gives the same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..floor.modeldir import read_config
from .base import Stage, StageContext, StageOptions


@dataclass
class DropVisionOptions(StageOptions):
    pass


class DropVision(Stage):
    name = "drop-vision"
    Options = DropVisionOptions
    techniques = ["vision encoder removed (speech translation does not use it)"]

    def check(self, in_dir: Path, ctx: StageContext) -> None:
        self.plan(read_config(in_dir), ctx, str(in_dir))

    def plan(self, cfg: dict, ctx: StageContext, where: str) -> dict:
        from ..families import families, family_of_model_type

        in_dir = where
        fam = family_of_model_type(cfg.get("model_type"))
        if fam is None or not fam.supports(self.name):
            having = " or ".join(f.label for f in families() if f.supports(self.name))
            raise UserError(f"stage drop-vision: {in_dir} is a {cfg.get('model_type')} model; only {having} has a vision encoder to drop")
        if not fam.has_vision(cfg):
            raise UserError(f"stage drop-vision: {in_dir} has no vision encoder (vision_config is empty)")
        return {**cfg, "vision_config": None}

    def run(self, in_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
        from .. import modelio
        from ..families import family_for

        drop_vision = family_for(in_dir).drop_vision
        model = modelio.load_model(in_dir, device="cpu")
        processor = modelio.load_processor(in_dir)
        before = sum(p.numel() for p in model.parameters())
        new = drop_vision(model)
        after = sum(p.numel() for p in new.parameters())
        ctx.log(f"drop-vision: {before - after:,} parameters removed; saving")
        modelio.save_model(new, processor, out_dir)
        return {"techniques": list(self.techniques), "params_removed": before - after}
