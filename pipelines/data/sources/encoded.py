"""PNG and JPEG images (files of an image folder, or bytes in a Parquet column): headers read first, to
find the common mode and size; pixels decoded batch by batch, on a thread per core.

Pixels become 8 bits: 16-bit grayscale (and 32-bit integer images holding 16-bit values) is scaled by
255/65535, since PIL's own conversion clips every value above 255 to white; PIL reads 16-bit RGB as its
high byte. Float images (mode F) are refused: their scale is unknown."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipelines.core.errors import DataError
from pipelines.data.sources.base import resize

# 16-bit grayscale opens as I;16 (I;16B, I;16L, I;16N: by byte order); older PIL versions open it as I (32 bits).
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
GRAY_MODES = ("L", "1", *SIXTEEN_BIT_MODES)


@contextmanager
def open_image(file: Path | io.BytesIO, name: str) -> Iterator[Image.Image]:
    """The image in `file`; an unreadable or damaged one, found on opening or decoding, is a DataError naming it."""
    try:
        with Image.open(file) as image:
            yield image
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{name}: not a readable PNG or JPEG image ({error})") from None


def read_header(file: Path | io.BytesIO, name: str) -> tuple[str, tuple[int, int]]:
    """(mode, (height, width)) from an image file's header, without decoding its pixels."""
    with open_image(file, name) as image:
        if image.mode == "F":
            raise DataError(f"{name}: 32-bit float pixels (mode F) have no known scale: save the image as an "
                            "8- or 16-bit PNG")
        return image.mode, (image.height, image.width)


def common_format(
    headers: list[tuple[str, tuple[int, int]]], size: tuple[int, int] | None, where: Path | str
) -> tuple[str, tuple[int, int]]:
    """The mode every image is converted to (RGB if any image has color, else L) and the common size."""
    mode = "RGB" if any(mode not in GRAY_MODES for mode, _ in headers) else "L"
    if size is not None:
        return mode, (size[0], size[1])
    sizes = sorted({image_size for _, image_size in headers})
    if len(sizes) > 1:
        (h1, w1), (h2, w2) = sizes[:2]
        raise DataError(
            f"{where}: images of different sizes ({h1}x{w1}, {h2}x{w2}, ...): set data.resize: [height, width]"
        )
    return mode, sizes[0]


def decode(images: Sequence[tuple[Path | io.BytesIO, str]], mode: str, size: tuple[int, int]) -> np.ndarray:
    """Encoded images (each a file or bytes, with a name for errors) as one uint8 [B, C, H, W] in `mode`,
    each resized to `size` where it differs. Decoding runs on a thread per core: PIL releases the GIL."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return torch.stack(list(pool.map(lambda image: _pixels(image[0], image[1], mode, size), images))).numpy()


def _pixels(file: Path | io.BytesIO, name: str, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """One image decoded as uint8 [C, H, W] in `mode` and at `size`."""
    with open_image(file, name) as image:
        pixels = torch.from_numpy(np.array(_eight_bit(image, name).convert(mode)))
    pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    if tuple(pixels.shape[1:]) != tuple(size):
        pixels = resize(pixels[None], size)[0]
    return pixels


def _eight_bit(image: Image.Image, name: str) -> Image.Image:
    """`image`, a 16-bit one scaled to 8-bit grayscale (value * 255 / 65535, rounded) so that it keeps its
    contrast. A 32-bit integer image (mode I) is read as 16-bit; one with values outside 0..65535 is refused."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise DataError(f"{name}: 32-bit integer pixels in [{low}, {high}], outside the 16-bit range 0..65535: "
                        "save the image as an 8- or 16-bit PNG")
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
