"""Stage outputs appear whole or not at all, and go whole.

Every stage builds its output folder beside the destination and swaps it in
only when it is complete, so a failed or killed stage leaves the previous good
copy (or nothing), never half a dataset, model set or report. A folder that is
deleted is first renamed aside, so a kill during the deletion never leaves a
part of it under its own name (`remove_tree`). An output that cannot be written
(a full disk, a read-only filesystem, permissions) is one line naming the path
and what to free or fix (`OutputError`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medimg.errors import UserError

STAGING_INFIX = ".staging-"
OLD_INFIX = ".old-"
REMOVING_INFIX = ".removing-"


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
    remove_leftovers(dest)


def remove_tree(path: Path) -> None:
    """Delete the folder `path` (if it exists) so that no kill leaves a part of it at `path`.

    It is renamed aside first (atomic), then deleted: a kill during the deletion
    leaves a hidden `.<name>.removing-<id>` folder, which `remove_leftovers` (and
    `building`) clear later, and never a half-deleted folder that could be taken
    for a whole one (a training's state, whose pieces looked resumable).
    """
    path = Path(path)
    if not path.exists():
        return
    aside = _sibling(path, REMOVING_INFIX)
    os.replace(path, aside)
    fsync_dir(path.parent)  # the rename is durable before anything is deleted
    shutil.rmtree(aside)


def remove_leftovers(path: Path) -> None:
    """Delete what a `remove_tree(path)` that was killed left behind."""
    for leftover in Path(path).parent.glob(f".{Path(path).name}{REMOVING_INFIX}*"):
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
    A full disk, a read-only filesystem or missing permissions end as an OutputError
    naming `dest` (or the file the error names).
    """
    with output_errors(dest):
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


# ----------------------------------------------------------------------------- unwritable outputs

# What each errno means for an output, and what the user can do about it.
_NO_SPACE = "no space left on device"
_OUTPUT_ERRNOS = {
    errno.ENOSPC: _NO_SPACE,
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# Raised only for a path we write, never for a file we read.
_WRITE_ONLY_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
# h5py (Keras's weights files) raises RuntimeError with the errno in its text.
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


class OutputError(UserError, OSError):
    """An output cannot be written: full disk, quota, read-only filesystem or permissions.

    An OSError too (with the original errno), so callers that handle OSError still do.
    """

    def __init__(self, number: int, message: str) -> None:
        super().__init__(number, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def output_errno(err: BaseException) -> int | None:
    """The errno of `err` or of an exception it was raised from, when it is one of an
    unwritable output (full disk, quota, read-only filesystem, permissions); else None."""
    seen: BaseException | None = err
    while seen is not None:
        number = getattr(seen, "errno", None)
        if not isinstance(number, int) and isinstance(seen, RuntimeError):
            found = _ERRNO_IN_TEXT.search(str(seen))
            number = int(found.group(1)) if found else None
        if number in _OUTPUT_ERRNOS:
            return number
        seen = seen.__cause__ or seen.__context__
    return None


def _failed_path(err: BaseException) -> Path | None:
    """The path an OSError (or one it was raised from) names: the destination of a copy."""
    seen: BaseException | None = err
    while seen is not None:
        for name in ("filename2", "filename"):
            value = getattr(seen, name, None)
            if isinstance(value, str | os.PathLike) and str(value):
                return Path(value)
        seen = seen.__cause__ or seen.__context__
    return None


def _mount_point(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _free(path: Path) -> int:
    return shutil.disk_usage(_mount_point(path)).free


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    kib = n_bytes / 1024
    return f"{kib:.0f} KiB" if kib < 1024 else f"{kib / 1024:.1f} MiB"


def _as_output_path(path: Path, outputs: tuple[Path, ...]) -> Path:
    """`path` inside the staging folder of an output (`building`): the same path in the output."""
    for out in outputs:
        out = Path(out).absolute()
        parts = path.absolute().parts
        inside_parent = parts[: len(out.parent.parts)] == out.parent.parts
        rest = parts[len(out.parent.parts) :]
        if inside_parent and rest and rest[0].startswith(f".{out.name}{STAGING_INFIX}"):
            return out.joinpath(*rest[1:])
    return path


def output_error(err: BaseException, *outputs: Path) -> OutputError | None:
    """A one-line OutputError for `err` when it says that an output cannot be written, else None.

    outputs: the files or folders being written, named when the error names no file;
    with several, a full disk names the one with the least free space (a failed
    write() names no file). A permission error counts only for a path under an
    output's folder (it may be about an input).
    """
    number = output_errno(err)
    if number is None:
        return None
    named = _failed_path(err)
    inside = named is not None and any(
        named.absolute().is_relative_to(Path(out).absolute().parent) for out in outputs
    )
    if number not in _WRITE_ONLY_ERRNOS and not inside:
        return None
    if named is None:
        candidates = [*outputs, Path(tempfile.gettempdir())]
        named = min(candidates, key=_free) if number == errno.ENOSPC else candidates[0]
    named = _as_output_path(named, outputs)
    mount = _mount_point(named)
    if number in (errno.ENOSPC, errno.EDQUOT):
        fix = f"{_size(_free(mount))} free on {mount}; free space there, then run it again"
    elif number == errno.EROFS:
        fix = f"{mount} is mounted read-only; make it writable, then run it again"
    else:
        fix = f"make it writable for user id {os.getuid()}, then run it again"
    return OutputError(number, f"cannot write {named}: {_OUTPUT_ERRNOS[number]} ({fix})")


@contextmanager
def output_errors(*outputs: Path) -> Iterator[None]:
    """Turn an unwritable-output error raised in the block into an OutputError (`output_error`)."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, RuntimeError) as err:
        translated = output_error(err, *outputs)
        if translated is None:
            raise
        raise translated from err
