"""PNG and JPEG images (files of an image folder, or bytes in a Parquet column): headers read first, to
find the common mode and size; pixels decoded batch by batch, on a thread per core."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipelines.core.errors import DataError
from pipelines.data.sources.base import resize

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GRAY_MODES = ("L", "1", "I", "I;16")


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
        return image.mode, (image.height, image.width)


def common_format(
    headers: list[tuple[str, tuple[int, int]]], size: tuple[int, int] | None, where: Path | str
) -> tuple[str, tuple[int, int]]:
    """The mode every image is converted to (RGB if any image has color, else L) and the common size."""
    mode = "RGB" if any(mode not in GRAY_MODES for mode, _ in headers) else "L"
    if size is not None:
        return mode, tuple(size)
    sizes = sorted({image_size for _, image_size in headers})
    if len(sizes) > 1:
        (h1, w1), (h2, w2) = sizes[:2]
        raise DataError(
            f"{where}: images of different sizes ({h1}x{w1}, {h2}x{w2}, ...): set data.resize: [height, width]"
        )
    return mode, sizes[0]


def decode(images: list[tuple[Path | io.BytesIO, str]], mode: str, size: tuple[int, int]) -> np.ndarray:
    """Encoded images (each a file or bytes, with a name for errors) as one uint8 [B, C, H, W] in `mode`,
    each resized to `size` where it differs. Decoding runs on a thread per core: PIL releases the GIL."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return torch.stack(list(pool.map(lambda image: _pixels(*image, mode, size), images))).numpy()


def _pixels(file: Path | io.BytesIO, name: str, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """One image decoded as uint8 [C, H, W] in `mode` and at `size`."""
    with open_image(file, name) as image:
        pixels = torch.from_numpy(np.array(image.convert(mode)))
    pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    if tuple(pixels.shape[1:]) != tuple(size):
        pixels = resize(pixels[None], size)[0]
    return pixels
