"""Image statistics per source split and class of an archive: is the test set shot differently?

For every image of the zip (decoded as greyscale, 8 bits): mean, std, the 1st, 50th
and 99th percentile of its pixels, the share of pixels at 0 and at 255, its size,
and its JPEG quality estimate where Pillow reports one. Prints the medians per
(source split, class) and writes a histogram figure (one curve per group: the mean
normalised pixel histogram) and a CSV of the per-image values.

    python benchmarks/intensity_stats.py ../shared/datasets/chest_xray_224.zip \\
        --layout chest_xray --classes NORMAL PNEUMONIA --out docs/figures/xray_intensity
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from medimg.data.archive import ZipArchive
from medimg.data.layouts import match_layout

BINS = 64


def image_stats(data: bytes) -> tuple[dict[str, float], np.ndarray]:
    """Statistics of one image's grey levels and its normalised histogram (BINS,)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        mode = image.mode
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
    p1, p50, p99 = np.percentile(grey, [1, 50, 99])
    hist = np.bincount(grey.ravel() // (256 // BINS), minlength=BINS) / grey.size
    stats = {
        "mean": float(grey.mean()),
        "std": float(grey.std()),
        "p1": float(p1),
        "p50": float(p50),
        "p99": float(p99),
        "black": float((grey == 0).mean()),
        "white": float((grey == 255).mean()),
        "width": width,
        "height": height,
        "mode": mode,
    }
    return stats, hist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--layout", required=True)
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="prefix of the .csv and .png")
    args = parser.parse_args()

    rows, hists = [], {}
    with ZipArchive(args.archive) as tree:
        for entry in match_layout(tree.files, args.layout, args.classes).entries:
            with tree.open(entry.source) as f:
                stats, hist = image_stats(f.read())
            rows.append({"split": entry.source_split, "label": entry.label, **stats})
            hists.setdefault((entry.source_split, entry.label), []).append(hist)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    columns = ["mean", "std", "p1", "p50", "p99", "black", "white", "width", "height"]
    summary = table.groupby(["split", "label"])[columns].median().round(3)
    summary.insert(0, "n", table.groupby(["split", "label"]).size())
    print(summary.to_string())
    print("\nmodes:", table.groupby(["split", "label"])["mode"].value_counts().to_dict())

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    centres = (np.arange(BINS) + 0.5) * (256 / BINS)
    for (split, label), group in sorted(hists.items()):
        style = "-" if split == "train" else "--"
        ax.plot(centres, np.mean(group, axis=0), style, label=f"{split} {label} (n={len(group)})")
    ax.set_xlabel("grey level")
    ax.set_ylabel("share of pixels (mean over images)")
    ax.set_title(f"{args.archive.name}: grey-level histograms per source split and class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
