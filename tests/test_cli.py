"""CLI start-up stays light: --help never imports torch, and every command has examples."""

import subprocess
import sys

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
