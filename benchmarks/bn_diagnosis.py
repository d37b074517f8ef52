"""Is a trained model's validation accuracy lost to its batch-norm statistics?

For each saved `model.keras` (a seed folder of the train stage), on the prepared arrays
of its split protocol:

1. accuracy in inference mode (the batch-norm moving statistics the training left),
   on the first --train-images training images and on the validation split;
2. the same after recomputing every batch-norm layer's statistics on 1024 *clean*
   training images (medimg.training.batch_norm, what `batch_norm_statistics: clean`
   does after training; "precise BN" in Wu & Johnson, 2021, "Rethinking 'Batch' in
   BatchNorm").

If (2) is much better than (1), the weights are fine and the statistics are not:
with Gaussian noise inside the model, the moving statistics describe noisy inputs
and the clean inference inputs fall outside them. Nothing is saved; the models are
only read.

    S=/tmp/medimg-research/brain_tumor_mri-5ced62aec2     # a research.py scratch folder
    python benchmarks/bn_diagnosis.py --prepared $S/data/prepared/brain_tumor_mri/pooled \\
        $S/models/mri_cnn__mri64_baseline/seed-0 $S/models/mri_cnn__mri64_no_noise/seed-0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np

from medimg.training.batch_norm import clean_training_sample, recompute_batch_norm_statistics


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
    probabilities = model.predict(x, batch_size=batch, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=1) == y))


def diagnose(seed_folder: Path, prepared: Path, train_images: int, batch: int) -> dict:
    # a random subset: the prepared arrays are in manifest order, grouped by class
    train_y_all = np.load(prepared / "train_y.npy")
    pick = np.sort(np.random.default_rng(0).permutation(len(train_y_all))[:train_images])
    train_x_all = np.load(prepared / "train_x.npy", mmap_mode="r")
    train_x = train_x_all[pick]
    train_y = train_y_all[pick]
    val_x = np.load(prepared / "val_x.npy", mmap_mode="r")
    val_y = np.load(prepared / "val_y.npy")
    # a train stage's seed folder (model.keras), or a work folder's kept checkpoint
    saved = seed_folder / "model.keras"
    if not saved.is_file():
        saved = seed_folder / "best.keras"
    model = keras.saving.load_model(saved, compile=False)
    before = {"train": accuracy(model, train_x, train_y), "val": accuracy(model, val_x, val_y)}
    recompute_batch_norm_statistics(model, clean_training_sample(train_x_all, seed=0), batch)
    after = {"train": accuracy(model, train_x, train_y), "val": accuracy(model, val_x, val_y)}
    return {"before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed_folders", nargs="+", type=Path)
    parser.add_argument("--prepared", type=Path, required=True, help="prepared split folder")
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(f"backend {keras.backend.backend()}, prepared {args.prepared}")
    print(
        "| model | train acc (inference) | val acc (inference) | train acc (precise BN) "
        "| val acc (precise BN) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for folder in args.seed_folders:
        result = diagnose(folder, args.prepared, args.train_images, args.batch)
        b, a = result["before"], result["after"]
        name = f"{folder.parent.name}/{folder.name}"
        print(f"| {name} | {b['train']:.3f} | {b['val']:.3f} | {a['train']:.3f} | {a['val']:.3f} |")


if __name__ == "__main__":
    main()
