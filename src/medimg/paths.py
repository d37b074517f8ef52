"""Where each stage reads and writes, relative to the project root; where the stores live.

The project root is MEDIMG_ROOT when set (tests point it at a copy), else the nearest
folder from the current directory up that holds params.yaml and dvc.yaml, or .dvc/
(as git and dvc find their repository), so medimg works from any folder inside the
project; DVC runs every stage from the root itself. Outside any project it is the
current directory.

The project's stores (MLflow's mlruns/, the Optuna journal optuna/) live in the root,
except in an experiment DVC runs in a temporary copy of the repository
(`dvc exp run --queue` or `--temp`): see store_root().
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "MEDIMG_ROOT"
# DVC sets it for the stage commands of an experiment it runs in a temporary copy to the
# repository the experiment belongs to (dvc/repo/experiments/queue/base.py, DVC 3.67).
DVC_ROOT_ENV = "DVC_ROOT"
# Where DVC makes those copies, under the workspace: exps/<tmp> (queue), exps/standalone/<tmp>
# (--temp).
EXPERIMENT_COPIES = Path(".dvc", "tmp", "exps")


def _is_project(folder: Path) -> bool:
    return (folder / ".dvc").is_dir() or (
        (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file()
    )


def root() -> Path:
    """The project root: MEDIMG_ROOT, else the nearest project folder from the current
    directory up (params.yaml + dvc.yaml, or .dvc/), else the current directory."""
    override = os.environ.get(ROOT_ENV)
    if override:
        return Path(override).resolve()
    here = Path.cwd().resolve()
    return next((folder for folder in (here, *here.parents) if _is_project(folder)), here)


def experiment_workspace() -> Path | None:
    """The workspace an experiment belongs to when root() is DVC's temporary copy for it.

    `dvc exp run --queue` and `--temp` run the pipeline in <workspace>/.dvc/tmp/exps/...,
    a copy that holds only what git and DVC track and that DVC deletes afterwards; DVC
    names the workspace in DVC_ROOT. None anywhere else (the workspace itself, a plain
    `dvc exp run`, `dvc repro`, a command typed by hand).
    """
    workspace = os.environ.get(DVC_ROOT_ENV)
    if not workspace:
        return None
    workspace_path = Path(workspace).resolve()
    if root().is_relative_to(workspace_path / EXPERIMENT_COPIES):
        return workspace_path
    return None


def store_root() -> Path:
    """Where the project's stores live (mlruns/, optuna/): the workspace of a DVC
    experiment's temporary copy, so that its runs and studies outlive the copy and sit
    with every other run; root() otherwise."""
    return experiment_workspace() or root()


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
    """The project's MLflow store folder: mlflow.db and artifacts/ (see store_root)."""
    return store_root() / "mlruns"
