"""A full disk: one line naming the path and what to do, exit 1, and a state --resume continues."""

from __future__ import annotations

import errno
import json
import subprocess
import uuid

import pytest

from iwslt_mc import cli
from iwslt_mc.errors import disk_full

PRUNE = "name: p\nstages:\n  - id: prune\n    stage: prune-layers\n    options: {llm_layers: [1]}\n"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (the kit model's pruned copy needs ~2 MB); grown with ``remount`` by the test."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(p.stderr or p.stdout).strip() or 'mount failed'}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_build_on_a_full_disk_says_one_line_and_resumes(kit, tmp_path, small_tmpfs, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PRUNE)
    out = small_tmpfs / "b"
    args = ["build", str(recipe), "--lang", "en-de", "--base", str(kit / "model"), "--out", str(out)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("iwslt-mc ")]
    assert lines == [f"iwslt-mc build: error: writing under {out}: no space left on device; free space (or write "
                     "elsewhere), then rerun with --resume (what finished is kept)"]
    state = json.loads((out / "build.json").read_text())  # intact: the stage is recorded as running
    assert state["status"] == "running" and [(s["id"], s["status"]) for s in state["stages"]] == [("prune", "running")]
    assert not (out / "model").exists()
    # space freed: the same command with --resume finishes the build
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    assert cli.main([*args, "--resume"]) == 0
    assert json.loads((out / "build.json").read_text())["status"] == "done"
    assert any((out / "model").glob("*.safetensors"))


def test_an_oserror_28_names_its_path(monkeypatch, capsys, tmp_path):
    from iwslt_mc.commands import decode

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "hyp.de.jsonl"))

    monkeypatch.setattr(decode, "run", full)
    rc = cli.main(["decode", str(tmp_path), "--audio", "x", "--lang", "en-de", "--out", str(tmp_path / "hyp.de")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"iwslt-mc decode: error: {tmp_path / 'hyp.de.jsonl'}: no space left on device; free space "
                               "(or write elsewhere), then rerun with --resume (what finished is kept)"]


def test_disk_full_is_found_through_wrapping_errors_and_nothing_else_is():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/x.safetensors")
        except OSError as e:
            raise RuntimeError("stage quantize failed") from e
    except RuntimeError as e:
        assert disk_full(e) == (True, "/data/x.safetensors")
    assert disk_full(RuntimeError("[enforce fail at inline_container.cc] file write failed: No space left on device")) \
        == (True, None)
    assert disk_full(OSError(errno.EACCES, "Permission denied", "/x")) == (False, None)
    assert disk_full(ValueError("bad")) == (False, None)


def test_a_write_error_without_a_path_names_the_output(monkeypatch, capsys, tmp_path):
    """A full disk noticed inside a file write (OSError without a file name): the line names --out."""
    from iwslt_mc.commands import decode

    def full(args):
        with open(tmp_path / "x", "w") as fh:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decode, "run", full)
    out = tmp_path / "hyp.de"
    rc = cli.main(["decode", str(tmp_path), "--audio", "x", "--lang", "en-de", "--out", str(out)])
    assert rc == 1 and capsys.readouterr().err.strip().splitlines() == [
        f"iwslt-mc decode: error: writing {out} (or its log): no space left on device; free space (or write "
        "elsewhere), then rerun with --resume (what finished is kept)"]
