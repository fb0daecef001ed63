"""torchsave.torch_save_bytes / measure_streamed: a real torch.save counted through a named pipe, never hanging.

The old reader was a thread of the same process: torch.save opens the pipe (and writes to it) holding the GIL,
so when the thread had not yet opened its end, neither could go on (`size --torch-save stream` hung 1 run in 5
under load). Each check runs in a child process with a timeout, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LOOP = r"""
import os, sys, time, torch
from safetensors.torch import load_file
from iwslt_mc.sizing import torchsave
if sys.argv[3] == "slow-reader":  # a reader that opens its end late: the case that deadlocked a reader thread
    torchsave._COUNTER = "import time\ntime.sleep(0.3)\n" + torchsave._COUNTER
sd = load_file(sys.argv[1])
real = os.path.join(sys.argv[2], torchsave.ORGANIZERS_ARCHIVE + ".pt")
torch.save(sd, real)
want = os.path.getsize(real)
for i in range(int(sys.argv[4])):
    n = torchsave.torch_save_bytes(sd)
    assert n == want, (i, n, want)
print("ok", want)
"""


def _run(kit, tmp_path, mode: str, times: int, timeout: int) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        p = subprocess.run([sys.executable, "-c", LOOP, str(kit / "model" / "model.safetensors"), str(tmp_path), mode,
                            str(times)], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torch_save_bytes ({mode}) did not finish {times} runs in {timeout} s: hung")
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_streamed_measure_finishes_50_times_under_cpu_load(kit, tmp_path):
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        out = _run(kit, tmp_path, "plain", 50, 600)
    finally:
        for p in load:
            p.kill()
            p.wait()
    size = int(out.split()[1])
    assert out.startswith("ok") and size > (kit / "model" / "model.safetensors").stat().st_size * 0.5


def test_streamed_measure_with_a_reader_that_opens_late(kit, tmp_path):
    assert _run(kit, tmp_path, "slow-reader", 3, 120).startswith("ok")


def test_counter_that_never_starts_or_dies_is_an_error_not_a_hang(monkeypatch):
    import torch

    from iwslt_mc.sizing import torchsave

    monkeypatch.setattr(torchsave, "_COUNTER", "import sys\nsys.exit('counter broke')\n")
    with pytest.raises(RuntimeError, match="counter did not start: counter broke"):
        torchsave.torch_save_bytes({"a": torch.zeros(4)}, timeout=30)
    # dies after opening its end, before reading everything: torch.save gets a broken pipe
    monkeypatch.setattr(torchsave, "_COUNTER", "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nos.read(fd, 10)\n")
    with pytest.raises(RuntimeError):
        torchsave.torch_save_bytes({"a": torch.zeros(1 << 20)}, timeout=30)


def test_measure_streamed_equals_a_real_torch_save_of_the_loaded_model(kit, tmp_path):
    import torch

    from iwslt_mc.sizing import torchsave
    from iwslt_mc.modelio import load_model

    m = torchsave.measure_streamed(kit / "model", device="cpu", version="t")
    path = tmp_path / f"{torchsave.ORGANIZERS_ARCHIVE}.pt"
    torch.save(load_model(kit / "model", device="cpu").state_dict(), path)
    assert m.method == "streamed" and m.bytes == m.bytes_cpu == path.stat().st_size
