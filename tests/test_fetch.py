"""The fetch stage end to end on tiny real zips, folders and a loopback HTTP server."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import stat
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medimg import paths
from medimg.config.datasets import DatasetConfig, FetchConfig, PrepareConfig, SplitConfig
from medimg.data.fetch import MANIFEST_COLUMNS, FetchError, content_fingerprint, fetch_dataset
from medimg.inference import DEFAULT_MIN_SIZE

XRAY_CLASSES = ["NORMAL", "PNEUMONIA"]
MRI_CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 32), mode: str = "L") -> bytes:
    """A small real JPEG whose pixels (hence bytes and phash) depend on `seed`.

    The default is just above fetch.min_image_size's default (32 px on the shorter side).
    """
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, "JPEG")
    return buffer.getvalue()


def xray_members(prefix: str = "chest_xray/") -> dict[str, bytes]:
    return {
        f"{prefix}train/NORMAL/IM-0001-0001.jpeg": jpeg_bytes(1),
        f"{prefix}train/NORMAL/NORMAL2-IM-0002-0001.jpeg": jpeg_bytes(2),
        f"{prefix}train/PNEUMONIA/person1_bacteria_1.jpeg": jpeg_bytes(3),
        f"{prefix}train/PNEUMONIA/person1_virus_2.jpeg": jpeg_bytes(4),
        f"{prefix}test/NORMAL/IM-0003-0001.jpeg": jpeg_bytes(5),
        f"{prefix}test/PNEUMONIA/person2_bacteria_3.jpeg": jpeg_bytes(6, mode="RGB"),
    }


XRAY_COUNTS = {"train": {"NORMAL": 2, "PNEUMONIA": 2}, "test": {"NORMAL": 1, "PNEUMONIA": 1}}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def xray_config(source: str | Path, **fetch: object) -> DatasetConfig:
    return DatasetConfig(
        layout="chest_xray",
        classes=XRAY_CLASSES,
        channels=1,
        fetch=FetchConfig(source=str(source), **fetch),
        split=SplitConfig(protocols=["official"]),
        prepare=PrepareConfig(image_size=16),
    )


def read_manifest(dest: Path) -> list[dict[str, str]]:
    with open(dest / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def repo_root(tmp_path, monkeypatch) -> Path:
    """Point paths.root() at tmp_path so that nothing is written into the repository."""
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture
def good_copy(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A successfully fetched dataset at tmp_path/raw/chest_xray and its files' bytes."""
    dest = tmp_path / "raw" / "chest_xray"
    fetch_dataset(
        "chest_xray", xray_config(write_zip(tmp_path / "good.zip", xray_members())), dest, 2
    )
    return dest, snapshot(dest)


def assert_untouched(dest: Path, before: dict[str, bytes]) -> None:
    assert snapshot(dest) == before
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no leftovers beside it


class FailFirstServer:
    """Serves a folder over HTTP on 127.0.0.1; answers 503 to the first request."""

    def __init__(self, folder: Path) -> None:
        self.requests = 0
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.requests == 1:
                    self.send_error(503)
                else:
                    super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self) -> FailFirstServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_folder(tmp_path) -> Iterator[tuple[Path, FailFirstServer]]:
    folder = tmp_path / "served"
    folder.mkdir()
    with FailFirstServer(folder) as server:
        yield folder, server


def test_fetch_over_http_writes_the_normalised_layout(repo_root, http_folder):
    folder, server = http_folder
    members = xray_members()
    archive = write_zip(folder / "xray.zip", members)
    cfg = xray_config(server.url("xray.zip"), sha256=sha256(archive.read_bytes()), retries=1)

    report = fetch_dataset("chest_xray", cfg, workers=2)

    assert server.requests == 2  # the first answer was a 503, retried
    assert (repo_root / "data" / "downloads" / "xray.zip").read_bytes() == archive.read_bytes()
    dest = paths.raw_dir("chest_xray")
    rows = read_manifest(dest)
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(by_name) == len(members)
    for member, data in members.items():
        _, split, label, name = member.split("/")
        row = by_name[name]
        assert row["path"] == f"images/{split}/{label}/{name}"
        assert (dest / row["path"]).read_bytes() == data
        assert (row["label"], row["source_split"], row["sha256"]) == (label, split, sha256(data))
        assert (row["width"], row["height"]) == ("40", "32")
        assert len(row["phash"]) == 16 and int(row["phash"], 16) >= 0
        for column in ("dhash", "content_dhash"):
            assert len(row[column]) == 64 and int(row[column], 16) >= 0
    assert by_name["person1_virus_2.jpeg"]["group_id"] == "person1"
    assert by_name["person1_bacteria_1.jpeg"]["group_id"] == "person1"
    assert by_name["NORMAL2-IM-0002-0001.jpeg"]["group_id"] == "NORMAL2-IM-0002"
    assert by_name["IM-0003-0001.jpeg"]["mode"] == "L"
    assert by_name["person2_bacteria_3.jpeg"]["mode"] == "RGB"

    assert report.counts == XRAY_COUNTS
    assert report.n_images == 6
    assert report.archive_sha256 == sha256(archive.read_bytes())
    assert report.fingerprint == content_fingerprint(
        (m.split("/")[1], m.split("/")[2], sha256(d)) for m, d in members.items()
    )
    on_disk = json.loads((dest / "fetch_report.json").read_text())
    assert on_disk == json.loads(report.to_json())
    assert {"dataset", "source", "layout", "archive_sha256", "skipped"} <= set(on_disk)
    assert "seconds" not in on_disk  # a run time would change the output on every run


def test_the_cached_download_is_reused(http_folder, repo_root):
    folder, server = http_folder
    archive = write_zip(folder / "xray.zip", xray_members())
    cfg = xray_config(server.url("xray.zip"), sha256=sha256(archive.read_bytes()), retries=1)
    fetch_dataset("chest_xray", cfg, workers=2)
    fetch_dataset("chest_xray", cfg, workers=2)
    assert server.requests == 2  # 503 + the one download; the second fetch made no request


def test_zip_path_file_url_and_folder_sources_agree(tmp_path):
    members = xray_members(prefix="")
    write_zip(tmp_path / "xray.zip", members)
    for name, data in members.items():
        (tmp_path / "unzipped" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "unzipped" / name).write_bytes(data)

    sources = {
        "relative": "xray.zip",  # resolved against paths.root() = tmp_path
        "file_url": (tmp_path / "xray.zip").as_uri(),
        "folder": str(tmp_path / "unzipped"),
    }
    reports = {
        kind: fetch_dataset("chest_xray", xray_config(src), tmp_path / "out" / kind, workers=2)
        for kind, src in sources.items()
    }
    assert reports["folder"].archive_sha256 is None
    assert reports["relative"].archive_sha256 == sha256((tmp_path / "xray.zip").read_bytes())
    assert len({r.fingerprint for r in reports.values()}) == 1
    manifests = [read_manifest(tmp_path / "out" / kind) for kind in sources]
    assert manifests[0] == manifests[1] == manifests[2]


def test_archive_checksum_mismatch_names_file_expected_and_actual(tmp_path, good_copy):
    dest, before = good_copy
    archive = write_zip(tmp_path / "other.zip", xray_members())
    wrong = "f" * 64
    with pytest.raises(FetchError) as err:
        fetch_dataset("chest_xray", xray_config(archive, sha256=wrong), dest, workers=2)
    message = str(err.value)
    assert str(archive) in message
    assert wrong in message
    assert sha256(archive.read_bytes()) in message
    assert_untouched(dest, before)


def _zip_with_member(path: Path, bad: zipfile.ZipInfo, data: bytes) -> Path:
    write_zip(path, xray_members())
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(bad, data)
    return path


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "bad",
    [
        zipfile.ZipInfo("../evil.jpeg"),
        zipfile.ZipInfo("/tmp/evil.jpeg"),
        _symlink("chest_xray/train/NORMAL/IM-0009-0001.jpeg"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_archives_are_refused_and_the_destination_untouched(tmp_path, good_copy, bad):
    dest, before = good_copy
    archive = _zip_with_member(tmp_path / "evil.zip", bad, b"/etc/passwd")
    with pytest.raises(FetchError, match="refusing an archive") as err:
        fetch_dataset("chest_xray", xray_config(archive), dest, workers=2)
    assert repr(bad.filename) in str(err.value)
    assert_untouched(dest, before)
    assert not (tmp_path / "raw" / "evil.jpeg").exists()


def test_a_truncated_archive_is_named_and_the_destination_untouched(tmp_path, good_copy):
    dest, before = good_copy
    archive = write_zip(tmp_path / "cut.zip", xray_members())
    archive.write_bytes(archive.read_bytes()[:-200])  # the central directory is cut off
    with pytest.raises(FetchError, match="not a readable zip archive") as err:
        fetch_dataset("chest_xray", xray_config(archive), dest, workers=2)
    assert str(archive) in str(err.value)
    assert_untouched(dest, before)


def _members_with_bad_files() -> dict[str, bytes]:
    members = xray_members()
    good = jpeg_bytes(7)
    members["chest_xray/train/NORMAL/IM-0004-0001.jpeg"] = good[: len(good) // 2]  # truncated
    members["chest_xray/test/PNEUMONIA/notes.txt"] = b"not an image"
    return members


def test_bad_files_fail_the_fetch_naming_every_one(tmp_path, good_copy):
    dest, before = good_copy
    archive = write_zip(tmp_path / "bad.zip", _members_with_bad_files())
    with pytest.raises(FetchError) as err:
        fetch_dataset("chest_xray", xray_config(archive), dest, workers=2)
    message = str(err.value)
    assert "chest_xray/train/NORMAL/IM-0004-0001.jpeg" in message
    assert "chest_xray/test/PNEUMONIA/notes.txt" in message
    assert "2 bad file(s)" in message
    assert_untouched(dest, before)  # the previous good copy survives a failed fetch


def test_bad_files_are_skipped_and_listed_when_configured(tmp_path, caplog):
    archive = write_zip(tmp_path / "bad.zip", _members_with_bad_files())
    dest = tmp_path / "raw" / "chest_xray"
    with caplog.at_level(logging.WARNING, logger="medimg.data.fetch"):
        report = fetch_dataset(
            "chest_xray", xray_config(archive, on_bad_image="skip"), dest, workers=2
        )
    skipped = {item["path"]: item["reason"] for item in report.skipped}
    assert set(skipped) == {
        "chest_xray/test/PNEUMONIA/notes.txt",
        "chest_xray/train/NORMAL/IM-0004-0001.jpeg",
    }
    assert "not an image file" in skipped["chest_xray/test/PNEUMONIA/notes.txt"]
    assert "truncated" in skipped["chest_xray/train/NORMAL/IM-0004-0001.jpeg"].lower()
    assert report.counts == XRAY_COUNTS  # only the six good images
    assert json.loads((dest / "fetch_report.json").read_text())["skipped"] == report.skipped
    names = {Path(r["path"]).name for r in read_manifest(dest)}
    assert "notes.txt" not in names and "IM-0004-0001.jpeg" not in names
    assert not (dest / "images/test/PNEUMONIA/notes.txt").exists()
    assert "notes.txt" in caplog.text and "IM-0004-0001.jpeg" in caplog.text


def test_a_1x1_image_in_an_archive_is_a_bad_file_named_by_its_member(tmp_path, good_copy):
    dest, before = good_copy
    members = xray_members()
    members["chest_xray/train/NORMAL/IM-0009-0001.jpeg"] = jpeg_bytes(8, size=(1, 1))
    members["chest_xray/train/PNEUMONIA/person9_virus_9.jpeg"] = jpeg_bytes(9, size=(40, 31))
    archive = write_zip(tmp_path / "tiny.zip", members)

    with pytest.raises(FetchError) as err:
        fetch_dataset("chest_xray", xray_config(archive), dest, workers=2)
    assert str(err.value).splitlines()[1:] == [
        "  chest_xray/train/NORMAL/IM-0009-0001.jpeg: image is 1 x 1 px; the shorter side "
        "must be at least 32 px (fetch.min_image_size)",
        "  chest_xray/train/PNEUMONIA/person9_virus_9.jpeg: image is 40 x 31 px; the shorter "
        "side must be at least 32 px (fetch.min_image_size)",
    ]
    assert_untouched(dest, before)

    report = fetch_dataset("chest_xray", xray_config(archive, on_bad_image="skip"), dest, workers=2)
    assert [item["path"] for item in report.skipped] == [
        "chest_xray/train/NORMAL/IM-0009-0001.jpeg",
        "chest_xray/train/PNEUMONIA/person9_virus_9.jpeg",
    ]
    assert report.counts == XRAY_COUNTS
    assert not (dest / "images/train/NORMAL/IM-0009-0001.jpeg").exists()


def test_the_minimum_image_size_is_the_datasets_setting(tmp_path):
    members = xray_members()
    members["chest_xray/train/NORMAL/IM-0009-0001.jpeg"] = jpeg_bytes(8, size=(24, 16))
    archive = write_zip(tmp_path / "small.zip", members)
    assert FetchConfig(source="x").min_image_size == DEFAULT_MIN_SIZE  # predict's minimum
    report = fetch_dataset(
        "chest_xray", xray_config(archive, min_image_size=16), tmp_path / "raw", workers=2
    )
    assert report.counts["train"]["NORMAL"] == 3 and report.skipped == []


def test_a_bad_files_reason_names_the_member_not_the_staging_copy(tmp_path):
    members = xray_members()
    members["chest_xray/train/NORMAL/IM-0009-0001.jpeg"] = b"plain text, not a JPEG"
    archive = write_zip(tmp_path / "text.zip", members)
    report = fetch_dataset(
        "chest_xray", xray_config(archive, on_bad_image="skip"), tmp_path / "raw", workers=2
    )
    (reason,) = [item["reason"] for item in report.skipped]
    assert "cannot identify image file 'chest_xray/train/NORMAL/IM-0009-0001.jpeg'" in reason
    assert str(tmp_path) not in reason and "staging" not in reason


def test_expected_counts_mismatch_shows_expected_and_found(tmp_path):
    archive = write_zip(tmp_path / "xray.zip", xray_members())
    expected = {"train": {"NORMAL": 3, "PNEUMONIA": 2}, "test": {"NORMAL": 1, "PNEUMONIA": 1}}
    dest = tmp_path / "raw" / "chest_xray"
    with pytest.raises(FetchError) as err:
        fetch_dataset("chest_xray", xray_config(archive, expected_counts=expected), dest, 2)
    assert "train/NORMAL: expected 3, found 2" in str(err.value)
    assert "PNEUMONIA" not in str(err.value)  # only the differing entries are listed
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_expected_counts_and_fingerprint_accept_the_right_content(tmp_path):
    archive = write_zip(tmp_path / "xray.zip", xray_members())
    first = fetch_dataset("chest_xray", xray_config(archive), tmp_path / "a", workers=2)
    cfg = xray_config(archive, expected_counts=XRAY_COUNTS, expected_fingerprint=first.fingerprint)
    assert fetch_dataset("chest_xray", cfg, tmp_path / "b", workers=2).n_images == 6
    wrong = xray_config(archive, expected_fingerprint="0" * 64)
    with pytest.raises(FetchError, match=f"fingerprint is {first.fingerprint}, expected 0000"):
        fetch_dataset("chest_xray", wrong, tmp_path / "c", workers=2)


def test_fingerprint_survives_renaming_but_not_relabelling(tmp_path):
    members = xray_members()
    renamed = {
        name.replace("IM-0001-0001", "IM-0042-0007").replace("person1_", "person77_"): data
        for name, data in members.items()
    }
    moved = "chest_xray/train/NORMAL/IM-0001-0001.jpeg"
    relabelled = {
        (name.replace("/NORMAL/", "/PNEUMONIA/") if name == moved else name): data
        for name, data in members.items()
    }
    fingerprints = {}
    for kind, content in [("original", members), ("renamed", renamed), ("relabelled", relabelled)]:
        archive = write_zip(tmp_path / f"{kind}.zip", content)
        cfg = xray_config(archive)
        fingerprints[kind] = fetch_dataset(kind, cfg, tmp_path / kind, workers=2).fingerprint
    assert fingerprints["renamed"] == fingerprints["original"]
    assert fingerprints["relabelled"] != fingerprints["original"]


def test_a_new_fetch_replaces_the_previous_copy_entirely(tmp_path, good_copy):
    dest, _ = good_copy
    members = {k: v for k, v in xray_members().items() if "IM-0001" not in k}
    archive = write_zip(tmp_path / "smaller.zip", members)
    report = fetch_dataset("chest_xray", xray_config(archive), dest, workers=2)
    assert report.n_images == 5
    assert not (dest / "images/train/NORMAL/IM-0001-0001.jpeg").exists()
    assert len(read_manifest(dest)) == 5
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


def test_an_unparseable_patient_name_fails_naming_the_file(tmp_path):
    members = xray_members()
    members["chest_xray/train/NORMAL/scan_0001.jpeg"] = jpeg_bytes(8)
    archive = write_zip(tmp_path / "xray.zip", members)
    with pytest.raises(FetchError, match=r"chest_xray/train/NORMAL/scan_0001\.jpeg"):
        fetch_dataset("chest_xray", xray_config(archive), tmp_path / "raw" / "x", workers=2)


def test_unknown_layout_fails_before_writing_anything(tmp_path):
    archive = write_zip(tmp_path / "flat.zip", {"images/a.jpeg": jpeg_bytes(1)})
    dest = tmp_path / "raw" / "x"
    with pytest.raises(FetchError, match=r"(?s)no 'chest_xray' layout found.*images/"):
        fetch_dataset("x", xray_config(archive), dest, workers=2)
    assert list(dest.parent.iterdir()) == []


def test_a_sha256_for_a_folder_source_is_an_error(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(FetchError, match="applies to an archive only"):
        fetch_dataset("x", xray_config(tmp_path / "folder", sha256="a" * 64), tmp_path / "o", 2)


def test_mri_groups_byte_identical_files_across_splits(tmp_path):
    same = jpeg_bytes(11, mode="RGB")
    members = {
        "repo-master/Training/glioma_tumor/gg (1).jpg": same,
        "repo-master/Training/no_tumor/1.jpg": jpeg_bytes(12, mode="RGB"),
        "repo-master/Testing/glioma_tumor/image(1).jpg": same,
    }
    archive = write_zip(tmp_path / "mri.zip", members)
    cfg = DatasetConfig(
        layout="mri",
        classes=MRI_CLASSES,
        channels=3,
        fetch=FetchConfig(source=str(archive)),
        split=SplitConfig(protocols=["pooled"]),
        prepare=PrepareConfig(image_size=16),
    )
    report = fetch_dataset("brain_tumor_mri", cfg, tmp_path / "raw" / "mri", workers=2)
    rows = {Path(r["path"]).name: r for r in read_manifest(tmp_path / "raw" / "mri")}
    assert rows["gg (1).jpg"]["group_id"] == rows["image(1).jpg"]["group_id"] == sha256(same)[:16]
    assert rows["1.jpg"]["group_id"] != rows["gg (1).jpg"]["group_id"]
    assert report.counts["train"] == {
        "glioma_tumor": 1,
        "meningioma_tumor": 0,
        "no_tumor": 1,
        "pituitary_tumor": 0,
    }
    assert rows["image(1).jpg"]["source_split"] == "test"


def test_leftovers_of_a_killed_fetch_are_cleaned_and_the_previous_copy_restored(
    tmp_path, good_copy
):
    dest, before = good_copy
    # A fetch killed between its two renames: the good copy moved aside, nothing in place,
    # and a half-built staging folder.
    dest.rename(dest.parent / ".chest_xray.old-0123")
    (dest.parent / ".chest_xray.staging-4567" / "images").mkdir(parents=True)
    archive = write_zip(tmp_path / "bad.zip", _members_with_bad_files())
    with pytest.raises(FetchError, match="bad file"):
        fetch_dataset("chest_xray", xray_config(archive), dest, workers=2)
    assert_untouched(dest, before)
    assert not list(dest.parent.glob(".chest_xray.*")), "leftovers of the killed fetch remain"
