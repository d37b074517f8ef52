"""Turn any supported image file into an 8-bit Pillow image that `load_image` can convert.

The training datasets hold 8-bit JPEGs, which pass through here untouched. New images
come in more pixel formats: 16-bit greyscale PNG/TIFF (what many clinical exports are),
images with transparency, palette and CMYK images, and DICOM files. Each is mapped to
8 bits here, once, with a rule stated in `to_8bit` and `read_dicom`; everything after
that (channel conversion, resizing) is `load_image`'s, the same for every format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DICOM_SUFFIXES = frozenset({".dcm"})
# A DICOM Part 10 file: a 128-byte preamble, then these 4 bytes.
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
# Pillow modes of more than 8 bits per pixel (one channel): 16-bit in either byte order,
# 32-bit integer and 32-bit float.
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class UnsupportedImageError(ValueError):
    """An image whose pixels cannot be made 8-bit greyscale or RGB; the message says why."""


def is_dicom(path: Path) -> bool:
    """True for a `.dcm` file or a file that starts like a DICOM Part 10 file (any name)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as file:
            header = file.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError:
        return False  # Pillow's open then reports the real reason
    return header[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC


def open_image(path: Path) -> Image.Image:
    """Open `path` with Pillow, or decode it as DICOM; the result may still be 16-bit etc."""
    return read_dicom(path) if is_dicom(path) else Image.open(path)


def image_dimensions(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the file's header, without decoding the pixels."""
    if is_dicom(path):
        import pydicom

        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            return int(header.Columns), int(header.Rows)
        except (pydicom.errors.InvalidDicomError, AttributeError, ValueError, OSError) as err:
            raise UnsupportedImageError(f"{path}: not a readable DICOM image ({err})") from None
    with Image.open(path) as image:
        return image.size


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0-255 (values outside are clipped), rounded to uint8.

    low == high (a constant image) gives all zeros rather than a division by zero.
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = float(low), float(high)  # not float32: 127.5 must not become 127.49998
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * 255.0 / (high - low)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_8bit(image: Image.Image) -> Image.Image:
    """An image Pillow converts faithfully to "L" or "RGB"; 8-bit opaque images are returned as is.

    - 16-bit, 32-bit integer and float greyscale (I;16, I;16B, I, F; a 16-bit PNG opens as
      I;16): the image's own value range, minimum to maximum, is stretched to 0-255.
      Why not value / 257: a 16-bit container does not say how many bits are used, and
      clinical exports often hold 10-, 12- or 14-bit data, which divided by 257 would be
      nearly black (a 12-bit image would use grey levels 0-16). Min-max is what a viewer
      shows without a window, and the same rule `read_dicom` applies when a file has no
      window. Pillow's own conversion clips at 255 instead, which would be all white.
    - Transparency (RGBA, LA, PA, a palette with a transparent colour) is composited on
      black: the colour under a transparent pixel is arbitrary (often white or left-over
      data) and never meant to be seen; black is the background around the anatomy in
      X-ray and MRI images and the fill of `aspect: pad`, so a transparent border looks
      like the borders the model was trained on.
    - Palette (P), CMYK, bilevel ("1") and other 8-bit modes are left to Pillow's convert.
    """
    if image.mode in _WIDE_MODES:
        values = np.asarray(image)
        return Image.fromarray(scale_to_uint8(values, values.min(), values.max()), "L")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image


def read_dicom(path: Path) -> Image.Image:
    """Decode a single-frame DICOM file into an 8-bit "L" (or, for colour, "RGB") image.

    Greyscale: the stored values go through the file's modality transform (RescaleSlope
    and RescaleIntercept, or its Modality LUT), then through the file's own window
    (WindowCenter/WindowWidth, the first one when there are several; its VOILUTFunction)
    when it has one, else its value range is stretched to 0-255 (as `to_8bit` does for
    16-bit images). MONOCHROME1 (low values bright) is inverted so that bone is bright
    as in MONOCHROME2 and in the training images. Multi-frame files (CT or MR series in
    one file, cine loops) are refused: which frame to classify is the user's choice.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as err:
        raise UnsupportedImageError(f"{path}: not a readable DICOM file ({err})") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"{path}: multi-frame DICOM ({frames} frames) is not supported; "
            "save the frame to classify as a single-frame file"
        )
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    try:
        stored = dataset.pixel_array
    # pydicom raises AttributeError without pixel data, RuntimeError or NotImplementedError
    # for a compression it has no decoder for, ValueError for inconsistent pixel elements.
    except (AttributeError, RuntimeError, NotImplementedError, ValueError, KeyError) as err:
        raise UnsupportedImageError(f"{path}: cannot decode the DICOM pixel data ({err})") from None
    if photometric not in _MONOCHROME:
        if stored.ndim == 3 and stored.shape[-1] == 3 and stored.dtype == np.uint8:
            return Image.fromarray(stored, "RGB")  # RGB, or YBR that pydicom made RGB
        raise UnsupportedImageError(
            f"{path}: DICOM PhotometricInterpretation {photometric!r} with "
            f"{stored.dtype} pixels is not supported; expected MONOCHROME1, MONOCHROME2 "
            "or 8-bit RGB"
        )
    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    pixels = _apply_window(values, dataset, path)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return Image.fromarray(pixels, "L")


def _apply_window(values: np.ndarray, dataset: Any, path: Path) -> np.ndarray:
    """The file's window (DICOM PS3.3 C.11.2.1.2) onto 0-255, else its value range.

    Written here rather than with pydicom's apply_windowing: that maps onto an output
    range derived from BitsStored and the rescale, which would have to be reproduced to
    reach 8 bits; with 0-255 as the output range the standard's formulas are these lines.
    """
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return scale_to_uint8(values, values.min(), values.max())
    center = float(_first(dataset.WindowCenter))
    width = float(_first(dataset.WindowWidth))
    function = str(dataset.get("VOILUTFunction", "LINEAR")).upper()
    valid = {"LINEAR": width >= 1, "LINEAR_EXACT": width > 0, "SIGMOID": width > 0}
    if not valid.get(function, False):
        raise UnsupportedImageError(
            f"{path}: DICOM window WindowWidth={width} with VOILUTFunction {function!r} "
            "cannot be applied; expected LINEAR (width >= 1), LINEAR_EXACT or SIGMOID (width > 0)"
        )
    if function == "SIGMOID":
        return scale_to_uint8(255.0 / (1.0 + np.exp(-4.0 * (values - center) / width)), 0, 255)
    if function == "LINEAR":
        # LINEAR centres the window on (center - 0.5) and spans (width - 1).
        center, width = center - 0.5, width - 1.0
        if width == 0:  # a window of width 1 is a threshold at its centre
            return np.where(values > center, 255, 0).astype(np.uint8)
    return scale_to_uint8(values, center - width / 2, center + width / 2)


def _first(value: Any) -> Any:
    """The first value of a multi-valued DICOM element (e.g. several windows), else the value."""
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value
