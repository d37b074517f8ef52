"""Measure the MRI leak-group rules on a full archive: what crosses a split, what is joined.

    python benchmarks/mri_neighbours.py --archive ../shared/datasets/brain_tumor_mri.zip \
        --out docs/mri_neighbours.json --sheet docs/mri_neighbours.png

Fetches the archive with the project's fetch stage into a scratch root (MEDIMG_ROOT),
then compares three rules: "old" (identical files + phash distance <=
near_duplicate_max_distance), "neighbours" (+ the neighbour check of params.yaml) and
"consecutive" (+ the consecutive-file check of params.yaml: the project's rule), with a
grid of neighbour thresholds (without the consecutive check) and one of consecutive
dhash distances (with the neighbour check).

Two pixel measures, independent of every hash. "Near-identical": the Pearson correlation
of two images' 128 x 128 greyscale thumbnails, taken of the whole frame and of the
non-black content (re-cropped copies), the larger of the two, at or above --near (0.90,
chosen by eye on contact sheets of pairs around it). "Adjacent slices": consecutive
files (numbered n and n + 1 in one series of one class folder) whose correlation is at
or above --adjacent (0.80); the share of the other pairs of one class folder that reach
it is printed as the chance level. For each rule it gives the near-identical and
adjacent pairs left in different leak groups (any grouped split may put them on two
sides) and those an actual `pooled` and `official` split put on two sides, with the
val and test images that have such a partner in train; the pairs it joins whose labels
differ (false merges: one leak group never holds two labels by right), the number of
leak groups, the largest, the groups holding two labels, and the split sizes. Writes the
figures as JSON and a contact sheet PNG of pairs each check joins, pairs left apart, and
joined pairs with different labels or unalike images.
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
    consecutive_pairs,
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
# Correlation under which a joined consecutive pair counts as unalike: about the 90th
# percentile of unrelated pairs of one class folder (printed as `chance`).
UNALIKE = 0.6
EXAMPLES = [  # manifest paths: the datasets README's adjacent slices and Training/Testing
    # pair, and issue 19's adjacent slices that the neighbour check left on two sides
    ("images/train/glioma_tumor/gg (18).jpg", "images/train/glioma_tumor/gg (19).jpg"),
    ("images/train/meningioma_tumor/m3 (140).jpg", "images/test/meningioma_tumor/image(66).jpg"),
    ("images/train/glioma_tumor/gg (542).jpg", "images/train/glioma_tumor/gg (543).jpg"),
    ("images/train/meningioma_tumor/m2 (142).jpg", "images/train/meningioma_tumor/m2 (143).jpg"),
]
# Every consecutive pair, whatever its similarity: the dhash distance can be no larger.
ANY_DHASH = 256


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


def pixel_pairs(
    manifest: pd.DataFrame, corr: np.ndarray, near: float, adjacent: float
) -> tuple[dict[str, np.ndarray], dict]:
    """The pairs of the two pixel measures ({"near_identical", "adjacent"}: (K, 2) each),
    and the chance level of the adjacent one (other pairs of one class folder)."""
    sha = manifest["sha256"].to_numpy(dtype=object)
    i, j = np.triu_indices(len(manifest), 1)
    keep = (corr[i, j] >= near) & (sha[i] != sha[j])
    consecutive = consecutive_pairs(manifest, ANY_DHASH)
    alike = corr[consecutive[:, 0], consecutive[:, 1]] >= adjacent
    folder = manifest["path"].str.rpartition("/")[0].to_numpy(dtype=object)
    is_consecutive = np.zeros(corr.shape, dtype=bool)
    is_consecutive[consecutive[:, 0], consecutive[:, 1]] = True
    others = (folder[i] == folder[j]) & ~is_consecutive[i, j]  # pairs of one folder
    other_corr = corr[i, j][others]
    chance = {
        "consecutive_pairs": len(consecutive),
        "consecutive_pairs_at_or_above": int(alike.sum()),
        "other_pairs_of_one_folder": len(other_corr),
        "share_of_them_at_or_above": round(float((other_corr >= adjacent).mean()), 5),
        "their_correlation_percentiles_50_90_99": np.percentile(other_corr, [50, 90, 99])
        .round(3)
        .tolist(),
    }
    pairs = {"near_identical": np.stack([i[keep], j[keep]], axis=1), "adjacent": consecutive[alike]}
    return pairs, chance


Rule = tuple[tuple[int, int] | None, int | None]  # (neighbours, consecutive) of add_leak_groups


def rules_of(cfg: SplitConfig) -> dict[str, Rule]:
    """The three rules compared: the old one, + the neighbour check, + consecutive files."""
    return {
        "old": (None, None),
        "neighbours": (neighbour_rule(cfg), None),
        "consecutive": (neighbour_rule(cfg), cfg.consecutive_max_dhash_distance),
    }


def leak_group_array(manifest: pd.DataFrame, cfg: SplitConfig, rule: Rule) -> pd.DataFrame:
    """The manifest (sorted by path already) with its leak groups under `rule`."""
    return add_leak_groups(manifest, cfg.near_duplicate_max_distance, *rule)


def crossing(side: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per pair (K, 2): its two images are in two different splits (excluded ones aside)."""
    return (side[pairs[:, 0]] != side[pairs[:, 1]]) & np.isin(side[pairs], SPLITS).all(1)


def held_out_with_partner_in_train(side: np.ndarray, pairs: np.ndarray) -> dict[str, int]:
    """Val and test images with a partner (in `pairs`) in train: {"val": n, "test": n}."""
    found: dict[str, set[int]] = {"val": set(), "test": set()}
    for a, b in pairs:
        for held, other in ((a, b), (b, a)):
            if side[held] in found and side[other] == "train":
                found[side[held]].add(int(held))
    return {split: len(images) for split, images in found.items()}


def split_figures(rows: pd.DataFrame, cfg: SplitConfig, pairs: dict[str, np.ndarray]) -> dict:
    """Per protocol: split sizes, and the pixel-measure pairs a real split puts on two sides."""
    figures = {}
    for protocol in ("pooled", "official", "thesis"):
        side = assign_splits(rows, cfg, "mri", protocol).to_numpy(dtype=object)
        figures[protocol] = {
            "sizes": {s: int((side == s).sum()) for s in (*SPLITS, "excluded")},
            **{
                f"{kind}_pairs_across_splits": int(crossing(side, p).sum())
                for kind, p in pairs.items()
            },
            **{
                f"held_out_images_with_{kind}_partner_in_train": held_out_with_partner_in_train(
                    side, p
                )
                for kind, p in pairs.items()
            },
        }
    return figures


def group_figures(groups: np.ndarray, labels: np.ndarray, pairs: dict[str, np.ndarray]) -> dict:
    """Sizes and label purity of the leak groups, and the pixel-measure pairs they cut."""
    sizes = np.bincount(groups)
    mixed = [g for g in np.flatnonzero(sizes > 1) if len(set(labels[groups == g])) > 1]
    joined = joined_pairs(groups)
    return {
        "leak_groups": len(sizes),
        "largest_leak_group": int(sizes.max()),
        "leak_groups_of_20_or_more": int((sizes >= 20).sum()),
        "groups_with_two_labels": len(mixed),
        "images_in_groups_with_two_labels": int(sizes[mixed].sum()),
        "joined_pairs_with_two_labels": int((labels[joined[:, 0]] != labels[joined[:, 1]]).sum()),
        **{
            f"{kind}_pairs_in_different_groups": int((groups[p[:, 0]] != groups[p[:, 1]]).sum())
            for kind, p in pairs.items()
        },
    }


def evaluate(
    manifest: pd.DataFrame, cfg: SplitConfig, pairs: dict[str, np.ndarray], rule: Rule
) -> tuple[dict, np.ndarray]:
    """Figures of one rule, and the leak group of each image under it."""
    rows = leak_group_array(manifest, cfg, rule)
    groups = rows["leak_group"].to_numpy()
    figures = group_figures(groups, labels_of(rows), pairs)
    return {**figures, "splits": split_figures(rows, cfg, pairs)}, groups


def joined_pairs(groups: np.ndarray) -> np.ndarray:
    """(K, 2) pairs i < j in one leak group; `groups`: the leak group of each image."""
    i, j = np.triu_indices(len(groups), 1)
    same = groups[i] == groups[j]
    return np.stack([i[same], j[same]], axis=1)


def neighbour_grid(manifest: pd.DataFrame, cfg: SplitConfig, near: np.ndarray) -> list[dict]:
    """Near-identical pairs kept together and the largest group, per neighbour threshold
    (without the consecutive check: how the neighbour check was chosen)."""
    results = []
    for max_phash in (8, 10, 12, 14, 16, 64):
        for max_dhash in range(34, 48, 2):
            rows = leak_group_array(manifest, cfg, ((max_phash, max_dhash), None))
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


def consecutive_grid(
    manifest: pd.DataFrame, cfg: SplitConfig, pairs: dict[str, np.ndarray], corr: np.ndarray
) -> list[dict]:
    """Per consecutive dhash distance (with the neighbour check): the links it makes, those
    between unalike images (correlation < UNALIKE), the groups and the pairs split apart."""
    labels = labels_of(manifest)
    results = []
    for max_dhash in (40, 46, 50, 54, 58, 62, 66, 70, 74, 78, 82, 86, 90):
        links = consecutive_pairs(manifest, max_dhash)
        rows = leak_group_array(manifest, cfg, (neighbour_rule(cfg), max_dhash))
        figures = group_figures(rows["leak_group"].to_numpy(), labels, pairs)
        splits = split_figures(rows, cfg, pairs)
        results.append(
            {
                "consecutive_max_dhash_distance": max_dhash,
                "links": len(links),
                "links_between_unalike_images": int(
                    (corr[links[:, 0], links[:, 1]] < UNALIKE).sum()
                ),
                **{k: v for k, v in figures.items() if k != "images_in_groups_with_two_labels"},
                **{
                    f"{protocol}_{kind}_pairs_across_splits": splits[protocol][
                        f"{kind}_pairs_across_splits"
                    ]
                    for protocol in ("pooled", "official")
                    for kind in pairs
                },
            }
        )
    return results


def whole_frame_only(manifest: pd.DataFrame, cfg: SplitConfig, near: np.ndarray) -> dict:
    """The neighbour check without the content box: both dhash columns the whole frame's."""
    rows = leak_group_array(
        manifest.assign(content_dhash=manifest["dhash"]), cfg, (neighbour_rule(cfg), None)
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


def sample_pairs(
    manifest: pd.DataFrame, corr: np.ndarray, rng: np.random.Generator, pairs: list, n: int
) -> list[dict]:
    """`pair_description` of `n` of `pairs` drawn at random (all when fewer), in order."""
    chosen = sorted(rng.choice(len(pairs), min(n, len(pairs)), replace=False))
    return [pair_description(manifest, corr, *pairs[k]) for k in chosen]


def neighbour_panels(
    manifest: pd.DataFrame,
    cfg: SplitConfig,
    corr: np.ndarray,
    cut: float,
    groups: dict[str, np.ndarray],
) -> list[tuple[str, list[dict]]]:
    """Pairs to look at: just under and just over the near-identical `cut` (6 each, at
    random); joined by the neighbour check, not by the old rule (9 at random);
    near-identical pairs it leaves apart (6 at random); its direct links between two
    labels (all). `groups`: the leak group of each image per rule (`rules_of`)."""
    rng = np.random.default_rng(0)
    labels, old, new = labels_of(manifest), groups["old"], groups["neighbours"]
    links = neighbour_pairs(manifest, *neighbour_rule(cfg)).tolist()
    new_links = [p for p in links if old[p[0]] != old[p[1]]]
    two_labels = [p for p in new_links if labels[p[0]] != labels[p[1]]]
    sha = manifest["sha256"].to_numpy(dtype=object)
    i, j = np.triu_indices(len(manifest), 1)

    def between(low: float, high: float) -> list:
        inside = (sha[i] != sha[j]) & (corr[i, j] >= low) & (corr[i, j] < high)
        return np.stack([i[inside], j[inside]], axis=1).tolist()

    def sample(pairs: list, n: int) -> list[dict]:
        return sample_pairs(manifest, corr, rng, pairs, n)

    apart = [p for p in between(cut, 2.0) if new[p[0]] != new[p[1]]]
    below, above = f"{cut - 0.02:.2f} to {cut:.2f}", f"{cut:.2f} to {cut + 0.02:.2f}"
    return [
        (
            f"Correlation {below}: not near-identical (6 at random)",
            sample(between(cut - 0.02, cut), 6),
        ),
        (f"Correlation {above}: near-identical (6 at random)", sample(between(cut, cut + 0.02), 6)),
        ("Linked by the neighbour check, not by the old rule (9 at random)", sample(new_links, 9)),
        (
            f"Near-identical (correlation >= {cut}) but apart under the neighbour check "
            "(6 at random)",
            sample(apart, 6),
        ),
        (
            f"Neighbour links between two labels (all {len(two_labels)})",
            sample(two_labels, len(two_labels)),
        ),
    ]


def consecutive_panels(
    manifest: pd.DataFrame,
    cfg: SplitConfig,
    corr: np.ndarray,
    adjacent: np.ndarray,
    groups: dict[str, np.ndarray],
) -> list[tuple[str, list[dict]]]:
    """Pairs to look at: linked by the consecutive check, not by the neighbour check (9 at
    random, and all of those between unalike images); adjacent slices (`adjacent`, K x 2)
    still apart (all)."""
    rng = np.random.default_rng(1)
    before, after = groups["neighbours"], groups["consecutive"]
    links = consecutive_pairs(manifest, cfg.consecutive_max_dhash_distance).tolist()
    new_links = [p for p in links if before[p[0]] != before[p[1]]]
    unalike = [p for p in new_links if corr[p[0], p[1]] < UNALIKE]
    apart = [p for p in adjacent.tolist() if after[p[0]] != after[p[1]]]
    return [
        (
            "Linked by the consecutive check, not by the neighbour check (9 at random)",
            sample_pairs(manifest, corr, rng, new_links, 9),
        ),
        (
            f"... of which unalike: correlation < {UNALIKE} (all {len(unalike)})",
            sample_pairs(manifest, corr, rng, unalike, len(unalike)),
        ),
        (
            f"Adjacent slices still apart under the consecutive check (all {len(apart)})",
            sample_pairs(manifest, corr, rng, apart, len(apart)),
        ),
    ]


def examples(manifest: pd.DataFrame, corr: np.ndarray, groups: dict[str, np.ndarray]) -> list:
    """EXAMPLES described, with whether each rule puts the two in one leak group."""
    index = {path: k for k, path in enumerate(manifest["path"])}
    found = []
    for a, b in EXAMPLES:
        i, j = index[a], index[b]
        found.append(
            {
                **pair_description(manifest, corr, i, j),
                **{f"{rule}_same_group": bool(g[i] == g[j]) for rule, g in groups.items()},
            }
        )
    return found


def measure(archive: Path, near: float, adjacent: float, sheet: Path, root: Path) -> dict:
    """Every figure of the module docstring, for `archive` fetched under `root`."""
    manifest, cfg = fetch(archive, root)
    images = root / "data" / "raw" / DATASET
    corr = correlations([images / p for p in manifest["path"]])
    pairs, chance = pixel_pairs(manifest, corr, near, adjacent)
    labels = labels_of(manifest)
    rules, groups = {}, {}
    for name, rule in rules_of(cfg).items():
        rules[name], groups[name] = evaluate(manifest, cfg, pairs, rule)
    links = neighbour_pairs(manifest, *neighbour_rule(cfg))
    rules["neighbours"]["neighbour_links"] = len(links)
    rules["neighbours"]["neighbour_links_between_two_labels"] = int(
        (labels[links[:, 0]] != labels[links[:, 1]]).sum()
    )
    panels = [
        *neighbour_panels(manifest, cfg, corr, near, groups),
        *consecutive_panels(manifest, cfg, corr, pairs["adjacent"], groups),
    ]
    contact_sheet(images, panels, sheet)
    settings = {
        "old": {"near_duplicate_max_distance": cfg.near_duplicate_max_distance},
        "neighbours": {"neighbours": neighbour_rule(cfg)},
        "consecutive": {"consecutive_max_dhash_distance": cfg.consecutive_max_dhash_distance},
    }
    return {
        "command": " ".join(sys.argv),
        "near_identical": f"max(whole frame, content) {THUMB} px correlation >= {near}",
        "adjacent": f"consecutive files of one folder, the same correlation >= {adjacent}",
        "images": len(manifest),
        "near_identical_pairs": len(pairs["near_identical"]),
        "adjacent_pairs": len(pairs["adjacent"]),
        "adjacent_chance": chance,
        "rules": {name: {**settings[name], **figures} for name, figures in rules.items()},
        "examples": examples(manifest, corr, groups),
        "consecutive_grid": consecutive_grid(manifest, cfg, pairs, corr),
        "grid": neighbour_grid(manifest, cfg, pairs["near_identical"]),
        "whole_frame_dhash_only": whole_frame_only(manifest, cfg, pairs["near_identical"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--near", type=float, default=0.90, help="near-identical correlation")
    parser.add_argument(
        "--adjacent",
        type=float,
        default=0.80,
        help="adjacent slices: consecutive files' correlation",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mri_neighbours.json")
    parser.add_argument("--sheet", type=Path, default=REPO / "docs" / "mri_neighbours.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medimg-neighbours-") as scratch:
        results = measure(args.archive, args.near, args.adjacent, args.sheet, Path(scratch))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    shown = ("images", "near_identical_pairs", "adjacent_pairs", "adjacent_chance", "rules")
    print(json.dumps({k: results[k] for k in (*shown, "examples")}, indent=1))
    print(f"written: {args.out}, {args.sheet}")


if __name__ == "__main__":
    main()
