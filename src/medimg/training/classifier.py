"""The trained classifier: input handling and random augmentation wrapped around a backbone.

    uint8-range pixels (batch, H, W, C) "pixels"
      -> [Resizing "resize" to the run's image_size]
      -> [Rescaling 1/255 "rescale", when the backbone takes 0-1]
      -> [RandomRotation "random_rotation", RandomZoom "random_zoom", GaussianNoise
          "gaussian_noise": active in training only]
      -> the model registry's backbone (a nested keras.Model named "backbone")

so a saved model takes 0-255 pixels of the prepared size and needs no separate
preprocessing code. Keras's random layers are active only when the model is called
with `training=True` (inside `fit`), so a saved model predicts deterministically.

Conventions match `medimg.data.augmentation` (the numpy version used by the
augment stage and by the training loader): rotation uniform in
[-rotation_deg, +rotation_deg], zoom factor above 1 magnifies (1.2 = 120 %),
pixels from outside the image are black (0), noise std on the 0-255 scale.
"""

from __future__ import annotations

from typing import Literal

import keras

from medimg.config.runs import TrainAugmentConfig

AugmentationSite = Literal["model", "loader"]
PIXELS_INPUT = "pixels"

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
    x: keras.KerasTensor, cfg: TrainAugmentConfig, geometric: bool, pixel_scale: float
) -> keras.KerasTensor:
    """Apply the random augmentation of `cfg` to `x`, active in training only.

    Args:
        x: (batch, H, W, C) float pixels, 0-`pixel_scale` (1.0 or 255.0).
        cfg: the run's augmentation settings.
        geometric: add RandomRotation and RandomZoom (False when the loader does them).
        pixel_scale: the value of a white pixel in `x`; noise std is given on 0-255.
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
        # Keras's GaussianNoise takes a std of at most 1, so a 0-255 input is brought to
        # 0-1 around it (and back: the backbone scales its input itself).
        if pixel_scale != 1.0:
            x = keras.layers.Rescaling(1.0 / pixel_scale, name="noise_scale_in")(x)
        x = keras.layers.GaussianNoise(cfg.noise_std / 255.0, name="gaussian_noise")(x)
        if pixel_scale != 1.0:
            x = keras.layers.Rescaling(pixel_scale, name="noise_scale_out")(x)
    return x


def assemble_classifier(
    backbone: keras.Model,
    input_shape: tuple[int, int, int],
    input_range: Literal["unit", "pixels"],
    augmentation: TrainAugmentConfig | None = None,
    augment_in_model: bool = True,
    name: str = "classifier",
) -> keras.Model:
    """Wrap `backbone` so that the model takes 0-255 pixels of `input_shape`.

    Args:
        backbone: a registry model (medimg.models); its input shape is the training size.
        input_shape: (H, W, C) of the prepared arrays; resized to the backbone's H, W.
        input_range: what the backbone takes: "unit" (0-1, a Rescaling is added)
            or "pixels" (0-255; it scales them itself).
        augmentation: random training augmentation; None for none.
        augment_in_model: True: rotation and zoom are layers here; False: the loader
            does them, and only the (cheap) Gaussian noise is a layer here.
    """
    inputs = keras.Input(shape=tuple(input_shape), name=PIXELS_INPUT)
    x = inputs
    height, width = backbone.input_shape[1], backbone.input_shape[2]
    if (input_shape[0], input_shape[1]) != (height, width):
        # antialias: shrinking 600 px to 224 px without it samples every ~3rd pixel and
        # aliases fine structure; with it the result matches an image prepared at 224.
        x = keras.layers.Resizing(height, width, antialias=True, name="resize")(x)
    pixel_scale = 255.0
    if input_range == "unit":
        x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(x)
        pixel_scale = 1.0
    if augmentation is not None:
        x = training_augmentation(x, augmentation, augment_in_model, pixel_scale)
    return keras.Model(inputs, backbone(x), name=name)
