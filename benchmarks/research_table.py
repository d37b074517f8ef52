"""Print the research variants of docs/research/*.json as Markdown tables, one per
dataset and decision rule: mean ± std over the seeds (ddof=1), then the ensemble of the
seeds' predictions, validation first, test after.

    python benchmarks/research_table.py                     # every variant
    python benchmarks/research_table.py xray_baseline xray_balanced

The tables in docs/research.md are this script's output, pasted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

RESEARCH = Path(__file__).resolve().parents[1] / "docs" / "research"
BINARY_COLUMNS = ("accuracy", "roc_auc", "specificity", "recall")
MULTICLASS_COLUMNS = ("accuracy", "balanced_accuracy", "roc_auc", "f1")


def _cell(summary: dict, metric: str) -> str:
    value = summary.get(metric)
    if value is None:
        return "–"
    if value.get("std") is None:
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def _plain(ensemble: dict, metric: str) -> str:
    value = ensemble.get(metric) if ensemble else None
    return "–" if value is None else f"{value:.3f}"


def _columns(variant: dict) -> tuple[str, ...]:
    # a binary variant's per-seed rows carry the decision threshold they used
    first_seed = next(iter(variant["results"]["argmax"]["test_per_seed"].values()))
    return BINARY_COLUMNS if "threshold" in first_seed else MULTICLASS_COLUMNS


def table(variants: list[dict], rule: str) -> str:
    """One Markdown table of the variants under one decision rule (argmax, youden_val)."""
    columns = _columns(variants[0])
    header = (
        ["variant", "seeds", "changed", "val accuracy", "val roc_auc"]
        + [f"test {c}" for c in columns]
        + ["ensemble test accuracy", "s / seed"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for variant in variants:
        results = variant["results"].get(rule)
        if results is None:
            continue
        seconds = sorted(variant["train_seconds_per_seed"])
        median = seconds[len(seconds) // 2]
        changed = ", ".join(variant["settings"] + variant["dataset_settings"]) or "(profile)"
        row = [
            f"{variant['name']} (`{variant['run']}`)",
            str(len(variant["train_seconds_per_seed"])),
            f"`{changed}`",
            _cell(results["val"], "accuracy"),
            _cell(results["val"], "roc_auc"),
            *(_cell(results["test"], c) for c in columns),
            _plain(results.get("test_ensemble"), "accuracy"),
            f"{median:.0f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def variant_dataset(variant: dict, runs: dict) -> str:
    """The dataset a variant trained on: its `--set dataset=...` if any, else its run's."""
    for setting in variant["settings"]:
        key, _, value = setting.partition("=")
        if key == "dataset":
            return value
    return runs[variant["run"]]["dataset"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="variant names (default: all)")
    args = parser.parse_args()
    files = [RESEARCH / f"{n}.json" for n in args.names] or sorted(RESEARCH.glob("*.json"))
    records = {f: json.loads(f.read_text()) for f in files}
    # research_study.py's records hold a study's trials, not a variant's results
    studies = [f.name for f, record in records.items() if "trials" in record]
    if args.names and studies:
        raise SystemExit(f"{', '.join(studies)}: a study's record, not a variant's; leave it out")
    variants = [record for record in records.values() if "trials" not in record]
    runs = yaml.safe_load((RESEARCH.parents[1] / "params.yaml").read_text())["runs"]
    by_dataset: dict[str, list[dict]] = {}
    for variant in variants:
        by_dataset.setdefault(variant_dataset(variant, runs), []).append(variant)
    for dataset, group in by_dataset.items():
        for rule in ("argmax", "youden_val"):
            if any(rule in v["results"] for v in group):
                print(f"\n### {dataset}, decision rule `{rule}`\n")
                print(table(group, rule))


if __name__ == "__main__":
    main()
