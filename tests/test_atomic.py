"""Stage outputs are swapped in whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from medimg.atomic import building, recover_interrupted


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
