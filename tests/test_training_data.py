"""Prepared data read back (load_prepared) and the training input pipeline (ArrayBatches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medimg.config.runs import TrainAugmentConfig
from medimg.data.prepared import PreparedDataError, load_prepared
from medimg.training.data import ArrayBatches, loader_augmentation

CLASSES = ["NORMAL", "PNEUMONIA"]


def write_prepared(directory: Path, n: int = 10, size: int = 8, channels: int = 1) -> None:
    """A tiny augment-stage output: arrays per split and meta.json."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        x = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
        np.save(directory / f"{split}_x.npy", x)
        np.save(directory / f"{split}_y.npy", np.arange(n, dtype=np.int64) % 2)
    meta = {"dataset": "chest_xray", "classes": CLASSES, "channels": channels, "image_size": size}
    (directory / "meta.json").write_text(json.dumps(meta))


def test_load_prepared_memory_maps_every_split(tmp_path):
    write_prepared(tmp_path / "chest_xray")
    data = load_prepared(tmp_path / "chest_xray")
    assert data.classes == CLASSES and data.num_classes == 2
    assert data.input_shape == (8, 8, 1)
    for split in ("train", "val", "test"):
        arrays = data.split(split)
        assert isinstance(arrays.x, np.memmap) and arrays.x.shape == (10, 8, 8, 1)
        assert len(arrays) == 10


def test_missing_output_names_the_file_and_the_stage(tmp_path):
    folder = tmp_path / "chest_xray" / "official"  # data/prepared/<dataset>/<protocol>
    with pytest.raises(FileNotFoundError, match=r"dvc repro augment@chest_xray"):
        load_prepared(folder)
    write_prepared(folder)
    (folder / "val_y.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_y\.npy.*augment@chest_xray"):
        load_prepared(folder)


def test_mismatched_arrays_are_rejected(tmp_path):
    write_prepared(tmp_path / "chest_xray")
    np.save(tmp_path / "chest_xray" / "test_x.npy", np.zeros((10, 8, 8, 3), np.uint8))
    with pytest.raises(PreparedDataError, match=r"test_x\.npy.*\(N, 8, 8, 1\)"):
        load_prepared(tmp_path / "chest_xray")
    write_prepared(tmp_path / "other")
    np.save(tmp_path / "other" / "train_y.npy", np.full(10, 2, np.int64))
    with pytest.raises(PreparedDataError, match=r"train_y\.npy.*labels must be in \[0, 2\)"):
        load_prepared(tmp_path / "other")


def _arrays(n: int = 19) -> tuple[np.ndarray, np.ndarray]:
    # Each image holds its row number, so a batch tells which rows it came from.
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 1)).copy()
    return x, np.arange(n, dtype=np.int64) % 3


def _rows(batches: ArrayBatches) -> list[int]:
    return [int(v) for i in range(len(batches)) for v in batches[i][0][:, 0, 0, 0]]


def test_batches_cover_every_row_once_per_epoch_with_matching_labels():
    x, y = _arrays()
    batches = ArrayBatches(x, y, batch_size=4, num_classes=3, shuffle=True, seed=7)
    assert len(batches) == 5  # 19 rows: four full batches and one of 3
    for _ in range(3):
        rows = []
        for i in range(len(batches)):
            bx, by = batches[i]
            assert bx.dtype == np.uint8 and bx.shape[1:] == (4, 4, 1)
            assert by.dtype == np.int32
            np.testing.assert_array_equal(by, y[bx[:, 0, 0, 0]])  # labels follow their images
            rows.extend(int(v) for v in bx[:, 0, 0, 0])
        assert sorted(rows) == list(range(19))
        batches.on_epoch_end()


def test_shuffle_is_seeded_and_changes_every_epoch():
    x, y = _arrays()
    first = ArrayBatches(x, y, 4, 3, shuffle=True, seed=7)
    again = ArrayBatches(x, y, 4, 3, shuffle=True, seed=7)
    other = ArrayBatches(x, y, 4, 3, shuffle=True, seed=8)
    epoch0 = _rows(first)
    assert epoch0 == _rows(again)
    assert epoch0 != _rows(other)
    assert epoch0 != list(range(19))
    first.on_epoch_end()
    assert _rows(first) != epoch0
    # A resumed training starting at epoch 1 sees epoch 1's order.
    resumed = ArrayBatches(x, y, 4, 3, shuffle=True, seed=7, first_epoch=1)
    assert _rows(resumed) == _rows(first)


def test_unshuffled_batches_keep_file_order_and_binary_labels_are_float():
    x, y = _arrays()
    batches = ArrayBatches(x, y % 2, 8, num_classes=2, shuffle=False)
    assert _rows(batches) == list(range(19))
    assert batches[0][1].dtype == np.float32


def test_loader_augmentation_depends_on_epoch_and_batch_not_on_fetch_order():
    x = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 1), dtype=np.uint8)
    y = np.zeros(12, np.int64)
    augment = loader_augmentation(TrainAugmentConfig(rotation_deg=10, zoom_range=(1.0, 1.3)), True)
    forward = ArrayBatches(x, y, 4, 2, shuffle=True, seed=3, augment=augment)
    backward = ArrayBatches(x, y, 4, 2, shuffle=True, seed=3, augment=augment)
    out_forward = [forward[i][0] for i in range(3)]
    out_backward = [backward[i][0] for i in reversed(range(3))][::-1]
    for a, b in zip(out_forward, out_backward, strict=True):
        np.testing.assert_array_equal(a, b)
    plain = ArrayBatches(x, y, 4, 2, shuffle=True, seed=3)
    assert not np.array_equal(out_forward[0], plain[0][0])  # it did augment


def test_bad_arguments_are_rejected():
    x, y = _arrays()
    with pytest.raises(ValueError, match="uint8"):
        ArrayBatches(x.astype(np.float32), y, 4, 3, shuffle=False)
    with pytest.raises(ValueError, match=r"shape \(19,\)"):
        ArrayBatches(x, y[:5], 4, 3, shuffle=False)
    with pytest.raises(IndexError):
        ArrayBatches(x, y, 4, 3, shuffle=False)[5]
