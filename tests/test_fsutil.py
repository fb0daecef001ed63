import os
import stat

import pytest

from iwslt_mc.errors import UserError
from iwslt_mc.fsutil import atomic_directory, atomic_write_text, prepare_output_dir


def test_atomic_write_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x\n")
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert (tmp_path / "a.txt").read_text() == "x\n" and (tmp_path / "d" / "f").read_text() == "y"


def test_atomic_directory_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as d:
            (d / "half").write_text("partial")
            raise RuntimeError("crash")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_directory(tmp_path / "out") as d:
            (d / "new").write_text("2")
    assert (tmp_path / "out" / "keep").read_text() == "1"


def test_prepare_output_dir(tmp_path):
    assert prepare_output_dir(tmp_path / "new" / "deep").is_dir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("1")
    with pytest.raises(UserError, match="not empty"):
        prepare_output_dir(tmp_path / "full")
    (tmp_path / "file").write_text("1")
    with pytest.raises(UserError, match="not a directory"):
        prepare_output_dir(tmp_path / "file")
    with pytest.raises(UserError, match="cannot write"):
        prepare_output_dir(tmp_path / "file" / "sub")
