"""dvc.yaml's stages track the selected profile: `profiles.${profile}`, not all profiles.

A stage's effective values are params.yaml's base values with the selected
profile's overrides applied (a profile that starts from another holds its values
through a YAML merge key, so `profiles.<name>` as loaded is complete). DVC
re-runs a stage when a param it lists changes, so each stage that reads values
a profile can set lists `profile` and `profiles.${profile}`; not the whole
`profiles` mapping, whose values DVC would copy into dvc.lock for every stage
(half of dvc.lock, which DVC re-reads and rewrites after each stage).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SELECTED = "profiles.${profile}"
# Params a profile can override (its keys are dotted paths under these).
PROFILED = ("runs.", "datasets.", "tune.")


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _params(stage: dict) -> list[str]:
    return [p for p in stage.get("params", []) if isinstance(p, str)]


@pytest.mark.parametrize("name", sorted(_stages()))
def test_a_stage_reading_the_profile_tracks_only_the_selected_one(name: str) -> None:
    params = _params(_stages()[name])
    assert "profiles" not in params, f"stage {name}: lists all profiles; list {SELECTED}"
    if "profile" in params:
        assert SELECTED in params, f"stage {name}: lists profile but not {SELECTED}"


def test_every_stage_with_values_a_profile_can_set_reads_the_profile() -> None:
    for name, stage in _stages().items():
        params = _params(stage)
        if any(p.startswith(PROFILED) for p in params):
            assert "profile" in params, f"stage {name}: lists {params} but not the profile"


def test_every_profile_is_complete_as_loaded() -> None:
    """No profile leans on another at run time (DVC would not see the other's values)."""
    profiles = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]
    assert "sample" in profiles and not profiles["sample"]  # the base values, for DVC
    for name, overrides in profiles.items():
        assert all("." in key for key in overrides or {}), f"profile {name}: not dotted keys"


def test_dvc_parses_yaml_with_the_c_extension() -> None:
    """DVC re-reads dvc.lock (about 4,000 lines) around every stage with ruamel's safe
    loader; pure Python takes about 6 times as long (pyproject.toml, docs/results.md)."""
    from ruamel.yaml import YAML

    parser = YAML(typ="safe").Parser
    assert parser.__module__.startswith("ruamel.yaml.clib"), (
        f"ruamel.yaml uses {parser.__module__}.{parser.__name__}: install ruamel.yaml.clib "
        "(pip install -e .)"
    )
