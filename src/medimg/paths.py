"""Where each stage reads and writes, relative to the repository root.

DVC runs every stage from the repository root, so the root is the current
directory unless MEDIMG_ROOT says otherwise (tests point it at a copy).
"""

from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    return Path(os.environ.get("MEDIMG_ROOT", ".")).resolve()


def raw_dir(dataset: str) -> Path:
    """fetch output: images/<source_split>/<label>/<file> + manifest.csv + fetch_report.json."""
    return root() / "data" / "raw" / dataset


def splits_root(dataset: str) -> Path:
    """split output (one DVC out): a splits_dir per protocol of the dataset."""
    return root() / "data" / "splits" / dataset


def splits_dir(dataset: str, protocol: str) -> Path:
    """One protocol's split: train.csv, val.csv, test.csv, split_report.json."""
    return splits_root(dataset) / protocol


def prepared_root(dataset: str) -> Path:
    """augment output (one DVC out): a prepared_dir per protocol of the dataset."""
    return root() / "data" / "prepared" / dataset


def prepared_dir(dataset: str, protocol: str) -> Path:
    """One protocol's arrays: <split>_x.npy, <split>_y.npy, <split>.csv, meta.json, examples.png."""
    return prepared_root(dataset) / protocol


def models_dir(run: str) -> Path:
    """train output: seed-<k>/model.keras, seed-<k>/preprocessing.json, summary.json."""
    return root() / "models" / run


def work_dir(run: str) -> Path:
    """In-progress training state (BackupAndRestore, partial checkpoints).

    Kept outside `models/<run>` because DVC deletes a stage's outputs before it
    re-runs the stage, which would throw away the state a resume needs.
    """
    return root() / ".medimg-work" / run


def reports_root() -> Path:
    """Everything a reader compares: runs/, tune/, and the report beside them."""
    return root() / "reports"


def reports_dir(run: str) -> Path:
    """evaluate output: metrics.json, details.json, plot data (.csv), figures (.png), seeds/."""
    return reports_root() / "runs" / run


def mlruns_dir() -> Path:
    return root() / "mlruns"
