"""Tests for medimg.data.duplicates: phash distances, near-duplicate pairs, leak groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import gaussian_filter

from medimg.data import duplicates
from medimg.data.duplicates import (
    consecutive_pairs,
    dhash_to_words,
    leak_groups,
    near_duplicate_pairs,
    neighbour_pairs,
    pair_distances,
    phash_distances,
    phash_to_uint64,
)

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)


def as_hex(value: int) -> str:
    return f"{value:016x}"


def brute_force_pairs(hashes: list[int], max_distance: int) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(hashes[i] ^ hashes[j]).count("1") <= max_distance
    ]


@st.composite
def clustered_hashes(draw: st.DrawFn) -> list[int]:
    """Random 64-bit hashes, some derived from others by flipping a few bits.

    Independent random hashes are about 32 bits apart, so without the derived ones
    nearly every test would find no pair at all.
    """
    hashes = draw(st.lists(UINT64, min_size=0, max_size=40))
    for _ in range(draw(st.integers(0, 20)) if hashes else 0):
        base = draw(st.sampled_from(hashes))
        bits = draw(st.lists(st.integers(0, 63), max_size=8))
        for bit in bits:
            base ^= 1 << bit
        hashes.append(base)
    return hashes


@settings(max_examples=60, deadline=None)
@given(hashes=clustered_hashes(), max_distance=st.integers(0, 64))
def test_near_duplicate_pairs_match_brute_force(hashes: list[int], max_distance: int) -> None:
    pairs = near_duplicate_pairs([as_hex(h) for h in hashes], max_distance)
    assert pairs.shape == (len(pairs), 2)
    assert [tuple(p) for p in pairs.tolist()] == brute_force_pairs(hashes, max_distance)


@settings(max_examples=30, deadline=None)
@given(hashes=clustered_hashes(), max_distance=st.integers(0, 12))
def test_near_duplicate_pairs_across_many_blocks(hashes: list[int], max_distance: int) -> None:
    # A tiny block forces every block-boundary case that 6,000 real images would hit.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(duplicates, "_BLOCK_ELEMENTS", 7)
        pairs = near_duplicate_pairs([as_hex(h) for h in hashes], max_distance)
    assert [tuple(p) for p in pairs.tolist()] == brute_force_pairs(hashes, max_distance)


def test_phash_distances_against_python_popcount() -> None:
    rng = np.random.default_rng(0)
    a = [int(x) for x in rng.integers(0, 2**63, size=5, dtype=np.int64)]
    b = [int(x) for x in rng.integers(0, 2**63, size=7, dtype=np.int64)] + [2**64 - 1]
    distances = phash_distances([as_hex(x) for x in a], [as_hex(x) for x in b])
    assert distances.shape == (5, 8)
    expected = [[bin(x ^ y).count("1") for y in b] for x in a]
    assert distances.tolist() == expected


def test_phash_parsing_keeps_imagehash_bit_order() -> None:
    # imagehash prints the first hash bit as the most significant hex digit.
    assert phash_to_uint64(["8000000000000001", "00000000000000ff"]).tolist() == [
        2**63 + 1,
        255,
    ]


@pytest.mark.parametrize("bad", ["abc", "zzzzzzzzzzzzzzzz", "0123456789abcdef0", None])
def test_invalid_phash_names_position_and_value(bad: object) -> None:
    with pytest.raises(ValueError, match=r"position 1 .*16 hex"):
        phash_to_uint64(["0123456789abcdef", bad])  # type: ignore[list-item]


def manifest(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(len(rows))],
            "group_id": [r[0] for r in rows],
            "sha256": [r[1] for r in rows],
            "phash": [r[2] for r in rows],
        }
    )


FAR = ["0000000000000000", "ffffffffffffffff", "00000000ffffffff", "ffffffff00000000"]


def test_leak_groups_join_patients_identical_files_and_near_duplicates() -> None:
    rows = [
        ("p1", "s1", FAR[0]),  # 0 same patient as 1
        ("p1", "s2", FAR[1]),  # 1
        ("p2", "s3", FAR[2]),  # 2 byte-identical to 3
        ("p3", "s3", FAR[2]),  # 3
        ("p4", "s5", "0f0f0f0f0f0f0f0f"),  # 4 three bits from 5
        ("p5", "s6", "0f0f0f0f0f0f0f08"),  # 5
        ("p6", "s7", FAR[3]),  # 6 alone
    ]
    assert leak_groups(manifest(rows), max_distance=3).tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert leak_groups(manifest(rows), max_distance=2).tolist() == [0, 0, 1, 1, 2, 3, 4]


def test_leak_groups_are_transitive_and_numbered_by_first_row() -> None:
    rows = [
        ("solo", "a", FAR[3]),  # 0 alone: first component
        ("p1", "b", FAR[0]),  # 1 patient p1 ...
        ("p9", "c", FAR[1]),  # 2 alone
        ("p1", "d", FAR[2]),  # 3 ... p1 again, and byte-identical to 4
        ("p2", "d", "0000000000000001"),  # 4 ... whose phash is 1 bit from row 1
    ]
    assert leak_groups(manifest(rows), max_distance=0).tolist() == [0, 1, 2, 1, 1]


def test_leak_groups_reject_empty_group_id() -> None:
    rows = manifest([("p1", "a", FAR[0]), ("", "b", FAR[1])])
    with pytest.raises(ValueError, match=r"group_id.*img1.png"):
        leak_groups(rows, max_distance=4)


def test_leak_groups_name_missing_columns() -> None:
    with pytest.raises(ValueError, match=r"\['sha256'\]"):
        leak_groups(manifest([("p", "a", FAR[0])]).drop(columns="sha256"), max_distance=4)


def test_dhash_words_keep_imagehash_bit_order_and_distances_count_bits() -> None:
    # 64 hex characters = four big-endian 64-bit words, first hex digit most significant.
    words = dhash_to_words(["8" + "0" * 62 + "1", "0" * 63 + "3", "f" * 64])
    assert words.shape == (3, 4)
    assert words[0].tolist() == [2**63, 0, 0, 1]
    pairs = np.array([[0, 1], [0, 2], [1, 2], [1, 1]])
    # 0 vs 1: the top bit and bit 1 differ; 0 vs 2: 256 - 2; 1 vs 2: 256 - 2; itself: 0.
    assert pair_distances(words, pairs).tolist() == [2, 254, 254, 0]


def test_invalid_dhash_names_column_position_and_value() -> None:
    with pytest.raises(ValueError, match=r"content_dhash at position 0 .*64 hex"):
        dhash_to_words(["0123456789abcdef"], "content_dhash")


def neighbour_manifest(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(phash, dhash, content_dhash) per image, each image its own patient and bytes."""
    return pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(len(rows))],
            "group_id": [f"p{i}" for i in range(len(rows))],
            "sha256": [f"s{i}" for i in range(len(rows))],
            "phash": [r[0] for r in rows],
            "dhash": [r[1] for r in rows],
            "content_dhash": [r[2] for r in rows],
        }
    )


ZEROS, ONES = "0" * 64, "f" * 64


def ones(bits: int) -> str:
    """A dhash with its lowest `bits` bits set: `bits` away from ZEROS."""
    return f"{(1 << bits) - 1:064x}"


def test_neighbour_pairs_need_both_a_close_phash_and_a_close_dhash() -> None:
    rows = [
        ("0000000000000000", ZEROS, ZEROS),  # 0
        ("000000000000003f", ones(30), ONES),  # 1: phash 6 from 0, dhash 30 from 0
        ("000000000000003f", ONES, ones(31)),  # 2: phash 6 from 0, content dhash 31 from 0
        ("0000000000fff000", ZEROS, ZEROS),  # 3: phash 12 from 0 (18 from 1, 2), dhashes 0's
        ("ffffffffffffffff", ZEROS, ZEROS),  # 4: dhashes equal to 0's, phash 64 away
    ]
    frame = neighbour_manifest(rows)
    # phash <= 8: pairs (0,1), (0,2), (1,2) are candidates. (0,1): dhash 30; (0,2): content
    # dhash 31; (1,2): dhash 226, content dhash 225.
    assert neighbour_pairs(frame, 8, 30).tolist() == [[0, 1]]
    assert neighbour_pairs(frame, 8, 31).tolist() == [[0, 1], [0, 2]]
    # phash <= 12 adds the candidate (0,3), whose dhashes are equal.
    assert neighbour_pairs(frame, 12, 31).tolist() == [[0, 1], [0, 2], [0, 3]]
    assert neighbour_pairs(frame, 12, 29).tolist() == [[0, 3]]


def test_leak_groups_join_neighbours_only_when_asked() -> None:
    rows = [
        ("0000000000000000", ZEROS, ONES),  # 0
        ("ffffffffffffffff", ONES, ONES),  # 1 alone
        ("000000000000003f", ones(20), ones(200)),  # 2: neighbour of 0 (phash 6, dhash 20)
    ]
    frame = neighbour_manifest(rows)
    assert leak_groups(frame, max_distance=4).tolist() == [0, 1, 2]
    assert leak_groups(frame, max_distance=4, neighbours=(8, 20)).tolist() == [0, 1, 0]
    assert leak_groups(frame, max_distance=4, neighbours=(8, 19)).tolist() == [0, 1, 2]
    # Without the dhash columns: fine when not asked for, a named error when asked for.
    assert leak_groups(frame.drop(columns="dhash"), max_distance=4).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"\['dhash'\]"):
        leak_groups(frame.drop(columns="dhash"), max_distance=4, neighbours=(8, 20))


# ------------------------------------------------------------------ consecutive files

# Each scan a smooth random texture inside an ellipse of its own shape, as brains differ.
SCAN_SHAPES = {1: (0.42, 0.48), 2: (0.30, 0.40), 3: (0.46, 0.32)}


def scan_slice(scan: int, shift: int, size: int = 64) -> np.ndarray:
    """uint8 (size, size): slice `shift` of `scan`; slices a pixel or two apart look alike."""
    texture = np.random.default_rng(scan).normal(size=(size, size + 8))
    texture = gaussian_filter(texture, 3)[:, shift : shift + size]
    y, x = np.mgrid[0:size, 0:size] - size / 2
    rx, ry = SCAN_SHAPES[scan]
    inside = (x / (size * rx)) ** 2 + (y / (size * ry)) ** 2 <= 1
    return np.where(inside, 128 + texture / texture.std() * 50, 0).clip(0, 255).astype(np.uint8)


# manifest path -> (scan, shift). gg (1)-(3): three adjacent slices; gg (4): the next
# number but another scan; gg (12), gg (14): alike, not consecutive; m (5): the number
# after gg (4) and alike, another series; Testing's gg (5): the same in another folder.
SLICE_FILES = {
    "images/train/glioma_tumor/gg (1).png": (1, 0),
    "images/train/glioma_tumor/gg (2).png": (1, 2),
    "images/train/glioma_tumor/gg (3).png": (1, 4),
    "images/train/glioma_tumor/gg (4).png": (2, 0),
    "images/train/glioma_tumor/gg (12).png": (3, 0),
    "images/train/glioma_tumor/gg (14).png": (3, 2),
    "images/train/glioma_tumor/m (5).png": (2, 2),
    "images/test/glioma_tumor/gg (5).png": (2, 1),
}


def real_slices_manifest(folder: Path) -> pd.DataFrame:
    """SLICE_FILES written as PNGs and described by the fetch stage's inspect_image."""
    from medimg.data.images import inspect_image

    rows = []
    for path, (scan, shift) in sorted(SLICE_FILES.items()):
        file = folder / path
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scan_slice(scan, shift)).save(file)
        info = inspect_image(file)
        rows.append(
            {
                "path": path,
                "group_id": file.name,
                "sha256": file.name,
                "phash": info.phash,
                "dhash": info.dhash,
                "content_dhash": info.content_dhash,
            }
        )
    return pd.DataFrame(rows)


def dhash_distance(frame: pd.DataFrame, a: str, b: str) -> int:
    """The smaller of the whole-image and content dhash distances of two manifest paths."""
    index = {path: k for k, path in enumerate(frame["path"])}
    pair = np.array([[index[a], index[b]]])
    return min(
        int(pair_distances(dhash_to_words(frame[column].tolist(), column), pair)[0])
        for column in ("dhash", "content_dhash")
    )


def test_consecutive_files_of_one_series_and_folder_join_when_alike(tmp_path: Path) -> None:
    frame = real_slices_manifest(tmp_path)
    paths = frame["path"].tolist()
    train, test = "images/train/glioma_tumor/", "images/test/glioma_tumor/"
    adjacent = [
        (train + "gg (1).png", train + "gg (2).png"),
        (train + "gg (2).png", train + "gg (3).png"),
    ]
    threshold = max(dhash_distance(frame, a, b) for a, b in adjacent)
    # The fixture does what it says: the next scan differs by more than the slices do; the
    # pairs kept apart by their numbers, series or folders are as alike as the slices.
    assert dhash_distance(frame, train + "gg (3).png", train + "gg (4).png") > threshold
    for a, b in [
        (train + "gg (12).png", train + "gg (14).png"),
        (train + "gg (4).png", train + "m (5).png"),
        (train + "gg (4).png", test + "gg (5).png"),
    ]:
        assert dhash_distance(frame, a, b) <= threshold, (a, b)

    pairs = consecutive_pairs(frame, threshold).tolist()
    assert sorted((paths[i], paths[j]) for i, j in pairs) == sorted(adjacent)
    # One bit stricter than the less alike of the two: that link goes.
    assert len(consecutive_pairs(frame, threshold - 1)) == 1

    groups = leak_groups(frame, max_distance=0, consecutive=threshold)
    by_path = dict(zip(paths, groups.tolist(), strict=True))
    assert by_path[train + "gg (1).png"] == by_path[train + "gg (2).png"]
    assert by_path[train + "gg (2).png"] == by_path[train + "gg (3).png"]
    assert len(set(by_path.values())) == len(paths) - 2  # nothing else joined
    assert len(set(leak_groups(frame, max_distance=0).tolist())) == len(paths)  # off


def test_consecutive_pairs_need_the_path_and_dhash_columns() -> None:
    frame = neighbour_manifest([("0000000000000000", ZEROS, ZEROS)] * 2)
    assert consecutive_pairs(frame, 0).tolist() == [[0, 1]]  # img0.png, img1.png
    with pytest.raises(ValueError, match=r"\['path'\]"):
        leak_groups(frame.drop(columns="path"), max_distance=4, consecutive=10)
    with pytest.raises(ValueError, match=r"0\.\.256"):
        consecutive_pairs(frame, 257)
