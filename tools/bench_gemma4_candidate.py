#!/usr/bin/env python
"""What one candidate of the Gemma 4 layer search costs to build (the surgery's pruned copy), on a kit and at
reduced depth with gemma-4-12B-it's real widths (hidden 3840, MLP 15,360, 262,144 tokens), next to what
constructing that model with transformers' random initialisation costs (the old rebuild's main part).

    python tools/bench_gemma4_candidate.py kit /tmp/gkit/model
    python tools/bench_gemma4_candidate.py 12b 3        # 3 layers of the 12B's widths, bf16 (~14 GB of memory)
"""

from __future__ import annotations

import sys
import time


def main(argv=None) -> int:
    import torch
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration
    from transformers.initialization import no_init_weights

    from iwslt_mc.families.gemma4 import GEMMA4_12B_TEXT
    from iwslt_mc.families.gemma4.rules import config_after_layer_removal
    from iwslt_mc.families.gemma4.surgery import pruned_copy

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("kit", "12b"):
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    if argv[0] == "kit":
        from iwslt_mc import modelio

        model, remove = modelio.load_model(argv[1], device="cpu"), [2]
    else:
        depth = int(argv[1])
        t = dict(GEMMA4_12B_TEXT, num_hidden_layers=depth,
                 layer_types=["sliding_attention"] * (depth - 1) + ["full_attention"])
        cfg = Gemma4UnifiedConfig(text_config=t, vision_config={}, audio_config={}, dtype="bfloat16")
        with no_init_weights():
            model = Gemma4UnifiedForConditionalGeneration(cfg).to(torch.bfloat16)
        model.tie_weights()
        remove = [1]
    params = sum(p.numel() for p in model.parameters())
    n = model.config.text_config.num_hidden_layers
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        pruned_copy(model, remove)
        times.append(time.perf_counter() - t0)
    kept_cfg = config_after_layer_removal(model.config, [i for i in range(n) if i not in remove])
    t0 = time.perf_counter()
    type(model)(kept_cfg)
    init = time.perf_counter() - t0
    print(f"{argv[0]}: {n} layers, {params:,} parameters, {next(model.parameters()).dtype}")
    print(f"pruned copy (a search candidate): {min(times):.3f} s (best of 3)")
    print(f"constructing the candidate with random init: {init:.2f} s (fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
