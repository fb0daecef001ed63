"""The output layer's routing of library logging and warnings (iwslt_mc/output.py), in-process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from iwslt_mc import output
from iwslt_mc.errors import UserError


@pytest.fixture
def routed(monkeypatch):
    """silence_library_noise under a patched environment; the session's levels, TRANSFORMERS_VERBOSITY and
    showwarning are put back afterwards (other tests rely on them)."""
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", os.environ.get("TRANSFORMERS_VERBOSITY", "error"))
    monkeypatch.delenv("IWSLT_MC_DEBUG", raising=False)
    monkeypatch.delenv(output.LIBRARY_LOG_ENV, raising=False)
    levels = {name: logging.getLogger(name).level for name in output.LIBRARIES}
    shown = warnings.showwarning
    yield monkeypatch
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    warnings.showwarning = shown


@pytest.mark.parametrize("env, level", [({}, logging.ERROR), ({"IWSLT_MC_LIBRARY_LOG": "warning"}, logging.WARNING),
                                        ({"IWSLT_MC_LIBRARY_LOG": " Info "}, logging.INFO),
                                        ({"IWSLT_MC_DEBUG": "1"}, logging.INFO),
                                        ({"IWSLT_MC_DEBUG": "1", "IWSLT_MC_LIBRARY_LOG": "error"}, logging.ERROR)])
def test_one_switch_sets_every_library_logger(routed, caplog, env, level):
    for k, v in env.items():
        routed.setenv(k, v)
    output.silence_library_noise()
    assert {n: logging.getLogger(n).level for n in output.LIBRARIES} == {n: level for n in output.LIBRARIES}
    assert os.environ["TRANSFORMERS_VERBOSITY"] == logging.getLevelName(level).lower()
    with caplog.at_level(logging.DEBUG):
        for name in ("peft.tuners.lora", "accelerate.utils.modeling", "kernels.layer"):  # children inherit it
            logging.getLogger(name).info("an info line")
            logging.getLogger(name).warning("a warning line")
            logging.getLogger(name).error("an error line")
    seen = [(r.name, r.levelno) for r in caplog.records]
    assert seen == [(n, lv) for n in ("peft.tuners.lora", "accelerate.utils.modeling", "kernels.layer")
                    for lv in (logging.INFO, logging.WARNING, logging.ERROR) if lv >= level]


def test_transformers_imported_before_follows_the_switch(routed):
    from transformers.utils import logging as tf_logging

    routed.setenv("IWSLT_MC_LIBRARY_LOG", "warning")
    output.silence_library_noise()
    assert tf_logging.get_verbosity() == logging.WARNING
    routed.setenv("IWSLT_MC_LIBRARY_LOG", "error")
    output.silence_library_noise()
    assert tf_logging.get_verbosity() == logging.ERROR


def test_a_library_warning_becomes_a_record_of_its_logger_and_ours_stays_a_warning(routed, caplog):
    output.silence_library_noise()
    import peft

    assert warnings.showwarning is output._showwarning
    in_peft = os.path.join(os.path.dirname(peft.__file__), "tuners", "x.py")
    with caplog.at_level(logging.DEBUG):
        routed.setenv("IWSLT_MC_LIBRARY_LOG", "warning")
        output.silence_library_noise()
        output._showwarning(FutureWarning("peft will change"), FutureWarning, in_peft, 7)
        routed.setenv("IWSLT_MC_LIBRARY_LOG", "error")
        output.silence_library_noise()
        output._showwarning(FutureWarning("peft will change again"), FutureWarning, in_peft, 8)
        # a warning raised in our own code (or any package not in LIBRARIES) goes to Python's display as before
        with warnings.catch_warnings(record=True) as python_shows:
            output._showwarning(UserWarning("ours"), UserWarning, str(Path(output.__file__)), 1)
    assert [(r.name, r.getMessage()) for r in caplog.records if r.name == "peft"] == [
        ("peft", f"{in_peft}:7: FutureWarning: peft will change")]
    assert [str(w.message) for w in python_shows] == ["ours"]


def test_an_unknown_level_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "IWSLT_MC_LIBRARY_LOG": "loud"}
    env.pop("IWSLT_MC_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "iwslt_mc", "ls"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "iwslt-mc ls: error: IWSLT_MC_LIBRARY_LOG='loud': not a level (use one of debug, info, warning, error, critical)"]
    with pytest.raises(UserError, match="IWSLT_MC_LIBRARY_LOG='loud'"):
        os.environ["IWSLT_MC_LIBRARY_LOG"] = "loud"
        try:
            output.library_log_level()
        finally:
            del os.environ["IWSLT_MC_LIBRARY_LOG"]
