"""Tests for medimg.data.split: protocols, leak checks, report, determinism, errors."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medimg.config.datasets import DatasetConfig, SplitConfig
from medimg.data.split import (
    MANIFEST_COLUMNS,
    SplitError,
    add_leak_groups,
    assign_splits,
    neighbour_rule,
    split_dataset,
)

XRAY_CLASSES = ["NORMAL", "PNEUMONIA"]
MAX_DISTANCE = 4


def dataset_config(
    protocol: str | list[str], layout: str = "chest_xray", **split: object
) -> DatasetConfig:
    classes = XRAY_CLASSES if layout == "chest_xray" else ["a", "b", "c"]
    protocols = [protocol] if isinstance(protocol, str) else protocol
    return DatasetConfig(
        layout=layout,
        classes=classes,
        channels=1,
        fetch={"source": "unused.zip"},
        split={"protocols": protocols, "near_duplicate_max_distance": MAX_DISTANCE, **split},
        prepare={"image_size": 32},
    )


def run_split(name: str, cfg: DatasetConfig, raw: Path, dest: Path) -> dict:
    """split_dataset with one protocol: its report; its files are in dest/<protocol>/."""
    (protocol,) = cfg.split.protocols
    return split_dataset(name, cfg, raw, dest)[protocol]


def random_hash(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63, dtype=np.int64)) * 2 + int(rng.integers(0, 2))


def random_dhash(rng: np.random.Generator) -> str:
    """256 random bits, 64 hex characters: unrelated images are about 128 bits apart."""
    return rng.bytes(32).hex()


def make_manifest(
    seed: int,
    groups_per_class: int = 14,
    classes: list[str] = XRAY_CLASSES,
    source_test_share: float = 0.3,
    n_copies: int = 4,
    n_near: int = 4,
) -> pd.DataFrame:
    """A synthetic manifest: patients with 1-3 images, byte copies and near-duplicates.

    Copies and near-duplicates link images of the same class (as real duplicates are), in
    different patients and possibly in different source splits, so that the leak groups
    are larger than the patients.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for label, patient in itertools.product(classes, range(groups_per_class)):
        source = "test" if rng.random() < source_test_share else "train"
        for image in range(int(rng.integers(1, 4))):
            rows.append(
                {
                    "path": f"images/{source}/{label}/{label}-p{patient}-{image}.png",
                    "label": label,
                    "source_split": source,
                    "group_id": f"{label}-p{patient}",
                    "sha256": f"{rng.integers(0, 2**62):064x}",
                    "width": "64",
                    "height": "64",
                    "mode": "L",
                    "phash": f"{random_hash(rng):016x}",
                }
            )
    frame = pd.DataFrame(rows)
    for kind, count in (("copy", n_copies), ("near", n_near)):
        for k in range(count):
            original = frame.iloc[int(rng.integers(0, len(frame)))].to_dict()
            source = str(rng.choice(["train", "test"]))
            duplicate = dict(original, source_split=source, group_id=f"{kind}{k}")
            duplicate["path"] = f"images/{source}/{original['label']}/{kind}{k}.png"
            if kind == "near":  # a re-encoded copy: other bytes, phash a few bits away
                duplicate["sha256"] = f"{rng.integers(0, 2**62):064x}"
                flipped = int(original["phash"], 16) ^ (0b101 << int(rng.integers(0, 60)))
                duplicate["phash"] = f"{flipped:016x}"
            frame = pd.concat([frame, pd.DataFrame([duplicate])], ignore_index=True)
    return with_random_dhashes(frame.sort_values("path").reset_index(drop=True), seed)


def with_random_dhashes(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """`frame` with random dhash and content_dhash columns, in manifest column order.

    A generator of their own, so that the other columns stay what they were without them.
    """
    rng = np.random.default_rng([seed, 256])
    frame = frame.assign(
        dhash=[random_dhash(rng) for _ in range(len(frame))],
        content_dhash=[random_dhash(rng) for _ in range(len(frame))],
    )
    return frame[list(MANIFEST_COLUMNS)]


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def assert_no_leak(frame: pd.DataFrame, assignment: pd.Series) -> None:
    """Checked from the raw columns, independently of leak_groups."""
    for a, b in itertools.combinations(["train", "val", "test"], 2):
        side_a, side_b = frame[assignment == a], frame[assignment == b]
        assert not set(side_a["group_id"]) & set(side_b["group_id"]), (a, b)
        assert not set(side_a["sha256"]) & set(side_b["sha256"]), (a, b)
        closest = min((hamming(x, y) for x in side_a["phash"] for y in side_b["phash"]), default=64)
        assert closest > MAX_DISTANCE, (a, b, closest)


def write_manifest(tmp_path: Path, frame: pd.DataFrame) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    frame.to_csv(raw / "manifest.csv", index=False)
    return raw


@settings(max_examples=15, deadline=None)
@given(
    manifest_seed=st.integers(0, 10_000),
    split_seed=st.integers(0, 10_000),
    protocol=st.sampled_from(["official", "pooled"]),
)
def test_grouped_protocols_never_leak_and_ignore_row_order(
    manifest_seed: int, split_seed: int, protocol: str
) -> None:
    cfg = dataset_config(protocol, val_fraction=0.25, test_fraction=0.25, seed=split_seed).split
    # 24 patients per class: with 14, 1 of manifest seeds 0-499 (and seed 244) left official
    # fewer than the 4 train groups per class that val_fraction 0.25 needs.
    frame = add_leak_groups(make_manifest(manifest_seed, groups_per_class=24), MAX_DISTANCE)
    assignment = assign_splits(frame, cfg, "chest_xray", protocol)

    assert set(assignment) <= {"train", "val", "test", "excluded"}
    assert (assignment == "val").any() and (assignment == "train").any()
    assert_no_leak(frame, assignment)

    shuffled = frame.sample(frac=1.0, random_state=manifest_seed)
    again = assign_splits(shuffled, cfg, "chest_xray", protocol)
    by_path = dict(zip(frame["path"], assignment, strict=True))
    assert dict(zip(shuffled["path"], again, strict=True)) == by_path


@settings(max_examples=10, deadline=None)
@given(manifest_seed=st.integers(0, 10_000))
def test_official_keeps_source_test_set_intact(manifest_seed: int) -> None:
    # 24 patients per class, as above: the default 14 left seed 687 too few train groups.
    frame = add_leak_groups(make_manifest(manifest_seed, groups_per_class=24), MAX_DISTANCE)
    cfg = dataset_config("official", val_fraction=0.25).split
    assignment = assign_splits(frame, cfg, "mri", "official")
    is_source_test = frame["source_split"] == "test"
    assert (assignment[is_source_test] == "test").all()
    assert (assignment[~is_source_test] != "test").all()


def test_official_excludes_and_lists_train_images_leaking_into_test(tmp_path: Path) -> None:
    frame = make_manifest(seed=3, n_copies=0, n_near=0)
    test_patient = frame[frame["source_split"] == "test"].iloc[0]
    test_image = frame[frame["source_split"] == "test"].iloc[1]
    same_patient = dict(test_patient, source_split="train", path="images/train/x/same-patient.png")
    same_patient.update(sha256="1" * 64, phash="0123456789abcdef")
    same_bytes = dict(test_image, source_split="train", path="images/train/x/same-bytes.png")
    same_bytes["group_id"] = "another-patient"
    frame = pd.concat([frame, pd.DataFrame([same_patient, same_bytes])]).sort_values("path")
    dest = tmp_path / "splits"

    report = run_split(
        "chest",
        dataset_config("official", val_fraction=0.25),
        write_manifest(tmp_path, frame),
        dest,
    )
    dest = dest / "official"

    excluded = {e["path"]: e["reason"] for e in report["excluded"]}
    assert set(excluded) == {"images/train/x/same-patient.png", "images/train/x/same-bytes.png"}
    assert test_patient["group_id"] in excluded["images/train/x/same-patient.png"]
    assert "byte-identical" in excluded["images/train/x/same-bytes.png"]
    written = pd.concat(pd.read_csv(dest / f"{s}.csv", dtype=str) for s in ("train", "val", "test"))
    assert not set(excluded) & set(written["path"])
    assert len(written) == len(frame) - 2
    assert report["totals"]["test"] == int((frame["source_split"] == "test").sum())
    assert any("left out" in note for note in report["notes"])


def thesis_xray_manifest() -> pd.DataFrame:
    """5,216 source-train images (1,341 NORMAL, 3,875 PNEUMONIA; 1-4 per patient) + 624 test."""
    rng = np.random.default_rng(7)
    rows = []
    for source, counts in (("train", (1341, 3875)), ("test", (234, 390))):
        for label, count in zip(XRAY_CLASSES, counts, strict=True):
            patient, left = 0, count
            while left:
                images = min(left, int(rng.integers(1, 5)))
                for k in range(images):
                    name = f"{source}-{label}-patient{patient}"
                    rows.append((f"images/{source}/{label}/{name}-{k}.jpeg", label, source, name))
                patient, left = patient + 1, left - images
    frame = pd.DataFrame(rows, columns=["path", "label", "source_split", "group_id"])
    frame["sha256"] = [f"{i:064x}" for i in range(len(frame))]
    frame["width"], frame["height"], frame["mode"] = "224", "224", "RGB"
    frame["phash"] = [f"{random_hash(rng):016x}" for _ in range(len(frame))]
    return with_random_dhashes(frame.sort_values("path"), seed=7)


def test_thesis_xray_splits_80_20_and_uses_official_test_as_val(tmp_path: Path) -> None:
    frame = thesis_xray_manifest()
    dest = tmp_path / "splits"

    report = run_split("chest", dataset_config("thesis"), write_manifest(tmp_path, frame), dest)
    dest = dest / "thesis"

    # sklearn's train_test_split rounds the test share up: ceil(0.2 * 5216) = 1044.
    assert report["totals"] == {"train": 5216 - 1044, "val": 624, "test": math.ceil(0.2 * 5216)}
    val = pd.read_csv(dest / "val.csv", dtype=str)
    assert set(val["path"]) == set(frame.loc[frame["source_split"] == "test", "path"])
    # stratified: the test split keeps the pool's PNEUMONIA share (3875/5216) within 1 image
    assert abs(report["counts"]["test"]["PNEUMONIA"] - 1044 * 3875 / 5216) <= 1
    assert report["leaky"] is True
    assert report["patient_overlap"]["train|test"] > 0
    assert report["duplicate_overlap"]["train|test"] > 0


def test_thesis_mri_reports_duplicate_overlap_and_null_patient_overlap(tmp_path: Path) -> None:
    frame = make_manifest(seed=1, classes=["a", "b", "c"], n_copies=30, n_near=0)
    report = run_split(
        "mri", dataset_config("thesis", "mri"), write_manifest(tmp_path, frame), tmp_path / "out"
    )
    assert report["leaky"] is True
    assert report["patient_overlap"] is None
    assert any("no patient ids" in note for note in report["notes"])
    assert sum(report["duplicate_overlap"].values()) > 0
    assert sum(report["totals"].values()) == len(frame)


def test_split_dataset_is_byte_identical_and_sorted(tmp_path: Path) -> None:
    frame = make_manifest(seed=11)
    raw = write_manifest(tmp_path, frame.sample(frac=1.0, random_state=0))
    cfg = dataset_config("pooled", val_fraction=0.25, test_fraction=0.25)
    first = run_split("chest", cfg, raw, tmp_path / "a")
    second = run_split("chest", cfg, raw, tmp_path / "b")
    assert first == second
    for name in ("train.csv", "val.csv", "test.csv", "split_report.json"):
        a, b = tmp_path / "a" / "pooled" / name, tmp_path / "b" / "pooled" / name
        assert a.read_bytes() == b.read_bytes()
    for split in ("train", "val", "test"):
        written = pd.read_csv(
            tmp_path / "a" / "pooled" / f"{split}.csv", dtype=str, keep_default_na=False
        )
        assert list(written.columns) == [*MANIFEST_COLUMNS, "leak_group"]
        assert written["path"].tolist() == sorted(written["path"])
        # values round-trip unchanged (a phash of digits only must not become a number)
        original = frame.set_index("path").loc[written["path"], "phash"]
        assert written["phash"].tolist() == original.tolist()
    report = json.loads((tmp_path / "a" / "pooled" / "split_report.json").read_text())
    assert report["leaky"] is False
    assert set(report["patient_overlap"].values()) == {0}


def test_rerun_replaces_previous_output(tmp_path: Path) -> None:
    raw = write_manifest(tmp_path, make_manifest(seed=2))
    dest = tmp_path / "splits"
    run_split("chest", dataset_config("pooled", val_fraction=0.25, seed=1), raw, dest)
    (dest / "stale.txt").write_text("left from an older run")
    (dest / "pooled" / "stale.txt").write_text("left from an older run")
    report = run_split("chest", dataset_config("pooled", val_fraction=0.25, seed=2), raw, dest)
    assert [p.name for p in dest.iterdir()] == ["pooled"]
    assert sorted(p.name for p in (dest / "pooled").iterdir()) == [
        "split_report.json",
        "test.csv",
        "train.csv",
        "val.csv",
    ]
    written = json.loads((dest / "pooled" / "split_report.json").read_text())
    assert written["seed"] == report["seed"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_manifest_names_the_fetch_stage(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match=r"dvc repro fetch@chest"):
        run_split("chest", dataset_config("official"), tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_columns_are_named(tmp_path: Path) -> None:
    raw = write_manifest(tmp_path, make_manifest(seed=0).drop(columns=["phash", "sha256"]))
    with pytest.raises(SplitError, match=r"missing column\(s\) \['sha256', 'phash'\]"):
        run_split("chest", dataset_config("official"), raw, tmp_path / "out")


def test_class_with_too_few_groups_fails_and_writes_nothing(tmp_path: Path) -> None:
    frame = make_manifest(seed=0, groups_per_class=20, source_test_share=0.0)
    # Keep 3 NORMAL patients: too few for test_fraction 0.25 (4 folds).
    normal_patients = sorted(set(frame.loc[frame["label"] == "NORMAL", "group_id"]))
    frame = frame[(frame["label"] != "NORMAL") | frame["group_id"].isin(normal_patients[:3])]
    dest = tmp_path / "out"
    with pytest.raises(SplitError, match=r"'NORMAL'.*need at least 4"):
        run_split(
            "chest",
            dataset_config("pooled", test_fraction=0.25),
            write_manifest(tmp_path, frame),
            dest,
        )
    assert not dest.exists()


def test_official_without_source_test_fails(tmp_path: Path) -> None:
    raw = write_manifest(
        tmp_path, make_manifest(seed=0, source_test_share=0.0, n_copies=0, n_near=0)
    )
    with pytest.raises(SplitError, match=r"official.*use protocol 'pooled'"):
        run_split("chest", dataset_config("official"), raw, tmp_path / "out")


def test_unknown_label_is_named(tmp_path: Path) -> None:
    frame = make_manifest(seed=0)
    frame.loc[0, "label"] = "BACTERIA"
    with pytest.raises(SplitError, match=r"\['BACTERIA'\].*classes"):
        run_split(
            "chest", dataset_config("official"), write_manifest(tmp_path, frame), tmp_path / "out"
        )


def test_thesis_xray_without_source_test_fails(tmp_path: Path) -> None:
    frame = make_manifest(seed=0, source_test_share=0.0, n_copies=0, n_near=0)
    raw = write_manifest(tmp_path, frame)
    with pytest.raises(SplitError, match=r"source test split as val"):
        run_split("chest", dataset_config("thesis"), raw, tmp_path / "out")


def test_empty_split_is_refused(tmp_path: Path) -> None:
    # Every source-train patient also has a test image, so official leaves no train/val.
    frame = make_manifest(seed=0, source_test_share=0.0, n_copies=0, n_near=0)
    in_test = frame.assign(
        source_split="test", path=frame["path"].str.replace("images/train/", "images/test/")
    )
    in_test["sha256"] = [f"{i:064x}" for i in range(len(in_test))]
    raw = write_manifest(tmp_path, pd.concat([frame, in_test]).sort_values("path"))
    with pytest.raises(SplitError, match=r"no images left"):
        run_split("chest", dataset_config("official"), raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_assign_splits_needs_leak_groups() -> None:
    with pytest.raises(SplitError, match="add_leak_groups"):
        assign_splits(make_manifest(seed=0), SplitConfig(protocols=["pooled"]), "mri", "pooled")


def test_every_protocol_is_written_side_by_side_from_the_same_leak_groups(tmp_path: Path) -> None:
    raw = write_manifest(tmp_path, make_manifest(seed=4))
    protocols = ["official", "pooled", "thesis"]
    cfg = dataset_config(protocols, val_fraction=0.25, test_fraction=0.25)

    reports = split_dataset("chest", cfg, raw, tmp_path / "all")

    assert list(reports) == protocols
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == protocols
    leak_group_of_path: dict[str, str] = {}
    for protocol in protocols:
        assert reports[protocol]["protocol"] == protocol
        assert reports[protocol]["leaky"] is (protocol == "thesis")
        # Each folder is exactly what a run with that protocol alone writes.
        run_split(
            "chest",
            dataset_config(protocol, val_fraction=0.25, test_fraction=0.25),
            raw,
            tmp_path / protocol,
        )
        for name in ("train.csv", "val.csv", "test.csv", "split_report.json"):
            together = (tmp_path / "all" / protocol / name).read_bytes()
            assert together == (tmp_path / protocol / protocol / name).read_bytes()
        for split in ("train", "val", "test"):
            table = pd.read_csv(tmp_path / "all" / protocol / f"{split}.csv", dtype=str)
            for path, group in zip(table["path"], table["leak_group"], strict=True):
                assert leak_group_of_path.setdefault(path, group) == group


def test_a_failing_protocol_is_named_and_no_protocol_is_written(tmp_path: Path) -> None:
    # No source test split: pooled can be split, official cannot.
    frame = make_manifest(seed=0, source_test_share=0.0, n_copies=0, n_near=0)
    dest = tmp_path / "splits"
    (dest / "pooled").mkdir(parents=True)
    (dest / "pooled" / "train.csv").write_text("from an earlier run\n")
    cfg = dataset_config(["pooled", "official"], val_fraction=0.25, test_fraction=0.25)
    with pytest.raises(SplitError, match=r"protocol 'official'.*use protocol 'pooled'"):
        split_dataset("chest", cfg, write_manifest(tmp_path, frame), dest)
    assert [p.name for p in dest.iterdir()] == ["pooled"]
    assert (dest / "pooled" / "train.csv").read_text() == "from an earlier run\n"


def flip_bits(hex_hash: str, bits: list[int]) -> str:
    value = int(hex_hash, 16)
    for bit in bits:
        value ^= 1 << bit
    return f"{value:0{len(hex_hash)}x}"


def mri_row(
    path: str, label: str, sha: str, phash: str, dhash: str, content_dhash: str
) -> dict[str, str]:
    """A manifest row of a Training image of the mri layout (group id: its content hash)."""
    return {
        "path": path,
        "label": label,
        "source_split": "train",
        "group_id": sha[:16],
        "sha256": sha,
        "width": "64",
        "height": "64",
        "mode": "RGB",
        "phash": phash,
        "dhash": dhash,
        "content_dhash": content_dhash,
    }


def slice_pairs_manifest(n_scans_per_class: int = 12) -> pd.DataFrame:
    """Scans of two adjacent slices each (MRI layout: no patient ids, pooled protocol).

    The second slice's phash is 6 bits from the first's (more than MAX_DISTANCE = 4, so
    the near-duplicate rule does not join them) and its whole-image dhash 20 bits; its
    content dhash is unrelated. Images of different scans are random hashes, about 32
    (phash) and 128 (dhash) bits apart.
    """
    rng = np.random.default_rng(0)
    rows = []
    for label, scan in itertools.product(["a", "b", "c"], range(n_scans_per_class)):
        phash, dhash = f"{random_hash(rng):016x}", random_dhash(rng)
        slices = [
            (phash, dhash),
            (flip_bits(phash, [1, 9, 17, 25, 33, 41]), flip_bits(dhash, list(range(0, 200, 10)))),
        ]
        for k, (p, d) in enumerate(slices):
            sha = rng.bytes(32).hex()
            path = f"images/train/{label}/scan{scan}-slice{k}.jpg"
            rows.append(mri_row(path, label, sha, p, d, random_dhash(rng)))
    return pd.DataFrame(rows)[list(MANIFEST_COLUMNS)]


def scans_split_apart(frame: pd.DataFrame, assignment: pd.Series) -> int:
    scans = frame["path"].str.replace(r"-slice\d", "", regex=True)
    return int(assignment.groupby(scans).nunique().gt(1).sum())


@pytest.mark.parametrize("max_dhash_distance", [20, 19])
def test_neighbour_check_keeps_adjacent_slices_on_one_side(max_dhash_distance: int) -> None:
    frame = slice_pairs_manifest()
    cfg = dataset_config(
        "pooled",
        "mri",
        val_fraction=0.25,
        test_fraction=0.25,
        neighbour_max_phash_distance=8,
        neighbour_max_dhash_distance=max_dhash_distance,
    ).split

    old = add_leak_groups(frame, MAX_DISTANCE)
    new = add_leak_groups(frame, MAX_DISTANCE, neighbour_rule(cfg))
    old_apart = scans_split_apart(old, assign_splits(old, cfg, "mri", "pooled"))
    new_apart = scans_split_apart(new, assign_splits(new, cfg, "mri", "pooled"))

    assert old["leak_group"].nunique() == len(frame)  # the old rule sees no two alike
    assert old_apart > 0  # ... so a pooled split puts slices of one scan on both sides
    if max_dhash_distance >= 20:  # the pairs' dhash distance: joined, never split apart
        assert new["leak_group"].nunique() == len(frame) // 2
        assert new_apart == 0
    else:  # one bit stricter: not joined, as before
        assert new["leak_group"].nunique() == len(frame)
        assert new_apart == old_apart


def test_split_report_names_the_neighbour_check(tmp_path: Path) -> None:
    cfg = dataset_config(
        "official",
        val_fraction=0.25,
        neighbour_max_phash_distance=10,
        neighbour_max_dhash_distance=30,
    )
    frame = make_manifest(seed=3, n_copies=0, n_near=0)
    test_image = frame[frame["source_split"] == "test"].iloc[0]
    # A train image that is a neighbour of a test image: 6 phash bits, 30 dhash bits away.
    neighbour = dict(test_image, source_split="train", path="images/train/x/neighbour.png")
    neighbour.update(
        group_id="another-patient",
        sha256="2" * 64,
        phash=flip_bits(test_image["phash"], [0, 2, 4, 6, 8, 10]),
        content_dhash=flip_bits(test_image["content_dhash"], list(range(30))),
        dhash=random_dhash(np.random.default_rng(1)),
    )
    frame = pd.concat([frame, pd.DataFrame([neighbour])]).sort_values("path")

    report = run_split("chest", cfg, write_manifest(tmp_path, frame), tmp_path / "out")

    assert report["neighbour_max_phash_distance"] == 10
    assert report["neighbour_max_dhash_distance"] == 30
    (excluded,) = report["excluded"]
    assert excluded["path"] == "images/train/x/neighbour.png"
    assert "neighbours (phash <= 10 and dhash <= 30)" in excluded["reason"]


def numbered_scans_manifest(slices: int = 3, scans_per_class: int = 8) -> pd.DataFrame:
    """Scans of `slices` consecutively numbered files each (`gg (1).jpg`, `gg (2).jpg`, ...).

    Each slice's dhash is 60 bits from the previous slice's (more than the neighbour
    check's 40) and every phash is random (about 32 bits apart), so that only the
    consecutive-file rule can join a scan; the next scan, though numbered next, is an
    unrelated image (about 128 dhash bits away).
    """
    rng = np.random.default_rng(7)
    rows = []
    for label in ["a", "b", "c"]:
        number = 0
        for _ in range(scans_per_class):
            dhash = random_dhash(rng)
            for k in range(slices):
                number += 1
                dhash = flip_bits(dhash, list(range(k, 240, 4))) if k else dhash
                sha = rng.bytes(32).hex()
                path = f"images/train/{label}/gg ({number}).jpg"
                phash = f"{random_hash(rng):016x}"
                rows.append(mri_row(path, label, sha, phash, dhash, random_dhash(rng)))
    return pd.DataFrame(rows)[list(MANIFEST_COLUMNS)]


@pytest.mark.parametrize("max_dhash_distance", [60, 59, None])
def test_consecutive_files_of_a_scan_stay_on_one_side(
    tmp_path: Path, max_dhash_distance: int | None
) -> None:
    frame = numbered_scans_manifest()
    assert hamming(frame["dhash"][0], frame["dhash"][1]) == 60  # the slices' distance
    cfg = dataset_config(
        "pooled",
        "mri",
        val_fraction=0.25,
        test_fraction=0.25,
        neighbour_max_phash_distance=12,
        neighbour_max_dhash_distance=40,
        consecutive_max_dhash_distance=max_dhash_distance,
    )

    report = run_split("mri", cfg, write_manifest(tmp_path, frame), tmp_path / "out")

    assignment = pd.concat(
        pd.read_csv(tmp_path / "out" / "pooled" / f"{split}.csv", dtype=str).assign(side=split)
        for split in ("train", "val", "test")
    ).set_index("path")["side"]
    scans = frame.assign(scan=frame.index // 3).set_index("path")["scan"]
    apart = int(assignment.groupby(scans).nunique().gt(1).sum())
    assert report["consecutive_max_dhash_distance"] == max_dhash_distance
    if max_dhash_distance == 60:  # the slices' distance: one group per scan, never apart
        assert report["n_leak_groups"] == len(frame) // 3
        assert apart == 0
    else:  # stricter, or off: every file its own group, and scans are cut
        assert report["n_leak_groups"] == len(frame)
        assert apart > 0


def test_the_samples_mri_splits_keep_consecutive_slices_together(tmp_path, monkeypatch) -> None:
    from medimg import paths
    from medimg.config.params import load_params
    from medimg.data.duplicates import consecutive_pairs
    from medimg.data.fetch import fetch_dataset

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    cfg = load_params(repo / "params.yaml").dataset("brain_tumor_mri")
    source = str(repo / cfg.fetch.source)
    cfg = cfg.model_copy(update={"fetch": cfg.fetch.model_copy(update={"source": source})})
    assert cfg.split.consecutive_max_dhash_distance is not None
    fetch_dataset("brain_tumor_mri", cfg, workers=2)

    reports = split_dataset("brain_tumor_mri", cfg)  # raises if a grouped protocol leaks

    manifest = pd.read_csv(paths.raw_dir("brain_tumor_mri") / "manifest.csv", dtype=str)
    manifest = manifest.sort_values("path").reset_index(drop=True)
    joined = consecutive_pairs(manifest, cfg.split.consecutive_max_dhash_distance)
    assert len(joined) > 0  # the sample has consecutive slices the rule joins
    for protocol in ("pooled", "official"):
        assert set(reports[protocol]["duplicate_overlap"].values()) == {0}
        folder = paths.splits_root("brain_tumor_mri") / protocol
        side = pd.concat(
            pd.read_csv(folder / f"{split}.csv", dtype=str).assign(side=split)
            for split in ("train", "val", "test")
        ).set_index("path")["side"]
        side = side.reindex(manifest["path"]).fillna("excluded").to_numpy()
        assert (side[joined[:, 0]] == side[joined[:, 1]]).all(), protocol
