#!/usr/bin/env python
"""Write a config-only directory of the gemma-4-12B-it layout, for ``iwslt-mc plan --base DIR``.

    python tools/gemma4_12b_config.py /tmp/gemma-4-12B-it
    iwslt-mc plan --base /tmp/gemma-4-12B-it
    iwslt-mc plan --base /tmp/gemma-4-12B-it --precision nf4-dq
    iwslt-mc plan gemma4-small --base /tmp/gemma-4-12B-it      # a Gemma 4 recipe's final model

The layout is google/gemma-4-12B-it's (model_type gemma4_unified): 48 layers, hidden 3840, MLP 15,360,
16 query heads, 8 key/value heads of width 256 on the sliding layers, one shared key/value head of width
512 on the full-attention layers (``attention_k_eq_v``), 262,144 tokens, tied embeddings, the raw-frame
audio projector and the patch vision embedder: 11,959,730,224 parameters, the count the Hugging Face API
gives for the checkpoint. The source of each number: iwslt_mc.families.gemma4.GEMMA4_12B_TEXT.
``--no-vision`` writes the layout without the vision embedder (what the drop-vision stage leaves).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", help="new directory to write config.json into")
    ap.add_argument("--no-vision", action="store_true", help="leave the vision embedder out (vision_config null)")
    args = ap.parse_args(argv)
    from iwslt_mc.families.gemma4 import GEMMA4_12B_PARAMS, gemma4_12b_config

    out = Path(args.out_dir)
    if (out / "config.json").exists():
        print(f"{out / 'config.json'}: already exists", file=sys.stderr)
        return 2
    cfg = gemma4_12b_config()
    if args.no_vision:
        d = cfg.to_dict()
        d["vision_config"] = None
        cfg = type(cfg).from_dict(d)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json_string(use_diff=False), encoding="utf-8")
    what = "the vision embedder left out" if args.no_vision else f"{GEMMA4_12B_PARAMS:,} parameters"
    print(f"wrote {out / 'config.json'} (gemma4_unified, the google/gemma-4-12B-it layout; {what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
