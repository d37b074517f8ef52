"""Pruner configurations compared at equal trial budgets: epochs trained and best value reached.

    # 1. a params file for the real archives at reduced scale, prepared by medimg's stages
    python benchmarks/tune_pruning.py params --out /work/scratch/pruning/params.yaml
    cd /work/scratch/pruning && for d in chest_xray brain_tumor_mri; do
        for s in fetch split augment; do
            MEDIMG_ROOT=$PWD python -m medimg.cli --params params.yaml $s --dataset $d
        done; done
    # 2. the measurement, per study (trains every distinct trial once; the curves are cached)
    export MEDIMG_ROOT=/work/scratch/pruning
    nice -n 10 python benchmarks/tune_pruning.py measure --params $MEDIMG_ROOT/params.yaml \\
        --cache docs/tuning/pruning_curves.jsonl --studies xray_cnn_search --trials 12 --startup 12
    nice -n 10 python benchmarks/tune_pruning.py measure --params $MEDIMG_ROOT/params.yaml \\
        --cache docs/tuning/pruning_curves.jsonl --studies mri_cnn_search --trials 10 --startup 10
    # 3. a real `medimg tune` study against its replay (same trials, same pruning?)
    nice -n 10 python benchmarks/tune_pruning.py verify --params $MEDIMG_ROOT/params.yaml \\
        --cache docs/tuning/pruning_curves.jsonl --study xray_cnn_search --pruner hyperband-1 \\
        --trials 12 --startup 12 --sampler-seed 0

Method: a memoised objective. A trial's training does not depend on the pruner: the
pruner only decides after each epoch whether it goes on. So each distinct parameter
set is trained once, for all its epochs, by medimg's own code (`fit_one_seed` on the
study's run with the sampled values, `run_with_values`; the value is
`objective.validation_score` of the kept checkpoint, on the val split), and its
per-epoch Keras logs and final value are recorded in a JSON Lines cache. Every pruner
configuration then runs a real Optuna study: created by medimg's `open_study` (its
pruner and sampler from `build_pruner` / `build_sampler`, the name medimg gives it in a
storage, which places Hyperband's brackets) in an in-memory storage, one sampler per
trial seeded with sampler.seed + trials so far as `medimg tune` does, the values drawn
by medimg's `suggest_values`. Its objective replays the recorded epochs through
medimg's own pruning callback (`EpochPruning.on_epoch_end`: report, should_prune,
TrialPruned), counting the epochs a trial trained until it was pruned, and returns the
recorded value when it was not. Which trials are pruned, after how many epochs, and the
best value reached are then those of a real study with that pruner, up to the
nondeterminism of training (`verify` checks it), at the cost of training each distinct
parameter set once. Trials shared by several configurations (every random start-up
trial of one sampler seed) are trained once.

Why several sampler seeds far apart: `medimg tune` seeds trial n's sampler with
sampler.seed + n, so seeds 0 and 1 would share all but one of their random trials.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STUDIES = ("xray_cnn_search", "mri_cnn_search")
DATASETS = {"xray_cnn_search": "chest_xray", "mri_cnn_search": "brain_tumor_mri"}
PRUNERS: dict[str, dict[str, Any]] = {
    "none": {"name": "none"},
    "median-5-0": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0},
    "median-5-5": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 5},
    "median-1-3": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 3},
    "hyperband-1": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
    "hyperband-3": {"name": "hyperband", "min_resource": 3, "reduction_factor": 3},
}
PRUNER_LABELS = {
    "none": "none",
    "median-5-0": "median, 5 start-up trials, warm-up 0 (StudyConfig default)",
    "median-5-5": "median, 5 start-up trials, warm-up 5 (full profiles)",
    "median-1-3": "median, 1 start-up trial, warm-up 3 (sample profile)",
    "hyperband-1": "hyperband, min_resource 1, reduction 3",
    "hyperband-3": "hyperband, min_resource 3, reduction 3",
}

# The MRI study: docs/research.md's settings fixed (clean batch-norm statistics,
# equalised images), its four training settings searched, validation accuracy.
MRI_STUDY = {
    "run": "mri_cnn",
    "objective": "accuracy",
    "n_trials": 12,
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 10},
    "pruner": {"name": "none"},
    "repeats": 1,
    "space": {
        "learning_rate": {"low": 3.0e-4, "high": 3.0e-3, "log": True},
        "batch_size": {"choices": [16, 32, 64]},
        "augmentation.noise_std": {"low": 0, "high": 30},
        "model_options.dropout": {"low": 0.0, "high": 0.5},
    },
}


# ---------------------------------------------------------------------------- params


def write_reduced_params(
    source: Path, out: Path, image_size: int, xray_epochs: int, mri_epochs: int, mri_input: int
) -> None:
    """params.yaml at reduced scale: profile full-local (absolute archive paths), images
    prepared at `image_size`, MRI equalised and trained at `mri_input` px (resized in the
    model), both studies in the base with no profile override (the benchmark sets their
    trials, sampler and pruner)."""
    raw = yaml.safe_load(source.read_text())
    raw["profile"] = "full-local"
    profile = raw["profiles"]["full-local"]
    archives = (source.parent / "../shared/datasets").resolve()
    for dataset in DATASETS.values():
        key = f"datasets.{dataset}.fetch.source"
        profile[key] = str(archives / Path(profile[key]).name)
        profile[f"datasets.{dataset}.prepare.image_size"] = image_size
    raw["datasets"]["brain_tumor_mri"]["prepare"]["normalize"] = "equalize"
    for key in [k for k in profile if k.startswith("tune.")]:
        del profile[key]
    profile["runs.xray_cnn.epochs"] = xray_epochs
    profile["runs.mri_cnn.epochs"] = mri_epochs
    profile["runs.mri_cnn.image_size"] = mri_input
    sizes = [size for size in (32, 48, 64, 96, 128) if size <= image_size]
    raw["tune"]["xray_cnn_search"]["space"]["image_size"] = {"choices": sizes[-3:]}
    raw["tune"]["mri_cnn_search"] = copy.deepcopy(MRI_STUDY)
    from medimg.atomic import write_file

    out.parent.mkdir(parents=True, exist_ok=True)
    write_file(out, yaml.safe_dump(raw, sort_keys=False))


def study_params(
    raw: dict[str, Any], study: str, trials: int, startup: int, seed: int, pruner: str
) -> Any:
    """medimg's validated Params with the study set to this benchmark's trials and pruner."""
    from medimg.config.params import parse_params

    raw = copy.deepcopy(raw)
    entry = raw["tune"][study]
    entry["n_trials"] = trials
    entry["sampler"] = {"name": "tpe", "seed": seed, "n_startup_trials": startup}
    entry["pruner"] = dict(PRUNERS[pruner])
    return parse_params(raw)


# ---------------------------------------------------------------------------- curves


@dataclass
class Curve:
    """One parameter set trained for all its epochs: per-epoch val logs and the value."""

    params: dict[str, Any]
    epochs: list[dict[str, float]]  # per epoch: the val_* keys of Keras's logs
    value: float  # the study's objective on the val split (kept checkpoint)
    train_seconds: float


def params_key(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True)


class CurveCache:
    """Recorded curves, one JSON line per trained parameter set, rewritten atomically after
    each training (a crash loses at most the training under way).

    Each line carries its study's identity, which leaves out the sampler, pruner and trial
    budget (run, data, space, objective): curves of another run or other data are never
    replayed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}  # study -> {"identity", "curves": {params_key: curve}}
        lines = path.read_text().splitlines() if path.is_file() else []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                section = self.section(record.pop("study"), record.pop("identity"))
            except (ValueError, KeyError) as err:
                raise SystemExit(f"{path}:{number}: not a recorded curve ({err})") from err
            section[params_key(record["params"])] = record

    def section(self, study: str, identity: str) -> dict[str, Any]:
        entry = self.data.setdefault(study, {"identity": identity, "curves": {}})
        if entry["identity"] != identity:
            raise SystemExit(
                f"{self.path}: the curves of {study} were recorded for another definition "
                f"({entry['identity']}, now {identity}); use another --cache file"
            )
        return entry["curves"]

    def save(self) -> None:
        from medimg.atomic import write_file

        lines = [
            json.dumps({"study": study, "identity": entry["identity"], **curve}, sort_keys=True)
            for study, entry in self.data.items()
            for curve in entry["curves"].values()
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file(self.path, "".join(f"{line}\n" for line in lines))


def study_identity(params: Any, study: str) -> tuple[str, Any]:
    """(digest of what a curve depends on, the prepared data)."""
    from medimg.training.train_stage import load_checked_data
    from medimg.tuning.study import study_definition

    config = params.study(study)
    run = params.run(config.run)
    data = load_checked_data(run)
    definition = study_definition(config, run, data)
    for key in ("sampler", "pruner"):
        definition["study"].pop(key, None)
    text = json.dumps(definition, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12], data


def train_curve(params: Any, study: str, data: Any, values: dict[str, Any]) -> Curve:
    """Train the study's run with `values` as a trial would (one seed, all epochs)."""
    import keras

    from medimg.config.studies import run_with_values
    from medimg.training.fit import fit_one_seed
    from medimg.tuning.objective import validation_score

    config = params.study(study)
    run = run_with_values(params.run(config.run), values)
    epochs: list[dict[str, float]] = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            epochs.append({k: float(v) for k, v in logs.items() if k.startswith("val_")})

    with tempfile.TemporaryDirectory(prefix="medimg-pruning-") as work:
        fit = fit_one_seed(run, data, Path(work), run.seed, callbacks=[Recorder()], verbose=0)
        value = validation_score(fit.model_path, data, config.objective)
    keras.utils.clear_session()
    return Curve(values, epochs, value, fit.train_seconds)


# ---------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: str  # COMPLETE | PRUNED
    epochs: int  # epochs trained (until pruned)
    value: float | None  # None when pruned


@dataclass(frozen=True)
class StudyResult:
    trials: list[TrialOutcome]
    maximize: bool

    def first(self, k: int) -> StudyResult:
        """The study after its first k trials: exactly a k-trial study while every trial is
        a random start-up trial (a trial's values and pruning depend only on earlier ones)."""
        return StudyResult(self.trials[:k], self.maximize)

    @property
    def complete(self) -> int:
        return sum(t.state == "COMPLETE" for t in self.trials)

    @property
    def pruned(self) -> int:
        return sum(t.state == "PRUNED" for t in self.trials)

    @property
    def epochs(self) -> int:
        return sum(t.epochs for t in self.trials)

    @property
    def best(self) -> TrialOutcome:
        done = [t for t in self.trials if t.value is not None]
        sign = 1 if self.maximize else -1
        return max(done, key=lambda t: (sign * t.value, -t.number))  # the first of ties

    def better_or_equal(self, value: float, than: float) -> bool:
        return value >= than if self.maximize else value <= than


def replay_study(
    params: Any, study: str, data: Any, curves: dict[str, Any], save: Any, log: Any
) -> Any:
    """One study as `medimg tune` runs it (the Optuna study), its trials replayed from
    `curves`; a parameter set not in `curves` is trained and added (then `save()`)."""
    import optuna

    from medimg.tuning.objective import EPOCHS_ATTR
    from medimg.tuning.pruning import EpochPruning
    from medimg.tuning.space import suggest_values
    from medimg.tuning.study import (
        build_sampler,
        open_study,
        storage_study_name,
        study_definition,
    )

    config = params.study(study)
    if config.repeats != 1:  # a curve is one seed's
        raise SystemExit(f"tune.{study}.repeats = {config.repeats}: the replay needs 1")
    run = params.run(config.run)
    definition = study_definition(config, run, data)
    name = storage_study_name(study, definition)
    storage = optuna.storages.InMemoryStorage()
    opened = open_study(storage, name, config, definition, config.repeats * run.epochs)

    def objective(trial: optuna.Trial) -> float:
        values = suggest_values(trial, config.space)
        key = params_key(values)
        if key not in curves:
            started = time.perf_counter()
            curve = train_curve(params, study, data, values)
            curves[key] = curve.__dict__
            save()
            log(f"  trained {key}: value {curve.value:.4f}, {time.perf_counter() - started:.0f} s")
        curve = curves[key]
        pruning = EpochPruning(trial, config.epoch_monitor)
        try:
            for epoch, logs in enumerate(curve["epochs"]):
                pruning.on_epoch_end(epoch, logs)
        finally:
            trial.set_user_attr(EPOCHS_ATTR, pruning.epochs_seen)
        return float(curve["value"])

    for number in range(config.n_trials):
        opened.sampler = build_sampler(config, config.sampler.seed + number)
        opened.optimize(objective, n_trials=1)
    return opened


def summarise(study: Any) -> StudyResult:
    """Each trial's state, epochs trained and value, from the Optuna study."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from medimg.tuning.objective import EPOCHS_ATTR

    # Optuna gives a pruned trial its last reported value: not a value of the objective.
    return StudyResult(
        [
            TrialOutcome(
                t.number,
                t.state.name,
                int(t.user_attrs.get(EPOCHS_ATTR, 0)),
                t.value if t.state == TrialState.COMPLETE else None,
            )
            for t in study.get_trials(deepcopy=False)
        ],
        study.direction == StudyDirection.MAXIMIZE,
    )


# ---------------------------------------------------------------------------- tables


def fmt(value: float) -> str:
    return f"{value:.4f}"


def print_pruner_table(seeds: list[int], results: dict[str, dict[int, StudyResult]]) -> None:
    """One row per pruner: per sampler seed, then over all seeds.

    "Equal best value": the median over the seeds is no worse than the worst of the
    no-pruner study's bests over the same seeds (within the spread that the sampler seed
    alone gives).
    """
    base = results["none"]
    base_bests = [base[s].best.value for s in seeds]
    worst = min(base_bests) if base[seeds[0]].maximize else max(base_bests)
    base_total = sum(base[s].epochs for s in seeds)
    print(
        f"No pruner's best over the sampler seeds: {fmt(min(base_bests))} to "
        f"{fmt(max(base_bests))} (median {fmt(statistics.median(base_bests))}).\n"
    )
    print(
        "| pruner | "
        + " | ".join(f"seed {s}: complete/pruned, epochs (share), best (trial)" for s in seeds)
        + " | epochs, all seeds (share) | median best (- no pruner's) | equal best value |"
    )
    print("| --- |" + " --- |" * (len(seeds) + 3))
    for pruner, per_seed in results.items():
        cells = [
            f"{r.complete}/{r.pruned}, {r.epochs} ({r.epochs / base[s].epochs:.2f}), "
            f"{fmt(r.best.value)} (#{r.best.number})"
            for s, r in ((s, per_seed[s]) for s in seeds)
        ]
        total = sum(per_seed[s].epochs for s in seeds)
        median_best = statistics.median(per_seed[s].best.value for s in seeds)
        gap = median_best - statistics.median(base_bests)
        equal = "yes" if base[seeds[0]].better_or_equal(median_best, worst) else "no"
        print(
            f"| {PRUNER_LABELS[pruner]} | {' | '.join(cells)} | {total} "
            f"({total / base_total:.2f}) | {fmt(median_best)} ({gap:+.4f}) | {equal} |"
        )


def print_budgets(
    seeds: list[int], results: dict[str, dict[int, StudyResult]], budgets: list[int]
) -> None:
    """Share of the no-pruner epochs (all seeds) and median best value after k trials."""
    base = results["none"]
    print("| pruner | " + " | ".join(f"{k} trials" for k in budgets) + " |")
    print("| --- |" + " --- |" * len(budgets))
    for pruner, per_seed in results.items():
        cells = []
        for k in budgets:
            total = sum(per_seed[s].first(k).epochs for s in seeds)
            base_total = sum(base[s].first(k).epochs for s in seeds)
            median_best = statistics.median(per_seed[s].first(k).best.value for s in seeds)
            cells.append(f"{total / base_total:.2f} ({fmt(median_best)})")
        print(f"| {pruner} | " + " | ".join(cells) + " |")


def print_monitor_signal(curves: dict[str, Any], monitor: str, epochs: int) -> None:
    """How well each per-epoch val log (the pruner's monitor first) ranks the trials' final
    values: Spearman's rank correlation over every recorded parameter set, per epoch."""
    from scipy.stats import spearmanr

    finals = [curve["value"] for curve in curves.values()]
    checked = sorted({e for e in (1, 2, 3, 5, 10, epochs) if e <= epochs})
    keys = sorted(next(iter(curves.values()))["epochs"][0], key=lambda k: (k != monitor, k))
    print(
        f"| log (Spearman with the final value, {len(finals)} sets) | "
        + " | ".join(f"epoch {e}" for e in checked)
        + " |"
    )
    print("| --- |" + " --- |" * len(checked))
    for key in keys:
        cells = []
        for epoch in checked:
            seen = [curve["epochs"][epoch - 1][key] for curve in curves.values()]
            cells.append(f"{spearmanr(seen, finals).statistic:+.2f}")
        label = f"{key} (the pruner's)" if key == monitor else key
        print(f"| {label} | {' | '.join(cells)} |")


# ---------------------------------------------------------------------------- commands


def measure(args: argparse.Namespace) -> None:
    import keras
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = yaml.safe_load(args.params.read_text())
    cache = CurveCache(args.cache)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    pruners = ["none", *(p for p in args.pruners if p != "none")]  # the reference first
    for study in args.studies:
        identity, data = study_identity(
            study_params(raw, study, args.trials, args.startup, 0, "none"), study
        )
        curves = cache.section(study, identity)
        results: dict[str, dict[int, StudyResult]] = {}
        for pruner in pruners:
            results[pruner] = {}
            for seed in args.sampler_seeds:
                params = study_params(raw, study, args.trials, args.startup, seed, pruner)
                log(f"{study} {pruner} sampler seed {seed}")
                replayed = replay_study(params, study, data, curves, cache.save, log)
                results[pruner][seed] = summarise(replayed)
        config = params.study(study)
        print(
            f"\n#### {study} ({DATASETS[study]}): best val {config.objective}\n\n"
            f"{args.trials} trials, TPE with {args.startup} start-up trials, "
            f"{params.run(config.run).epochs} epochs a trial, sampler seeds "
            f"{', '.join(map(str, args.sampler_seeds))}; {len(curves)} parameter sets "
            f"trained in the cache; Keras backend {keras.backend.backend()}\n"
        )
        print_pruner_table(args.sampler_seeds, results)
        if args.startup >= args.trials:  # random trials: the first k are a k-trial study
            print("\nShare of the no-pruner epochs (median best value) after k trials:\n")
            budgets = sorted({k for k in (4, 6, 8, 10, args.trials) if k <= args.trials})
            print_budgets(args.sampler_seeds, results, budgets)
        print("\nThe pruner's signal: the monitor after an epoch against the final value:\n")
        print_monitor_signal(curves, config.epoch_monitor, params.run(config.run).epochs)
    log("done")


def verify(args: argparse.Namespace) -> None:
    """A real run_tune (its own root, journal and sqlite MLflow) against the replay."""
    import optuna

    from medimg import paths
    from medimg.tuning.storage import open_storage
    from medimg.tuning.tune_stage import run_tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = yaml.safe_load(args.params.read_text())
    params = study_params(
        raw, args.study, args.trials, args.startup, args.sampler_seed, args.pruner
    )
    identity, data = study_identity(params, args.study)
    cache = CurveCache(args.cache)
    curves = cache.section(args.study, identity)
    replayed = replay_study(params, args.study, data, curves, cache.save, print)
    expected = summarise(replayed)
    run = params.run(params.study(args.study).run)
    source = paths.prepared_dir(run.dataset, run.split_protocol)
    with tempfile.TemporaryDirectory(prefix="medimg-pruning-verify-") as folder:
        root = Path(folder)
        shutil.copytree(source, root / "data" / "prepared" / run.dataset / run.split_protocol)
        os.environ["MEDIMG_ROOT"] = str(root)  # its own journal and MLflow store
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("MEDIMG_OPTUNA_STORAGE", None)
        started = time.perf_counter()
        summary = run_tune(params.study_settings(args.study))
        seconds = time.perf_counter() - started
        real_study = optuna.load_study(
            study_name=summary["storage_study"], storage=open_storage(summary["storage"])
        )
        real = summarise(real_study)
        # Optuna's values: a pruned trial's is the last value it reported, also compared.
        real_values = [t.value for t in real_study.get_trials(deepcopy=False)]
    replayed_values = [t.value for t in replayed.get_trials(deepcopy=False)]
    print(f"real run_tune: {seconds:.0f} s, study {summary['storage_study']}")
    print("| trial | real: state, epochs, value | replay: state, epochs, value | same |")
    print("| --- | --- | --- | --- |")
    for real_trial, replayed_trial, real_value, replayed_value in zip(
        real.trials, expected.trials, real_values, replayed_values, strict=True
    ):
        outcomes = [
            (t.state, t.epochs, fmt(value))
            for t, value in ((real_trial, real_value), (replayed_trial, replayed_value))
        ]
        same = "yes" if outcomes[0] == outcomes[1] else "NO"
        shown = [", ".join(map(str, outcome)) for outcome in outcomes]
        print(f"| {real_trial.number} | {shown[0]} | {shown[1]} | {same} |")
    for name, result in (("real", real), ("replay", expected)):
        print(
            f"{name}: complete {result.complete}, pruned {result.pruned}, epochs "
            f"{result.epochs}, best {fmt(result.best.value)} (trial {result.best.number})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("params", help="write the reduced-scale params file")
    made.add_argument("--source", type=Path, default=Path("params.yaml"))
    made.add_argument("--out", type=Path, required=True)
    made.add_argument("--image-size", type=int, default=64)
    made.add_argument("--xray-epochs", type=int, default=10)
    made.add_argument("--mri-epochs", type=int, default=15)
    made.add_argument("--mri-input", type=int, default=32, help="the MRI CNN's input size")
    for name in ("measure", "verify"):
        sub = commands.add_parser(name)
        sub.add_argument("--params", type=Path, required=True, help="the reduced-scale file")
        sub.add_argument("--cache", type=Path, required=True, help="recorded curves (JSON Lines)")
        sub.add_argument("--trials", type=int, default=12)
        sub.add_argument("--startup", type=int, default=10, help="TPE's n_startup_trials")
    measuring = commands.choices["measure"]
    measuring.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES))
    measuring.add_argument("--pruners", nargs="+", choices=PRUNERS, default=list(PRUNERS))
    measuring.add_argument("--sampler-seeds", nargs="+", type=int, default=[0, 100, 200])
    checking = commands.choices["verify"]
    checking.add_argument("--study", choices=STUDIES, required=True)
    checking.add_argument("--pruner", choices=PRUNERS, required=True)
    checking.add_argument("--sampler-seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "params":
        write_reduced_params(
            args.source,
            args.out,
            args.image_size,
            args.xray_epochs,
            args.mri_epochs,
            args.mri_input,
        )
    elif args.command == "measure":
        measure(args)
    else:
        verify(args)


if __name__ == "__main__":
    main()
