"""A real sqlite MLflow store filled the way the train and evaluate stages fill it (report tests).

A parent run per configuration (tags, run.* params, evaluation/ files) and a child per
repeat with its metrics and, where a test gives them, its per-image test predictions
and per-epoch validation AUC.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from medimg.evaluation.test_predictions import TEST_PREDICTIONS_FILE, write_test_predictions
from medimg.tracking import store


class Store:
    """A sqlite store under `root`, and helpers that record runs as the stages do."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.experiments = {
            name: store.get_or_create_experiment(self.client, f"medimg-{name}")
            for name in ("chest_xray", "brain_tumor_mri")
        }

    def parent(self, dataset: str, run: str, tags: dict, params: dict) -> str:
        parent = self.client.create_run(
            self.experiments[dataset],
            run_name=run,
            tags={"medimg.run": run, "medimg.role": "parent", **tags},
        )
        run_id = parent.info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run_id

    def child(
        self, dataset: str, parent_id: str, seed: int, metrics: dict, val_auc: tuple = ()
    ) -> str:
        """A repeat with its metrics and its validation AUC per epoch (epoch_val_auc)."""
        child = self.client.create_run(
            self.experiments[dataset],
            tags={
                "mlflow.parentRunId": parent_id,
                "medimg.role": "child",
                "medimg.seed": str(seed),
            },
        )
        history = [Metric("epoch_val_auc", v, 0, epoch + 1) for epoch, v in enumerate(val_auc)]
        self.client.log_batch(
            child.info.run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()] + history,
        )
        return child.info.run_id

    def test_predictions(
        self, child_id: str, paths: list[str], labels, proba, classes: list[str]
    ) -> None:
        """evaluation/test_predictions.csv as the evaluate stage logs it (argmax classes)."""
        folder = self.root / "artifacts-to-log" / child_id
        folder.mkdir(parents=True)
        proba = np.asarray(proba, dtype=np.float64)
        write_test_predictions(
            folder / TEST_PREDICTIONS_FILE,
            paths,
            np.asarray(labels),
            proba.argmax(1),
            proba,
            classes,
        )
        self.client.log_artifacts(child_id, str(folder), "evaluation")

    def evaluation_files(self, run_id: str, classes: list[str], predicted: list[int]) -> None:
        """roc_test.csv and confusion_test.csv as the evaluate stage logs them."""
        folder = self.root / "artifacts-to-log" / run_id
        folder.mkdir(parents=True)
        actual = [k % len(classes) for k in range(len(predicted))]
        pd.DataFrame(
            {"actual": [classes[a] for a in actual], "predicted": [classes[p] for p in predicted]}
        ).to_csv(folder / "confusion_test.csv", index=False)
        curves = [
            pd.DataFrame({"fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1], "class": name})
            for name in (classes[1:] if len(classes) == 2 else classes)
        ]
        pd.concat(curves).to_csv(folder / "roc_test.csv", index=False)
        self.client.log_artifacts(run_id, str(folder), "evaluation")

    def summary_json(self, run: str, parent_id: str) -> None:
        folder = self.root / "models" / run
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps({"parent_run_id": parent_id}))
