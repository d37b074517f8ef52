"""The `cpu-check` profile fits a laptop: the whole thesis matrix in 2.5 hours on 2 cores.

Its runs and their sizes are checked by params.yaml's own validation (every run it
names exists; every image size fits the prepared size). Its time is estimated from
each run's measured speed on this machine, recorded by benchmarks/profile_throughput.py
in docs/results/cpu-check/throughput.json: this test recomputes the estimate from the
recorded speeds and image counts, and fails when the profile asks for more than the
budget, or when a run's settings changed since they were measured (re-measure then).
"""

from __future__ import annotations

import json
from pathlib import Path

from medimg.config.base import read_yaml
from medimg.config.params import parse_params
from medimg.tuning.confirm import confirmation_name

REPO = Path(__file__).resolve().parents[1]
PROFILE = "cpu-check"
THROUGHPUT = REPO / "docs" / "results" / PROFILE / "throughput.json"
BUDGET_S = 2.5 * 3600
# The overheads (per stage process; per seed beyond its images) and the data stages'
# time are measured numbers the benchmark records in the table, read from there.


def _params():
    return parse_params({**read_yaml(REPO / "params.yaml"), "profile": PROFILE})


def _run_seconds(row: dict, table: dict) -> float:
    train, predict = row["train_images_per_second"], row["predict_images_per_second"]
    per_epoch = row["train"] / train + row["val"] / predict
    per_seed = row["epochs"] * per_epoch + (row["val"] + row["test"]) / predict
    per_seed += table["seed_overhead_s"]
    return row["repeats"] * per_seed + 2 * table["stage_overhead_s"]


def test_every_run_and_confirmation_was_measured_with_its_settings() -> None:
    params = _params()
    table = json.loads(THROUGHPUT.read_text())
    assert table["profile"] == PROFILE
    for name, run in params.runs.items():
        row = table["runs"][name]
        size = run.input_size(params.dataset(run.dataset).prepare.image_size)
        measured = (row["model"], row["image_size"], row["batch_size"], row["epochs"])
        assert measured == (run.model, size, run.batch_size, run.epochs), (
            f"{name}: measured as {measured}; the profile now says "
            f"{(run.model, size, run.batch_size, run.epochs)}: "
            "re-run benchmarks/profile_throughput.py"
        )
        assert row["repeats"] == run.repeats == 3
    for name, study in params.tune.items():
        row = table["runs"][confirmation_name(name)]
        assert row["repeats"] == study.confirm_repeats
        assert table["studies"][name]["timeout_s"] == study.timeout_s


def test_the_whole_profile_fits_the_budget() -> None:
    params = _params()
    table = json.loads(THROUGHPUT.read_text())
    runs = sum(_run_seconds(row, table) for row in table["runs"].values())
    studies = 0.0
    for name, study in params.tune.items():
        confirmation = table["runs"][confirmation_name(name)]
        trial = _run_seconds(confirmation, table) / study.confirm_repeats
        assert study.timeout_s is not None, f"study {name}: bound it with timeout_s"
        studies += study.timeout_s + trial + table["stage_overhead_s"]
    # + the report stage
    total = table["data_stages_s"] + runs + studies + table["stage_overhead_s"]
    assert total <= BUDGET_S, (
        f"profile {PROFILE}: {total / 3600:.2f} h estimated (runs {runs / 3600:.2f} h, "
        f"studies {studies / 3600:.2f} h), over the {BUDGET_S / 3600:.1f} h budget"
    )
