"""Prediction results as a table (for people), JSON or CSV (for programs), written whole.

Every format has one entry per input, classified or not: "ok" with the predicted class
and every class probability, "error" or "skipped" with the reason.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence

from medimg.inference import FORMATS
from medimg.inference.captions import format_prediction
from medimg.inference.classifier import ImageResult


def probability_column(label: str) -> str:
    """CSV and served-model column of one class's probability, e.g. "probability_PNEUMONIA"."""
    return f"probability_{label}"


def render(results: Sequence[ImageResult], classes: Sequence[str], fmt: str, model: str) -> str:
    """The results in format `fmt` (one of FORMATS); `model` names the model used (JSON)."""
    if fmt == "table":
        return render_table(results)
    if fmt == "json":
        return render_json(results, classes, model)
    if fmt == "csv":
        return render_csv(results, classes)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def render_table(results: Sequence[ImageResult]) -> str:
    """One line per input: the path, then the thesis-style caption or the reason."""
    rows = [("image", "result")]
    for result in results:
        if result.status == "ok":
            outcome = format_prediction(result.ranked)
        else:
            outcome = f"{result.status}: {result.message}"
        if result.explanation:
            outcome += f"  (Grad-CAM: {result.explanation})"
        rows.append((result.path, outcome))
    width = max(len(path) for path, _ in rows)
    return "".join(f"{path.ljust(width)}  {outcome}\n" for path, outcome in rows)


def _record(result: ImageResult) -> dict:
    record: dict = {"path": result.path, "status": result.status}
    if result.status == "ok":
        predicted, probability = result.ranked[0]
        record |= {
            "predicted_class": predicted,
            "probability": probability,
            "probabilities": result.probabilities,
        }
    else:
        record["message"] = result.message
    if result.explanation:
        record["explanation"] = result.explanation
    return record


def render_json(results: Sequence[ImageResult], classes: Sequence[str], model: str) -> str:
    """{"model", "classes", "counts": {status: n}, "results": [{"path", "status", ...}]}."""
    document = {
        "model": model,
        "classes": list(classes),
        "counts": dict(Counter(result.status for result in results)),
        "results": [_record(result) for result in results],
    }
    return json.dumps(document, indent=2) + "\n"


def render_csv(results: Sequence[ImageResult], classes: Sequence[str]) -> str:
    """Columns: path, status, predicted_class, probability, probability_<class>...,
    message, explanation; empty cells where a value does not apply."""
    columns = [
        "path",
        "status",
        "predicted_class",
        "probability",
        *map(probability_column, classes),
        "message",
        "explanation",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = {"path": result.path, "status": result.status, "message": result.message}
        row["explanation"] = result.explanation
        if result.status == "ok":
            row["predicted_class"], row["probability"] = result.ranked[0]
            row |= {probability_column(c): p for c, p in result.probabilities.items()}
        writer.writerow(row)
    return buffer.getvalue()
