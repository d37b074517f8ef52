"""Re-running a data stage on unchanged input leaves every output byte as it was.

DVC caches outputs by content hash: an output that changes on every run (a run
time, a timestamp, an unordered listing) makes `dvc repro` and `dvc push` see new
data where there is none. Each stage runs twice on the embedded sample, in place as
DVC runs it, and every file of its output folder must come out byte-identical; the
run time goes to the log instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medimg import paths
from medimg.config.datasets import DatasetConfig
from medimg.config.params import load_params
from medimg.data.fetch import fetch_dataset
from medimg.data.prepare import prepare_dataset
from medimg.data.split import split_dataset

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path (folders only through their files)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def sample_config(name: str) -> DatasetConfig:
    """The base (sample) profile's dataset, reading the sample from the repository."""
    cfg = load_params(REPO / "params.yaml").dataset(name)
    source = str(REPO / cfg.fetch.source)
    return cfg.model_copy(update={"fetch": cfg.fetch.model_copy(update={"source": source})})


def run_twice(stage, output: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    stage()
    first = snapshot(output)
    stage()
    return first, snapshot(output)


@pytest.mark.parametrize("name", ["chest_xray", "brain_tumor_mri"])
def test_data_stages_rerun_byte_identical(name, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("MEDIMG_ROOT", str(tmp_path))
    cfg = sample_config(name)
    stages = [
        ("fetch", lambda: fetch_dataset(name, cfg, workers=2), paths.raw_dir(name)),
        ("split", lambda: split_dataset(name, cfg), paths.splits_root(name)),
        ("augment", lambda: prepare_dataset(name, cfg), paths.prepared_root(name)),
    ]
    with caplog.at_level(logging.INFO, logger="medimg"):
        for stage, run, output in stages:
            first, second = run_twice(run, output)
            assert first, f"{stage} wrote nothing into {output}"
            assert sorted(second) == sorted(first), stage
            changed = [path for path in first if first[path] != second[path]]
            assert not changed, f"{stage} {name}: re-run changed {changed}"

    for protocol in cfg.split.protocols:
        assert (paths.prepared_dir(name, protocol) / "meta.json").is_file()
    # The run times are in the log, one line per stage run (per protocol for augment).
    timings = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" s")]
    assert sum(m.startswith(f"fetch {name}: ") for m in timings) == 2
    assert sum(m.startswith(f"split {name}: ") for m in timings) == 2
    for protocol in cfg.split.protocols:
        assert sum(m.startswith(f"augment {name}/{protocol}: ") for m in timings) == 2
