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
