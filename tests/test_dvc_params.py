"""dvc.yaml's stages track the selected profile, and every profile it can extend.

A stage's effective values are params.yaml's base values with the selected
profile's overrides applied, and that profile may start from another (`extends`).
DVC re-runs a stage when a param it lists changes, so each stage that reads the
profile lists `profiles.${profile}` and each profile that another extends; not
the whole `profiles` mapping, whose values DVC would copy into dvc.lock for every
stage (half of dvc.lock, re-read by DVC after each stage).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SELECTED = "profiles.${profile}"


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _extended_profiles() -> set[str]:
    profiles = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]
    return {entry["extends"] for entry in profiles.values() if entry and "extends" in entry}


def test_cpu_check_extends_a_profile_so_the_rule_below_is_exercised() -> None:
    assert _extended_profiles() == {"full-local"}


@pytest.mark.parametrize("name", sorted(_stages()))
def test_a_stage_reading_the_profile_tracks_it_and_its_bases(name: str) -> None:
    params = [p for p in _stages()[name].get("params", []) if isinstance(p, str)]
    if "profile" not in params:
        return
    assert "profiles" not in params, f"stage {name}: lists all profiles; list {SELECTED}"
    expected = {SELECTED, *(f"profiles.{base}" for base in _extended_profiles())}
    missing = expected - set(params)
    assert not missing, f"stage {name}: params lack {sorted(missing)}"


def test_every_stage_with_values_a_profile_can_set_reads_the_profile() -> None:
    profiled = ("runs.", "datasets.", "tune.")
    for name, stage in _stages().items():
        params = [p for p in stage.get("params", []) if isinstance(p, str)]
        if any(p.startswith(profiled) for p in params):
            assert "profile" in params, f"stage {name}: lists {params} but not the profile"
