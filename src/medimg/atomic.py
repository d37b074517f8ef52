"""Stage outputs appear whole or not at all.

Every stage builds its output folder beside the destination and swaps it in
only when it is complete, so a failed or killed stage leaves the previous good
copy (or nothing), never half a dataset, model set or report.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_INFIX = ".staging-"
OLD_INFIX = ".old-"


def _sibling(dest: Path, infix: str) -> Path:
    # Hidden and on the same filesystem as dest, so the final rename is atomic.
    return dest.parent / f".{dest.name}{infix}{uuid.uuid4().hex[:12]}"


def recover_interrupted(dest: Path) -> None:
    """Clean up after a swap that was killed (its finally-blocks never ran).

    A kill between the two renames of `replace_dir` leaves the previous copy
    under an `.old-` name and no `dest`: it is put back. Leftover staging
    folders are removed.
    """
    if not dest.parent.is_dir():
        return
    olds = sorted(dest.parent.glob(f".{dest.name}{OLD_INFIX}*"))
    if olds and not dest.exists():
        os.replace(olds.pop(), dest)
    for leftover in [*olds, *dest.parent.glob(f".{dest.name}{STAGING_INFIX}*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def replace_dir(staging: Path, dest: Path) -> None:
    """Put the complete folder `staging` in place of `dest`.

    POSIX cannot rename a folder over a non-empty one, so a previous `dest` is
    moved aside first, put back if the second rename fails, and removed last.
    """
    if not dest.exists():
        os.replace(staging, dest)
        return
    old = _sibling(dest, OLD_INFIX)
    os.replace(dest, old)
    try:
        os.replace(staging, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old)


@contextmanager
def building(dest: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `dest`; on success it replaces `dest`.

    On any error the staging folder is removed and `dest` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(dest)
    # Not tempfile.mkdtemp: its 0700 permissions would become the output folder's.
    staging = _sibling(dest, STAGING_INFIX)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_file(
    path: Path, data: str | bytes, durable: bool = False, mode: int | None = None
) -> None:
    """Write `data` to `path` whole or not at all: a hidden sibling file, then a rename.

    durable: also fsync the file before the rename and the folder after it, so that
    a power cut cannot leave an empty file under the new name (training state).
    mode: the file's permissions, set before anything is written (a secret's 0o600).
    """
    path = Path(path)
    # Not tempfile.mkstemp: its 0600 permissions would become the output file's.
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with partial.open("xb" if isinstance(data, bytes) else "x") as file:
            if mode is not None:
                os.chmod(partial, mode)
            file.write(data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX: fsync the folder itself)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
