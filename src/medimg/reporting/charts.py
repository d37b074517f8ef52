"""The report's figures as PNG bytes: ROC overlays and confusion matrices per dataset.

Drawn with `matplotlib.figure.Figure` and the Agg renderer, never pyplot (no global
state), as `medimg.evaluation.figures`. Every curve and matrix is the best seed's
(chosen on validation data by the train stage) on the test split. A configuration
of the sample profile is labelled [sample] (Configuration.tagged_label): its curve
tests the pipeline, not the model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.metrics import auc

from medimg.inference.captions import display_name
from medimg.reporting.collect import Configuration

DPI = 100
ROC_BINARY_SIZE_IN = (7.0, 5.5)
ROC_PANEL_SIZE_IN = (4.6, 4.0)
CONFUSION_PANEL_SIZE_IN = (3.9, 3.6)
CONFUSION_COLUMNS = 3


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software"/date metadata: the same runs give byte-identical figures.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _colours(count: int) -> list:
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def _curve(config: Configuration, class_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) of one class's one-vs-rest curve, None when the run logged none."""
    roc = config.roc
    if roc is None:
        return None
    points = roc[roc["class"] == class_name] if "class" in roc else roc
    if points.empty:
        return None
    return points["fpr"].to_numpy(), points["tpr"].to_numpy()


def roc_overlay_png(classes: list[str], configs: Sequence[Configuration]) -> bytes | None:
    """One ROC panel per positive class (binary: one; K classes: K one-vs-rest), a curve
    per configuration with the area under it in the legend. None when no run has curves.
    """
    drawn = [c for c in configs if c.roc is not None]
    if not drawn:
        return None
    panels = [classes[1]] if len(classes) == 2 else list(classes)
    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    width, height = ROC_BINARY_SIZE_IN if len(panels) == 1 else ROC_PANEL_SIZE_IN
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colours = _colours(len(drawn))
    for ax, class_name in zip(axes, panels, strict=False):
        for config, colour in zip(drawn, colours, strict=True):
            curve = _curve(config, class_name)
            if curve is not None:
                fpr, tpr = curve
                label = f"{config.tagged_label}: {auc(fpr, tpr):.3f}"
                ax.plot(fpr, tpr, color=colour, lw=1.6, label=label)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{display_name(class_name)} vs rest" if len(panels) > 1 else "ROC, test")
        ax.legend(loc="lower right", fontsize=7, title="area under curve", title_fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return _png(fig)


def confusion_png(classes: list[str], configs: Sequence[Configuration]) -> bytes | None:
    """A confusion matrix per configuration: counts, coloured by share of the actual class."""
    drawn = [c for c in configs if c.confusion is not None]
    if not drawn:
        return None
    ncols = min(len(drawn), CONFUSION_COLUMNS)
    nrows = math.ceil(len(drawn) / ncols)
    width, height = CONFUSION_PANEL_SIZE_IN
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    names = [display_name(c) for c in classes]
    for ax, config in zip(axes, drawn, strict=False):
        counts = config.confusion
        totals = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for row, col in np.ndindex(counts.shape):
            ax.text(
                col,
                row,
                f"{counts[row, col]}\n{shares[row, col]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[row, col] > 0.5 else "black",
            )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="actual")
        ax.set_title(config.tagged_label, fontsize=9)
    for ax in axes[len(drawn) :]:
        ax.set_visible(False)
    return _png(fig)
