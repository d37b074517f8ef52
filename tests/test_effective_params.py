"""Every profile's effective values, key by key, against the record in tests/data/.

params.yaml states shared values once (run_defaults, profiles merged with YAML merge
keys); this test holds what each run actually gets under each profile, so an edit
that changes a value nobody meant to change fails here, naming the key. When a
change is meant (a new default), regenerate the record and commit it with the
change, so the diff shows every value it moves:

    medimg params --profile <profile> > tests/data/effective_params/<profile>.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medimg.config.base import read_yaml
from medimg.config.params import parse_params

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "tests" / "data" / "effective_params"
PROFILES = list(dict.fromkeys(["sample", *read_yaml(REPO / "params.yaml")["profiles"]]))


def differences(recorded: Any, effective: Any, key: str = "") -> list[str]:
    """Every dotted key whose value differs, is missing or is new."""
    if isinstance(recorded, dict) and isinstance(effective, dict):
        found = []
        for name in sorted(set(recorded) | set(effective)):
            dotted = f"{key}.{name}" if key else name
            if name not in effective:
                found.append(f"{dotted}: missing (recorded {recorded[name]!r})")
            elif name not in recorded:
                found.append(f"{dotted}: new ({effective[name]!r})")
            else:
                found += differences(recorded[name], effective[name], dotted)
        return found
    return [] if recorded == effective else [f"{key}: recorded {recorded!r}, now {effective!r}"]


@pytest.mark.parametrize("profile", PROFILES)
def test_effective_values_are_the_recorded_ones(profile: str) -> None:
    raw = read_yaml(REPO / "params.yaml")
    effective = json.loads(json.dumps(parse_params({**raw, "profile": profile}).effective()))
    recorded = json.loads((RECORDS / f"{profile}.json").read_text())
    found = differences(recorded, effective)
    assert not found, (
        f"profile {profile}: effective values differ from {RECORDS.name}/{profile}.json "
        "(if meant, regenerate it; see this module's docstring):\n  " + "\n  ".join(found)
    )


def test_differences_names_each_key() -> None:
    recorded = {"runs": {"a": {"epochs": 10, "seed": 0}}, "x": 1}
    effective = {"runs": {"a": {"epochs": 20, "lr": 0.1}}, "x": 1}
    assert differences(recorded, effective) == [
        "runs.a.epochs: recorded 10, now 20",
        "runs.a.lr: new (0.1)",
        "runs.a.seed: missing (recorded 0)",
    ]
