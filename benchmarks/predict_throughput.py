"""`medimg predict` throughput on clinical-size X-rays: images per second, median of runs.

Prints, for N images of about 2,000 x 1,500 px (default 40):

  included   the whole prediction as `medimg predict` does it in-process: resolve the
             model folder, load model.keras, decode, preprocess and classify in batches
  excluded   the same with the model already loaded and warmed up (one image classified
             before the clock starts): decode, preprocess and classify only
  decode     of `excluded`, the part spent decoding and preprocessing (load_image)
  reload     the old loop, for comparison: the model loaded again for every image
             (`medimg.predict_image.predict_image`, one call per image)

The images are real chest X-rays from the development copy of the Kermany et al.
dataset (chest_xray_224.zip: 224 x 224 JPEGs), upscaled with Pillow's bicubic filter
to 2,000 x 1,500 px and saved as JPEG (quality 90) in a temporary folder: the datasets
here are downscaled, and clinical exports are this size. The model is the thesis's
X-ray CNN at its 600 px input (the `full` profile), with random weights: speed does not
depend on the weights.

    python benchmarks/predict_throughput.py --zip ../shared/datasets/chest_xray_224.zip
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
from PIL import Image

from medimg.inference import DEFAULT_BATCH_SIZE
from medimg.inference.classifier import ImageClassifier
from medimg.inference.predict import predict_image, predict_inputs
from medimg.models.registry import build_backbone
from medimg.training.classifier import assemble_classifier

CLINICAL_SIZE = (2000, 1500)  # width, height
JPEG_QUALITY = 90
MODEL_SIZE = 600


def write_clinical_xrays(zip_path: Path, folder: Path, count: int) -> list[Path]:
    """`count` X-rays from the zip, upscaled to CLINICAL_SIZE, as JPEGs in `folder`."""
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith(".jpeg"))[:count]
        paths = []
        for i, name in enumerate(names):
            with archive.open(name) as member, Image.open(member) as image:
                large = image.convert("L").resize(CLINICAL_SIZE, Image.Resampling.BICUBIC)
            path = folder / f"xray_{i:03d}.jpeg"
            large.save(path, quality=JPEG_QUALITY)
            paths.append(path)
    return paths


def write_model_folder(folder: Path) -> Path:
    """The thesis X-ray CNN at 600 px, 1 channel, saved as the train stage saves it."""
    keras.utils.set_random_seed(0)
    backbone = build_backbone("xray_cnn", (MODEL_SIZE, MODEL_SIZE, 1), 2, {})
    model = assemble_classifier(backbone, (MODEL_SIZE, MODEL_SIZE, 1), "unit")
    folder.mkdir()
    model.save(folder / "model.keras")
    preprocessing = {
        "classes": ["NORMAL", "PNEUMONIA"],
        "image_size": MODEL_SIZE,
        "channels": 1,
        "aspect": "stretch",
    }
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    return folder


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(model_dir: Path, images: list[Path], runs: int, batch_size: int) -> dict:
    """Seconds per run of each variant, `runs` runs each, variants taking turns."""
    names = [str(p) for p in images]
    timings: dict[str, list[float]] = {"included": [], "excluded": [], "decode": [], "reload": []}
    for _ in range(runs):
        timings["included"].append(
            seconds(lambda: predict_inputs(str(model_dir), names, batch_size=batch_size))
        )
        classifier = ImageClassifier.from_folder(model_dir)
        classifier.predict_pixels(classifier.load_pixels(images[0])[None])  # warm-up
        timings["excluded"].append(
            seconds(lambda c=classifier: list(c.iter_batches(images, batch_size)))
        )
        timings["decode"].append(seconds(lambda c=classifier: [c.load_pixels(p) for p in images]))
        timings["reload"].append(seconds(lambda: [predict_image(model_dir, p) for p in images]))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=Path("../shared/datasets/chest_xray_224.zip"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        images = write_clinical_xrays(args.zip, Path(tmp), args.images)
        model_dir = write_model_folder(Path(tmp) / "seed-0")
        timings = measure(model_dir, images, args.runs, args.batch_size)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average over the last minute at the end: {os.getloadavg()[0]:.1f}); "
        f"Keras {keras.__version__}, backend {keras.backend.backend()}"
    )
    print(
        f"{len(images)} JPEG X-rays of {CLINICAL_SIZE[0]} x {CLINICAL_SIZE[1]} px -> xray_cnn at "
        f"{MODEL_SIZE} px, batch {args.batch_size}; median of {args.runs} runs"
    )
    print(f"{'variant':<10} {'median s':>9} {'img/s':>7}   runs (s)")
    for variant, values in timings.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{variant:<10} {median:>9.2f} {len(images) / median:>7.1f}   {runs}")
    included = statistics.median(timings["included"])
    print(f"reload / included: {statistics.median(timings['reload']) / included:.1f}x")


if __name__ == "__main__":
    main()
