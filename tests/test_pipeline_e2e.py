"""End to end: `dvc repro` of the whole pipeline on the embedded sample.

Runs in a temporary copy of the repository (tracked and untracked-but-not-
ignored files), so nothing here touches the working tree or its MLflow store.
Takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medimg.config.params import load_params
from medimg.config.runs import RunConfig
from medimg.tuning.confirm import confirmation_name, confirmation_settings, read_best_record

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def _copy_repository(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def pipeline_env() -> dict[str, str]:
    """This environment less the store settings, for `dvc repro` in a copy of the repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDIMG_"))}
    # dvc's stage commands call `python`: make it this interpreter, with medimg installed.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("repo")
    _copy_repository(repo)
    env = pipeline_env()
    dvc = [sys.executable, "-m", "dvc"]
    first = _run([*dvc, "repro"], repo, env)
    second = _run([*dvc, "repro"], repo, env)
    return {"repo": repo, "env": env, "dvc": dvc, "first": first, "second": second}


def test_fetch_counts_match_params(pipeline: dict) -> None:
    repo = pipeline["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name, ds in params["datasets"].items():
        manifest = pd.read_csv(repo / "data" / "raw" / name / "manifest.csv")
        counts = manifest.groupby(["source_split", "label"]).size()
        for split, per_class in ds["fetch"]["expected_counts"].items():
            for cls, n in per_class.items():
                assert counts[(split, cls)] == n, (name, split, cls)
        assert (repo / "data" / "raw" / name / manifest["path"].iloc[0]).is_file()


def _split_protocols(repo: Path) -> list[tuple[str, str]]:
    """(dataset, protocol) for every protocol that params.yaml splits each dataset by."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    return [
        (name, protocol)
        for name, ds in params["datasets"].items()
        for protocol in ds["split"]["protocols"]
    ]


def test_every_protocol_is_split_and_only_thesis_leaks(pipeline: dict) -> None:
    repo = pipeline["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    used_by_runs = {(run["dataset"], run["split_protocol"]) for run in params["runs"].values()}
    assert used_by_runs <= set(_split_protocols(repo))
    for name, protocol in _split_protocols(repo):
        report = json.loads(
            (repo / "data" / "splits" / name / protocol / "split_report.json").read_text()
        )
        assert report["protocol"] == protocol
        assert report["leaky"] is (protocol == "thesis")
        if protocol == "thesis":
            continue
        assert all(v == 0 for v in report["duplicate_overlap"].values())
        if report["patient_overlap"] is not None:
            assert all(v == 0 for v in report["patient_overlap"].values())
        splits = {
            s: pd.read_csv(repo / "data" / "splits" / name / protocol / f"{s}.csv")
            for s in ("train", "val", "test")
        }
        assert all(len(df) > 0 for df in splits.values())
        groups = {s: set(df["leak_group"]) for s, df in splits.items()}
        assert not groups["train"] & groups["test"]
        assert not groups["train"] & groups["val"]


def test_prepared_arrays(pipeline: dict) -> None:
    repo = pipeline["repo"]
    channels = {"chest_xray": 1, "brain_tumor_mri": 3}
    for name, protocol in _split_protocols(repo):
        prepared = repo / "data" / "prepared" / name / protocol
        meta = json.loads((prepared / "meta.json").read_text())
        assert (meta["dataset"], meta["protocol"]) == (name, protocol)
        for split in ("train", "val", "test"):
            x = np.load(prepared / f"{split}_x.npy", mmap_mode="r")
            y = np.load(prepared / f"{split}_y.npy")
            size = meta["image_size"]
            assert x.dtype == np.uint8 and x.shape[1:] == (size, size, channels[name])
            assert len(x) == len(y) == sum(meta["counts"][split].values())
        assert (prepared / "examples.png").stat().st_size > 0


def _trained_runs(repo: Path) -> dict[str, RunConfig]:
    """Every run the pipeline trains: params.yaml's (with their run defaults) and each
    study's confirmation (<study>_best: its best values on fresh seeds)."""
    params = load_params(repo / "params.yaml")
    runs = dict(params.runs)
    for name in params.tune:
        record = read_best_record(
            params.study_settings(name), repo / "reports/tune" / name / "best_params.yaml"
        )
        runs[confirmation_name(name)] = confirmation_settings(
            params.study_settings(name), record
        ).run
    return runs


def test_training_and_evaluation_outputs(pipeline: dict) -> None:
    repo = pipeline["repo"]
    for run, cfg in _trained_runs(repo).items():
        summary = json.loads((repo / "models" / run / "summary.json").read_text())
        assert [s["seed"] for s in summary["seeds"]] == cfg.seeds()
        for seed in summary["seeds"]:
            assert (repo / "models" / run / seed["model"]).is_file()
        details = json.loads((repo / "reports" / "runs" / run / "details.json").read_text())
        for split in ("val", "test"):
            acc = details[split]["accuracy"]
            assert 0.0 <= acc["min"] <= acc["mean"] <= acc["max"] <= 1.0
        headline = json.loads((repo / "reports" / "runs" / run / "metrics.json").read_text())
        assert headline["seeds"] == cfg.repeats
        assert headline["acc"] == round(details["test"]["accuracy"]["mean"], 4)
        for name in ("confusion_test.csv", "roc_test.csv", "pr_test.csv", "predictions_test.png"):
            assert (repo / "reports" / "runs" / run / name).stat().st_size > 0


def test_mlflow_store_holds_parents_children_and_champion(pipeline: dict) -> None:
    from mlflow import MlflowClient

    repo = pipeline["repo"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    trained = _trained_runs(repo)
    for dataset in load_params(repo / "params.yaml").datasets:
        experiment = client.get_experiment_by_name(f"medimg-{dataset}")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], max_results=200)
        # the tune stage's study and trial runs share the experiment; they have roles of
        # their own ("study", "trial")
        parents = [r for r in runs if r.data.tags.get("medimg.role") == "parent"]
        children = [r for r in runs if r.data.tags.get("medimg.role") == "child"]
        configs = [k for k, run in trained.items() if run.dataset == dataset]
        assert len(parents) == len(configs)
        assert len(children) == sum(trained[k].repeats for k in configs)
        for parent in parents:
            assert "test_accuracy_mean" in parent.data.metrics
        for child in children:
            epochs = trained[child.data.tags["medimg.run"]].epochs
            curve = client.get_metric_history(child.info.run_id, "epoch_val_accuracy")
            assert [m.step for m in curve] == list(range(1, epochs + 1))
            # the evaluate stage's final value, not a point appended to the curve
            assert len(client.get_metric_history(child.info.run_id, "val_accuracy")) == 1
        champion = client.get_model_version_by_alias(f"medimg-{dataset}", "champion")
        assert champion.run_id in {c.info.run_id for c in children}


def test_each_study_searched_and_was_confirmed_on_fresh_seeds(pipeline: dict) -> None:
    """The MRI study samples the thesis's noise std; its confirmation trained the best
    values on seeds the study never trained, and the report has a section per study."""
    from mlflow import MlflowClient

    repo = pipeline["repo"]
    params = load_params(repo / "params.yaml")
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medimg-brain_tumor_mri").experiment_id
    trials = [
        r
        for r in client.search_runs([experiment], "tags.`medimg.study` = 'mri_cnn_search'")
        if r.data.tags.get("medimg.role") == "trial"
    ]
    assert len(trials) == params.study("mri_cnn_search").n_trials
    assert all("augmentation.noise_std=" in t.data.tags["medimg.sampled"] for t in trials)
    report = (repo / "reports" / "report.md").read_text()
    for name, study in params.tune.items():
        study_seeds = set(params.run(study.run).seeds()[: study.repeats])
        confirmed = _trained_runs(repo)[confirmation_name(name)]
        assert not study_seeds & set(confirmed.seeds())
        assert f"## Study {name} (run {study.run})" in report


def test_second_repro_reruns_nothing(pipeline: dict) -> None:
    assert "Running stage" not in pipeline["second"]
    status = _run([*pipeline["dvc"], "status"], pipeline["repo"], pipeline["env"])
    assert "up to date" in status


def test_dvc_metrics_show(pipeline: dict) -> None:
    env = {**pipeline["env"], "COLUMNS": "120"}
    shown = _run([*pipeline["dvc"], "metrics", "show"], pipeline["repo"], env)
    runs = _trained_runs(pipeline["repo"])
    rows = [line for line in shown.splitlines() if line.startswith("reports/")]
    # One row per run, each a line of at most 120 columns: a table, not one long line.
    assert sorted(row.split()[0] for row in rows) == sorted(
        f"reports/runs/{run}/metrics.json" for run in runs
    )
    assert all(len(row.rstrip()) <= 120 for row in rows), rows


def test_predict_a_new_image(pipeline: dict) -> None:
    repo = pipeline["repo"]
    image = next((repo / "data" / "sample" / "chest_xray").rglob("*.jpeg"))
    model = "models/xray_cnn/seed-0"
    predict = [sys.executable, "-m", "medimg.cli", "predict", "--model", model]
    out = _run([*predict, str(image)], repo, pipeline["env"])
    assert "probability" in out
    # A whole folder, as JSON: every sample image classified, probabilities summing to 1.
    folder, results = image.parent, repo / "predictions.json"
    _run(
        [*predict, "--format", "json", "--output", str(results), str(folder)], repo, pipeline["env"]
    )
    document = json.loads(results.read_text())
    n_images = len(list(folder.rglob("*.jpeg")))
    assert document["counts"] == {"ok": n_images}
    for result in document["results"]:
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_with_the_registered_champion(pipeline: dict) -> None:
    """The registered model (a pyfunc holding model.keras and preprocessing.json) answers
    through its MLflow URI as its local folder does."""
    repo = pipeline["repo"]
    image = next((repo / "data" / "sample" / "chest_xray").rglob("*.jpeg"))
    env = {**pipeline["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"}
    predict = [sys.executable, "-m", "medimg.cli", "predict", "--format", "json"]
    answers = {}
    for model in ("models:/medimg-chest_xray@champion", "models:/medimg-chest_xray@xray_cnn-best"):
        out = _run([*predict, "--model", model, str(image)], repo, env)
        answers[model] = json.loads(out[out.index("{") : out.rindex("}") + 1])
    champion = answers["models:/medimg-chest_xray@champion"]["results"][0]
    assert champion["status"] == "ok"
    assert sum(champion["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
