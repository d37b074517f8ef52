"""Zip archives: unsafe members refused, corrupt archives named, members read back intact."""

from __future__ import annotations

import stat
import zipfile

import pytest

from medimg.data.archive import ZipArchive
from medimg.data.errors import FetchError


def write_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_zip_with_symlink(path, link_name: str, link_target: str):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/train/NORMAL/a.jpeg", b"jpeg")
        info = zipfile.ZipInfo(link_name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16  # how `zip --symlinks` stores a link
        zf.writestr(info, link_target)
    return path


def test_files_lists_file_members_and_reads_them(tmp_path):
    path = write_zip(tmp_path / "ok.zip", {"top/": b"", "top/a.txt": b"alpha", "top/b/c": b"x"})
    with ZipArchive(path) as archive:
        assert archive.files == ["top/a.txt", "top/b/c"]
        with archive.open("top/a.txt") as member:
            assert member.read() == b"alpha"


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../evil.jpeg", "'..' path component"),
        ("data/train/../../evil.jpeg", "'..' path component"),
        ("data\\..\\evil.jpeg", "'..' path component"),
        ("/etc/evil.jpeg", "absolute path"),
        ("C:/evil.jpeg", "absolute path"),
    ],
)
def test_members_escaping_the_destination_are_refused(tmp_path, member, reason):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/train/NORMAL/a.jpeg", b"jpeg")
        # ZipFile.writestr keeps the name as given (it strips nothing when writing).
        zf.writestr(zipfile.ZipInfo(member), b"evil")
    with pytest.raises(FetchError) as err:
        ZipArchive(path)
    assert repr(member) in str(err.value)
    assert reason in str(err.value)


def test_symlink_members_are_refused(tmp_path):
    path = write_zip_with_symlink(tmp_path / "link.zip", "data/train/NORMAL/b.jpeg", "/etc/passwd")
    with pytest.raises(FetchError, match=r"'data/train/NORMAL/b.jpeg' \(symbolic link\)"):
        ZipArchive(path)


def test_a_truncated_archive_is_named(tmp_path):
    path = write_zip(tmp_path / "cut.zip", {f"d/{i}.bin": bytes([i]) * 5000 for i in range(5)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FetchError, match="not a readable zip archive") as err:
        ZipArchive(path)
    assert str(path) in str(err.value)


def test_a_member_with_corrupt_data_is_named_when_read(tmp_path):
    payload = b"A" * 1000
    path = write_zip(tmp_path / "crc.zip", {"d/x.bin": payload}, compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    at = data.index(payload)
    data[at + 10] ^= 0xFF  # the central directory is intact; the CRC of the data is not
    path.write_bytes(bytes(data))
    with (
        ZipArchive(path) as archive,
        archive.open("d/x.bin") as member,
        pytest.raises(FetchError, match=r"'d/x\.bin' cannot be read") as err,
    ):
        member.read()
    assert str(path) in str(err.value)


def test_missing_archive(tmp_path):
    with pytest.raises(FetchError, match="archive not found"):
        ZipArchive(tmp_path / "nope.zip")
