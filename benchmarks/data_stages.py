"""Benchmark the data stages (fetch, split, augment) on full archives.

    python benchmarks/data_stages.py --profile full-local \
        --chest-xray ../shared/datasets/chest_xray_224.zip \
        --mri ../shared/datasets/brain_tumor_mri.zip --out docs/data_benchmark.json

Each stage runs as its own `medimg` process in a scratch root (MEDIMG_ROOT), so
the repository's data/ is untouched. Peak resident memory is the largest sum of
RSS over the stage's process tree (workers included), sampled every 0.1 s,
with and without the file-backed pages of the memory-mapped outputs.
Each stage runs --repeats times; the time is the median, and the output folder must
come out byte-identical every time (DVC hashes it). split and augment handle
every protocol of `split.protocols` in one run. Prints a table and writes the figures,
counts and split reports (one per protocol) as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("fetch", "split", "augment")
OUTPUTS = {"fetch": "raw", "split": "splits", "augment": "prepared"}  # under data/


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: equal iff the folders are."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(RSS, anonymous RSS) summed over the process tree.

    RSS counts the pages of memory-mapped output files the stage has written
    (file-backed, reclaimable by the kernel); RSS minus shared pages is the
    memory the stage itself holds, which must not grow with the dataset.
    """
    rss = anonymous = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker may exit between the calls
            info = p.memory_info()
            rss += info.rss
            anonymous += info.rss - info.shared
    return rss, anonymous


def run_stage(stage: str, dataset: str, root: Path, params_file: Path) -> dict:
    env = {**os.environ, "MEDIMG_ROOT": str(root)}
    cmd = [sys.executable, "-m", "medimg.cli", "--params", str(params_file), stage]
    cmd += ["--dataset", dataset]
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = peak_anonymous = 0
    while proc.poll() is None:
        rss, anonymous = tree_memory(proc)
        peak, peak_anonymous = max(peak, rss), max(peak_anonymous, anonymous)
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    output = proc.stdout.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{stage} {dataset} failed:\n{output[-4000:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(peak / 2**20, 1),
        "peak_anonymous_mib": round(peak_anonymous / 2**20, 1),
    }


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def describe_outputs(root: Path, dataset: str, protocols: list[str], stages: dict) -> dict:
    """Counts, fingerprint, split reports and prepared sizes of one dataset's outputs.

    Also adds images and images/s to each stage's figures in `stages`.
    """
    data = root / "data"
    n = len(pd.read_csv(data / "raw" / dataset / "manifest.csv"))
    prepared = {p: read_json(data / "prepared" / dataset / p / "meta.json") for p in protocols}
    # augment prepares every protocol: its images are those of all of them
    n_prepared = sum(sum(c.values()) for meta in prepared.values() for c in meta["counts"].values())
    for stage, n_images in (("fetch", n), ("split", n), ("augment", n_prepared)):
        stages[stage]["images"] = n_images
        stages[stage]["images_per_second"] = round(n_images / stages[stage]["seconds"], 1)
    fetch_report = read_json(data / "raw" / dataset / "fetch_report.json")
    return {
        "counts": fetch_report["counts"],
        "fingerprint": fetch_report["fingerprint"],
        "split_reports": {
            p: read_json(data / "splits" / dataset / p / "split_report.json") for p in protocols
        },
        "prepared": {
            p: {k: meta[k] for k in ("image_size", "channels", "counts")}
            for p, meta in prepared.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full-local")
    parser.add_argument("--chest-xray", type=Path, required=True)
    parser.add_argument("--mri", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="runs per stage; median time")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data_benchmark.json")
    args = parser.parse_args()

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = args.profile
    overrides = raw["profiles"][args.profile]
    overrides["datasets.chest_xray.fetch.source"] = str(args.chest_xray.resolve())
    overrides["datasets.brain_tumor_mri.fetch.source"] = str(args.mri.resolve())
    for name in raw["datasets"]:
        raw["datasets"][name]["prepare"]["workers"] = args.workers

    results: dict = {
        "machine": f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"{platform.machine()}",
        "command": " ".join(sys.argv),
        "profile": args.profile,
        "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as tmp:
        root = Path(tmp)
        params_file = root / "params.yaml"
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        for dataset in raw["datasets"]:
            entry: dict = {"stages": {}}
            for stage in STAGES:
                # Each repeat re-runs the stage on the previous stage's output, in place.
                runs, digests = [], set()
                for _ in range(args.repeats):
                    runs.append(run_stage(stage, dataset, root, params_file))
                    digests.add(folder_digest(root / "data" / OUTPUTS[stage] / dataset))
                entry["stages"][stage] = {
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "seconds_each": [r["seconds"] for r in runs],
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                    "peak_anonymous_mib": max(r["peak_anonymous_mib"] for r in runs),
                    "output_identical_in_every_repeat": len(digests) == 1,
                }
            protocols = raw["datasets"][dataset]["split"]["protocols"]
            entry.update(describe_outputs(root, dataset, protocols, entry["stages"]))
            results["datasets"][dataset] = entry

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    header = f"{'dataset':<16} {'stage':<8} {'images':>7} {'seconds':>8} {'img/s':>8}"
    print(f"{header} {'peak RSS MiB':>13} {'peak anon MiB':>14}")
    for dataset, entry in results["datasets"].items():
        for stage, s in entry["stages"].items():
            print(
                f"{dataset:<16} {stage:<8} {s['images']:>7} {s['seconds']:>8} "
                f"{s['images_per_second']:>8} {s['peak_rss_mib']:>13} {s['peak_anonymous_mib']:>14}"
            )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
