"""The split stage: the fetch manifest -> train/val/test lists under each named protocol.

Every protocol in `split.protocols` (params.yaml) is written side by side, to
data/splits/<dataset>/<protocol>/, from the same leak groups, so that runs can compare
protocols on the same fetched data (`runs.<name>.split_protocol` picks one). Protocols:

- official: test is the source's test split, as published. Val is carved from the
  source train (+ source val) images, grouped by leak group and stratified by label.
  Train/val images whose leak group also occurs in the source test (same patient,
  byte-identical, near-duplicate, neighbour or consecutive file) are excluded and listed
  in the report.
- pooled: all images pooled, then test and val carved off, grouped by leak group and
  stratified by label; every leak group lies on one side.
- thesis: the thesis's own protocol, kept for like-for-like comparison; it ignores
  patients and duplicates, so the report says "leaky": true and counts the overlaps.
  chest_xray layout: source train+val split 80/20 (thesis_test_fraction) into
  train/test; the official test set becomes val. mri layout: everything pooled and
  split into train/val/test (test_fraction, val_fraction).

`test_fraction` is the share of all images that go to test; `val_fraction` is the share
of the remaining (non-test) images that go to val, in every protocol. Grouped protocols
use StratifiedGroupKFold with n_splits = round(1 / fraction) and take its first fold, so
the realised fractions are 1/n_splits, approximately.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medimg import atomic, paths
from medimg.config.datasets import DatasetConfig, SplitConfig, SplitProtocol
from medimg.data.duplicates import leak_groups
from medimg.data.manifest import MANIFEST_COLUMNS, SPLITS
from medimg.errors import UserError

log = logging.getLogger(__name__)

SOURCE_SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"  # assignment of official-protocol images dropped for leaking into test
LAYOUTS = ("chest_xray", "mri")
REPORT_FILE = "split_report.json"


class SplitError(UserError, ValueError):
    """The manifest cannot be split as configured, or the split would leak."""


def read_manifest(path: Path, dataset: str) -> pd.DataFrame:
    """Read a fetch manifest, every column as text so that values round-trip unchanged."""
    if not path.is_file():
        raise SplitError(
            f"{path}: manifest not found; run the fetch stage first: dvc repro fetch@{dataset}"
        )
    # dtype=str and no NA parsing: a phash such as "0000000000001234" must stay text, and
    # the CSVs written later must repeat the manifest's values byte for byte.
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    check_manifest(manifest, source=str(path))
    return manifest


def check_manifest(manifest: pd.DataFrame, source: str = "manifest") -> None:
    """Raise SplitError unless `manifest` has the contract's columns and valid values."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise SplitError(
            f"{source}: missing column(s) {missing}; expected {list(MANIFEST_COLUMNS)}, "
            f"got {list(manifest.columns)} (a manifest of an older fetch: re-run the fetch stage)"
        )
    if manifest.empty:
        raise SplitError(f"{source}: no images listed")
    bad_source = sorted(set(manifest["source_split"]) - set(SOURCE_SPLITS))
    if bad_source:
        raise SplitError(
            f"{source}: column source_split has value(s) {bad_source}; "
            f"allowed: {list(SOURCE_SPLITS)}"
        )
    duplicated = manifest["path"][manifest["path"].duplicated()]
    if not duplicated.empty:
        raise SplitError(f"{source}: path listed more than once, e.g. {list(duplicated[:3])}")


def neighbour_rule(cfg: SplitConfig) -> tuple[int, int] | None:
    """(max phash distance, max dhash distance) of the neighbour check, None when it is off."""
    if cfg.neighbour_max_phash_distance is None:
        return None
    return cfg.neighbour_max_phash_distance, cfg.neighbour_max_dhash_distance


def add_leak_groups(
    manifest: pd.DataFrame,
    max_distance: int,
    neighbours: tuple[int, int] | None = None,
    consecutive: int | None = None,
) -> pd.DataFrame:
    """Return the manifest sorted by path with an int `leak_group` column added.

    `max_distance`, `neighbours` and `consecutive` are `leak_groups`'s. Sorting first
    makes the leak-group numbers depend on the images only, not on the row order the
    manifest came in.
    """
    ordered = manifest.sort_values("path", kind="stable").reset_index(drop=True)
    try:
        groups = leak_groups(ordered, max_distance, neighbours, consecutive)
    except ValueError as err:
        raise SplitError(f"manifest: {err}") from None
    return ordered.assign(leak_group=groups)


def _group_counts_per_class(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby("label")["leak_group"].nunique()


def _grouped_holdout(rows: pd.DataFrame, fraction: float, seed: int, what: str) -> pd.Index:
    """Index of the rows in one StratifiedGroupKFold fold of size about `fraction`.

    Grouped by `leak_group`, stratified by `label`. `what` names the holdout in errors.
    """
    if rows.empty:
        raise SplitError(f"no images left to carve {what} from; every split must have images")
    n_splits = round(1 / fraction)
    if n_splits < 2:
        raise SplitError(
            f"{what}_fraction = {fraction} gives n_splits = round(1/{fraction}) = {n_splits}; "
            "a grouped split needs at least 2 (use a fraction <= 0.66)"
        )
    groups_per_class = _group_counts_per_class(rows)
    too_few = groups_per_class[groups_per_class < n_splits]
    if not too_few.empty:
        raise SplitError(
            f"cannot carve {what} ({what}_fraction = {fraction}, n_splits = {n_splits}): "
            f"class(es) with fewer leak groups than n_splits: {too_few.to_dict()}; "
            f"need at least {n_splits} groups (patients or distinct images) per class"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, holdout = next(folds.split(rows, rows["label"], groups=rows["leak_group"]))
    return rows.index[holdout]


def _stratified_holdout(rows: pd.DataFrame, fraction: float, seed: int, what: str) -> pd.Index:
    """Index of a stratified random holdout ignoring groups (the thesis protocol)."""
    try:
        _, holdout = train_test_split(
            rows.index, test_size=fraction, stratify=rows["label"], random_state=seed
        )
    except ValueError as err:
        raise SplitError(
            f"cannot carve {what} ({what} fraction = {fraction}) from "
            f"{len(rows)} images stratified by label {rows['label'].value_counts().to_dict()}: "
            f"{err}"
        ) from None
    return pd.Index(holdout)


def _assign_official(rows: pd.DataFrame, cfg: SplitConfig) -> pd.Series:
    assignment = pd.Series("train", index=rows.index, dtype=object)
    is_test = rows["source_split"] == "test"
    if not is_test.any():
        raise SplitError(
            "protocol 'official' needs the source's test split, but the manifest has source "
            f"splits {sorted(set(rows['source_split']))}; use protocol 'pooled' instead"
        )
    assignment[is_test] = "test"
    leaks_into_test = ~is_test & rows["leak_group"].isin(rows.loc[is_test, "leak_group"])
    assignment[leaks_into_test] = EXCLUDED
    pool = rows[~is_test & ~leaks_into_test]
    assignment[_grouped_holdout(pool, cfg.val_fraction, cfg.seed, "val")] = "val"
    return assignment


def _assign_pooled(rows: pd.DataFrame, cfg: SplitConfig) -> pd.Series:
    assignment = pd.Series("train", index=rows.index, dtype=object)
    test = _grouped_holdout(rows, cfg.test_fraction, cfg.seed, "test")
    assignment[test] = "test"
    rest = rows[assignment == "train"]
    assignment[_grouped_holdout(rest, cfg.val_fraction, cfg.seed, "val")] = "val"
    return assignment


def _assign_thesis(rows: pd.DataFrame, cfg: SplitConfig, layout: str) -> pd.Series:
    assignment = pd.Series("train", index=rows.index, dtype=object)
    if layout == "chest_xray":
        is_test = rows["source_split"] == "test"
        if not is_test.any():
            raise SplitError(
                "protocol 'thesis' (chest_xray layout) uses the source test split as val, "
                "but the manifest has none"
            )
        assignment[is_test] = "val"
        pool = rows[~is_test]
        assignment[_stratified_holdout(pool, cfg.thesis_test_fraction, cfg.seed, "test")] = "test"
    else:
        assignment[_stratified_holdout(rows, cfg.test_fraction, cfg.seed, "test")] = "test"
        rest = rows[assignment == "train"]
        assignment[_stratified_holdout(rest, cfg.val_fraction, cfg.seed, "val")] = "val"
    return assignment


def assign_splits(
    manifest: pd.DataFrame, cfg: SplitConfig, layout: str, protocol: SplitProtocol
) -> pd.Series:
    """Which split each image goes to under `protocol`.

    Args:
        manifest: fetch manifest with a `leak_group` column (see `add_leak_groups`).
        cfg: the dataset's split parameters (fractions, seed).
        layout: "chest_xray" or "mri" (DatasetConfig.layout); matters for the thesis
            protocol only.
        protocol: "official", "pooled" or "thesis".

    Returns:
        Series aligned with `manifest.index` holding "train", "val", "test", or
        "excluded" (official protocol: the image shares a leak group with a test image).
        The result depends on the images, not on the manifest's row order.
    """
    if layout not in LAYOUTS:
        raise SplitError(f"layout = {layout!r}; allowed: {list(LAYOUTS)}")
    if "leak_group" not in manifest.columns:
        raise SplitError("manifest has no 'leak_group' column; call add_leak_groups first")
    check_manifest(manifest)
    # Work in path order so that sklearn's shuffles see the same sequence whatever the
    # caller's row order.
    rows = manifest.sort_values("path", kind="stable")
    rows = rows.assign(leak_group=pd.factorize(rows["leak_group"])[0])
    if protocol == "official":
        assignment = _assign_official(rows, cfg)
    elif protocol == "pooled":
        assignment = _assign_pooled(rows, cfg)
    elif protocol == "thesis":
        assignment = _assign_thesis(rows, cfg, layout)
    else:
        raise SplitError(f"protocol = {protocol!r}; allowed: ['official', 'pooled', 'thesis']")
    return assignment.reindex(manifest.index)


def _linking_rules(cfg: SplitConfig) -> str:
    """The rules that join images into one leak group, as said in exclusion reasons."""
    rules = f"patients, identical files or phash distance <= {cfg.near_duplicate_max_distance}"
    neighbours = neighbour_rule(cfg)
    if neighbours is not None:
        rules += f" or neighbours (phash <= {neighbours[0]} and dhash <= {neighbours[1]})"
    if cfg.consecutive_max_dhash_distance is not None:
        rules += (
            " or consecutive files (numbered n, n + 1 in one folder) with dhash <= "
            f"{cfg.consecutive_max_dhash_distance}"
        )
    return rules


def _exclusion_reason(row: pd.Series, test: pd.DataFrame, rules: str) -> str:
    same_group = test[test["group_id"] == row["group_id"]]
    if not same_group.empty:
        return (
            f"same group_id {row['group_id']!r} as source test image {same_group['path'].iloc[0]}"
        )
    same_bytes = test[test["sha256"] == row["sha256"]]
    if not same_bytes.empty:
        return f"byte-identical to source test image {same_bytes['path'].iloc[0]}"
    linked = test[test["leak_group"] == row["leak_group"]]
    return (
        f"in leak group {row['leak_group']} with source test image {linked['path'].iloc[0]} "
        f"(linked through {rules})"
    )


def _pair_overlaps(rows: pd.DataFrame, assignment: pd.Series, column: str) -> dict[str, int]:
    """For each pair of splits, the number of distinct `column` values found on both sides."""
    values = {s: set(rows.loc[assignment == s, column]) for s in SPLITS}
    return {f"{a}|{b}": len(values[a] & values[b]) for a, b in itertools.combinations(SPLITS, 2)}


def split_report(
    manifest: pd.DataFrame,
    assignment: pd.Series,
    *,
    dataset: str,
    protocol: SplitProtocol,
    cfg: SplitConfig,
    layout: str,
    classes: list[str],
) -> dict[str, Any]:
    """Counts, overlaps and exclusions of a split, as written to split_report.json.

    Args:
        manifest: manifest with `leak_group` (see `add_leak_groups`).
        assignment: `assign_splits`'s result for that manifest under `protocol`.
    """
    counts = {
        split: {c: int(((assignment == split) & (manifest["label"] == c)).sum()) for c in classes}
        for split in SPLITS
    }
    has_patients = layout == "chest_xray"
    patient_overlap = _pair_overlaps(manifest, assignment, "group_id") if has_patients else None
    test = manifest[assignment == "test"]
    rules = _linking_rules(cfg)
    excluded = [
        {"path": row["path"], "reason": _exclusion_reason(row, test, rules)}
        for _, row in manifest[assignment == EXCLUDED].sort_values("path").iterrows()
    ]
    leaky = protocol == "thesis"
    return {
        "dataset": dataset,
        "protocol": protocol,
        "layout": layout,
        "seed": cfg.seed,
        "leaky": leaky,
        "counts": counts,
        "totals": {split: int((assignment == split).sum()) for split in SPLITS},
        "patient_overlap": patient_overlap,
        "duplicate_overlap": _pair_overlaps(manifest, assignment, "leak_group"),
        "excluded": excluded,
        "near_duplicate_max_distance": cfg.near_duplicate_max_distance,
        "neighbour_max_phash_distance": cfg.neighbour_max_phash_distance,
        "neighbour_max_dhash_distance": cfg.neighbour_max_dhash_distance,
        "consecutive_max_dhash_distance": cfg.consecutive_max_dhash_distance,
        "n_leak_groups": int(manifest["leak_group"].nunique()),
        "largest_leak_group": int(manifest["leak_group"].value_counts().max()),
        "notes": _report_notes(has_patients, leaky, len(excluded)),
    }


def _report_notes(has_patients: bool, leaky: bool, n_excluded: int) -> list[str]:
    notes = []
    if not has_patients:
        notes.append(
            "patient_overlap is null: the mri layout has no patient ids (group_id is a "
            "content hash); duplicate_overlap covers identical, near-duplicate, "
            "neighbour and consecutive images"
        )
    if leaky:
        notes.append(
            "protocol 'thesis' ignores patients and duplicates (as the thesis did): the "
            "overlaps above are leaks, so its test scores are optimistic"
        )
    if n_excluded:
        notes.append(
            f"{n_excluded} train/val image(s) share a leak group with the source test set "
            "and are left out so that the published test set stays intact"
        )
    return notes


def _check_report(report: dict[str, Any], classes: list[str]) -> None:
    """Raise SplitError if a split is empty, lacks a class, or (non-thesis) leaks."""
    for split in SPLITS:
        if report["totals"][split] == 0:
            raise SplitError(f"split {split!r} would be empty; counts: {report['counts']}")
        absent = [c for c in classes if report["counts"][split][c] == 0]
        if absent:
            raise SplitError(
                f"split {split!r} would have no image of class(es) {absent}; "
                f"counts: {report['counts']}"
            )
    if report["leaky"]:
        return
    leaks = {
        f"{kind} {pair}": n
        for kind in ("patient_overlap", "duplicate_overlap")
        for pair, n in (report[kind] or {}).items()
        if n
    }
    if leaks:
        raise SplitError(
            f"protocol {report['protocol']!r} must not leak, but splits share groups: {leaks}"
        )


def _split_files(
    rows: pd.DataFrame, cfg: DatasetConfig, name: str, protocol: SplitProtocol
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """One protocol's files ({file name: content}) and report; raises SplitError naming it."""
    try:
        assignment = assign_splits(rows, cfg.split, cfg.layout, protocol)
        report = split_report(
            rows,
            assignment,
            dataset=name,
            protocol=protocol,
            cfg=cfg.split,
            layout=cfg.layout,
            classes=cfg.classes,
        )
        _check_report(report, cfg.classes)
    except SplitError as err:
        raise SplitError(f"{name}, protocol {protocol!r}: {err}") from None
    columns = [*MANIFEST_COLUMNS, "leak_group"]
    files = {
        f"{split}.csv": rows.loc[assignment == split, columns]
        .to_csv(index=False, lineterminator="\n")
        .encode()
        for split in SPLITS
    }
    files[REPORT_FILE] = (json.dumps(report, indent=2) + "\n").encode()
    return files, report


def split_dataset(
    name: str, cfg: DatasetConfig, raw: Path | None = None, dest: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Run the split stage for one dataset; returns {protocol: its split_report.json}.

    Reads `raw`/manifest.csv (default paths.raw_dir(name)) and writes, for each protocol of
    `cfg.split.protocols`, `dest`/<protocol>/ with train.csv, val.csv, test.csv (manifest
    columns + leak_group, sorted by path) and split_report.json (`dest` defaults to
    paths.splits_root(name)). Writes nothing if any protocol fails a check.
    """
    started = time.perf_counter()
    raw = paths.raw_dir(name) if raw is None else Path(raw)
    dest = paths.splits_root(name) if dest is None else Path(dest)
    manifest_path = raw / "manifest.csv"
    manifest = read_manifest(manifest_path, name)
    unknown = sorted(set(manifest["label"]) - set(cfg.classes))
    if unknown:
        raise SplitError(
            f"{manifest_path}: label(s) {unknown} are not in datasets.{name}.classes {cfg.classes}"
        )
    rows = add_leak_groups(
        manifest,
        cfg.split.near_duplicate_max_distance,
        neighbour_rule(cfg.split),
        cfg.split.consecutive_max_dhash_distance,
    )
    outputs = {
        protocol: _split_files(rows, cfg, name, protocol) for protocol in cfg.split.protocols
    }
    # One swap for every protocol: the folder holds all of them from one run, or the old ones.
    with atomic.building(dest) as staging:
        for protocol, (files, _) in outputs.items():
            (staging / protocol).mkdir()
            for file_name, content in files.items():
                (staging / protocol / file_name).write_bytes(content)
    log.info("split %s: %.1f s", name, time.perf_counter() - started)
    return {protocol: report for protocol, (_, report) in outputs.items()}


__all__ = [
    "EXCLUDED",
    "MANIFEST_COLUMNS",
    "SPLITS",
    "SplitError",
    "add_leak_groups",
    "assign_splits",
    "check_manifest",
    "neighbour_rule",
    "read_manifest",
    "split_dataset",
    "split_report",
]
