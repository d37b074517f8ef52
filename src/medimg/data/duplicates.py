"""Duplicate and near-duplicate detection: which images must stay on one side of a split.

Two images leak into each other when they show the same patient (same `group_id`), are
byte-identical (same `sha256`) or are near-duplicates: re-encoded or rescaled copies,
found by the Hamming distance between their 64-bit perceptual hashes (`phash`, 16 hex
characters as written by `imagehash.phash(image, hash_size=8)`).

Optionally, neighbours too: images a wider phash distance apart (adjacent slices of one
scan, re-cropped copies) whose 256-bit difference hashes (`dhash` of the whole image,
`content_dhash` of its non-black content; 64 hex characters each) are also close. Two
measures must agree because at that phash distance unrelated scans are common; the
thresholds are measured in docs/data.md.

Optionally, consecutive files: in one folder, names numbered n and n + 1 in one series
(`gg (542).jpg`, `gg (543).jpg`, see `medimg.data.layouts.numbered_name`) whose difference
hashes are within a looser distance than the neighbours'. The MRI release numbers each
class folder's images in order, so that such files are mostly adjacent slices of one
scan; the similarity test keeps apart the pairs that straddle two scans.

`leak_groups` joins these relations transitively into connected components; a
leakage-free split keeps every component on one side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medimg.data.layouts import numbered_name

PHASH_HEX_CHARS = 16  # imagehash.phash with hash_size=8 gives 64 bits
DHASH_HEX_CHARS = 64  # imagehash.dhash with hash_size=16 gives 256 bits

# Elements of the (rows x columns) XOR block compared at once: 8 Mi uint64 = 64 MiB,
# so memory stays bounded whatever the number of images.
_BLOCK_ELEMENTS = 8 * 1024 * 1024

LEAK_GROUP_COLUMNS = ("group_id", "sha256", "phash")
_NO_EDGES = np.zeros((0, 2), dtype=np.int64)
NEIGHBOUR_COLUMNS = ("dhash", "content_dhash")


def _hex_to_words(hashes: Sequence[str], hex_chars: int, column: str, source: str) -> np.ndarray:
    """Parse hex hashes of `hex_chars` characters into uint64 words, shape (N, hex_chars/16).

    `column` and `source` (how the hash is made) name the hash in the error message.
    """
    hashes = list(hashes)
    pattern = re.compile(f"[0-9a-fA-F]{{{hex_chars}}}")
    for index, value in enumerate(hashes):
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(
                f"{column} at position {index} is {value!r}; expected {hex_chars} hex "
                f"characters ({source})"
            )
    words_per_hash = hex_chars // 16
    if not hashes:
        return np.zeros((0, words_per_hash), dtype=np.uint64)
    # One bytes.fromhex over the joined string parses all hashes at once (big-endian
    # 8-byte words, the bit order imagehash prints).
    words = np.frombuffer(bytes.fromhex("".join(hashes)), dtype=">u8")
    return words.astype(np.uint64).reshape(len(hashes), words_per_hash)


def phash_to_uint64(phashes: Sequence[str]) -> np.ndarray:
    """Parse 16-hex-character perceptual hashes into a uint64 array of shape (N,)."""
    source = "imagehash.phash with hash_size=8"
    return _hex_to_words(phashes, PHASH_HEX_CHARS, "phash", source)[:, 0]


def dhash_to_words(dhashes: Sequence[str], column: str = "dhash") -> np.ndarray:
    """Parse 64-hex-character difference hashes into uint64 words of shape (N, 4)."""
    source = "imagehash.dhash with hash_size=16"
    return _hex_to_words(dhashes, DHASH_HEX_CHARS, column, source)


def pair_distances(words: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Hamming distance of each pair (i, j) of `pairs` (K, 2) between rows of `words` (N, W).

    Returns an int64 array of shape (K,).
    """
    xor = words[pairs[:, 0]] ^ words[pairs[:, 1]]
    return np.bitwise_count(xor).sum(axis=1, dtype=np.int64)


def _hamming(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Hamming distances (uint8, shape (len(rows), len(columns))) between uint64 hashes."""
    return np.bitwise_count(rows[:, None] ^ columns[None, :])


def phash_distances(phashes_a: Sequence[str], phashes_b: Sequence[str]) -> np.ndarray:
    """Hamming distance between every hash of `phashes_a` and every hash of `phashes_b`.

    Returns a uint8 array of shape (len(phashes_a), len(phashes_b)), values 0..64. Builds
    the full matrix: for all pairs within one large set use `near_duplicate_pairs`.
    """
    return _hamming(phash_to_uint64(phashes_a), phash_to_uint64(phashes_b))


def near_duplicate_pairs(phashes: Sequence[str], max_distance: int) -> np.ndarray:
    """Index pairs (i, j), i < j, whose phash Hamming distance is <= `max_distance`.

    Returns an int64 array of shape (K, 2) sorted by i then j. Compares the upper
    triangle block by block, so memory stays near 64 MiB for any N (6,000 images: about
    18 million comparisons).
    """
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be in 0..64 (bits of a phash), got {max_distance}")
    values = phash_to_uint64(phashes)
    n = len(values)
    block_rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    found: list[np.ndarray] = []
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        distances = _hamming(values[start:stop], values[start:])  # columns start at `start`
        close = distances <= max_distance
        # Keep j > i only: column c is image start + c, row r is image start + r.
        close &= np.arange(n - start)[None, :] > np.arange(stop - start)[:, None]
        rows, columns = np.nonzero(close)  # row-major order: sorted by i, then j
        found.append(np.stack([rows + start, columns + start], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(found).astype(np.int64)


def neighbour_pairs(
    manifest: pd.DataFrame, max_phash_distance: int, max_dhash_distance: int
) -> np.ndarray:
    """Index pairs (i, j), i < j, of near neighbours: similar images that are not copies.

    A pair qualifies when its `phash` distance is <= `max_phash_distance` and the distance
    of its `dhash` or of its `content_dhash` (256 bits each) is <= `max_dhash_distance`.
    Returns an int64 array of shape (K, 2) sorted by i then j.
    """
    _check_dhash_distance(max_dhash_distance)
    candidates = near_duplicate_pairs(manifest["phash"].tolist(), max_phash_distance)
    return candidates[_dhash_distances(manifest, candidates) <= max_dhash_distance]


def consecutive_pairs(manifest: pd.DataFrame, max_dhash_distance: int) -> np.ndarray:
    """Index pairs (i, j), i < j, of consecutively numbered files of one folder that look alike.

    A pair qualifies when the two `path`s share their folder and the series of their
    names and are numbered n and n + 1 (`numbered_name`: `images/train/glioma_tumor/gg
    (542).jpg` and `.../gg (543).jpg`), and the distance of their `dhash` or of their
    `content_dhash` is <= `max_dhash_distance`. Returns an int64 array of shape (K, 2)
    sorted by i then j.
    """
    _check_dhash_distance(max_dhash_distance)
    numbered = []
    for row, path in enumerate(manifest["path"].astype(str)):
        folder, _, name = path.rpartition("/")
        series_and_number = numbered_name(name)
        if series_and_number is not None:
            numbered.append((folder, *series_and_number, row))
    files = pd.DataFrame(numbered, columns=["folder", "series", "number", "row"])
    files = files.astype({"number": np.int64, "row": np.int64})
    following = files.assign(number=files["number"] - 1)  # n + 1, keyed by n
    matched = files.merge(following, on=["folder", "series", "number"], suffixes=("", "_next"))
    pairs = np.sort(matched[["row", "row_next"]].to_numpy(dtype=np.int64), axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return pairs[_dhash_distances(manifest, pairs) <= max_dhash_distance]


def _check_dhash_distance(max_dhash_distance: int) -> None:
    if not 0 <= max_dhash_distance <= 256:
        raise ValueError(
            f"max_dhash_distance must be in 0..256 (bits of a dhash), got {max_dhash_distance}"
        )


def _dhash_distances(manifest: pd.DataFrame, pairs: np.ndarray) -> np.ndarray:
    """Per pair (K, 2) of rows, the smaller of the `dhash` and `content_dhash` distances."""
    whole, content = (
        pair_distances(dhash_to_words(manifest[column].tolist(), column), pairs)
        for column in NEIGHBOUR_COLUMNS
    )
    return np.minimum(whole, content)


def _same_value_edges(values: pd.Series) -> np.ndarray:
    """Edges (K, 2) joining each row to the first row holding the same value."""
    codes, _ = pd.factorize(values, sort=False)
    first_row_of_code = np.full(codes.max() + 1 if len(codes) else 0, -1, dtype=np.int64)
    # Reversed assignment leaves, for each code, its first (lowest) row index.
    first_row_of_code[codes[::-1]] = np.arange(len(codes))[::-1]
    rows = np.arange(len(codes))
    anchors = first_row_of_code[codes]
    keep = rows != anchors
    return np.stack([rows[keep], anchors[keep]], axis=1)


def leak_groups(
    manifest: pd.DataFrame,
    max_distance: int,
    neighbours: tuple[int, int] | None = None,
    consecutive: int | None = None,
) -> np.ndarray:
    """Connected components of 'may leak into each other' over the manifest's rows.

    Two rows are joined when they share `group_id`, share `sha256`, their `phash`
    Hamming distance is <= `max_distance`, with `neighbours` = (max phash distance,
    max dhash distance) when they are `neighbour_pairs`, or with `consecutive` = max
    dhash distance when they are `consecutive_pairs`. Returns an int64 array of shape
    (N,), in row order: components are numbered 0, 1, ... in order of their first row, so
    the same manifest (in the same row order) always gives the same numbers.
    """
    with_dhash = neighbours is not None or consecutive is not None
    needed = [*LEAK_GROUP_COLUMNS, *(NEIGHBOUR_COLUMNS if with_dhash else ())]
    needed += ["path"] if consecutive is not None else []
    missing = [c for c in needed if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"manifest lacks column(s) {missing} needed for leak groups; "
            f"has {list(manifest.columns)}"
        )
    for column in ("group_id", "sha256"):
        empty = manifest[column].isna() | (manifest[column].astype(str) == "")
        if empty.any():
            where = manifest.loc[empty, "path"] if "path" in manifest else manifest.index[empty]
            raise ValueError(
                f"manifest column {column!r} is empty for {int(empty.sum())} row(s), "
                f"e.g. {list(where[:3])}; every image needs one"
            )
    n = len(manifest)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.concatenate(
        [
            _same_value_edges(manifest["group_id"]),
            _same_value_edges(manifest["sha256"]),
            near_duplicate_pairs(manifest["phash"].tolist(), max_distance),
            neighbour_pairs(manifest, *neighbours) if neighbours is not None else _NO_EDGES,
            consecutive_pairs(manifest, consecutive) if consecutive is not None else _NO_EDGES,
        ]
    )
    graph = coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n)
    )
    _, labels = connected_components(graph, directed=False)
    # scipy does not document its numbering; renumber by first row to make it a contract.
    renumbered, _ = pd.factorize(labels, sort=False)
    return renumbered.astype(np.int64)
