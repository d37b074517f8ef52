"""Measure the MRI leak-group rules on a full archive: what crosses a split, what is joined.

    python benchmarks/mri_neighbours.py --archive ../shared/datasets/brain_tumor_mri.zip \
        --out docs/mri_neighbours.json --sheet docs/mri_neighbours.png

Fetches the archive with the project's fetch stage into a scratch root (MEDIMG_ROOT),
then compares the old rule (identical files + phash distance <= near_duplicate_max_distance)
with the new one (+ the neighbour check of params.yaml) and a grid of neighbour thresholds.

"Near-identical" is defined independently of both rules, from pixels: the Pearson
correlation of two images' 128 x 128 greyscale thumbnails, taken of the whole frame and of
the non-black content (re-cropped copies), the larger of the two, at or above --near
(0.90, chosen by eye on contact sheets of pairs around it). For each rule it prints the
near-identical pairs left in different leak groups (any grouped split may put them on
two sides) and those an actual `pooled` and `official` split put on two sides, the pairs
it joins whose labels differ, the number of leak groups, the largest, the groups holding
two labels, and the split sizes. Writes the figures as JSON and a contact sheet PNG of
pairs the new rule joins, near-identical pairs it leaves apart, and joined pairs with
different labels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageDraw

from medimg.config.datasets import SplitConfig
from medimg.config.params import parse_params
from medimg.data.duplicates import (
    dhash_to_words,
    neighbour_pairs,
    pair_distances,
    phash_distances,
)
from medimg.data.fetch import fetch_dataset
from medimg.data.images import content_box
from medimg.data.split import SPLITS, add_leak_groups, assign_splits, neighbour_rule

REPO = Path(__file__).resolve().parents[1]
DATASET = "brain_tumor_mri"
THUMB = 128
EXAMPLES = [  # the datasets README's: adjacent slices; a Training/Testing pair (manifest paths)
    ("images/train/glioma_tumor/gg (18).jpg", "images/train/glioma_tumor/gg (19).jpg"),
    ("images/train/meningioma_tumor/m3 (140).jpg", "images/test/meningioma_tumor/image(66).jpg"),
]


def fetch(archive: Path, root: Path) -> tuple[pd.DataFrame, SplitConfig]:
    """The fetch stage on `archive` under `root`: the manifest and the full-local split config."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = parse_params({**raw, "profile": "full-local"})
    cfg = params.dataset(DATASET)
    cfg = cfg.model_copy(
        update={"fetch": cfg.fetch.model_copy(update={"source": str(archive.resolve())})}
    )
    os.environ["MEDIMG_ROOT"] = str(root)
    fetch_dataset(DATASET, cfg)
    manifest = pd.read_csv(
        root / "data" / "raw" / DATASET / "manifest.csv", dtype=str, keep_default_na=False
    )
    return manifest.sort_values("path", kind="stable").reset_index(drop=True), cfg.split


def correlations(images: list[Path]) -> np.ndarray:
    """(N, N) float32: max of whole-frame and content-crop thumbnail correlations."""
    whole, content = [], []
    for path in images:
        with Image.open(path) as image:
            grey = image.convert("L")
        whole.append(np.asarray(grey.resize((THUMB, THUMB), Image.Resampling.BOX)))
        cropped = grey.crop(content_box(grey))
        content.append(np.asarray(cropped.resize((THUMB, THUMB), Image.Resampling.BOX)))
    best = None
    for thumbs in (whole, content):
        x = np.stack(thumbs).reshape(len(thumbs), -1).astype(np.float32)
        x -= x.mean(axis=1, keepdims=True)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        c = x @ x.T
        best = c if best is None else np.maximum(best, c)
    return best


def labels_of(manifest: pd.DataFrame) -> np.ndarray:
    return manifest["label"].to_numpy(dtype=object)


def evaluate(
    manifest: pd.DataFrame, cfg: SplitConfig, near: np.ndarray, neighbours: tuple | None
) -> dict:
    """Figures of one rule. `near`: (K, 2) near-identical pairs of distinct files."""
    rows = add_leak_groups(manifest, cfg.near_duplicate_max_distance, neighbours)
    groups = rows["leak_group"].to_numpy()
    labels = labels_of(rows)
    sizes = np.bincount(groups)
    mixed = [g for g in np.flatnonzero(sizes > 1) if len(set(labels[groups == g])) > 1]
    apart = groups[near[:, 0]] != groups[near[:, 1]]
    figures = {
        "leak_groups": len(sizes),
        "largest_leak_group": int(sizes.max()),
        "groups_with_two_labels": len(mixed),
        "images_in_groups_with_two_labels": int(sizes[mixed].sum()),
        "near_identical_pairs_in_different_groups": int(apart.sum()),
        "splits": {},
    }
    for protocol in ("pooled", "official", "thesis"):
        side = assign_splits(rows, cfg, "mri", protocol).to_numpy(dtype=object)
        crossing = (side[near[:, 0]] != side[near[:, 1]]) & np.isin(side[near], SPLITS).all(1)
        figures["splits"][protocol] = {
            "sizes": {s: int((side == s).sum()) for s in (*SPLITS, "excluded")},
            "near_identical_pairs_across_splits": int(crossing.sum()),
        }
    return figures, groups


def joined_pairs(groups: np.ndarray) -> np.ndarray:
    """(K, 2) pairs i < j in one leak group; `groups`: the leak group of each image."""
    i, j = np.triu_indices(len(groups), 1)
    same = groups[i] == groups[j]
    return np.stack([i[same], j[same]], axis=1)


def grid(manifest: pd.DataFrame, cfg: SplitConfig, near: np.ndarray) -> list[dict]:
    """Near-identical pairs kept together and the largest group, per neighbour threshold."""
    results = []
    for max_phash in (8, 10, 12, 14, 16, 64):
        for max_dhash in range(34, 48, 2):
            rows = add_leak_groups(
                manifest, cfg.near_duplicate_max_distance, (max_phash, max_dhash)
            )
            groups = rows["leak_group"].to_numpy()
            together = groups[near[:, 0]] == groups[near[:, 1]]
            results.append(
                {
                    "neighbour_max_phash_distance": max_phash,
                    "neighbour_max_dhash_distance": max_dhash,
                    "near_identical_kept_together": round(float(together.mean()), 3),
                    "largest_leak_group": int(np.bincount(groups).max()),
                }
            )
    return results


def whole_frame_only(manifest: pd.DataFrame, cfg: SplitConfig, near: np.ndarray) -> dict:
    """The neighbour check without the content box: both dhash columns the whole frame's."""
    rows = add_leak_groups(
        manifest.assign(content_dhash=manifest["dhash"]),
        cfg.near_duplicate_max_distance,
        neighbour_rule(cfg),
    )
    groups = rows["leak_group"].to_numpy()
    together = groups[near[:, 0]] == groups[near[:, 1]]
    return {
        "near_identical_kept_together": round(float(together.mean()), 3),
        "largest_leak_group": int(np.bincount(groups).max()),
    }


def pair_description(manifest: pd.DataFrame, corr: np.ndarray, i: int, j: int) -> dict:
    hashes = manifest.iloc[[i, j]]
    pair = np.array([[0, 1]])
    return {
        "a": hashes["path"].iloc[0],
        "b": hashes["path"].iloc[1],
        "labels": [hashes["label"].iloc[0], hashes["label"].iloc[1]],
        "phash": int(phash_distances(hashes["phash"][:1], hashes["phash"][1:])[0, 0]),
        "dhash": int(pair_distances(dhash_to_words(hashes["dhash"]), pair)[0]),
        "content_dhash": int(
            pair_distances(dhash_to_words(hashes["content_dhash"], "content_dhash"), pair)[0]
        ),
        "correlation": round(float(corr[i, j]), 3),
    }


def contact_sheet(images: Path, panels: list[tuple[str, list[dict]]], out: Path) -> None:
    """Each panel a title line, then its pairs three to a row: two thumbnails, distances."""
    size, per_row, text_height = 120, 3, 70
    cell_width, cell_height = 2 * size + 12, size + text_height
    heights = [20 + cell_height * -(-len(pairs) // per_row) for _, pairs in panels]
    sheet = Image.new("RGB", (per_row * cell_width, sum(heights)), "white")
    draw, top = ImageDraw.Draw(sheet), 0
    for (title, pairs), height in zip(panels, heights, strict=True):
        draw.text((4, top + 4), title, fill="black")
        for k, pair in enumerate(pairs):
            x, y = (k % per_row) * cell_width, top + 20 + (k // per_row) * cell_height
            for m, rel in enumerate((pair["a"], pair["b"])):
                with Image.open(images / rel) as image:
                    thumb = image.convert("RGB")
                thumb.thumbnail((size, size))
                sheet.paste(thumb, (x + m * size, y))
            lines = [
                f"{pair['a'].split('/')[1]}: {Path(pair['a']).name} ({pair['labels'][0][:5]})",
                f"{pair['b'].split('/')[1]}: {Path(pair['b']).name} ({pair['labels'][1][:5]})",
                f"phash {pair['phash']}, dhash {pair['dhash']}, content {pair['content_dhash']}",
                f"correlation {pair['correlation']}",
            ]
            draw.multiline_text((x + 2, y + size + 2), "\n".join(lines), fill="black", spacing=2)
        top += height
    sheet.convert("L").save(out, optimize=True)  # MRI are grey: RGB adds only bytes


def sheet_panels(
    manifest: pd.DataFrame,
    cfg: SplitConfig,
    corr: np.ndarray,
    cut: float,
    groups: dict[str, np.ndarray],
) -> list[tuple[str, list[dict]]]:
    """Pairs to look at: just under and just over the near-identical `cut` (6 each, at
    random); joined by the neighbour check, not by the old rule (9 at random);
    near-identical pairs it leaves apart (6 at random); its direct links between two
    labels (all). `groups`: the leak group of each image under "old" and "new"."""
    rng = np.random.default_rng(0)
    labels, old, new = labels_of(manifest), groups["old"], groups["new"]
    links = neighbour_pairs(manifest, *neighbour_rule(cfg)).tolist()
    new_links = [p for p in links if old[p[0]] != old[p[1]]]
    two_labels = [p for p in new_links if labels[p[0]] != labels[p[1]]]
    sha = manifest["sha256"].to_numpy(dtype=object)
    i, j = np.triu_indices(len(manifest), 1)

    def between(low: float, high: float) -> list:
        inside = (sha[i] != sha[j]) & (corr[i, j] >= low) & (corr[i, j] < high)
        return np.stack([i[inside], j[inside]], axis=1).tolist()

    def sample(pairs: list, n: int) -> list[dict]:
        chosen = sorted(rng.choice(len(pairs), min(n, len(pairs)), replace=False))
        return [pair_description(manifest, corr, *pairs[k]) for k in chosen]

    apart = [p for p in between(cut, 2.0) if new[p[0]] != new[p[1]]]
    below, above = f"{cut - 0.02:.2f} to {cut:.2f}", f"{cut:.2f} to {cut + 0.02:.2f}"
    return [
        (
            f"Correlation {below}: not near-identical (6 at random)",
            sample(between(cut - 0.02, cut), 6),
        ),
        (f"Correlation {above}: near-identical (6 at random)", sample(between(cut, cut + 0.02), 6)),
        ("Linked by the neighbour check, not by the old rule (9 at random)", sample(new_links, 9)),
        (f"Near-identical (correlation >= {cut}) but still apart (6 at random)", sample(apart, 6)),
        (
            f"Neighbour links between two labels (all {len(two_labels)})",
            sample(two_labels, len(two_labels)),
        ),
    ]


def examples(manifest: pd.DataFrame, corr: np.ndarray, old: np.ndarray, new: np.ndarray) -> list:
    index = {path: k for k, path in enumerate(manifest["path"])}
    found = []
    for a, b in EXAMPLES:
        i, j = index[a], index[b]
        found.append(
            {
                **pair_description(manifest, corr, i, j),
                "old_same_group": bool(old[i] == old[j]),
                "new_same_group": bool(new[i] == new[j]),
            }
        )
    return found


def measure(archive: Path, near_threshold: float, sheet: Path, root: Path) -> dict:
    """Every figure of the module docstring, for `archive` fetched under `root`."""
    manifest, cfg = fetch(archive, root)
    images = root / "data" / "raw" / DATASET
    corr = correlations([images / p for p in manifest["path"]])
    sha = manifest["sha256"].to_numpy(dtype=object)
    i, j = np.triu_indices(len(manifest), 1)
    keep = (corr[i, j] >= near_threshold) & (sha[i] != sha[j])
    near = np.stack([i[keep], j[keep]], axis=1)
    labels = labels_of(manifest)
    rules, groups = {}, {}
    for name, neighbours in (("old", None), ("new", neighbour_rule(cfg))):
        rules[name], groups[name] = evaluate(manifest, cfg, near, neighbours)
        pairs = joined_pairs(groups[name])
        rules[name]["joined_pairs_with_two_labels"] = int(
            (labels[pairs[:, 0]] != labels[pairs[:, 1]]).sum()
        )
    links = neighbour_pairs(manifest, *neighbour_rule(cfg))
    rules["new"]["neighbour_links"] = len(links)
    rules["new"]["neighbour_links_between_two_labels"] = int(
        (labels[links[:, 0]] != labels[links[:, 1]]).sum()
    )
    contact_sheet(images, sheet_panels(manifest, cfg, corr, near_threshold, groups), sheet)
    return {
        "command": " ".join(sys.argv),
        "near_identical": f"max(whole frame, content) {THUMB} px correlation >= {near_threshold}",
        "images": len(manifest),
        "near_identical_pairs": len(near),
        "rules": {
            "old": {"near_duplicate_max_distance": cfg.near_duplicate_max_distance, **rules["old"]},
            "new": {"neighbours": neighbour_rule(cfg), **rules["new"]},
        },
        "examples": examples(manifest, corr, groups["old"], groups["new"]),
        "grid": grid(manifest, cfg, near),
        "whole_frame_dhash_only": whole_frame_only(manifest, cfg, near),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--near", type=float, default=0.90, help="near-identical correlation")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mri_neighbours.json")
    parser.add_argument("--sheet", type=Path, default=REPO / "docs" / "mri_neighbours.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medimg-neighbours-") as scratch:
        results = measure(args.archive, args.near, args.sheet, Path(scratch))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    shown = {k: results[k] for k in ("images", "near_identical_pairs", "rules", "examples")}
    print(json.dumps(shown, indent=1))
    print(f"written: {args.out}, {args.sheet}")


if __name__ == "__main__":
    main()
