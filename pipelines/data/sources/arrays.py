"""Images in arrays (npz archives, Arrow tensor columns): the layouts accepted and their conversion."""

from __future__ import annotations

import numpy as np

from pipelines.core.errors import DataError


def array_layout(shape: tuple[int, ...], dtype: np.dtype, where: str) -> tuple[str, tuple[int, int, int]]:
    """How an array of images of `shape` each is laid out: [H, W] is grayscale, [C, H, W] or [H, W, C]
    has C 1 or 3; uint8, or floats in [0, 1]. Returns the layout and the (C, H, W) shape."""
    if not (np.issubdtype(dtype, np.floating) or dtype == np.uint8):
        raise DataError(f"{where}: images must be uint8 or floats in [0, 1], got {dtype}")
    if len(shape) == 2:
        return "HW", (1, *shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        return "CHW", (shape[0], shape[1], shape[2])
    if len(shape) == 3 and shape[2] in (1, 3):
        return "HWC", (shape[2], shape[0], shape[1])
    raise DataError(f"{where}: images must be [H, W], [H, W, C] or [C, H, W] with C 1 or 3, got {list(shape)}")


def as_uint8_nchw(x: np.ndarray, layout: str, where: str) -> np.ndarray:
    """A batch [N, ...] in `layout` (see array_layout) as uint8 [N, C, H, W]. Float pixels must be finite
    and in [0, 1]: a cast would turn NaN into black silently."""
    if np.issubdtype(x.dtype, np.floating):
        low, high = x.min(), x.max()  # NaN in the batch makes them NaN, infinity one of them infinite
        if not (np.isfinite(low) and np.isfinite(high)):
            raise DataError(f"{where}: {np.count_nonzero(~np.isfinite(x))} NaN or infinite pixel values; float "
                            "images must be finite and in [0, 1]: replace them (numpy.nan_to_num) or drop those images")
        if low < 0.0 or high > 1.0:
            raise DataError(f"{where}: float images must be in [0, 1], got [{low:g}, {high:g}]")
        x = np.rint(x * 255.0)
    x = x.astype(np.uint8)
    if layout == "HW":
        return x[:, None]
    if layout == "HWC":
        return x.transpose(0, 3, 1, 2)
    return x
