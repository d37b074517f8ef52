"""Grey-level handling: a fixed normalisation of every image, and random intensity augmentation.

Why: a model can learn how a hospital's scanner or export software renders an
image (its brightness, contrast, tone curve) instead of the anatomy. Two answers,
each a params switch, measured in docs/research.md:

- `normalize` (the augment stage, and predict through preprocessing.json): every
  image is mapped to a standard grey-level range before it is stored, so the
  model never sees the original rendering: "equalize" flattens its histogram
  (Pillow's ImageOps.equalize). (A percentile stretch, "autocontrast", was offered
  too and never measured; it was removed rather than kept as an untried knob.)
- random brightness, contrast and gamma (the training loader, numpy): every
  training image is shown under many renderings, so none of them is a cue.

Pure functions on uint8 arrays; no Keras.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image, ImageOps

Normalization = Literal["none", "equalize"]
Crop = Literal["none", "content"]
# Grey level at or below which a pixel counts as background for crop "content": the
# black film border and padding of X-ray exports, not dark anatomy (lungs are >= ~30).
CONTENT_THRESHOLD = 20
NORMALIZATIONS: tuple[str, ...] = ("none", "equalize")


def normalize_image(image: Image.Image, method: Normalization) -> Image.Image:
    """`image` (mode "L" or "RGB") with its grey levels normalised by `method`.

    RGB images are equalised on their luminance and keep their hue.
    """
    if method == "none":
        return image
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"normalize_image wants an 'L' or 'RGB' image, got mode {image.mode!r}")
    if method == "equalize":
        return _equalize_luminance(image)
    raise ValueError(f"unknown normalisation {method!r}; allowed: {NORMALIZATIONS}")


def _equalize_luminance(image: Image.Image) -> Image.Image:
    if image.mode == "L":
        return ImageOps.equalize(image)
    # Equalise the luminance and scale each channel by the same factor, keeping hue.
    luminance = np.asarray(image.convert("L"), dtype=np.float32)
    equalized = np.asarray(ImageOps.equalize(image.convert("L")), dtype=np.float32)
    ratio = np.divide(equalized, luminance, out=np.ones_like(luminance), where=luminance > 0)
    rgb = np.asarray(image, dtype=np.float32) * ratio[..., None]
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def crop_to_content(image: Image.Image, method: Crop) -> Image.Image:
    """`image` cropped to the box of its pixels brighter than CONTENT_THRESHOLD ("content").

    Why: in the chest X-ray training folder 83 % of the NORMAL images have a black
    border of over 2 % of their pixels against 35 % of the PNEUMONIA ones, so the
    border is a shortcut to the label; in the test folder only 64 % of the normal
    images have it (docs/research.md). Cropping it away in every image, at training
    and at prediction, removes the cue. An image with no such pixel is kept whole.
    """
    if method == "none":
        return image
    if method != "content":
        raise ValueError(f"unknown crop {method!r}; allowed: ('none', 'content')")
    mask = image.convert("L").point(lambda v: 255 if v > CONTENT_THRESHOLD else 0)
    box = mask.getbbox()
    return image.crop(box) if box else image


def random_intensity(
    images: np.ndarray,
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    gamma: float,
) -> np.ndarray:
    """Random brightness, contrast and gamma per image: (N, H, W, C) uint8 -> same shape.

    For each image, on the 0-1 scale: x -> x ** g with log g uniform in
    [-gamma, +gamma]; then (x - mean) * c + mean with c uniform in
    [1 - contrast, 1 + contrast]; then x + b with b uniform in [-brightness,
    +brightness]; clipped to 0-1 and rounded back to 0-255. All zero: unchanged.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    for name, value, upper in (
        ("brightness", brightness, 1.0),
        ("contrast", contrast, 1.0),
        ("gamma", gamma, 2.0),
    ):
        if not 0 <= value <= upper:
            raise ValueError(f"{name} must be in [0, {upper}], got {value}")
    if brightness == contrast == gamma == 0:
        return images.copy()
    n = len(images)
    shape = (n, 1, 1, 1)
    x = images.astype(np.float32) / 255.0
    if gamma:
        x = np.power(x, np.exp(rng.uniform(-gamma, gamma, n)).reshape(shape))
    if contrast:
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * rng.uniform(1 - contrast, 1 + contrast, n).reshape(shape) + mean
    if brightness:
        x = x + rng.uniform(-brightness, brightness, n).reshape(shape)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
