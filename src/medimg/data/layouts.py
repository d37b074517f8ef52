"""Where the images and their labels are inside a downloaded dataset.

A layout names the folders that hold each source split; inside a split
folder there is one folder per class (the names in DatasetConfig.classes)
holding the images. The layout root is found by searching the tree, so the
archive's top folder may have any name, or none.

The functions here work on `/`-separated relative file paths (a zip's member
names or a folder's listing), so they touch no file system.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from medimg.data.errors import FetchError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
# Deep enough for `<download>/<repo>-master/<dataset>/Training`, shallow enough to
# stop a search through a large unrelated tree.
MAX_ROOT_DEPTH = 4
# Folders and files that macOS adds to archives; they are never data.
_MACOS_FOLDER = "__MACOSX"
_MACOS_FILE = ".DS_Store"
_MACOS_FORK_PREFIX = "._"

_PATIENT_PATTERNS = (
    # PNEUMONIA: person1_bacteria_1.jpeg, person1_virus_6.jpeg, person447_virus_921_1.jpeg
    re.compile(r"(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)?"),
    # NORMAL: NORMAL2-IM-1427-0001.jpeg, NORMAL2-IM-0173-0001-0002.jpeg
    re.compile(r"(NORMAL2-IM-\d+)-\d+(?:-\d+)?"),
    # NORMAL: IM-0115-0001.jpeg, IM-0011-0001-0002.jpeg
    re.compile(r"(IM-\d+)-\d+(?:-\d+)?"),
)


def patient_id(filename: str) -> str:
    """The patient a chest X-ray file name belongs to, e.g. `person1_virus_6.jpeg` -> `person1`.

    Raises ValueError naming the file when the name follows none of the
    release's patterns: guessing a group would silently allow patient leakage.
    """
    path = PurePosixPath(filename)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        for pattern in _PATIENT_PATTERNS:
            match = pattern.fullmatch(path.stem)
            if match:
                return match.group(1)
    raise ValueError(
        f"{filename!r}: cannot parse a patient id; expected person<ID>_bacteria_<N>.jpeg, "
        "person<ID>_virus_<N>.jpeg, IM-<ID>-<N>.jpeg or NORMAL2-IM-<ID>-<N>.jpeg"
    )


# The last run of digits of a file name's stem and what surrounds it: "gg (542)" ->
# ("gg (", "542", ")").
_LAST_NUMBER = re.compile(r"(?P<head>.*?)(?P<number>\d+)(?P<tail>\D*)")


def numbered_name(filename: str) -> tuple[str, int] | None:
    """A file name's series and number: the name with its last number replaced by `#`.

    `gg (542).jpg` -> ("gg (#).jpg", 542), `m1(28).jpg` -> ("m1(#).jpg", 28), `12.jpg` ->
    ("#.jpg", 12); None for a name without digits (`image.jpg`). The MRI release numbers
    the images of each class folder in order, so that n and n + 1 of one series are
    often adjacent slices of one scan (docs/data.md).
    """
    path = PurePosixPath(filename)
    match = _LAST_NUMBER.fullmatch(path.stem)
    if match is None:
        return None
    return f"{match['head']}#{match['tail']}{path.suffix}", int(match["number"])


def first_16_hex_of_sha256(filename: str, sha256: str) -> str:
    """MRI group id: byte-identical files share it (the file name carries no patient)."""
    return sha256[:16]


def chest_xray_group_id(filename: str, sha256: str) -> str:
    return patient_id(filename)


@dataclass(frozen=True)
class Layout:
    """How one public dataset release is laid out."""

    name: str
    split_folders: dict[str, str]  # folder name -> source split (train, val, test)
    required_folders: frozenset[str]
    group_id: Callable[[str, str], str]  # (file name, sha256) -> group id
    example: str  # shown in error messages


LAYOUTS: dict[str, Layout] = {
    "chest_xray": Layout(
        name="chest_xray",
        split_folders={"train": "train", "val": "val", "test": "test"},
        required_folders=frozenset({"train", "test"}),
        group_id=chest_xray_group_id,
        example=".../chest_xray/{train,val,test}/<class>/*.jpeg (val optional)",
    ),
    "mri": Layout(
        name="mri",
        split_folders={"Training": "train", "Testing": "test"},
        required_folders=frozenset({"Training", "Testing"}),
        group_id=first_16_hex_of_sha256,
        example=".../{Training,Testing}/<class>/*.jpg",
    ),
}


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise FetchError(f"unknown layout {name!r}; known layouts: {sorted(LAYOUTS)}")
    return LAYOUTS[name]


@dataclass(frozen=True)
class LayoutEntry:
    """A file inside a class folder of a split folder: an image, if it decodes."""

    source: str  # relative path in the archive or folder
    source_split: str
    label: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.source).name

    @property
    def target(self) -> str:
        """Path in the normalised layout: images/<source_split>/<label>/<filename>."""
        return f"images/{self.source_split}/{self.label}/{self.filename}"


@dataclass
class LayoutMatch:
    root: str  # the folder holding the split folders; "" = the top of the tree
    entries: list[LayoutEntry]
    misplaced: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: list[dict[str, object]] = field(default_factory=list)  # {"path", "files", "reason"}


def _macos_metadata_prefix(path: str) -> str | None:
    """The leading part of `path` up to its first macOS metadata component, or None."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part in (_MACOS_FOLDER, _MACOS_FILE):
            return "/".join(parts[: i + 1])
        if part.startswith(_MACOS_FORK_PREFIX):
            # One entry per folder, not per file: a copy may hold one for every image.
            return "/".join([*parts[:i], _MACOS_FORK_PREFIX + "*"])
    return None


def _describe_tree(files: Sequence[str], levels: int = 3, limit: int = 25) -> str:
    folders = Counter(
        "/".join(parts[:depth]) + "/"
        for parts in (f.split("/") for f in files)
        for depth in range(1, min(levels, len(parts) - 1) + 1)
    )
    if not folders:
        return "  (no folders; files: " + ", ".join(sorted(files)[:10]) + ")"
    shown = sorted(folders)[:limit]
    more = f"\n  ... and {len(folders) - limit} more folders" if len(folders) > limit else ""
    return "\n".join(f"  {name} (files: {folders[name]})" for name in shown) + more


def _find_root(files: Sequence[str], layout: Layout) -> str:
    """The shallowest folder whose children include all required split folders."""
    children: dict[str, set[str]] = {}
    for f in files:
        parts = f.split("/")
        for depth in range(min(len(parts) - 1, MAX_ROOT_DEPTH + 1)):
            children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    candidates = [d for d, kids in children.items() if layout.required_folders <= kids]
    if not candidates:
        raise FetchError(
            f"no {layout.name!r} layout found: expected {layout.example}, i.e. a folder "
            f"(at most {MAX_ROOT_DEPTH} levels deep) holding {sorted(layout.required_folders)}. "
            f"Found:\n{_describe_tree(files)}"
        )

    def depth(folder: str) -> int:
        return 0 if folder == "" else folder.count("/") + 1

    shallowest = min(depth(c) for c in candidates)
    roots = sorted(c for c in candidates if depth(c) == shallowest)
    if len(roots) > 1:
        raise FetchError(
            f"ambiguous {layout.name!r} layout: several folders hold "
            f"{sorted(layout.required_folders)}: {roots}; expected exactly one"
        )
    return roots[0]


def match_layout(files: Iterable[str], layout: str, classes: Sequence[str]) -> LayoutMatch:
    """Assign each file under the layout root to its source split and class.

    Args:
        files: relative `/`-separated file paths (folders left out).
        layout: a key of LAYOUTS.
        classes: the class folder names (DatasetConfig.classes).

    macOS metadata (`__MACOSX`, `.DS_Store`, `._*`) and everything outside the
    root's split folders (e.g. the nested duplicate `chest_xray/chest_xray/`)
    are ignored and listed in `ignored`, grouped by top folder. A file inside a
    split folder but not directly inside one of its class folders is
    `misplaced`. A folder in a split folder that is not a class is an error.
    """
    spec = get_layout(layout)
    kept: list[str] = []
    ignored: Counter[tuple[str, str]] = Counter()
    for f in sorted(files):
        macos_prefix = _macos_metadata_prefix(f)
        if macos_prefix is None:
            kept.append(f)
        else:
            ignored[(macos_prefix, "macOS metadata")] += 1
    root = _find_root(kept, spec)
    prefix = f"{root}/" if root else ""

    entries: list[LayoutEntry] = []
    misplaced: list[tuple[str, str]] = []
    unknown_folders: set[str] = set()
    for f in kept:
        rest = f[len(prefix) :].split("/") if f.startswith(prefix) else None
        if rest is None or rest[0] not in spec.split_folders or len(rest) == 1:
            # Outside the split folders: group by the folder right under the root.
            top = prefix + rest[0] if rest is not None and len(rest) > 1 else f
            ignored[(top, "outside the layout's split folders")] += 1
            continue
        split_folder = prefix + rest[0]
        if len(rest) == 2:
            misplaced.append((f, f"not inside a class folder of {split_folder}/"))
        elif rest[1] not in classes:
            unknown_folders.add(f"{split_folder}/{rest[1]}/")
        elif len(rest) > 3:
            misplaced.append((f, f"in a subfolder of {split_folder}/{rest[1]}/"))
        else:
            entries.append(LayoutEntry(f, spec.split_folders[rest[0]], rest[1]))
    if unknown_folders:
        raise FetchError(
            f"unexpected class folders {sorted(unknown_folders)}; expected only the "
            f"configured classes {list(classes)} inside each split folder"
        )
    if not entries:
        raise FetchError(
            f"no files found in the class folders {list(classes)} under {root or '.'}/"
        )
    return LayoutMatch(
        root=root,
        entries=entries,
        misplaced=misplaced,
        ignored=[
            {"path": path, "files": n, "reason": reason}
            for (path, reason), n in sorted(ignored.items())
        ],
    )
