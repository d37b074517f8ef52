"""Read dataset zip archives safely.

Every member name is checked before anything is read: an absolute path, a
`..` component or a symbolic link could write outside the destination
folder ("zip slip"), so such an archive is refused as a whole, naming the
member. Members are then read one by one (`ZipArchive.open`) and copied by
the fetch stage straight into its normalised layout.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import IO

from medimg.data.errors import FetchError

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting this member could escape the destination folder, or None when it is safe."""
    name = info.filename
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        return "absolute path"
    # Zips written on Windows may use backslashes, which a Windows reader treats as separators.
    if ".." in re.split(r"[/\\]", name):
        return "'..' path component"
    unix_mode = info.external_attr >> 16
    if stat.S_ISLNK(unix_mode):
        return "symbolic link"
    return None


class ZipArchive:
    """A zip archive whose members have been checked to be safe to extract.

    Use as a context manager: `with ZipArchive(path) as archive: archive.files`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise FetchError(f"{self.path}: archive not found") from None
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise FetchError(
                f"{self.path}: not a readable zip archive (truncated or corrupt?): {err}"
            ) from None
        try:
            self._check_members()
        except BaseException:
            self._zip.close()
            raise

    def _check_members(self) -> None:
        unsafe = [
            f"{info.filename!r} ({reason})"
            for info in self._zip.infolist()
            if (reason := unsafe_member_reason(info)) is not None
        ]
        if unsafe:
            raise FetchError(
                f"{self.path}: refusing an archive with members that would be extracted "
                f"outside the destination folder: {', '.join(unsafe)}"
            )
        counts = Counter(info.filename for info in self._zip.infolist())
        duplicates = sorted(name for name, n in counts.items() if n > 1)
        if duplicates:
            raise FetchError(
                f"{self.path}: members stored more than once (ambiguous content): {duplicates[:10]}"
            )

    @property
    def files(self) -> list[str]:
        """Names of the file members (folder entries left out), as stored: `/`-separated."""
        return [info.filename for info in self._zip.infolist() if not info.is_dir()]

    def open(self, member: str) -> MemberReader:
        """Open a member for reading; a corrupt member raises FetchError naming it."""
        try:
            stream = self._zip.open(member)
        except MemberReader.READ_ERRORS as err:
            raise FetchError(f"{self.path}: member {member!r} cannot be read: {err}") from None
        return MemberReader(stream, self.path, member)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ZipArchive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemberReader:
    """A member stream that turns the zip module's assorted read errors into one FetchError."""

    # zipfile reports a bad CRC or cut data as BadZipFile/EOFError/zlib.error, an
    # unsupported compression (e.g. Deflate64) as NotImplementedError and an
    # encrypted member as RuntimeError.
    READ_ERRORS = (
        zipfile.BadZipFile,
        EOFError,
        zlib.error,
        OSError,
        NotImplementedError,
        RuntimeError,
    )

    def __init__(self, stream: IO[bytes], archive: Path, member: str) -> None:
        self._stream = stream
        self._archive = archive
        self._member = member

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except self.READ_ERRORS as err:
            raise FetchError(
                f"{self._archive}: member {self._member!r} cannot be read (corrupt archive?): {err}"
            ) from None

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> MemberReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
