"""Random training augmentation as Keras layers, and where geometric augmentation runs.

Keras's random layers are active only when the model is called with
`training=True` (inside `fit`), so a saved model predicts deterministically.

Conventions match `medimg.data.augmentation` (the numpy version used by the
augment stage and by the training loader): rotation uniform in
[-rotation_deg, +rotation_deg], zoom factor above 1 magnifies (1.2 = 120 %),
pixels from outside the image are black (0), noise std on the 0-255 scale.
"""

from __future__ import annotations

from typing import Literal

import keras

from medimg.config import TrainAugmentConfig

AugmentationSite = Literal["model", "loader"]

# Pixels that come from outside the image: black, as in medimg.data.augmentation.
FILL_MODE = "constant"
FILL_VALUE = 0.0

# Chosen from measurements: see choose_augmentation_site.
_AUTO_SITE: dict[str, AugmentationSite] = {
    "tensorflow": "model",
    "jax": "loader",
    "torch": "loader",
    "numpy": "loader",
}


def choose_augmentation_site(cfg: TrainAugmentConfig, backend: str) -> AugmentationSite:
    """Where geometric augmentation (rotation, zoom) runs: inside the model or in the loader.

    `cfg.where` = "model" or "loader" is returned as is; "auto" picks per Keras backend:

    - tensorflow -> "model". Measured on this 2-core CPU (TensorFlow 2.21,
      Keras 3.15.1, xray_cnn, batch 8, 128 random images per epoch, median of 7
      interleaved epochs; rotation 5 deg, zoom 1.0-1.2, noise std 20):
          `python benchmarks/train_throughput.py --sizes 128 224 --epochs 7`
          img/s    a bare fit  b pipeline  c in-model  d loader (2 threads)
          128 px        302.1       265.6       236.9       219.1
          224 px        110.6       104.5        99.4        96.2
      In-model augmentation is as fast as or faster than the loader here: the
      layers run inside the compiled TF graph, while the loader's Pillow warps
      compete with the model for the same two cores.
    - jax -> "loader". The same command with KERAS_BACKEND=jax (jax 0.10, CPU):
          128 px         79.1        77.1        45.6        77.4
          224 px         23.5        24.4        13.6        23.7
      The in-model layers cost about 42 % of the speed, the loader about none.
      On an H200 with JAX they made the thesis X-ray CNN at 224 px at least 12x
      slower (real data, batch 8, 20 epochs: 29 s without them, unfinished after
      360 s; the project's GPU notes), and a GPU leaves the CPU cores free for
      the loader's Pillow warps.
    - torch, numpy -> "loader": not measured; the loader's cost does not depend
      on the backend, the in-model layers' cost does.
    """
    if cfg.where != "auto":
        return cfg.where
    if backend not in _AUTO_SITE:
        raise ValueError(f"unknown Keras backend {backend!r}; known: {sorted(_AUTO_SITE)}")
    return _AUTO_SITE[backend]


def zoom_factor_for_keras(zoom_range: tuple[float, float]) -> tuple[float, float]:
    """Convert a magnification range (1.2 = 120 %, zoom in) to RandomZoom's height_factor.

    RandomZoom samples z uniform in [1 + low, 1 + high] and reads the input at
    z times the distance from the centre, so it magnifies by 1 / z: a negative
    factor zooms in. Magnification m therefore needs z = 1 / m, factor = 1/m - 1;
    the range flips because a larger m gives a smaller factor.
    (z is uniform, so m = 1/z is not exactly uniform in zoom_range; the
    difference is small for the narrow ranges used here.)
    """
    low, high = zoom_range
    if not 0 < low <= high:
        raise ValueError(f"zoom_range must be (low, high) with 0 < low <= high, got {zoom_range}")
    return (1.0 / high - 1.0, 1.0 / low - 1.0)


def training_augmentation(
    x: keras.KerasTensor, cfg: TrainAugmentConfig, geometric: bool
) -> keras.KerasTensor:
    """Apply the random augmentation of `cfg` to `x` (rescaled to 0-1), active in training only.

    Args:
        x: (batch, H, W, C) float pixels in 0-1.
        cfg: the run's augmentation settings.
        geometric: add RandomRotation and RandomZoom (False when the loader does them).
    """
    if geometric and cfg.rotation_deg > 0:
        x = keras.layers.RandomRotation(
            factor=cfg.rotation_deg / 360.0,  # Keras takes a fraction of a full turn
            fill_mode=FILL_MODE,
            fill_value=FILL_VALUE,
            name="random_rotation",
        )(x)
    if geometric and cfg.zoom_range != (1.0, 1.0):
        x = keras.layers.RandomZoom(
            height_factor=zoom_factor_for_keras(cfg.zoom_range),
            width_factor=None,  # None: same zoom on both axes, aspect ratio kept
            fill_mode=FILL_MODE,
            fill_value=FILL_VALUE,
            name="random_zoom",
        )(x)
    if cfg.noise_std > 0:
        # Element-wise and cheap on every backend, so noise always stays in the model.
        x = keras.layers.GaussianNoise(cfg.noise_std / 255.0, name="gaussian_noise")(x)
    return x
