"""Tests for medimg.data.prepare on a tiny synthetic raw tree and hand-written split CSVs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medimg.atomic import OutputError
from medimg.config.datasets import DatasetConfig, SplitConfig
from medimg.data.prepare import PrepareError, prepare_dataset
from medimg.data.preprocess import ImageLoadError, load_image

CLASSES = ["NORMAL", "PNEUMONIA"]
SIZE = 16
PROTOCOL = "official"
SPLIT_COLUMNS = ["path", "label", "source_split", "group_id", "sha256", "width", "height"]
SPLIT_COLUMNS += ["mode", "phash", "leak_group"]


def _config(channels: int = 1, copies: int = 0, workers: int = 1, aspect: str = "stretch"):
    return DatasetConfig.model_validate(
        {
            "layout": "chest_xray",
            "classes": CLASSES,
            "channels": channels,
            "fetch": {"source": "unused.zip"},
            "split": {"protocols": [PROTOCOL]},
            "prepare": {
                "image_size": SIZE,
                "aspect": aspect,
                "workers": workers,
                "grid_examples_per_class": 2,
                "offline_augment": {
                    "copies": copies,
                    "rotation_deg": 10.0,
                    "zoom_range": [1.0, 1.2],
                    "noise_std": 15.0,
                    "seed": 3,
                },
            },
        }
    )


def _write_image(path: Path, index: int, mode: str) -> None:
    """A distinct image per index: a gradient plus a bright block whose place depends on index."""
    width, height = 24 + 4 * (index % 3), 20 + 2 * (index % 2)
    pixels = np.tile(np.linspace(0, 120, width, dtype=np.uint8), (height, 1))
    pixels[2 + index % 5 : 8 + index % 5, 3:10] = 250
    image = Image.fromarray(pixels, "L").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG" if path.suffix == ".png" else "JPEG", quality=95)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """data/raw/ds with 3 train, 2 val, 2 test images per class (mixed L/RGB, JPEG/PNG).

    Returns (raw, splits): the split CSVs are in splits/PROTOCOL/.
    """
    raw, splits = tmp_path / "data" / "raw" / "ds", tmp_path / "data" / "splits" / "ds"
    (splits / PROTOCOL).mkdir(parents=True)
    index = 0
    for split, per_class in (("train", 3), ("val", 2), ("test", 2)):
        rows = []
        for label in CLASSES:
            for _ in range(per_class):
                suffix = ".png" if index % 2 else ".jpeg"
                rel = f"images/{split}/{label}/img{index}{suffix}"
                _write_image(raw / rel, index, "RGB" if index % 3 == 0 else "L")
                rows.append(
                    {"path": rel, "label": label, "source_split": split, "leak_group": index}
                )
                index += 1
        table = pd.DataFrame(rows).reindex(columns=SPLIT_COLUMNS, fill_value="x")
        table.to_csv(splits / PROTOCOL / f"{split}.csv", index=False)
    (raw / "fetch_report.json").write_text(json.dumps({"fingerprint": "ab" * 32}))
    return raw, splits


def _plain_decode(raw: Path, splits: Path, split: str, channels: int) -> np.ndarray:
    table = pd.read_csv(splits / PROTOCOL / f"{split}.csv")
    return np.stack([load_image(raw / p, channels, SIZE, "stretch") for p in table["path"]])


def _prepare(dataset, dest: Path, **config) -> dict:
    """prepare_dataset with PROTOCOL only; returns its meta (its files are in dest/PROTOCOL)."""
    raw, splits = dataset
    return prepare_dataset("ds", _config(**config), raw=raw, splits=splits, dest=dest)[PROTOCOL]


@pytest.mark.parametrize("channels", [1, 3])
def test_arrays_have_the_contract_shapes_dtypes_and_labels(dataset, tmp_path, channels) -> None:
    dest = tmp_path / "prepared" / "ds"
    meta = _prepare(dataset, dest, channels=channels)
    dest = dest / PROTOCOL
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        x, y = np.load(dest / f"{split}_x.npy"), np.load(dest / f"{split}_y.npy")
        assert x.shape == (n, SIZE, SIZE, channels) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        rows = pd.read_csv(dest / f"{split}.csv")
        assert list(rows.columns) == ["path", "label", "copy"]
        assert list(y) == [CLASSES.index(label) for label in rows["label"]]
        assert np.array_equal(x, _plain_decode(*dataset, split, channels))
    assert meta["counts"] == {
        "train": {"NORMAL": 3, "PNEUMONIA": 3},
        "val": {"NORMAL": 2, "PNEUMONIA": 2},
        "test": {"NORMAL": 2, "PNEUMONIA": 2},
    }
    assert meta["source_fingerprint"] == "ab" * 32
    assert meta["protocol"] == PROTOCOL
    assert "seconds" not in meta  # a run time would change the output on every run
    assert json.loads((dest / "meta.json").read_text()) == meta
    with Image.open(dest / "examples.png") as grid:
        assert grid.format == "PNG"


def test_arrays_are_memory_mappable(dataset, tmp_path) -> None:
    dest = tmp_path / "prepared" / "ds"
    _prepare(dataset, dest)
    dest = dest / PROTOCOL
    x = np.load(dest / "train_x.npy", mmap_mode="r")
    assert isinstance(x, np.memmap) and x.shape == (6, SIZE, SIZE, 1)


def test_load_image_converts_channels(tmp_path) -> None:
    path = tmp_path / "colour.png"
    Image.new("RGB", (10, 10), (200, 0, 0)).save(path)
    assert load_image(path, 3, 8, "stretch")[0, 0].tolist() == [200, 0, 0]
    # ITU-R 601-2 luma, as Pillow converts: 200 * 299 / 1000 = 59.8.
    assert load_image(path, 1, 8, "stretch")[0, 0].tolist() == [60]


def test_pad_keeps_the_aspect_ratio_with_centred_black_bars(tmp_path) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (40, 10), 255).save(path)
    padded = load_image(path, 1, 20, "pad")[..., 0]
    bright_rows = np.flatnonzero(padded.max(axis=1) > 0)
    # 40 x 10 becomes 20 x 5, centred vertically: rows 7 .. 11, full width, black elsewhere.
    assert bright_rows.tolist() == [7, 8, 9, 10, 11]
    assert (padded[7:12] == 255).all()
    assert (padded[:7] == 0).all() and (padded[12:] == 0).all()
    assert (load_image(path, 1, 20, "stretch") == 255).all()


def test_offline_augmentation_applies_to_train_only(dataset, tmp_path) -> None:
    dest = tmp_path / "prepared" / "ds"
    meta = _prepare(dataset, dest, copies=2)
    dest = dest / PROTOCOL
    x, y = np.load(dest / "train_x.npy"), np.load(dest / "train_y.npy")
    rows = pd.read_csv(dest / "train.csv")
    plain = _plain_decode(*dataset, "train", 1)
    n = len(plain)
    assert x.shape == (3 * n, SIZE, SIZE, 1)
    assert rows["copy"].tolist() == [0] * n + [1] * n + [2] * n
    assert rows["path"].tolist() == rows["path"].tolist()[:n] * 3
    assert np.array_equal(y, np.tile(y[:n], 3))
    assert np.array_equal(x[:n], plain)
    for i in range(n, 3 * n):
        assert not np.array_equal(x[i], plain[i % n])
    for split in ("val", "test"):
        assert np.array_equal(np.load(dest / f"{split}_x.npy"), _plain_decode(*dataset, split, 1))
    assert meta["counts"]["train"] == {"NORMAL": 9, "PNEUMONIA": 9}
    assert meta["n_train_original"] == 6
    assert meta["offline_augment"]["copies"] == 2


def test_output_does_not_depend_on_the_number_of_workers(dataset, tmp_path) -> None:
    one, two = tmp_path / "one" / "ds", tmp_path / "two" / "ds"
    _prepare(dataset, one, copies=1, workers=1)
    _prepare(dataset, two, copies=1, workers=2)
    one, two = one / PROTOCOL, two / PROTOCOL
    for name in ("train_x.npy", "train_y.npy", "val_x.npy", "test_x.npy", "train.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_a_failure_leaves_the_previous_output_untouched(dataset, tmp_path) -> None:
    raw, _ = dataset
    dest = tmp_path / "prepared" / "ds"
    _prepare(dataset, dest)
    before = {p.name: p.read_bytes() for p in (dest / PROTOCOL).iterdir()}
    broken = raw / "images" / "test" / "PNEUMONIA" / "img13.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match=r"img13\.png"):
        _prepare(dataset, dest, copies=1)
    assert {p.name: p.read_bytes() for p in (dest / PROTOCOL).iterdir()} == before
    assert [p.name for p in dest.parent.iterdir()] == ["ds"]  # no temporary folder left


@pytest.mark.slow  # mounts a filesystem
def test_a_read_only_output_folder_is_one_line_naming_it(dataset, tmp_path) -> None:
    """data/prepared on a read-only filesystem (issue 19: a raw OSError traceback)."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(prepared)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        with pytest.raises(OutputError) as raised:
            _prepare(dataset, prepared / "ds")
    finally:
        subprocess.run(["umount", str(prepared)], check=True)
    assert str(raised.value) == (
        f"cannot write {prepared / 'ds'}: read-only file system "
        f"({prepared} is mounted read-only; make it writable, then run it again)"
    )
    assert list(prepared.iterdir()) == []


def test_unknown_label_names_the_file_and_the_label(dataset, tmp_path) -> None:
    _, splits = dataset
    table = pd.read_csv(splits / PROTOCOL / "val.csv")
    table.loc[1, "label"] = "COVID"
    table.to_csv(splits / PROTOCOL / "val.csv", index=False)
    with pytest.raises(PrepareError, match=r"val\.csv.*img7\.png.*'COVID'"):
        _prepare(dataset, tmp_path / "prepared" / "ds")


def test_missing_split_csv_says_which_stage_to_run(dataset, tmp_path) -> None:
    _, splits = dataset
    (splits / PROTOCOL / "test.csv").unlink()
    with pytest.raises(PrepareError, match=r"dvc repro split@ds"):
        _prepare(dataset, tmp_path / "prepared" / "ds")


def test_missing_image_names_the_file(dataset, tmp_path) -> None:
    raw, _ = dataset
    (raw / "images" / "train" / "NORMAL" / "img1.png").unlink()
    with pytest.raises(ImageLoadError, match=r"img1\.png"):
        _prepare(dataset, tmp_path / "prepared" / "ds")


def test_every_protocol_is_prepared_side_by_side(dataset, tmp_path) -> None:
    raw, splits = dataset
    # A second protocol: the same images with val and test swapped.
    (splits / "thesis").mkdir()
    for split, other in (("train", "train"), ("val", "test"), ("test", "val")):
        (splits / "thesis" / f"{split}.csv").write_bytes(
            (splits / PROTOCOL / f"{other}.csv").read_bytes()
        )
    cfg = _config().model_copy(update={"split": SplitConfig(protocols=[PROTOCOL, "thesis"])})
    dest = tmp_path / "prepared" / "ds"

    metas = prepare_dataset("ds", cfg, raw=raw, splits=splits, dest=dest)

    assert sorted(metas) == sorted(p.name for p in dest.iterdir()) == [PROTOCOL, "thesis"]
    for protocol, meta in metas.items():
        assert meta["protocol"] == protocol
        assert json.loads((dest / protocol / "meta.json").read_text()) == meta
    for split, other in (("val", "test"), ("test", "val")):
        thesis_x = np.load(dest / "thesis" / f"{split}_x.npy")
        assert np.array_equal(thesis_x, np.load(dest / PROTOCOL / f"{other}_x.npy"))
        assert np.array_equal(thesis_x, _plain_decode(raw, splits, other, 1))


def test_a_protocol_without_splits_names_the_split_stage_and_writes_nothing(
    dataset, tmp_path
) -> None:
    raw, splits = dataset
    cfg = _config().model_copy(update={"split": SplitConfig(protocols=[PROTOCOL, "pooled"])})
    dest = tmp_path / "prepared" / "ds"
    with pytest.raises(PrepareError, match=r"pooled/train\.csv: not found.*dvc repro split@ds"):
        prepare_dataset("ds", cfg, raw=raw, splits=splits, dest=dest)
    assert not dest.exists()
