"""Training throughput of a registered model per input pipeline and augmentation site.

Prints a table of images per second (median over the epochs after a warm-up
epoch; training only, no validation; the variants take turns epoch by epoch)
for:

  a  bare      model.fit on in-memory numpy arrays, no augmentation
  b  pipeline  ArrayBatches over memory-mapped .npy files, no augmentation
  c  in-model  pipeline + RandomRotation, RandomZoom and GaussianNoise layers
  d  loader    pipeline + rotation and zoom on CPU worker threads
               (medimg.data.augmentation.augment_batch), GaussianNoise in the model

Random uint8 images stand in for data: speed does not depend on the pixel values.
The numbers decide `choose_augmentation_site` (medimg/training/classifier.py).

    KERAS_BACKEND=tensorflow python benchmarks/train_throughput.py --sizes 128 224
    python benchmarks/train_throughput.py --model efficientnet_b0 --channels 3 --sizes 224
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from medimg.config.runs import TrainAugmentConfig
from medimg.models.registry import build_backbone, get_spec, known_models
from medimg.training.classifier import assemble_classifier
from medimg.training.data import ArrayBatches, loader_augmentation

# The thesis's X-ray augmentation (rotation +-5 deg, zoom 100-120 %) plus the
# MRI's Gaussian noise (std 20), so every augmentation layer is measured.
AUGMENT = TrainAugmentConfig(rotation_deg=5.0, zoom_range=(1.0, 1.2), noise_std=20.0)
VARIANTS = ("a bare", "b pipeline", "c in-model", "d loader")


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def build_variant(
    variant: str, x_path: Path, y: np.ndarray, args: argparse.Namespace
) -> tuple[keras.Model, dict]:
    """The compiled model of `variant` and the keyword arguments of its model.fit."""
    x_memmap = np.load(x_path, mmap_mode="r")
    keras.utils.set_random_seed(0)
    backbone = build_backbone(
        args.model,
        x_memmap.shape[1:],
        2,
        {"weights": "none"} if "weights" in get_spec(args.model).options.model_fields else {},
    )
    model = assemble_classifier(
        backbone,
        x_memmap.shape[1:],
        get_spec(args.model).input_range,
        augmentation=AUGMENT if variant in ("c in-model", "d loader") else None,
        augment_in_model=variant == "c in-model",
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    if variant == "a bare":
        x = np.array(x_memmap)  # in memory, uint8 as the pipeline feeds it
        return model, {"x": x, "y": y.astype("float32"), "batch_size": args.batch_size}
    batches = ArrayBatches(
        x_memmap,
        y,
        args.batch_size,
        num_classes=2,
        shuffle=True,
        seed=0,
        augment=loader_augmentation(AUGMENT, geometric=True) if variant == "d loader" else None,
        workers=args.workers if variant == "d loader" else 1,
    )
    return model, {"x": batches, "shuffle": False}


def measure(
    sizes_x: dict[int, Path], y: np.ndarray, args: argparse.Namespace
) -> dict[int, dict[str, float]]:
    """Images per second per size and variant: median over `args.epochs` epochs.

    The variants take turns epoch by epoch (after one warm-up epoch each, which
    compiles), so a change in the load of a shared machine hits all of them alike.
    """
    results: dict[int, dict[str, float]] = {}
    for size, x_path in sizes_x.items():
        setups = {v: build_variant(v, x_path, y, args) for v in args.variants}
        seconds: dict[str, list[float]] = {v: [] for v in args.variants}
        for round_ in range(args.epochs + 1):
            for variant, (model, fit_kwargs) in setups.items():
                timer = EpochTimer()
                model.fit(**fit_kwargs, epochs=1, callbacks=[timer], verbose=0)
                if round_ > 0:
                    seconds[variant].extend(timer.seconds)
        results[size] = {v: len(y) / statistics.median(seconds[v]) for v in args.variants}
        print(f"  {size} px: " + ", ".join(f"{v} {r:.1f}" for v, r in results[size].items()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xray_cnn", choices=known_models())
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--images", type=int, default=128, help="images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs after warm-up")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="loader threads for variant d")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()

    print(
        f"{args.model}, {args.channels} channel(s), "
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"{platform.processor() or platform.machine()}, batch {args.batch_size}, "
        f"{args.images} images/epoch, median of {args.epochs} epochs after 1 warm-up, "
        f"loader workers {args.workers}"
    )
    rng = np.random.default_rng(0)
    y = (np.arange(args.images) % 2).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        sizes_x = {size: Path(tmp) / f"x{size}.npy" for size in args.sizes}
        for size, x_path in sizes_x.items():
            np.save(
                x_path,
                rng.integers(0, 256, (args.images, size, size, args.channels), dtype=np.uint8),
            )
        results = measure(sizes_x, y, args)

    print("\nimg/s   " + "".join(f"{v:>14}" for v in args.variants) + "   b/a")
    for size, row in results.items():
        ratio = row["b pipeline"] / row["a bare"] if {"a bare", "b pipeline"} <= set(row) else 0
        cells = "".join(f"{row[v]:>14.1f}" for v in args.variants)
        print(f"{size:>4} px" + cells + (f"   {ratio:.2f}" if ratio else ""))


if __name__ == "__main__":
    main()
