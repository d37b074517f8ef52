"""The report's tables as plain rows of text cells, ready for Markdown or HTML.

Accuracies and recalls are shown in percent with two decimals (as the thesis
quotes them), ROC AUC as a fraction with three; "mean ± std" is over the repeat
trainings and the interval is the 95 % Student-t interval of `medimg.evaluation.statistics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from medimg.evaluation.statistics import CONFIDENCE, Summary, t_critical
from medimg.inference.captions import display_name
from medimg.reporting.collect import Configuration
from medimg.reporting.comparisons import SETTINGS, Comparison
from medimg.reporting.differences import BOOTSTRAP_REPLICATES, Interval
from medimg.reporting.flags import model_flags
from medimg.reporting.thesis import ThesisRow, ThesisTable

DASH = "—"
PROTOCOL_LABELS = {
    "thesis": "thesis (leaky)",
    "official": "official (leak-free)",
    "pooled": "pooled (leak-free)",
}
# "unlike": a comparison of configurations trained differently (not like-for-like)
RowKind = Literal["thesis", "ours", "missing", "heading", "unlike"]


@dataclass(frozen=True)
class Cell:
    text: str
    link: str | None = None


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    kind: RowKind = "ours"


@dataclass(frozen=True)
class Table:
    caption: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Input size and epochs of a configuration (the full profile's, to label reduced rows)."""

    image_size: int | None
    epochs: int | None


def percent(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f} %"


def mean_std(summary: Summary | None, as_percent: bool) -> str:
    """ "92.00 ± 2.00 %" (percent) or "0.953 ± 0.012"; the std is left out for one repeat."""
    if summary is None:
        return DASH
    if as_percent:
        spread = "" if summary.std is None else f" ± {100 * summary.std:.2f}"
        return f"{100 * summary.mean:.2f}{spread} %"
    spread = "" if summary.std is None else f" ± {summary.std:.3f}"
    return f"{summary.mean:.3f}{spread}"


def interval(summary: Summary | None) -> str:
    """The 95 % interval in percent, e.g. "87.03 – 96.97 %"; none for a single repeat."""
    if summary is None:
        return DASH
    if summary.ci_low is None or summary.ci_high is None:
        return f"{DASH} (1 repeat)"
    return f"{100 * summary.ci_low:.2f} – {100 * summary.ci_high:.2f} %"


def difference(ours: float | None, reference: float | None, as_percent: bool) -> str:
    """ours − reference: "+1.25 pp" (percentage points) or "+0.012"."""
    if ours is None or reference is None:
        return DASH
    return f"{100 * (ours - reference):+.2f} pp" if as_percent else f"{ours - reference:+.3f}"


def protocol_label(config: Configuration) -> str:
    protocol = config.tag("split_protocol")
    return PROTOCOL_LABELS.get(protocol, protocol)


def is_reduced(config: Configuration, full: Settings | None) -> bool:
    """Smaller images or fewer epochs than the full profile's (e.g. a CPU or sample run)."""
    if full is None:
        return False
    pairs = ((config.image_size, full.image_size), (config.epochs, full.epochs))
    return any(ours is not None and ref is not None and ours < ref for ours, ref in pairs)


def settings_label(config: Configuration, full: Settings | None) -> str:
    """e.g. "sample: 64 px, 10 epochs, 60 test images (reduced; full: 600 px, 20 epochs)"."""
    known = [
        f"{value} {unit}"
        for value, unit in (
            (config.image_size, "px"),
            (config.epochs, "epochs"),
            (config.test_images, "test images"),
        )
        if value is not None
    ]
    text = config.tag("profile") + (": " + ", ".join(known) if known else "")
    if full is not None and is_reduced(config, full):
        text += f" (reduced; full: {full.image_size} px, {full.epochs} epochs)"
    return text


def flagged_label(config: Configuration) -> str:
    """The label with its tags: [sample], and a warning such as [single class]."""
    return config.tagged_label + "".join(f" [{flag.tag}]" for flag in model_flags(config))


def _name_cell(config: Configuration) -> Cell:
    return Cell(flagged_label(config), config.ui_url())


def _missing_row(name: str, width: int, status: str = "not run") -> Row:
    """A configuration without a parent run: named by the thesis file, or not trained yet."""
    return Row((Cell(name), Cell(status), *[Cell(DASH)] * (width - 2)), kind="missing")


def _status_cells(config: Configuration, width: int) -> tuple[Cell, ...]:
    """`width` cells of a configuration without evaluation: its status, then dashes."""
    return (Cell(config.status), *[Cell(DASH)] * (width - 1))


# The end of each thesis table's caption: `medimg summary` finds the report's headline
# tables in report.md by it.
THESIS_TABLE_CAPTION = ": test accuracy, the thesis and ours"
THESIS_COLUMNS = (
    "configuration",
    "split protocol",
    "profile: settings",
    "repeats",
    "train accuracy",
    "val accuracy",
    "test accuracy (mean ± std)",
    "test accuracy 95 % CI",
    "Δ test accuracy vs thesis",
)


def _thesis_row(row: ThesisRow) -> Row:
    return Row(
        (
            Cell(f"thesis: {row.label}"),
            Cell(PROTOCOL_LABELS["thesis"]),
            Cell(DASH),
            Cell(DASH),
            Cell(percent(row.train_accuracy)),
            Cell(percent(row.val_accuracy)),
            Cell(percent(row.test_accuracy)),
            Cell(DASH),
            Cell(DASH),
        ),
        kind="thesis",
    )


def _accuracy_row(config: Configuration, thesis: ThesisRow | None, full: Settings | None) -> Row:
    if config.parent_run_id is None:
        return _missing_row(config.label, len(THESIS_COLUMNS), config.status)
    head = (
        _name_cell(config),
        Cell(protocol_label(config)),
        Cell(settings_label(config, full)),
        Cell(str(len(config.children)) if config.children else DASH),
    )
    if config.status != "evaluated":
        return Row(head + _status_cells(config, len(THESIS_COLUMNS) - len(head)))
    test = config.summary("test_accuracy")
    reference = thesis.test_accuracy if thesis else None
    return Row(
        (
            *head,
            Cell(mean_std(config.summary("best_train_accuracy"), as_percent=True)),
            Cell(mean_std(config.summary("val_accuracy"), as_percent=True)),
            Cell(mean_std(test, as_percent=True)),
            Cell(interval(test)),
            Cell(difference(test.mean if test else None, reference, as_percent=True)),
        )
    )


def _rows_of(names: Sequence[str], configs: Sequence[Configuration]) -> dict[str, list]:
    return {name: [c for c in configs if c.name == name] for name in names}


def thesis_table(
    table: ThesisTable,
    configs: Sequence[Configuration],
    full: dict[str, Settings],
    source: str,
) -> Table:
    """The thesis's rows, each followed by our configurations compared with it, then the rest."""
    rows: list[Row] = []
    shown: set[str] = set()
    for thesis in table.rows:
        rows.append(_thesis_row(thesis))
        for name, matching in _rows_of(thesis.ours, configs).items():
            shown.add(name)
            rows += [_accuracy_row(c, thesis, full.get(name)) for c in matching] or [
                _missing_row(name, len(THESIS_COLUMNS))
            ]
    others = [c for c in configs if c.name not in shown]
    if others:
        rows.append(Row((Cell("our other configurations"),), kind="heading"))
        rows += [_accuracy_row(c, None, full.get(c.name)) for c in others]
    return Table(
        caption=f"{table.title}{THESIS_TABLE_CAPTION}",
        columns=THESIS_COLUMNS,
        rows=tuple(rows),
        notes=(
            f"Thesis figures: {source}; {table.statistic}. Its split: {table.split}",
            "Ours: mean ± std over the repeat trainings; the interval is Student's t "
            f"over the repeats' values (none with one repeat; t = {t_critical(2):.2f} for 2 "
            "repeats, so the interval is wide and can leave 0–100 %; "
            f"{t_critical(5):.2f} for 5). It covers the spread of the trainings only, not "
            "the chance in which images the test set holds: the comparisons table's "
            "intervals cover both. Train accuracy is at the kept (best validation AUC) "
            "epoch. Δ: our mean minus the thesis figure, which comes with no spread, so "
            "this Δ has no interval: read it against our row's interval.",
        ),
    )


def detail_table(dataset_title: str, classes: list[str], configs: Sequence[Configuration]) -> Table:
    """Binary: test ROC AUC, sensitivity, specificity. Multiclass: macro AUC, recall per class."""
    binary = len(classes) == 2
    if binary:
        metrics = [
            ("test ROC AUC", "test_roc_auc", False),
            (f"sensitivity ({display_name(classes[1])})", "test_recall", True),
            ("specificity", "test_specificity", True),
        ]
    else:
        metrics = [("test macro ROC AUC", "test_roc_auc", False)] + [
            (f"recall {display_name(c)}", f"test_recall_{c}", True) for c in classes
        ]
    metrics.append(("balanced accuracy", "test_balanced_accuracy", True))
    columns = ("configuration", "split protocol", *[title for title, _, _ in metrics])
    rows = []
    for config in configs:
        if config.parent_run_id is None:
            rows.append(_missing_row(config.label, len(columns), config.status))
            continue
        head = (_name_cell(config), Cell(protocol_label(config)))
        if config.status != "evaluated":
            rows.append(Row(head + _status_cells(config, len(metrics))))
            continue
        cells = tuple(Cell(mean_std(config.summary(k), pct)) for _, k, pct in metrics)
        rows.append(Row(head + cells))
    return Table(
        caption=f"{dataset_title}: test metrics (mean ± std over the repeats)",
        columns=columns,
        rows=tuple(rows),
        notes=(
            "Macro ROC AUC: the mean of the one-vs-rest AUC of each class."
            if not binary
            else f"Sensitivity is the recall of {display_name(classes[1])}.",
        ),
    )


def protocol_table(
    dataset_title: str, names: Sequence[str], configs: Sequence[Configuration]
) -> Table:
    """The configurations of `names` side by side, with the settings that make them differ.

    No difference is computed here: the comparisons table gives each with its interval
    and says whether the two were trained alike.
    """
    columns = (
        "configuration",
        "split protocol",
        "profile: settings",
        "repeats",
        "test accuracy",
        "test ROC AUC",
    )
    rows = []
    for name, matching in _rows_of(names, configs).items():
        if not matching:
            rows.append(_missing_row(name, len(columns)))
        for config in matching:
            if config.parent_run_id is None:
                rows.append(_missing_row(config.label, len(columns), config.status))
                continue
            head = (
                _name_cell(config),
                Cell(protocol_label(config)),
                Cell(settings_label(config, None)),
                Cell(str(len(config.children))),
            )
            if config.status != "evaluated":
                rows.append(Row(head + _status_cells(config, len(columns) - len(head))))
                continue
            cells = (
                Cell(mean_std(config.summary("test_accuracy"), as_percent=True)),
                Cell(mean_std(config.summary("test_roc_auc"), as_percent=False)),
            )
            rows.append(Row(head + cells))
    return Table(
        caption=f"{dataset_title}: the thesis's split protocol and leakage-free ones",
        columns=columns,
        rows=tuple(rows),
        notes=(
            "The thesis protocol can put a patient or a duplicate image on both sides of "
            "the split; official and pooled cannot. Each protocol has its own test set. "
            "The differences between these rows, with intervals and whether the runs were "
            "trained alike, are in the comparisons table.",
        ),
    )


def _signed(value: float, as_percent: bool) -> str:
    return f"{100 * value:+.2f}" if as_percent else f"{value:+.3f}"


def delta_with_interval(
    difference: float | None, interval: Interval | None, as_percent: bool
) -> str:
    """ "+5.00 pp [−3.33, +13.33]" or "+0.020 [−0.031, +0.071]"; "(no interval)" without one."""
    if difference is None:
        return DASH
    unit = " pp" if as_percent else ""
    text = _signed(difference, as_percent) + unit
    if interval is None:
        return f"{text} (no interval)"
    return f"{text} [{_signed(interval.low, as_percent)}, {_signed(interval.high, as_percent)}]"


def _setting_values(differences: dict, suffix: str = "") -> list[str]:
    """ "epochs 10 vs 2" per differing setting (reference's value first); a value the run
    did not record reads "unknown" (and differs: the two cannot be shown to be alike)."""
    return [
        f"{SETTINGS[name][0]} {_known(reference)} vs {_known(candidate)}{suffix}"
        for name, (reference, candidate) in differences.items()
    ]


def _known(value: object) -> str:
    return "unknown" if value is None else str(value)


def _alike_cell(comparison: Comparison) -> Cell:
    intended = _setting_values(comparison.intended, " (intended)")
    if comparison.like_for_like:
        return Cell("; ".join(["yes", *intended]))
    return Cell("; ".join(["NO: " + "; ".join(_setting_values(comparison.differs)), *intended]))


def _pairing_cell(comparison: Comparison) -> Cell:
    sizes = [side.test_images for side in (comparison.reference, comparison.candidate)]
    if comparison.note is not None:
        return Cell(comparison.note)
    if comparison.paired:
        return Cell(f"paired: the same {sizes[0]}")
    return Cell(f"unpaired: {sizes[0]} vs {sizes[1]}")


def _delong_cell(comparison: Comparison) -> Cell:
    test = comparison.delong
    if test is None:
        return Cell(DASH)
    if test.p_value is None:
        return Cell(f"{DASH} (variance 0)")
    return Cell("< 0.001" if test.p_value < 0.001 else f"{test.p_value:.3f}")


COMPARISON_COLUMNS = (
    "candidate − reference",
    "tests",
    "like-for-like (reference vs candidate)",
    "test images",
    f"Δ test accuracy [{100 * CONFIDENCE:.0f} % CI]",
    f"Δ test ROC AUC [{100 * CONFIDENCE:.0f} % CI]",
    "DeLong p (ensemble AUC)",
)


def comparison_table(dataset_title: str, comparisons: Sequence[Comparison]) -> Table:
    """One row per compared pair and setting: Δ with its interval, and whether it is fair."""
    rows = []
    for comparison in comparisons:
        spec = comparison.spec
        if comparison.reference is None or comparison.candidate is None:
            name = f"{spec.candidate} − {spec.reference}"
            cells = (Cell(name), Cell(spec.tests), Cell(comparison.status))
            rows.append(Row(cells + (Cell(DASH),) * 4, kind="missing"))
            continue
        name = f"{flagged_label(comparison.candidate)} − {flagged_label(comparison.reference)}"
        accuracy, auc = (
            delta_with_interval(
                comparison.difference(metric), comparison.intervals.get(metric), percent
            )
            for metric, percent in (("accuracy", True), ("roc_auc", False))
        )
        cells = (
            Cell(name),
            Cell(spec.tests),
            _alike_cell(comparison),
            _pairing_cell(comparison),
            Cell(accuracy),
            Cell(auc),
            _delong_cell(comparison),
        )
        rows.append(Row(cells, kind="ours" if comparison.like_for_like else "unlike"))
    return Table(
        caption=f"{dataset_title}: comparisons, with how sure each difference is",
        columns=COMPARISON_COLUMNS,
        rows=tuple(rows),
        notes=COMPARISON_NOTES,
    )


COMPARISON_NOTES = (
    "Δ: the candidate's mean over its repeat trainings minus the reference's, of the "
    "same origin, device and profile. Like-for-like: epochs, image size, test-set size, "
    "split protocol, profile and device are equal, except those the pair is meant to "
    "change (marked 'intended', e.g. the split protocol and with it the test set); "
    "otherwise the row says NO and what differs, and its Δ mixes the tested change with "
    "those differences.",
    f"Interval: {100 * CONFIDENCE:.0f} % two-level bootstrap ({BOOTSTRAP_REPLICATES} "
    "replicates, percentile): each replicate resamples the test images within each "
    "class and each side's repeats. Paired: both were tested on the same images in the "
    "same order (their per-image predictions name the same files), and each replicate "
    "draws the same images for both, which keeps the two models' shared hard cases "
    "together; unpaired: each side resamples its own test set. A side with one repeat "
    "adds no training spread. An interval that excludes 0 is a difference larger than "
    "the chance of the trainings and of the test set would give.",
    "DeLong p (two classes only): DeLong's test of the ROC AUC of each side's "
    "seed-averaged probabilities (the ensemble), paired or unpaired as the images; the "
    "intervals are per comparison, not adjusted for the several comparisons made.",
)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _commit(config: Configuration) -> str:
    commit = config.tag("git_commit")
    short = commit[:10] if commit != "unknown" else commit
    return f"{short} (dirty)" if config.tag("git_dirty") == "true" else short


RUN_COLUMNS = (
    "configuration",
    "origin",
    "profile: settings",
    "device",
    "Keras backend",
    "images/s (median of repeats)",
    "training time (all repeats)",
    "weights",
    "git commit",
    "MLflow parent run",
)


def runs_table(configs: Sequence[Configuration], full: dict[str, Settings]) -> Table:
    """Where and how each configuration was trained, linked to its MLflow parent run."""
    rows = []
    for config in configs:
        if config.parent_run_id is None:
            rows.append(_missing_row(config.label, len(RUN_COLUMNS), config.status))
            continue
        speed = config.median("images_per_second")
        rows.append(
            Row(
                (
                    _name_cell(config),
                    Cell("imported" if config.imported else "pipeline"),
                    Cell(settings_label(config, full.get(config.name))),
                    Cell(config.tag("device")),
                    Cell(config.tag("keras_backend")),
                    Cell(DASH if speed is None else f"{speed:,.0f}"),
                    Cell(_duration(config.total("train_seconds"))),
                    Cell(config.weights),
                    Cell(_commit(config)),
                    Cell(config.parent_run_id, config.ui_url()),
                )
            )
        )
    return Table(
        caption="Runs: where and how each configuration was trained",
        columns=RUN_COLUMNS,
        rows=tuple(rows),
        notes=(
            "Training time: the sum of the repeats' training (train_seconds), without "
            "evaluation. Weights: run.model_options.weights (none, imagenet, a file or an "
            "MLflow model URI); 'model default' when the run did not set it. Tags a run "
            "does not carry read 'unknown'.",
        ),
    )
