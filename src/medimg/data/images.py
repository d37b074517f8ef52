"""Decode each fetched image once: size, mode and image hashes, or why it is unreadable."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash

# imagehash.phash imports scipy.fftpack on its first call; importing it here, once, lets
# forked inspection workers inherit it instead of each paying ~0.3 s for the import.
import scipy.fftpack  # noqa: F401
from PIL import Image
from tqdm import tqdm

from medimg.data.layouts import IMAGE_SUFFIXES

PHASH_SIZE = 8  # 8 x 8 bits = 16 hex characters, the manifest's phash column
# 16 x 16 bits = 64 hex characters, the manifest's dhash and content_dhash columns. 64-bit
# dhashes could not tell adjacent MRI slices from unrelated ones; 256 bits can (docs/data.md).
DHASH_SIZE = 16
# Grey level above which a pixel is content rather than black background: above the JPEG
# noise of the MRI backgrounds, below any tissue.
CONTENT_MIN_GREY = 20


class ImageError(ValueError):
    """A file that is not a decodable image; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str  # PIL mode, e.g. "L", "RGB"
    phash: str  # 16 hex characters (imagehash.phash, hash_size 8)
    dhash: str  # 64 hex characters (imagehash.dhash, hash_size 16) of the whole image
    content_dhash: str  # the same of `content_box` only, so re-cropped copies still match


def content_box(image: Image.Image) -> tuple[int, int, int, int]:
    """(left, upper, right, lower) of the pixels brighter than CONTENT_MIN_GREY.

    The whole image when none is: a black image has no content to crop to.
    """
    mask = image.convert("L").point(lambda v: 255 if v > CONTENT_MIN_GREY else 0)
    return mask.getbbox() or (0, 0, image.width, image.height)


def inspect_image(path: Path) -> ImageInfo:
    """Fully decode an image and describe it; raises ImageError saying why it cannot be.

    `img.load()` decodes every pixel, so a truncated JPEG fails here rather than
    in training. Pillow's decompression-bomb limit stays at its default.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(
            f"not an image file: extension {path.suffix!r}, "
            f"expected one of {sorted(IMAGE_SUFFIXES)}"
        )
    try:
        with Image.open(path) as img:
            img.load()
            # imagehash hashes greyscale: converting once here gives the same hashes.
            grey = img.convert("L")
            return ImageInfo(
                width=img.width,
                height=img.height,
                mode=img.mode,
                phash=str(imagehash.phash(grey, hash_size=PHASH_SIZE)),
                dhash=str(imagehash.dhash(grey, hash_size=DHASH_SIZE)),
                content_dhash=str(
                    imagehash.dhash(grey.crop(content_box(grey)), hash_size=DHASH_SIZE)
                ),
            )
    # Pillow reports undecodable data as OSError (incl. UnidentifiedImageError and
    # "image file is truncated"), SyntaxError or ValueError from some plugins, and
    # oversized images as DecompressionBombError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode image: {type(err).__name__}: {err}") from None


def inspect_or_reason(path: Path) -> ImageInfo | str:
    """`inspect_image`, returning the failure reason as a string (picklable across processes)."""
    try:
        return inspect_image(path)
    except ImageError as err:
        return str(err)


def inspect_images(paths: Sequence[Path], workers: int | None = None) -> list[ImageInfo | str]:
    """Inspect images in `workers` processes (default: os.cpu_count()).

    Returns, in the order of `paths`, an ImageInfo or the reason the file is bad.
    """
    workers = workers or os.cpu_count() or 1
    chunksize = max(1, min(64, len(paths) // (workers * 4) or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(
                pool.map(inspect_or_reason, paths, chunksize=chunksize),
                total=len(paths),
                desc="inspect images",
                unit="img",
                file=sys.stderr,
            )
        )
