"""model_fingerprint: every byte of the weights counts, hashed once and cached by size and mtime."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from iwslt_mc.floor import modeldir
from iwslt_mc.floor.modeldir import FINGERPRINT_CACHE, legacy_model_fingerprint, model_fingerprint


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return 8 + n, json.loads(raw[8:8 + n])


def change_middle_tensor(model_dir: Path) -> str:
    """Change, in place and at the same shape, the elements of a tensor that lie wholly past the first MiB
    and before the last MiB of model.safetensors (what the old fingerprint never read). Returns its name."""
    import torch

    f = model_dir / "model.safetensors"
    size = f.stat().st_size
    base, hdr = _header(f)
    lo, hi = 1 << 20, size - (1 << 20)
    assert hi > lo, "the kit's weight file is too small for this test"
    item = {"F32": 4, "BF16": 2, "F16": 2}
    for name, info in hdr.items():
        if name == "__metadata__" or info["dtype"] not in item:
            continue
        a, b = (base + o for o in info["data_offsets"])
        s, e = max(a, lo), min(b, hi)
        k = item[info["dtype"]]
        s += (-(s - a)) % k  # element-aligned window inside the tensor and inside the middle
        e -= (e - a) % k
        if e - s >= 64 * k:
            with f.open("r+b") as fh:
                fh.seek(s)
                raw = bytearray(fh.read(e - s))
                dt = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[info["dtype"]]
                t = torch.frombuffer(raw, dtype=dt) * 0.5 + 1.0
                fh.seek(s)
                fh.write(t.contiguous().view(torch.uint8).numpy().tobytes())
            assert f.stat().st_size == size
            return name
    raise AssertionError("no tensor in the middle of model.safetensors")


def test_a_tensor_changed_in_the_middle_changes_the_fingerprint(kit, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(kit / "model", d)
    before, legacy_before = model_fingerprint(d), legacy_model_fingerprint(d)
    change_middle_tensor(d)
    # the old fingerprint (first and last MiB) does not see it; the full one does
    assert legacy_model_fingerprint(d) == legacy_before
    assert model_fingerprint(d) != before


def _old_mtimes(d: Path, seconds_ago: float = 3600) -> None:
    t = os.stat(d / "model.safetensors").st_mtime - seconds_ago
    for f in d.glob("*.safetensors"):
        os.utime(f, (t, t))


def test_digest_cached_beside_the_weights_and_invalidated_by_size_or_mtime(kit, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(kit / "model", d)
    _old_mtimes(d)
    calls = []
    real = modeldir._sha256_of_file
    monkeypatch.setattr(modeldir, "_sha256_of_file", lambda p: calls.append(p.name) or real(p))
    fp = model_fingerprint(d)
    assert calls == ["model.safetensors"]
    cache = json.loads((d / FINGERPRINT_CACHE).read_text())
    st = (d / "model.safetensors").stat()
    assert cache["files"]["model.safetensors"] == {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                   "sha256": real(d / "model.safetensors")}
    assert model_fingerprint(d) == fp and calls == ["model.safetensors"]  # second call: from the cache
    # the cache file is no model file: the fingerprint ignores it, the JSON glob does not see it
    assert not FINGERPRINT_CACHE.endswith(".json")
    # changed in the middle (mtime moves): hashed again, a new fingerprint
    change_middle_tensor(d)
    fp2 = model_fingerprint(d)
    assert fp2 != fp and calls == ["model.safetensors"] * 2
    # a file just written is hashed but not cached (its mtime could repeat within the clock's granularity)
    assert json.loads((d / FINGERPRINT_CACHE).read_text())["files"] == {}
    assert model_fingerprint(d) == fp2 and len(calls) == 3
    # a stale cache entry (same size, other mtime) is never believed
    _old_mtimes(d, 7200)
    model_fingerprint(d)
    c = json.loads((d / FINGERPRINT_CACHE).read_text())
    c["files"]["model.safetensors"]["sha256"] = "0" * 64
    c["files"]["model.safetensors"]["mtime_ns"] += 1
    (d / FINGERPRINT_CACHE).write_text(json.dumps(c))
    assert model_fingerprint(d) == fp2


def test_unwritable_model_dir_falls_back_to_the_user_cache_then_to_none(kit, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(kit / "model", d)
    _old_mtimes(d)
    (d / FINGERPRINT_CACHE).unlink(missing_ok=True)  # the kit's own cache, if a test fingerprinted it already
    (d / FINGERPRINT_CACHE).mkdir()  # cannot be written as a file, even by root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fp = model_fingerprint(d)
    cached = list((tmp_path / "xdg" / "iwslt-mc" / "fingerprints").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["dir"] == str(d.resolve())
    calls = []
    real = modeldir._sha256_of_file
    monkeypatch.setattr(modeldir, "_sha256_of_file", lambda p: calls.append(p.name) or real(p))
    assert model_fingerprint(d) == fp and calls == []  # read back from the user cache
    # no cache anywhere writable: still the same fingerprint, no error
    shutil.rmtree(tmp_path / "xdg")
    (tmp_path / "xdg").write_text("not a directory")
    assert model_fingerprint(d) == fp and calls == ["model.safetensors"]


def test_fingerprint_hashes_several_shards_and_names_them(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    save_file({"a": np.zeros(10, np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"b": np.ones(10, np.float32)}, str(d / "model-00002-of-00002.safetensors"))
    digests = modeldir.weight_digests(d)
    assert [n for n, _, _ in digests] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    from iwslt_mc.fsutil import sha256_file

    assert [x for _, _, x in digests] == [sha256_file(d / n) for n, _, _ in digests]
    fp = model_fingerprint(d)
    os.rename(d / "model-00002-of-00002.safetensors", d / "model-00003-of-00003.safetensors")
    assert model_fingerprint(d) != fp  # names count too
