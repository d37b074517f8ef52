"""Option types the models' schemas share (`runs.<name>.model_options` in params.yaml).

Each model's schema lives in its zoo module (medimg.models.zoo) and builds on these.
Kept free of Keras, like the zoo modules' tops: reading params.yaml validates
`model_options` against the chosen model before any work, naming the run, the option
and what is allowed.

Options describe the network only. How it is trained (rescaling, resizing,
augmentation, learning rates, the frozen/fine-tuning phases) is the run's business
(`medimg.config.runs.RunConfig`), not the model's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]

# Initial weights: a keyword, an MLflow model URI, or a local file.
WEIGHTS_KEYWORDS = ("none", "imagenet")
_MLFLOW_URI = re.compile(r"^(runs:/[^/]+/.+|models:/[^/@]+(@[\w-]+|/\d+)|models:/m-[0-9a-f]+)$")
WEIGHT_FILE_SUFFIXES = (".keras", ".h5")


def weights_kind(value: str) -> Literal["none", "imagenet", "mlflow", "file"]:
    """What a `weights` option names: "none", "imagenet", an MLflow model URI or a local file."""
    if value in WEIGHTS_KEYWORDS:
        return value  # type: ignore[return-value]
    if value.startswith(("runs:/", "models:/")):
        return "mlflow"
    return "file"


def _check_weights(value: str, allowed_keywords: tuple[str, ...]) -> str:
    kind = weights_kind(value)
    if kind in WEIGHTS_KEYWORDS and kind not in allowed_keywords:
        raise ValueError(f"{value!r} is not available for this model; allowed: {allowed_keywords}")
    if kind == "mlflow" and not _MLFLOW_URI.match(value):
        raise ValueError(
            f"{value!r} is not an MLflow model URI; expected runs:/<run id>/<path>, "
            "models:/<name>@<alias> or models:/<name>/<version>"
        )
    if kind == "file":
        path = Path(value)
        if not (path.suffix in WEIGHT_FILE_SUFFIXES or path.is_dir()):
            raise ValueError(
                f"{value!r} is neither {' nor '.join(map(repr, allowed_keywords))}, an MLflow "
                f"URI (runs:/..., models:/...), a models/<run>/seed-<k> folder, nor a file "
                f"ending in {' or '.join(WEIGHT_FILE_SUFFIXES)}"
            )
    return value


def _weights_field(allowed_keywords: tuple[str, ...]) -> object:
    return Annotated[str, AfterValidator(lambda v: _check_weights(v, allowed_keywords))]


TransferWeights = _weights_field(("none",))
PretrainedWeights = _weights_field(("none", "imagenet"))


class ModelOptions(BaseModel):
    # extra="forbid": a misspelt option is an error, not a silently ignored knob; strict: a
    # value must have the option's type (`batch_norm: 1` is not true), as in the run's keys.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
