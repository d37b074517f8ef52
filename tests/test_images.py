"""Tests for medimg.data.images: the per-image hashes that the split stage compares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medimg.data.images import CONTENT_MIN_GREY, ImageError, content_box, inspect_image


def grey(pixels: list[list[int]] | np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8), "L")


def test_content_box_is_the_box_of_pixels_brighter_than_the_threshold() -> None:
    pixels = np.zeros((6, 8), dtype=np.uint8)
    pixels[1:3, 2:5] = 200  # rows 1-2, columns 2-4
    pixels[5, 7] = CONTENT_MIN_GREY  # at the threshold: still background (JPEG noise)
    assert content_box(grey(pixels)) == (2, 1, 5, 3)  # (left, upper, right, lower)
    pixels[5, 7] = CONTENT_MIN_GREY + 1
    assert content_box(grey(pixels)) == (2, 1, 8, 6)


def test_content_box_of_a_black_image_is_the_whole_image() -> None:
    assert content_box(grey(np.zeros((4, 5)))) == (0, 0, 5, 4)


def test_content_box_of_a_colour_image_uses_its_brightness() -> None:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[2, 1] = (0, 0, 255)  # luma 29 > 20: content
    pixels[0, 3] = (60, 0, 0)  # luma 18: background
    assert content_box(Image.fromarray(pixels, "RGB")) == (1, 2, 2, 3)


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)  # PNG: lossless, so the hashes see exactly these pixels
    return path


def test_dhash_bits_say_where_brightness_increases_to_the_right(tmp_path: Path) -> None:
    # 17 x 16 is the size dhash compares at (16 differences per row), so no resampling.
    ramp = np.tile(np.arange(17) * 10 + 40, (16, 1))
    rising = inspect_image(save(grey(ramp), tmp_path / "rising.png"))
    falling = inspect_image(save(grey(ramp[:, ::-1]), tmp_path / "falling.png"))
    assert rising.dhash == "f" * 64  # every pixel brighter than its left neighbour
    assert falling.dhash == "0" * 64
    # No black background here: the content is the whole image.
    assert (rising.content_dhash, falling.content_dhash) == (rising.dhash, falling.dhash)


def test_content_dhash_matches_a_recropped_copy_that_dhash_does_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    content = rng.integers(40, 256, size=(48, 40), dtype=np.uint8)
    tight = np.zeros((56, 48), dtype=np.uint8)
    tight[4:52, 4:44] = content
    wide = np.zeros((60, 90), dtype=np.uint8)  # the same scan with wide black margins
    wide[2:50, 30:70] = content
    a = inspect_image(save(grey(tight), tmp_path / "tight.png"))
    b = inspect_image(save(grey(wide), tmp_path / "wide.png"))

    assert a.content_dhash == b.content_dhash
    different_bits = bin(int(a.dhash, 16) ^ int(b.dhash, 16)).count("1")
    assert different_bits > 40  # more than the MRI threshold: the whole frames differ
    assert (len(a.phash), len(a.dhash), len(a.content_dhash)) == (16, 64, 64)


def test_an_undecodable_file_is_an_image_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="cannot decode image"):
        inspect_image(path)
