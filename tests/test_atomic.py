"""Stage outputs are swapped in whole or not at all."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from medimg import atomic
from medimg.atomic import building, recover_interrupted
from medimg.errors import UserError


def _write(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text(text)


def test_building_replaces_the_previous_copy_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    _write(dest, "old")
    (dest / "stale.txt").write_text("from the previous run")
    with building(dest) as staging:
        assert not (staging / "a.txt").exists()
        (staging / "a.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "new"
    assert not (dest / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failure_leaves_the_previous_copy_and_no_leftovers(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    _write(dest, "old")
    with pytest.raises(RuntimeError, match="boom"), building(dest) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert (dest / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_first_build_creates_parents(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "out"
    with building(dest) as staging:
        (staging / "a.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "new"


def test_recover_puts_back_a_copy_moved_aside_by_a_killed_swap(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    _write(tmp_path / ".out.old-123", "previous good copy")
    _write(tmp_path / ".out.staging-456", "half built")
    recover_interrupted(dest)
    assert (dest / "a.txt").read_text() == "previous good copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_removal_killed_midway_leaves_no_part_under_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is renamed aside before it is deleted: a kill during the deletion leaves
    only a hidden leftover, which the next removal or build clears."""
    work = tmp_path / "work"
    _write(work / "seed-0", "state")

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # as a kill would, after the rename

    monkeypatch.setattr(atomic.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic.remove_tree(work)
    assert not work.exists()
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".work.removing-")
    monkeypatch.undo()
    atomic.remove_leftovers(work)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_outputs_become_one_line_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    out = tmp_path / "models" / "run"
    full = OSError(errno.ENOSPC, "No space left on device", str(out / "model.keras"))
    error = atomic.output_error(full, out)
    assert isinstance(error, UserError) and error.errno == errno.ENOSPC
    assert str(error).startswith(f"cannot write {out / 'model.keras'}: no space left on device (")
    assert "free on /" in str(error) and "free space there, then run it again" in str(error)
    # h5py's way of saying it (Keras weights files)
    h5py_error = RuntimeError(
        f"Can't write data (file write failed: filename = '{out}/w.h5', "
        "errno = 28, error message = 'No space left on device')"
    )
    assert atomic.output_error(h5py_error, out).errno == errno.ENOSPC
    read_only = OSError(
        errno.EROFS, "Read-only file system", str(tmp_path / f".run{atomic.STAGING_INFIX}1" / "a")
    )
    assert "is mounted read-only" in str(atomic.output_error(read_only, tmp_path / "run"))
    assert f"cannot write {tmp_path / 'run' / 'a'}:" in str(
        atomic.output_error(read_only, tmp_path / "run")
    )
    # permission denied on a file outside the outputs may be an input: not an output error
    assert atomic.output_error(PermissionError(errno.EACCES, "denied", "/etc/x"), out) is None
    assert atomic.output_error(ValueError("no errno"), out) is None
