"""Shared fixtures: the offline demo kit, built once per test session.

Tests never touch the network: the hub is switched off before transformers or datasets is imported.
"""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    """Path of a built demo kit (``kit/model``, ``kit/data``, ``kit/data/long``), seed 0. Read-only: copy before changing."""
    from iwslt_mc.kit import build_kit

    path = tmp_path_factory.mktemp("kit") / "kit"
    build_kit(path, seed=0)
    return path


@pytest.fixture(scope="session")
def kit_processor(kit):
    """The kit's ``Qwen2AudioProcessor`` (shared: do not mutate)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(kit / "model")


@pytest.fixture(scope="session")
def kit_model(kit):
    """The kit's model in float32, eval mode (shared: do not mutate; load your own copy to change it)."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return Qwen2AudioForConditionalGeneration.from_pretrained(kit / "model", dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def kit_waves(kit):
    """``{split: [(index, 16 kHz float32 waveform), ...]}`` decoded from the kit's parquet files with soundfile."""
    import pyarrow.parquet as pq

    from iwslt_mc.audio import load_audio

    out = {}
    for split in ("dev", "eval"):
        table = pq.read_table(kit / "data" / f"{split}.parquet", columns=["index", "audio"]).to_pylist()
        out[split] = [(r["index"], load_audio(r["audio"]["bytes"], name=f"{split}:{r['index']}")) for r in table]
    return out
