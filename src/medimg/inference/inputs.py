"""What to classify: image files, folders (searched recursively) and glob patterns.

A file named on the command line is always tried, whatever its suffix: the user asked
for it. Inside a folder or a glob match only files with an image suffix (or no suffix
and a DICOM header) are taken; the others are listed as skipped, so that nothing is
left out silently. A name that matches
nothing is an error result, reported like an unreadable image.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from pathlib import Path

from medimg.data.layouts import IMAGE_SUFFIXES
from medimg.data.pixels import DICOM_SUFFIXES, is_dicom
from medimg.inference.classifier import ImageResult

# The datasets' suffixes plus what clinical exports use: DICOM, 16-bit TIFF and PNG, BMP.
PREDICT_SUFFIXES = frozenset(IMAGE_SUFFIXES | DICOM_SUFFIXES | {".tif", ".tiff", ".bmp"})
_GLOB_CHARACTERS = frozenset("*?[")

# An image file to classify, or the result that says why a name gives none.
Entry = Path | ImageResult


def collect_inputs(names: Sequence[str]) -> list[Entry]:
    """Expand files, folders and glob patterns (`**` included), in the order given.

    Returns one entry per image file (each file once) and one ImageResult per name that
    matches nothing ("error") or per non-image file found in a folder or by a pattern
    ("skipped").
    """
    entries: list[Entry] = []
    for name in names:
        path = Path(name)
        if path.is_file():
            entries.append(path)
        elif path.is_dir():
            entries.extend(_found_in(_files_under(path)))
        elif _GLOB_CHARACTERS & set(name):
            matches = [Path(match) for match in sorted(glob.glob(name, recursive=True))]
            if not matches:
                entries.append(ImageResult(name, "error", message="no file matches this pattern"))
            for match in matches:
                entries.extend(_found_in(_files_under(match) if match.is_dir() else [match]))
        else:
            entries.append(ImageResult(name, "error", message="no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for entry in entries:
        if isinstance(entry, Path):
            if entry.resolve() in seen:
                continue
            seen.add(entry.resolve())
        unique.append(entry)
    return unique


def _files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _found_in(found: Iterable[Path]) -> Iterable[Entry]:
    for path in found:
        # DICOM exports often have no suffix at all (IM000001): their header tells.
        if path.suffix.lower() in PREDICT_SUFFIXES or (not path.suffix and is_dicom(path)):
            yield path
        else:
            suffixes = " ".join(sorted(PREDICT_SUFFIXES))
            reason = f"not an image suffix ({path.suffix or 'no suffix'}; taken: {suffixes})"
            yield ImageResult(str(path), "skipped", message=reason)
