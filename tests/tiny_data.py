"""A tiny learnable dataset in the augment stage's format, for tests and benchmarks.

Written once here so that the train stage's, the tuner's and the team-mode tests,
and the storage benchmark (benchmarks/tune_storage.py), train on the same arrays.
Test data, so it lives with the tests, not in the package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

TINY_CLASSES = ["NORMAL", "PNEUMONIA"]
TINY_SIZE = 32
TINY_COUNTS = {"train": 24, "val": 8, "test": 8}


def tiny_datasets(image_size: int = TINY_SIZE) -> dict:
    """The `datasets:` section of params.yaml for these arrays: the embedded X-ray sample
    as source (fetch and split are never run on it), prepared at `image_size`."""
    return {
        "chest_xray": {
            "layout": "chest_xray",
            "classes": list(TINY_CLASSES),
            "channels": 1,
            "fetch": {"source": "data/sample/chest_xray"},
            "split": {"protocols": ["official"]},
            "prepare": {"image_size": image_size},
        }
    }


def write_tiny_prepared(root: Path, fingerprint: str = "a" * 64) -> Path:
    """data/prepared/chest_xray/official/ under `root`: 24 train, 8 val and 8 test images,
    32x32x1, classes alternating; class 1 is brighter, so a tiny model learns something.
    Returns the folder."""
    directory = Path(root) / "data" / "prepared" / "chest_xray" / "official"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    counts = {}
    for split, n in TINY_COUNTS.items():
        y = np.arange(n) % 2
        x = rng.integers(0, 128, size=(n, TINY_SIZE, TINY_SIZE, 1)) + 100 * y[:, None, None, None]
        np.save(directory / f"{split}_x.npy", x.astype(np.uint8))
        np.save(directory / f"{split}_y.npy", y.astype(np.int64))
        pd.DataFrame(
            {"path": [f"images/{split}/{i}.jpeg" for i in range(n)], "label": y, "copy": 0}
        ).to_csv(directory / f"{split}.csv", index=False)
        counts[split] = {c: int((y == i).sum()) for i, c in enumerate(TINY_CLASSES)}
    meta = {
        "dataset": "chest_xray",
        "protocol": "official",
        "classes": TINY_CLASSES,
        "channels": 1,
        "image_size": TINY_SIZE,
        "aspect": "stretch",
        "counts": counts,
        "n_train_original": TINY_COUNTS["train"],
        "offline_augment": {"copies": 0},
        "source_fingerprint": fingerprint,
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory
