"""Here: pack what the GPU runner needs besides the code and the dataset archive.

The splits are made here, by the split stage, because the leakage grouping needs
the perceptual hashes of the fetch stage (imagehash, not on the GPU machine); the
runner then only unpacks the archive and decodes the images (the augment stage's
code), so its training data is exactly what the split stage chose.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path

from medimg import atomic, paths
from medimg.config.params import Params
from medimg.errors import UserError
from medimg.runner.results import BUNDLE_FILE, BundleInfo, write_record
from medimg.tracking.runs import git_commit


class BundleError(UserError, ValueError):
    """The bundle cannot be made: unknown run, splits not made yet."""


def _bundle_id(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def make_bundle(params_file: Path, params: Params, runs: list[str], dest: Path) -> BundleInfo:
    """Write the bundle for `runs` into `dest` (replacing it whole); return its BundleInfo.

    Args:
        params_file: the params.yaml `params` was read from (copied, `profile:` kept).
        params: the validated parameters, with the profile the GPU runs use.
        runs: keys of `params.runs`.
        dest: the bundle folder to write.
    """
    unknown = sorted(set(runs) - set(params.runs))
    if unknown:
        raise BundleError(f"unknown run(s) {unknown}; params.yaml defines {sorted(params.runs)}")
    needed = sorted({(params.runs[r].dataset, params.runs[r].split_protocol) for r in runs})
    for dataset, protocol in needed:
        if not (paths.splits_dir(dataset, protocol) / "train.csv").is_file():
            raise BundleError(
                f"{paths.splits_dir(dataset, protocol)}: no splits yet; make them with the "
                f"profile the GPU runs use: dvc exp run -S profile={params.profile} "
                f"split@{dataset} (or medimg split --dataset {dataset})"
            )
    with atomic.building(Path(dest)) as staging:
        text = Path(params_file).read_text()
        text = re.sub(r"(?m)^profile:.*$", f"profile: {params.profile}", text, count=1)
        (staging / "params.yaml").write_text(text)
        for dataset, protocol in needed:
            shutil.copytree(
                paths.splits_dir(dataset, protocol), staging / "splits" / dataset / protocol
            )
        info = BundleInfo(
            bundle_id=_bundle_id(staging),
            profile=params.profile,
            git_commit=git_commit(),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            runs=list(runs),
            datasets={d: params.datasets[d].layout for d, _ in needed},
        )
        write_record(staging / BUNDLE_FILE, info)
    return info
