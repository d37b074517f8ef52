"""params.yaml's split protocols and leak-group thresholds: bad values are named with their key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medimg.cli import main
from medimg.config.base import ParamsError, apply_overrides
from medimg.config.params import parse_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_every_run_names_a_protocol_its_dataset_is_split_by(raw: dict) -> None:
    for profile in ["sample", *raw["profiles"]]:
        params = parse_params({**raw, "profile": profile})
        for run in params.runs.values():
            assert run.split_protocol in params.datasets[run.dataset].split.protocols
        assert params.datasets["brain_tumor_mri"].split.protocols == [
            "pooled",
            "official",
            "thesis",
        ]
        assert params.datasets["chest_xray"].split.protocols == ["official", "thesis"]
        # Patient ids group the X-rays; consecutive numbering groups MRI slices.
        assert params.datasets["chest_xray"].split.consecutive_max_dhash_distance is None
        assert params.datasets["brain_tumor_mri"].split.consecutive_max_dhash_distance == 70


@pytest.mark.parametrize(
    ("dotted", "value", "expected_in_message"),
    [
        (
            "runs.xray_cnn.split_protocol",
            "pooled",
            "runs.xray_cnn.split_protocol = 'pooled' is not split by dataset 'chest_xray'; "
            "allowed: datasets.chest_xray.split.protocols = ['official', 'thesis']",
        ),
        ("runs.xray_cnn.split_protocol", "random", "runs.xray_cnn.split_protocol = 'random'"),
        ("datasets.chest_xray.split.protocols", [], "datasets.chest_xray.split.protocols = []"),
        (
            "datasets.chest_xray.split.protocols",
            ["official", "official"],
            "protocols has duplicates: ['official', 'official']",
        ),
        (
            "datasets.brain_tumor_mri.split.neighbour_max_phash_distance",
            4,
            "neighbour_max_phash_distance = 4 must be larger than near_duplicate_max_distance = 4",
        ),
        (
            "datasets.brain_tumor_mri.split.neighbour_max_dhash_distance",
            257,
            "datasets.brain_tumor_mri.split.neighbour_max_dhash_distance = 257",
        ),
        (
            "datasets.brain_tumor_mri.split.consecutive_max_dhash_distance",
            -1,
            "datasets.brain_tumor_mri.split.consecutive_max_dhash_distance = -1",
        ),
        (
            "datasets.brain_tumor_mri.split.consecutive_max_dhash_distance",
            "yes",
            "datasets.brain_tumor_mri.split.consecutive_max_dhash_distance = 'yes'",
        ),
        (
            "datasets.brain_tumor_mri.split.consecutive_max_dhash_distance",
            39,
            "consecutive_max_dhash_distance = 39 must be at least neighbour_max_dhash_distance "
            "= 40",
        ),
    ],
)
def test_bad_split_values_name_key_value_and_allowed(
    raw: dict, dotted: str, value: object, expected_in_message: str
) -> None:
    bad = apply_overrides(raw, {dotted: value}, "test")
    with pytest.raises(ParamsError) as err:
        parse_params(bad)
    assert expected_in_message in str(err.value)


def test_a_run_without_split_protocol_is_refused(raw: dict) -> None:
    bad = copy.deepcopy(raw)
    del bad["runs"]["mri_cnn"]["split_protocol"]
    with pytest.raises(ParamsError, match=r"runs\.mri_cnn must state \['split_protocol'\] itself"):
        parse_params(bad)


def test_the_cli_reports_a_bad_split_protocol_without_a_traceback(raw, tmp_path, capsys) -> None:
    bad = apply_overrides(raw, {"runs.mri_cnn.split_protocol": "random"}, "test")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(bad))
    assert main(["--params", str(params_file), "train", "--run", "mri_cnn"]) == 2
    err = capsys.readouterr().err
    assert "runs.mri_cnn.split_protocol = 'random'" in err
    assert "Traceback" not in err
