"""Tests for medimg.data.augmentation: geometry against exact references, noise statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medimg.data.augmentation import (
    add_gaussian_noise,
    augment_batch,
    augment_image,
    random_affine,
    rotate_and_zoom,
)


def _pattern(size: int, channels: int) -> np.ndarray:
    """An asymmetric pattern, so that a wrong rotation direction or flip shows."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (size, size, channels), dtype=np.uint8)


def _horizontal_bar(size: int = 64) -> np.ndarray:
    image = np.zeros((size, size, 1), dtype=np.uint8)
    image[size // 2 - 1 : size // 2 + 1, 8:-8] = 255
    return image


def _bar_angle_deg(image: np.ndarray) -> float:
    """Angle of the bright bar, counterclockwise as shown (rows grow downwards)."""
    rows, cols = np.nonzero(image[..., 0] > 127)
    slope = np.polyfit(cols, -rows, 1)[0]
    return math.degrees(math.atan(slope))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [6, 7])
def test_rotation_by_90_degrees_equals_np_rot90(channels: int, size: int) -> None:
    # np.rot90 rotates counterclockwise as displayed; at 90 degrees every output pixel centre
    # lands exactly on an input pixel centre, so bilinear sampling must reproduce it bit for bit.
    image = _pattern(size, channels)
    assert np.array_equal(rotate_and_zoom(image, 90.0, 1.0), np.rot90(image))
    assert np.array_equal(rotate_and_zoom(image, -90.0, 1.0), np.rot90(image, k=-1))


def test_rotation_by_45_degrees_turns_a_horizontal_bar_counterclockwise() -> None:
    rotated = rotate_and_zoom(_horizontal_bar(), 45.0, 1.0)
    assert _bar_angle_deg(rotated) == pytest.approx(45.0, abs=2.0)
    # Upper right of the centre is on the bar, upper left is not.
    assert rotated[32 - 12, 32 + 12, 0] > 127
    assert rotated[32 - 12, 32 - 12, 0] == 0


def test_zero_rotation_and_unit_zoom_is_the_identity() -> None:
    image = _pattern(9, 3)
    assert np.array_equal(rotate_and_zoom(image, 0.0, 1.0), image)


def test_zoom_two_doubles_a_centred_square() -> None:
    image = np.zeros((32, 32, 1), dtype=np.uint8)
    image[12:20, 12:20] = 255
    zoomed = rotate_and_zoom(image, 0.0, 2.0)
    rows, cols = np.nonzero(zoomed[..., 0] > 127)
    # The 8-pixel square about the centre (16, 16) becomes 16 pixels: 8 .. 23.
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 23, 8, 23)
    assert zoomed.shape == image.shape


def test_zoom_below_one_fills_the_border_with_black() -> None:
    image = np.full((20, 20, 1), 200, dtype=np.uint8)
    shrunk = rotate_and_zoom(image, 0.0, 0.5)
    assert shrunk[0, 0, 0] == 0 and shrunk[-1, -1, 0] == 0
    assert shrunk[10, 10, 0] == 200


def test_random_affine_stays_within_the_rotation_range_and_uses_both_directions() -> None:
    rng = np.random.default_rng(0)
    angles = [
        _bar_angle_deg(random_affine(_horizontal_bar(), rng, 10.0, (1.0, 1.0))) for _ in range(30)
    ]
    assert max(abs(a) for a in angles) <= 10.5
    assert min(angles) < -3 and max(angles) > 3


def test_random_affine_is_reproducible_with_the_same_seed() -> None:
    image = _pattern(32, 1)
    a = random_affine(image, np.random.default_rng(3), 20.0, (0.9, 1.2))
    b = random_affine(image, np.random.default_rng(3), 20.0, (0.9, 1.2))
    c = random_affine(image, np.random.default_rng(4), 20.0, (0.9, 1.2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_noise_has_the_configured_std_on_a_flat_grey_image() -> None:
    grey = np.full((16, 64, 64, 1), 128, dtype=np.uint8)
    noisy = add_gaussian_noise(grey, np.random.default_rng(1), 20.0)
    assert noisy.dtype == np.uint8 and noisy.shape == grey.shape
    delta = noisy.astype(np.float64) - 128
    assert delta.std() == pytest.approx(20.0, rel=0.1)
    assert abs(delta.mean()) < 0.5
    # Normal, not e.g. uniform with the same std: about 68.3 % within one std.
    assert np.mean(np.abs(delta) <= 20) == pytest.approx(0.683, abs=0.02)


def test_noise_is_clipped_to_uint8_not_wrapped() -> None:
    bright = np.full((32, 32, 1), 250, dtype=np.uint8)
    noisy = add_gaussian_noise(bright, np.random.default_rng(2), 30.0)
    # Wrapping would turn 250 + 10 into 4; clipping keeps bright pixels bright.
    assert noisy.min() > 100
    assert np.mean(noisy == 255) > 0.3


def test_zero_noise_returns_an_equal_copy() -> None:
    image = _pattern(8, 1)
    out = add_gaussian_noise(image, np.random.default_rng(0), 0.0)
    assert np.array_equal(out, image) and out is not image


def test_augment_image_with_noise_only_does_not_move_pixels() -> None:
    image = np.zeros((64, 64, 1), dtype=np.uint8)
    image[:, :32] = 200
    out = augment_image(image, np.random.default_rng(0), 0.0, (1.0, 1.0), 5.0)
    assert abs(out[:, :32].mean() - 200) < 1 and out[:, 32:].mean() < 3


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_batch_keeps_shape_and_augments_each_image_differently(channels: int) -> None:
    batch = np.repeat(_pattern(24, channels)[None], 4, axis=0)
    out = augment_batch(batch, np.random.default_rng(5), 15.0, (1.0, 1.2), 10.0)
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert not np.array_equal(out[0], out[1])
    again = augment_batch(batch, np.random.default_rng(5), 15.0, (1.0, 1.2), 10.0)
    assert np.array_equal(out, again)


def test_augment_batch_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8 batch"):
        augment_batch(np.zeros((2, 8, 8, 1), dtype=np.float32), rng, 5.0, (1.0, 1.2), 0.0)
    with pytest.raises(ValueError, match="zoom_range"):
        augment_batch(np.zeros((2, 8, 8, 1), dtype=np.uint8), rng, 5.0, (1.2, 1.0), 0.0)
    with pytest.raises(ValueError, match="uint8 image"):
        augment_image(np.zeros((8, 8), dtype=np.uint8), rng, 5.0, (1.0, 1.2), 0.0)
