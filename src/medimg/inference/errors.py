"""The error types of inference, in one module because every other one raises them."""

from __future__ import annotations

from medimg.errors import UserError


class PredictError(UserError, ValueError):
    """The model folder, its preprocessing.json, an image or an option cannot be used."""


class ModelSourceError(PredictError):
    """A model source (folder, runs:/ or models:/ URI) does not lead to a usable model."""
