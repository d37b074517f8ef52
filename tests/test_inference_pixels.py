"""load_image on the pixel formats new images come in: 16-bit, alpha, palette, CMYK, DICOM.

Real files written with Pillow and pydicom; expected values computed by hand from the
rules in medimg.data.pixels. The datasets' 8-bit JPEGs must come out exactly as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_support import gradient_image, write_dicom
from medimg.data.pixels import image_dimensions, is_dicom
from medimg.data.preprocess import ImageLoadError, load_image

W, H = 8, 6  # images keep their size (no resampling) so values can be checked exactly


def _two_level(low: int, high: int, dtype: type) -> np.ndarray:
    """(H, W): left half `low`, right half `high`, one pixel at the midpoint."""
    values = np.full((H, W), low, dtype)
    values[:, W // 2 :] = high
    values[0, 0] = (low + high) // 2
    return values


def _load_grey(path: Path) -> np.ndarray:
    return load_image(path, channels=1, image_size=W, aspect="stretch")[..., 0]


def _load_unresized(path: Path, channels: int) -> np.ndarray:
    """load_image at the file's own (square) size: no resampling, values exact."""
    return load_image(path, channels=channels, image_size=W, aspect="stretch")


def test_8bit_jpeg_is_preprocessed_exactly_as_before(tmp_path: Path):
    path = tmp_path / "xray.jpeg"
    rgb = np.stack([gradient_image(), 255 - gradient_image(), gradient_image()[::-1]], -1)
    Image.fromarray(rgb, "RGB").save(path, quality=90)
    for channels, mode in ((1, "L"), (3, "RGB")):
        with Image.open(path) as image:
            expected = np.asarray(image.convert(mode).resize((24, 24), Image.Resampling.BILINEAR))
        got = load_image(path, channels=channels, image_size=24, aspect="stretch")
        np.testing.assert_array_equal(got, expected.reshape(24, 24, channels))


def _square(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values, values[: W - H]], axis=0)  # (W, W)


@pytest.mark.parametrize(
    ("mode", "suffix"), [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif"), ("F", ".tif")]
)
def test_wide_greyscale_is_stretched_from_its_value_range(tmp_path: Path, mode: str, suffix: str):
    # 12-bit data in a 16-bit container, as clinical exports hold it.
    stored = _square(_two_level(1000, 3000, np.uint16))
    dtypes = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}
    path = tmp_path / f"wide{suffix}"
    Image.frombytes(mode, (W, W), stored.astype(dtypes[mode]).tobytes()).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    got = _load_grey(path)
    assert got[1, 0] == 0 and got[1, -1] == 255  # minimum -> 0, maximum -> 255
    assert got[0, 0] == 128  # 2000 is halfway: 127.5 rounds to 128


def test_16bit_png_scaling_does_not_depend_on_the_container(tmp_path: Path):
    """The same picture at 12 and at 16 bits gives the same 8-bit image (min-max)."""
    picture = _square(_two_level(0, 4095, np.uint16))
    paths = []
    for bits in (12, 16):
        path = tmp_path / f"bits{bits}.png"
        scaled = (picture.astype(np.float64) * (2**bits - 1) / 4095).round().astype(np.uint16)
        Image.fromarray(scaled).save(path)
        paths.append(path)
    np.testing.assert_array_equal(_load_grey(paths[0]), _load_grey(paths[1]))


def test_constant_16bit_image_is_black_not_a_division_by_zero(tmp_path: Path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((W, W), 700, np.uint16)).save(path)
    assert not _load_grey(path).any()


def test_alpha_is_composited_on_black(tmp_path: Path):
    rgba = np.zeros((W, W, 4), np.uint8)
    rgba[:, : W // 2] = (255, 255, 255, 0)  # white hidden under full transparency
    rgba[:, W // 2 :] = (200, 100, 50, 255)  # opaque colour
    rgba[0, 0] = (200, 100, 50, 128)  # half transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    got = _load_unresized(path, channels=3)
    np.testing.assert_array_equal(got[1, 0], (0, 0, 0))
    np.testing.assert_array_equal(got[1, -1], (200, 100, 50))
    np.testing.assert_allclose(got[0, 0], (100, 50, 25), atol=1)

    la = tmp_path / "la.png"
    Image.fromarray(np.stack([np.full((W, W), 255, np.uint8), rgba[..., 3]], -1), "LA").save(la)
    grey = _load_unresized(la, channels=1)[..., 0]
    assert grey[1, 0] == 0 and grey[1, -1] == 255


def test_palette_images(tmp_path: Path):
    indices = np.zeros((W, W), np.uint8)
    indices[:, W // 2 :] = 1
    palette = [0, 0, 0, 255, 255, 255] + [0] * (254 * 3)
    opaque = Image.fromarray(indices, "P")
    opaque.putpalette(palette)
    opaque.save(tmp_path / "p.png")
    grey = _load_unresized(tmp_path / "p.png", channels=1)[..., 0]
    assert grey[0, 0] == 0 and grey[0, -1] == 255

    # Index 1 (white) declared transparent: composited on black like any alpha.
    opaque.save(tmp_path / "p_transparent.png", transparency=1)
    grey = _load_unresized(tmp_path / "p_transparent.png", channels=1)[..., 0]
    assert not grey.any()


def test_cmyk_jpeg_is_converted_by_pillow(tmp_path: Path):
    path = tmp_path / "cmyk.jpeg"
    Image.new("CMYK", (W, W), (0, 255, 0, 0)).save(path, quality=100)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
        expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(_load_unresized(path, channels=3), expected)


def test_dicom_rescale_then_the_files_window(tmp_path: Path):
    # Stored s -> HU = 2 s - 1000; window centre 1000.5, width 2001 (LINEAR) spans HU 0..2000.
    stored = np.array([[500, 1500, 1000, 100, 2000, 500, 500, 500]] * W, np.uint16)
    path = write_dicom(
        tmp_path / "ct.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=1000.5,
        WindowWidth=2001,
    )
    row = _load_grey(path)[0]
    # HU: 0 -> 0, 2000 -> 255, 1000 -> 127.5 -> 128, -800 -> 0 (below), 3000 -> 255 (above)
    np.testing.assert_array_equal(row[:5], [0, 255, 128, 0, 255])


def test_dicom_without_window_uses_its_value_range(tmp_path: Path):
    stored = _square(_two_level(200, 1200, np.uint16))
    grey = _load_grey(write_dicom(tmp_path / "plain.dcm", stored))
    assert grey[1, 0] == 0 and grey[1, -1] == 255 and grey[0, 0] == 128


def test_dicom_monochrome1_is_inverted(tmp_path: Path):
    stored = _square(_two_level(200, 1200, np.uint16))
    normal = _load_grey(write_dicom(tmp_path / "m2.dcm", stored))
    inverted = _load_grey(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(inverted, 255 - normal)


def test_dicom_is_recognised_by_its_header_whatever_its_name(tmp_path: Path):
    stored = _square(_two_level(0, 100, np.uint16))
    path = write_dicom(tmp_path / "export_0001", stored)
    assert is_dicom(path)
    assert image_dimensions(path) == (W, W)
    assert _load_grey(path)[1, -1] == 255


def test_colour_dicom(tmp_path: Path):
    rgb = np.zeros((W, W, 3), np.uint8)
    rgb[..., 0] = 180
    path = write_dicom(tmp_path / "colour.dcm", rgb, photometric="RGB")
    np.testing.assert_array_equal(_load_unresized(path, channels=3)[0, 0], (180, 0, 0))


def test_multiframe_dicom_is_refused(tmp_path: Path):
    frames = np.zeros((3, W, W), np.uint16)
    path = write_dicom(tmp_path / "cine.dcm", frames)
    with pytest.raises(ImageLoadError, match=r"cine\.dcm: multi-frame DICOM \(3 frames\)"):
        _load_grey(path)


def test_a_dcm_that_is_not_dicom_is_named(tmp_path: Path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"not a dicom file at all")
    with pytest.raises(ImageLoadError, match=r"fake\.dcm: not a readable DICOM file"):
        _load_grey(path)
