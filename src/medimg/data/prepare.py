"""The augment stage: decode every image once into uint8 arrays, plus offline augmented copies.

For each split protocol of the dataset, reads data/splits/<dataset>/<protocol>/
{train,val,test}.csv and the images under data/raw/<dataset>/, and writes
data/prepared/<dataset>/<protocol>/:

- `<split>_x.npy` uint8 (N, H, W, C), memory-mappable; `<split>_y.npy` int64 (N,),
  the index of each label in `DatasetConfig.classes`;
- `<split>.csv` (path, label, copy), one row per array row in the same order;
  copy 0 is the original image, k >= 1 its k-th augmented copy. Training rows are
  all originals first, then copy 1 of every image, then copy 2, ...;
- `meta.json` (sizes, counts, protocol, source fingerprint) and `examples.png` (a grid
  of examples per class).

Every image is decoded by `medimg.data.preprocess.load_image`, the one definition of
preprocessing: the same function turns a new image into model input at prediction time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from medimg import atomic, paths
from medimg.config.datasets import DatasetConfig, OfflineAugmentConfig
from medimg.data.augmentation import augment_image
from medimg.data.manifest import SPLITS
from medimg.data.preprocess import load_image
from medimg.errors import UserError

REQUIRED_COLUMNS = ("path", "label")
# Workers receive this many images per task: large enough to amortise inter-process
# overhead, small enough that results in flight stay a few MB.
_CHUNKSIZE = 16


log = logging.getLogger(__name__)


class PrepareError(UserError, RuntimeError):
    """The augment stage cannot run: missing inputs, an unreadable image, an unknown label."""


def _read_split_csv(name: str, split: str, splits: Path, classes: list[str]) -> pd.DataFrame:
    csv_path = splits / f"{split}.csv"
    if not csv_path.is_file():
        raise PrepareError(
            f"{csv_path}: not found; run the split stage first: dvc repro split@{name}"
        )
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise PrepareError(
            f"{csv_path}: missing column(s) {missing}; expected at least {list(REQUIRED_COLUMNS)}"
        )
    unknown = table[~table["label"].isin(classes)]
    if len(unknown):
        row = unknown.iloc[0]
        raise PrepareError(
            f"{csv_path}: image {row['path']!r} has label {row['label']!r}, which is not one of "
            f"the dataset's classes {classes} ({len(unknown)} such row(s))"
        )
    return table


def _augment_seed(seed: int, index: int, copy: int) -> np.random.Generator:
    """One generator per (image, copy): results do not depend on worker count or chunking."""
    return np.random.default_rng([seed, index, copy])


def _decode_task(
    task: tuple[int, Path, int, int, str, str, str, OfflineAugmentConfig | None],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Worker: decode one image and make its augmented copies (none when `augment` is None)."""
    index, path, channels, image_size, aspect, normalize, crop, augment = task
    original = load_image(path, channels, image_size, aspect, normalize, crop)  # type: ignore[arg-type]
    copies = []
    if augment is not None:
        for copy in range(1, augment.copies + 1):
            rng = _augment_seed(augment.seed, index, copy)
            copies.append(
                augment_image(
                    original, rng, augment.rotation_deg, augment.zoom_range, augment.noise_std
                )
            )
    return original, copies


def _decoder_pool(workers: int) -> contextlib.AbstractContextManager[ProcessPoolExecutor | None]:
    """Worker processes for decoding, shared by all splits (None: decode in this process)."""
    if workers == 1:
        return contextlib.nullcontext(None)
    # ProcessPoolExecutor rather than multiprocessing.Pool: a worker that dies (out of memory,
    # killed) raises BrokenProcessPool instead of hanging. spawn, not fork: the parent may hold
    # threads (e.g. a Keras backend in the same process), and forking those can deadlock; the
    # calling script therefore needs an `if __name__ == "__main__":` guard.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _decoded(
    tasks: list[tuple], pool: ProcessPoolExecutor | None, desc: str
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Results of `_decode_task` in task order."""
    if pool is None:
        results = map(_decode_task, tasks)
    else:
        # map() yields in order; results finished ahead of the writer wait in memory, but the
        # writer (a copy into the memmap) is much faster than decoding, so few do.
        results = pool.map(_decode_task, tasks, chunksize=_CHUNKSIZE)
    yield from tqdm(results, total=len(tasks), desc=desc, unit="img")


def _write_split(
    name: str,
    split: str,
    table: pd.DataFrame,
    cfg: DatasetConfig,
    raw: Path,
    out_dir: Path,
    pool: ProcessPoolExecutor | None,
) -> pd.DataFrame:
    """Decode (and for train augment) one split into out_dir; return its <split>.csv table."""
    prepare = cfg.prepare
    # Val and test are never augmented: they measure the model on the images as they are.
    augment = (
        prepare.offline_augment if split == "train" and prepare.offline_augment.copies else None
    )
    copies = augment.copies if augment is not None else 0
    n = len(table)
    size, channels = prepare.image_size, cfg.channels
    shape = (n * (1 + copies), size, size, channels)
    labels = table["label"].to_numpy()
    class_index = {label: i for i, label in enumerate(cfg.classes)}

    tasks = [
        (i, raw / rel, channels, size, prepare.aspect, prepare.normalize, prepare.crop, augment)
        for i, rel in enumerate(table["path"])
    ]
    x_path = out_dir / f"{split}_x.npy"
    if shape[0] == 0:
        # open_memmap cannot map an empty file; an empty split is still a valid (0, H, W, C) array.
        np.save(x_path, np.empty(shape, dtype=np.uint8))
    else:
        # Written as workers return, so memory does not grow with the dataset.
        x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.uint8, shape=shape)
        for i, (original, augmented) in enumerate(_decoded(tasks, pool, desc=f"{name} {split}")):
            x[i] = original
            for copy, image in enumerate(augmented, start=1):
                x[copy * n + i] = image
        x.flush()
        del x

    y = np.array([class_index[label] for label in labels] * (1 + copies), dtype=np.int64)
    np.save(out_dir / f"{split}_y.npy", y)
    rows = pd.DataFrame(
        {
            "path": np.tile(table["path"].to_numpy(), 1 + copies),
            "label": np.tile(labels, 1 + copies),
            "copy": np.repeat(np.arange(1 + copies), n),
        }
    )
    rows.to_csv(out_dir / f"{split}.csv", index=False)
    return rows


def _write_examples(
    out_dir: Path, rows: pd.DataFrame, classes: list[str], per_class: int, augmented: bool
) -> None:
    """examples.png: one row per class, `per_class` training originals (each followed by its
    first augmented copy when offline augmentation is on)."""
    # A bare Figure renders without pyplot's global state or a display.
    from matplotlib.figure import Figure

    x = np.load(out_dir / "train_x.npy", mmap_mode="r")
    n_original = int((rows["copy"] == 0).sum())
    per_example = 2 if augmented else 1
    n_cols = per_class * per_example
    fig = Figure(figsize=(1.1 * n_cols, 1.2 * len(classes)))
    axes = fig.subplots(
        len(classes),
        n_cols,
        squeeze=False,
    )
    for r, label in enumerate(classes):
        indices = np.flatnonzero((rows["label"] == label).to_numpy() & (rows["copy"] == 0))
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
        if len(indices) == 0:
            axes[r][0].set_title("(no training images)", fontsize=7, loc="left")
        for k, index in enumerate(indices[:per_class]):
            shown = [(index, "original")]
            if augmented:
                shown.append((n_original + index, "augmented"))
            for j, (row, title) in enumerate(shown):
                ax = axes[r][k * per_example + j]
                image = x[row]
                if image.shape[-1] == 1:
                    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
                else:
                    ax.imshow(image)
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "examples.png", dpi=72, pil_kwargs={"optimize": True})


def _source_fingerprint(raw: Path) -> str | None:
    report = raw / "fetch_report.json"
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text()).get("fingerprint")
    except json.JSONDecodeError as err:
        raise PrepareError(f"{report}: not valid JSON ({err})") from err


def _prepare_protocol(
    name: str,
    protocol: str,
    cfg: DatasetConfig,
    raw: Path,
    tables: dict[str, pd.DataFrame],
    out_dir: Path,
    pool: ProcessPoolExecutor | None,
) -> dict[str, Any]:
    """Write one protocol's arrays, tables, examples.png and meta.json into out_dir."""
    started = time.perf_counter()
    counts: dict[str, dict[str, int]] = {}
    written: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        written[split] = _write_split(
            f"{name}/{protocol}", split, tables[split], cfg, raw, out_dir, pool
        )
        per_class = written[split]["label"].value_counts()
        counts[split] = {label: int(per_class.get(label, 0)) for label in cfg.classes}
    augment = cfg.prepare.offline_augment
    _write_examples(
        out_dir,
        written["train"],
        cfg.classes,
        cfg.prepare.grid_examples_per_class,
        augmented=augment.copies > 0,
    )
    # No run time in meta.json: re-running the stage on the same data must give the same
    # bytes (DVC hashes outputs); the time is logged instead.
    meta = {
        "dataset": name,
        "protocol": protocol,
        "classes": list(cfg.classes),
        "channels": cfg.channels,
        "image_size": cfg.prepare.image_size,
        "aspect": cfg.prepare.aspect,
        "normalize": cfg.prepare.normalize,
        "crop": cfg.prepare.crop,
        "counts": counts,
        "n_train_original": len(tables["train"]),
        "offline_augment": augment.model_dump(mode="json"),
        "source_fingerprint": _source_fingerprint(raw),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("augment %s/%s: %.1f s", name, protocol, time.perf_counter() - started)
    return meta


def prepare_dataset(
    name: str,
    cfg: DatasetConfig,
    raw: Path | None = None,
    splits: Path | None = None,
    dest: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the augment stage for dataset `name`; return {protocol: its meta.json contents}.

    For each protocol of `cfg.split.protocols`, reads `splits`/<protocol>/<split>.csv and
    writes `dest`/<protocol>/. raw, splits, dest default to data/raw/<name>,
    data/splits/<name> and data/prepared/<name> (medimg.paths). Everything is built in a
    temporary sibling folder and moved into place at the end, so a failure leaves any
    previous output untouched.
    """
    raw = Path(raw) if raw is not None else paths.raw_dir(name)
    splits = Path(splits) if splits is not None else paths.splits_root(name)
    dest = Path(dest) if dest is not None else paths.prepared_root(name)
    # Every split table is checked before the first image is decoded.
    tables = {
        protocol: {
            split: _read_split_csv(name, split, splits / protocol, cfg.classes) for split in SPLITS
        }
        for protocol in cfg.split.protocols
    }
    with atomic.building(dest) as build, _decoder_pool(cfg.prepare.workers) as pool:
        metas = {}
        for protocol, protocol_tables in tables.items():
            (build / protocol).mkdir()
            metas[protocol] = _prepare_protocol(
                name, protocol, cfg, raw, protocol_tables, build / protocol, pool
            )
    return metas
