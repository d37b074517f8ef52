"""predictions.npz: what the train stage saves for the evaluate stage, and its fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medimg.data.prepared import load_prepared
from medimg.evaluation.predictions import (
    SplitPredictions,
    data_fingerprint,
    read_predictions,
    save_predictions,
)
from tiny_data import write_tiny_prepared


def prepared(root: Path):
    write_tiny_prepared(root)
    return load_prepared(root / "data" / "prepared" / "chest_xray" / "official")


def test_saved_predictions_read_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    proba = {
        split: rng.dirichlet([1, 1, 1], size=n).astype(np.float32)
        for split, n in (("val", 5), ("test", 7))
    }
    written = SplitPredictions(y={"val": np.arange(5) % 3, "test": np.arange(7) % 3}, proba=proba)
    save_predictions(tmp_path / "p.npz", written, "abc123")
    read, fingerprint = read_predictions(tmp_path / "p.npz")
    assert fingerprint == "abc123"
    for split in ("val", "test"):
        np.testing.assert_array_equal(read.y[split], written.y[split])
        np.testing.assert_array_equal(read.proba[split], written.proba[split])
        assert read.proba[split].dtype == np.float32
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no partial file left


def test_fingerprint_changes_with_any_val_or_test_pixel_or_label(tmp_path: Path) -> None:
    data = prepared(tmp_path)
    before = data_fingerprint(data)
    assert data_fingerprint(load_prepared(data.directory)) == before  # stable across reads
    for name in ("test_x.npy", "val_y.npy"):
        path = data.directory / name
        original = np.load(path)
        changed = original.copy()
        changed.flat[0] = 1 - changed.flat[0] if name.endswith("_y.npy") else changed.flat[0] ^ 1
        np.save(path, changed)
        assert data_fingerprint(load_prepared(data.directory)) != before, name
        np.save(path, original)
    # Training rows are not part of it: predictions are only made on val and test.
    train_x = data.directory / "train_x.npy"
    np.save(train_x, 255 - np.load(train_x))
    assert data_fingerprint(load_prepared(data.directory)) == before


def test_a_file_that_is_not_a_predictions_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "predictions.npz"
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "plain.npy").rename(path)
    with pytest.raises(ValueError, match=r"predictions\.npz: not a predictions file"):
        read_predictions(path)
