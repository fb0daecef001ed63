"""CLI start-up stays light: --help never imports torch, and every command has examples."""

import subprocess
import sys

import pytest

from iwslt_mc import cli


def test_help_does_not_import_torch():
    code = ("import sys; from iwslt_mc.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'numpy', 'datasets', 'sacrebleu') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: iwslt-mc" in out
    assert out.strip().endswith("HEAVY="), out


def test_every_command_help_has_examples():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert len(sub.choices) >= 1
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "examples:" in text and f"iwslt-mc {name}" in text, name


def test_console_script_help_runs():
    exe = __import__("shutil").which("iwslt-mc") or str(__import__("pathlib").Path(sys.executable).parent / "iwslt-mc")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "COMMAND" in r.stdout


def test_interrupted_build_and_stage_name_the_command_that_continues(kit, tmp_path, monkeypatch, capsys):
    """Ctrl-C: each command says what the next command is (build: --resume; stage: the same command)."""
    import iwslt_mc.build
    import iwslt_mc.stages.base

    def interrupted_build(recipe, *, out, **kw):
        out.mkdir(parents=True)
        (out / "build.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(iwslt_mc.build, "build", interrupted_build)
    out = tmp_path / "b"
    assert cli.main(["build", "quantize-only", "--lang", "en-de", "--base", str(kit / "model"), "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"iwslt-mc build: interrupted; {out} keeps what finished: rerun the same command with --resume to continue")

    def interrupted_stage(stage, in_dir, out_dir, ctx, **kw):
        work = out_dir.with_name(out_dir.name + ".work")
        (work / "checkpoints").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(iwslt_mc.stages.base, "run_stage", interrupted_stage)
    out = tmp_path / "s"
    assert cli.main(["stage", "quantize", "--in", str(kit / "model"), "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"iwslt-mc stage: interrupted; {tmp_path / 's.work'} keeps its checkpoints: rerun the same command to continue")


def test_help_examples_continue_lines_with_a_visible_backslash(capsys):
    """An example split over lines shows its backslash, and the next line is the indented rest of it (a single
    backslash at a line end in the source joined the lines into one with a run of spaces)."""
    import re

    from iwslt_mc import cli as cli_mod

    for name in cli_mod.COMMANDS:
        with pytest.raises(SystemExit):
            cli_mod.main([name.replace("_", "-"), "--help"])
        text = capsys.readouterr().out
        ex = text.split("examples:\n", 1)[1].splitlines() if "examples:\n" in text else []
        for i, line in enumerate(ex):
            assert not re.search(r"\S {5,}--", line), f"{name} --help: two lines joined: {line!r}"
            if line.endswith("\\"):
                assert i + 1 < len(ex) and ex[i + 1].startswith("      "), f"{name} --help: {line!r} continues nowhere"
    with pytest.raises(SystemExit):
        cli_mod.main(["decode", "--help"])
    assert "--audio kit/data/testsets/KITCLIPS \\\n      --out-dir hyp/" in capsys.readouterr().out
