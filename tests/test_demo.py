"""The demo's output directory rules (the full demo run is the README's main command, not a unit test)."""

import pytest

from iwslt_mc.demo import MARKER, run_demo
from iwslt_mc.errors import UserError


def test_demo_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        run_demo(tmp_path, log=lambda *_: None)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_demo_replaces_its_own_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "demo-out"
    out.mkdir()
    (out / MARKER).write_text("x")
    (out / "old-result").write_text("old")

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr("iwslt_mc.kit.build_kit", stop)  # stop right after the directory is prepared
    with pytest.raises(Stop):
        run_demo(out, log=lambda *_: None)
    assert (out / MARKER).exists() and not (out / "old-result").exists()
