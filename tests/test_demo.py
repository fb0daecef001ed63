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

    monkeypatch.setattr("iwslt_mc.families.qwen2_audio.kit.build_kit", stop)  # stop right after the directory is prepared
    with pytest.raises(Stop):
        run_demo(out, log=lambda *_: None)
    assert (out / MARKER).exists() and not (out / "old-result").exists()


@pytest.mark.parametrize("edition, lang, expect, partial", [
    ("2025", "en-de", {"acl6060-eval", "talk-segmented"}, False),
    (None, "en-de", {"acl"}, True),   # 2027, the default
    ("2026", "en-zh", {"acl"}, True),
])
def test_demo_submission_is_honest_about_missing_test_sets(tmp_path, edition, lang, expect, partial):
    from iwslt_mc.demo import submission_plan

    hyps = {k: tmp_path / f"{k}.de" for k in ("acl6060-eval", "talk-segmented", "talk-unsegmented")}
    chosen, is_partial, msg = submission_plan(edition, lang, hyps)
    assert set(chosen) == expect and is_partial is partial
    if partial:
        # the kit's talk stands in for ACL talks only; nothing is copied under another test set's name
        assert chosen["acl"] == hyps["talk-segmented"]
        assert msg.startswith("PARTIAL upload") and "TVSERIES / " + lang in msg and "ACL / " + lang in msg
        assert ("ACCENT" in msg) == (lang == "en-de")
