"""The fetch stage: a dataset release -> data/raw/<dataset>/ in the normalised layout.

Output (the contract with the split stage):
    images/<source_split>/<label>/<filename>   copies of the release's images
    manifest.csv     one row per image, sorted by path; columns MANIFEST_COLUMNS
    fetch_report.json  FetchReport as JSON

The source (FetchConfig.source) is an http(s):// URL (downloaded into the
cache data/downloads/, see medimg.data.download), a file:// URL, a local .zip
or a local folder. Everything is built in a temporary folder beside the
destination and renamed into place only when the archive, the layout, every
image and the expected counts have been checked: a failed or interrupted
fetch leaves the previous copy of the destination as it was, never half a
dataset. Run one fetch per destination at a time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from tqdm import tqdm

from medimg import atomic, paths
from medimg.config.datasets import DatasetConfig, FetchConfig
from medimg.data.archive import ZipArchive
from medimg.data.download import cached_download, sha256_file
from medimg.data.errors import FetchError
from medimg.data.images import ImageInfo, inspect_images
from medimg.data.layouts import LayoutEntry, get_layout, match_layout
from medimg.data.manifest import MANIFEST_COLUMNS, SPLITS

__all__ = ["MANIFEST_COLUMNS", "FetchError", "FetchReport", "content_fingerprint", "fetch_dataset"]

log = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 1 << 20


@dataclass
class FetchReport:
    """What a fetch produced; written as fetch_report.json."""

    dataset: str
    source: str
    layout: str
    archive_sha256: str | None  # None for a folder source
    fingerprint: str  # content_fingerprint of the kept images
    counts: dict[str, dict[str, int]]  # source split -> class -> images
    n_images: int
    skipped: list[dict[str, str]]  # {"path", "reason"}: bad files left out (on_bad_image: skip)
    ignored: list[dict[str, object]]  # {"path", "files", "reason"}: not part of the layout
    # No run time here: a DVC output must not change when the stage re-runs on the same data
    # (the time is logged instead).

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


SourceKind = Literal["url", "zip", "folder"]


def resolve_source(source: str) -> tuple[SourceKind, str | Path]:
    """Classify FetchConfig.source: ("url", url) or ("zip" | "folder", absolute path).

    Relative local paths are taken from the repository root (paths.root()).
    """
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        return "url", source
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(
                f"fetch.source = {source!r}: a file:// URL must name a local path "
                "(file:///abs/path.zip), not a host"
            )
        path = Path(url2pathname(parts.path))
    elif parts.scheme == "":
        path = Path(source)
        path = path if path.is_absolute() else paths.root() / path
    else:
        raise FetchError(
            f"fetch.source = {source!r}: unsupported scheme {parts.scheme!r}; expected "
            "http(s)://, file://, a local .zip or a local folder"
        )
    if path.is_dir():
        return "folder", path
    if path.is_file():
        return "zip", path
    raise FetchError(f"fetch.source = {source!r}: {path} does not exist")


def content_fingerprint(items: Iterable[tuple[str, str, str]]) -> str:
    """sha256 over the sorted lines "<source_split>/<label>/<sha256 of file>\\n".

    Independent of file names and order, so renaming files keeps it and
    relabelling (or changing any image) changes it.
    """
    lines = sorted(f"{split}/{label}/{sha}\n" for split, label, sha in items)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def count_images(
    rows: Iterable[dict[str, object]], classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    """{source split: {class: n}} over manifest rows; every class listed for each split present."""
    rows = list(rows)
    present = {row["source_split"] for row in rows}
    counts = {s: dict.fromkeys(classes, 0) for s in SPLITS if s in present}
    for row in rows:
        counts[str(row["source_split"])][str(row["label"])] += 1
    return counts


def _count_mismatches(
    expected: dict[str, dict[str, int]], found: dict[str, dict[str, int]]
) -> list[str]:
    """Lines "split/class: expected E, found F" where they differ (an absent entry counts 0)."""
    lines = []
    for split in sorted(set(expected) | set(found), key=_split_rank):
        exp, got = expected.get(split, {}), found.get(split, {})
        for cls in sorted(set(exp) | set(got)):
            if exp.get(cls, 0) != got.get(cls, 0):
                lines.append(f"{split}/{cls}: expected {exp.get(cls, 0)}, found {got.get(cls, 0)}")
    return lines


def _split_rank(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


class _FolderTree:
    """A local folder with the same interface as ZipArchive (`files`, `open`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = sorted(
            (Path(folder) / name).relative_to(root).as_posix()
            for folder, _, names in os.walk(root)  # os.walk does not follow folder links
            for name in names
        )

    def open(self, member: str) -> IO[bytes]:
        return open(self.root / member, "rb")

    def __enter__(self) -> _FolderTree:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def _copy_hashing(tree: ZipArchive | _FolderTree, member: str, target: Path) -> str:
    """Copy one file out of the source tree; returns the sha256 of its bytes."""
    digest = hashlib.sha256()
    with tree.open(member) as src, open(target, "wb") as dst:
        while chunk := src.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def _check_archive_sha256(archive: Path, fetch: FetchConfig) -> str:
    actual = sha256_file(archive)
    if fetch.sha256 is not None and actual != fetch.sha256:
        raise FetchError(
            f"{archive}: sha256 is {actual}, expected {fetch.sha256} (fetch.sha256); "
            "the archive is not the configured release"
        )
    return actual


def _write_manifest(rows: list[dict[str, object]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _bad_files_message(source: str, bad: list[tuple[str, str]]) -> str:
    listing = "\n".join(f"  {path}: {reason}" for path, reason in bad)
    return (
        f"{source}: {len(bad)} bad file(s) (fetch.on_bad_image = 'fail'; "
        f"'skip' leaves them out and lists them in fetch_report.json):\n{listing}"
    )


def _too_small(image: ImageInfo, min_size: int) -> str | None:
    """Why `image` is too small to use, or None: its shorter side is under `min_size` px.

    Such an image (a 1 x 1 placeholder, an icon) decodes, but holds too little to learn
    from, and predict refuses it (medimg.inference.DEFAULT_MIN_SIZE).
    """
    if min(image.width, image.height) >= min_size:
        return None
    return (
        f"image is {image.width} x {image.height} px; the shorter side must be at least "
        f"{min_size} px (fetch.min_image_size)"
    )


def _inspect(
    copied: list[tuple[LayoutEntry, str]], staging: Path, min_size: int, workers: int | None
) -> tuple[list[tuple[LayoutEntry, str, ImageInfo]], list[tuple[str, str]]]:
    """Decode the copied images: ((entry, sha256, info) of the good, (member, reason) of the bad).

    `copied`: (entry, sha256) of each file copied into `staging`; bad files are the
    undecodable ones and those under `min_size` px (`_too_small`).
    """
    results = inspect_images([staging / entry.target for entry, _ in copied], workers)
    good: list[tuple[LayoutEntry, str, ImageInfo]] = []
    bad: list[tuple[str, str]] = []
    for (entry, sha), result in zip(copied, results, strict=True):
        if isinstance(result, str):
            # A decoder's message may name the file it read: the staging copy, a temporary
            # path nobody can look up. Name the member of the source instead.
            reason = result.replace(str(staging / entry.target), entry.source)
        elif (reason := _too_small(result, min_size)) is None:
            good.append((entry, sha, result))
            continue
        bad.append((entry.source, reason))
    return good, bad


def _build(
    name: str,
    cfg: DatasetConfig,
    tree: ZipArchive | _FolderTree,
    staging: Path,
    workers: int | None,
) -> tuple[list[dict[str, object]], list[dict[str, str]], list[dict[str, object]]]:
    """Copy, inspect and describe the images into `staging`: (manifest rows, skipped, ignored)."""
    match = match_layout(tree.files, cfg.layout, cfg.classes)
    copied: list[tuple[LayoutEntry, str]] = []
    for entry in tqdm(match.entries, desc=f"copy {name}", unit="file", file=sys.stderr):
        target = staging / entry.target
        target.parent.mkdir(parents=True, exist_ok=True)
        copied.append((entry, _copy_hashing(tree, entry.source, target)))

    good, bad = _inspect(copied, staging, cfg.fetch.min_image_size, workers)
    bad = sorted([*match.misplaced, *bad])
    if bad and cfg.fetch.on_bad_image == "fail":
        raise FetchError(_bad_files_message(cfg.fetch.source, bad))
    if bad:
        log.warning(
            "%s: skipping %d bad file(s) (fetch.on_bad_image = 'skip'): %s",
            name,
            len(bad),
            "; ".join(f"{path}: {reason}" for path, reason in bad),
        )
        bad_paths = {path for path, _ in bad}
        for entry, _ in copied:
            if entry.source in bad_paths:
                (staging / entry.target).unlink()

    group_id = get_layout(cfg.layout).group_id
    rows: list[dict[str, object]] = []
    unparseable: list[str] = []
    for entry, sha, info in good:
        try:
            group = group_id(entry.filename, sha)
        except ValueError as err:
            unparseable.append(f"  {entry.source}: {err}")
            continue
        rows.append(
            {
                "path": entry.target,
                "label": entry.label,
                "source_split": entry.source_split,
                "group_id": group,
                "sha256": sha,
                "width": info.width,
                "height": info.height,
                "mode": info.mode,
                "phash": info.phash,
                "dhash": info.dhash,
                "content_dhash": info.content_dhash,
            }
        )
    if unparseable:
        raise FetchError(
            f"{cfg.fetch.source}: {len(unparseable)} file name(s) carry no patient id:\n"
            + "\n".join(unparseable)
        )
    rows.sort(key=lambda row: str(row["path"]))
    skipped = [{"path": path, "reason": reason} for path, reason in bad]
    return rows, skipped, match.ignored


def fetch_dataset(
    name: str, cfg: DatasetConfig, dest: Path | None = None, workers: int | None = None
) -> FetchReport:
    """Fetch dataset `name` as configured in `cfg` into `dest` (default data/raw/<name>/).

    Args:
        name: the dataset's key in params.yaml (recorded in the report).
        cfg: its configuration; `cfg.fetch` says where from and what to expect.
        dest: the output folder; replaced as a whole only when the fetch succeeds.
        workers: processes that decode images (default os.cpu_count()).

    Raises FetchError naming the file, URL or value at fault: download failure,
    archive sha256 mismatch, unsafe or corrupt archive, unknown layout, bad
    images (with on_bad_image = "fail"), unparseable patient ids, or counts or
    fingerprint different from the expected ones.
    """
    started = time.perf_counter()
    fetch = cfg.fetch
    dest = Path(dest) if dest is not None else paths.raw_dir(name)
    kind, location = resolve_source(fetch.source)
    if kind == "folder" and fetch.sha256 is not None:
        raise FetchError(
            f"fetch.sha256 is set but fetch.source = {fetch.source!r} is a folder; "
            "a sha256 applies to an archive only"
        )
    if kind == "url":
        location = cached_download(
            str(location), sha256=fetch.sha256, timeout_s=fetch.timeout_s, retries=fetch.retries
        )
    archive_sha256 = _check_archive_sha256(Path(location), fetch) if kind != "folder" else None

    with atomic.building(dest) as staging:
        tree = ZipArchive(Path(location)) if kind != "folder" else _FolderTree(Path(location))
        with tree:
            rows, skipped, ignored = _build(name, cfg, tree, staging, workers)

        counts = count_images(rows, cfg.classes)
        if fetch.expected_counts is not None:
            mismatches = _count_mismatches(fetch.expected_counts, counts)
            if mismatches:
                raise FetchError(
                    f"{fetch.source}: image counts differ from fetch.expected_counts:\n  "
                    + "\n  ".join(mismatches)
                )
        fingerprint = content_fingerprint(
            (str(r["source_split"]), str(r["label"]), str(r["sha256"])) for r in rows
        )
        if fetch.expected_fingerprint is not None and fingerprint != fetch.expected_fingerprint:
            raise FetchError(
                f"{fetch.source}: content fingerprint is {fingerprint}, expected "
                f"{fetch.expected_fingerprint} (fetch.expected_fingerprint); counts found: {counts}"
            )

        report = FetchReport(
            dataset=name,
            source=fetch.source,
            layout=cfg.layout,
            archive_sha256=archive_sha256,
            fingerprint=fingerprint,
            counts=counts,
            n_images=len(rows),
            skipped=skipped,
            ignored=ignored,
        )
        _write_manifest(rows, staging / "manifest.csv")
        (staging / "fetch_report.json").write_text(report.to_json())
    log.info("fetch %s: %.1f s", name, time.perf_counter() - started)
    return report
