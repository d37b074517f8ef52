"""One research variant: a run of a profile with some settings changed, trained over several
seeds by the pipeline's own stages, judged on validation first, then on test.

    python benchmarks/research.py --name xray_baseline --run xray_cnn --profile cpu-check
    python benchmarks/research.py --name xray_balanced --run xray_cnn --profile cpu-check \\
        --set class_weights=balanced
    python benchmarks/research.py --name mri_no_bn --run mri_cnn --profile cpu-check \\
        --set model_options.batch_norm=false --dataset-set prepare.normalize=autocontrast

Everything runs in a scratch folder (--scratch, default /tmp/medimg-research): the
data stages once per dataset configuration, then `medimg train` and `medimg evaluate`
with MEDIMG_ROOT and MLFLOW_TRACKING_URI pointing there, as subprocesses of the
`medimg` command (the same code as `dvc repro`). The evaluation runs twice, with the
argmax and with the threshold chosen on validation (`decision_threshold: youden_val`,
binary only). The result, with the exact command, machine, backend and timings, is
written to docs/research/<name>.json; `--set` values are YAML (true, 0.1, [1, 2]).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from medimg.config.base import apply_profile
from medimg.config.params import parse_params

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "roc_auc", "recall", "specificity", "f1")


def _set(tree: dict, dotted: str, value: object) -> None:
    """tree[a][b][c] = value for "a.b.c", creating mappings on the way (a research knob
    may not be written in params.yaml, where its default applies)."""
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def parse_settings(items: list[str]) -> dict[str, object]:
    """["a.b=0.1", "c={low: 1, high: 2}"] -> {"a.b": 0.1, "c": {"low": 1, "high": 2}}: the
    values of --set and the like are YAML."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(text)
    return out


def effective_params(args: argparse.Namespace) -> tuple[dict, str]:
    """(params mapping for this variant, its run key) with the profile applied as base."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if args.profile != "sample":
        raw = apply_profile(raw, args.profile, raw.get("profiles") or {}, REPO / "params.yaml")
    raw["profiles"] = {args.profile: {}} if args.profile != "sample" else {}
    raw["profile"] = args.profile
    run = copy.deepcopy(raw["runs"][args.run])
    key = f"{args.run}__{args.name}"
    for dotted, value in parse_settings(args.set).items():
        _set(run, dotted, value)
    _set(run, "repeats", args.seeds)
    raw["runs"] = {key: run}
    for dotted, value in parse_settings(args.dataset_set).items():
        _set(raw["datasets"][run["dataset"]], dotted, value)
    raw.pop("tune", None)  # the studies are not part of a variant
    for dataset in raw["datasets"].values():  # relative sources are the repository's
        source = dataset["fetch"]["source"]
        if "://" not in source and not Path(source).is_absolute():
            dataset["fetch"]["source"] = str((REPO / source).resolve())
    parse_params(raw)  # a bad --set fails here, naming the key
    return raw, key


def _medimg(args: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ medimg {shlex.join(args)}\n")
        out.flush()
        result = subprocess.run(
            [sys.executable, "-m", "medimg.cli", *args], env=env, stdout=out, stderr=out
        )
    if result.returncode != 0:
        raise SystemExit(f"medimg {' '.join(args)} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - started


def _summary(details: dict) -> dict:
    """Per split: mean and std over seeds of SUMMARY_KEYS, the per-seed values, the ensemble."""
    out = {}
    for split in ("val", "test"):
        out[split] = {
            key: {"mean": details[split][key]["mean"], "std": details[split][key]["std"]}
            for key in SUMMARY_KEYS
            if key in details[split]
        }
        out[f"{split}_per_seed"] = {
            seed: {k: v for k, v in values[split].items() if k in (*SUMMARY_KEYS, "threshold")}
            for seed, values in details["per_seed"].items()
        }
        out[f"{split}_ensemble"] = {
            k: v for k, v in details["ensemble"][split].items() if k in (*SUMMARY_KEYS, "threshold")
        }
    return out


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that define a variant (shared with research_study.py)."""
    parser.add_argument("--name", required=True, help="the variant's name (file name)")
    parser.add_argument("--run", required=True, help="a key of runs: in params.yaml")
    parser.add_argument("--profile", default="cpu-check")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted key of the run, e.g. lr_schedule.kind=plateau",
    )
    parser.add_argument(
        "--dataset-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted key of the run's dataset, e.g. prepare.normalize=equalize",
    )
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/medimg-research"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "research")


@dataclass
class Workspace:
    """A variant's scratch folder: its data prepared, its params file, env and log."""

    root: Path
    params_file: Path
    env: dict[str, str]
    log: Path
    seconds: dict[str, float]  # the data stages' wall time, when they ran here

    def medimg(self, args: list[str]) -> float:
        """`medimg --params <this variant's file> ARGS`; its wall time in seconds."""
        return _medimg(["--params", str(self.params_file), *args], self.env, self.log)

    def write_params(self, raw: dict) -> None:
        self.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def open_workspace(raw: dict, dataset: str, name: str, scratch: Path, out: Path) -> Workspace:
    """The scratch folder of `raw`'s dataset configuration, with the data stages run once."""
    data_config = json.dumps(raw["datasets"][dataset], sort_keys=True)
    root = scratch / f"{dataset}-{hashlib.sha256(data_config.encode()).hexdigest()[:10]}"
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MEDIMG_ROOT": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
    }
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{name}.log"
    log.write_text("")
    space = Workspace(root, root / f"params-{name}.yaml", env, log, {})
    space.write_params(raw)
    if not (root / "data" / "prepared" / dataset / ".done").is_file():
        for stage in ("fetch", "split", "augment"):
            space.seconds[stage] = space.medimg([stage, "--dataset", dataset])
        (root / "data" / "prepared" / dataset / ".done").write_text(data_config)
    return space


def record_header(args: argparse.Namespace) -> dict:
    """What every research record starts with: the variant, command, machine, backend, date."""
    return {
        "name": args.name,
        "run": args.run,
        "profile": args.profile,
        "settings": args.set,
        "dataset_settings": args.dataset_set,
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_variant_arguments(parser)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    raw, key = effective_params(args)
    dataset = raw["runs"][key]["dataset"]
    space = open_workspace(raw, dataset, args.name, args.scratch, args.out)
    seconds = dict(space.seconds)
    seconds["train"] = space.medimg(["train", "--run", key])
    results = {}
    rules = (
        ["argmax", "youden_val"] if len(raw["datasets"][dataset]["classes"]) == 2 else ["argmax"]
    )
    for rule in rules:
        raw["runs"][key]["decision_threshold"] = rule
        space.write_params(raw)
        seconds[f"evaluate_{rule}"] = space.medimg(["evaluate", "--run", key])
        details = json.loads((space.root / "reports" / key / "details.json").read_text())
        results[rule] = _summary(details)
    summary = json.loads((space.root / "models" / key / "summary.json").read_text())
    record = {
        **record_header(args),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "train_seconds_per_seed": [round(s["train_seconds"], 1) for s in summary["seeds"]],
        "images_per_second": [round(s["images_per_second"], 1) for s in summary["seeds"]],
        "best_epochs": [s["best_epoch"] for s in summary["seeds"]],
        "results": results,
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    test = results["argmax"]["test"]
    print(
        f"{args.name}: test accuracy {test['accuracy']['mean']:.4f} "
        f"+- {test['accuracy']['std'] or 0:.4f}, AUC {test['roc_auc']['mean']:.4f}"
    )


if __name__ == "__main__":
    main()
