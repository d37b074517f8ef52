"""The one definition of preprocessing: an image file into model input (`load_image`).

The augment stage decodes the datasets with it, and `medimg predict` and the served
model turn a new image into model input with it, through the settings the model's
preprocessing.json holds, so that training and prediction cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from medimg.data.intensity import Crop, Normalization, crop_to_content, normalize_image
from medimg.data.pixels import UnsupportedImageError, open_image, to_8bit
from medimg.errors import UserError

_PIL_MODE = {1: "L", 3: "RGB"}


class ImageLoadError(UserError, ValueError):
    """An image file that cannot be decoded into model input; the message names it and why."""


def load_image(
    path: str | Path,
    channels: int,
    image_size: int,
    aspect: Literal["stretch", "pad"],
    normalize: Normalization = "none",
    crop: Crop = "none",
) -> np.ndarray:
    """Decode an image file into model input, uint8 (image_size, image_size, channels).

    channels: 1 converts to greyscale ("L"), 3 to "RGB".
    aspect: "stretch" resizes to a square ignoring the aspect ratio (as the thesis did);
        "pad" keeps the aspect ratio and centres the image on a black square.
    The full image is decoded: the JPEG decoder's reduced-size draft mode
    (`Image.draft`, even at twice the target size) changed the result by 0.9-2.2 grey
    levels on average and up to 109 at edges on MRI images of 900 px and more, too
    much for a definition of preprocessing.
    Resampling is bilinear: Pillow's bilinear filter widens with the reduction factor, so
    downscaling is antialiased; unlike Lanczos it cannot overshoot (no ringing halos at
    high-contrast edges such as ribs or the skull), and it is the default of Keras's
    image-loading utilities, so results agree with a plain Keras pipeline.
    Pixel formats (`medimg.data.pixels`): 8-bit greyscale and RGB (the datasets' JPEGs)
    are converted directly, as always; 16-bit and float greyscale have their value range
    stretched to 0-255; transparency is composited on black; palette, CMYK and bilevel
    go through Pillow's conversion; DICOM (`.dcm`, or a DICOM header) is rescaled and
    windowed as `medimg.data.pixels.read_dicom` says.
    crop: "content" crops the black border away first (medimg.data.intensity).
    normalize: the grey-level normalisation of medimg.data.intensity, applied last
        (on the resized image, so its percentiles are those of what the model sees).
    """
    if channels not in _PIL_MODE:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if aspect not in ("stretch", "pad"):
        raise ValueError(f"aspect must be 'stretch' or 'pad', got {aspect!r}")
    path = Path(path)
    try:
        with open_image(path) as image:
            image = crop_to_content(to_8bit(image).convert(_PIL_MODE[channels]), crop)
            if aspect == "stretch":
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            else:
                image = _letterbox(image, image_size)
            pixels = np.asarray(normalize_image(image, normalize), dtype=np.uint8)
    except UnsupportedImageError as err:  # its message names the file and the reason
        raise ImageLoadError(str(err)) from None
    # Pillow reports undecodable data as OSError (incl. UnidentifiedImageError and a truncated
    # file), SyntaxError or ValueError from some plugins, oversized images as
    # DecompressionBombError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"{path}: cannot read the image ({err})") from err
    return pixels.reshape(image_size, image_size, channels)


def _letterbox(image: Image.Image, size: int) -> Image.Image:
    """Resize so the longer side is `size`, centred on a black `size` x `size` square."""
    width, height = image.size
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(new_size, Image.Resampling.BILINEAR)
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas
