"""`digits`: scikit-learn's built-in 8x8 handwritten digits (1797 images, 10 classes), nothing downloaded."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from pipelines.config.data import DataParams
from pipelines.data.sources.base import Source


def read_digits(location: str, params: DataParams) -> Source:
    digits = load_digits()
    # Pixels are intensities 0..16: rescale to the full uint8 range.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return Source(
        labels=digits.target.astype(np.int64),
        class_names=[str(name) for name in digits.target_names],
        image_shape=(1, 8, 8),
        batches=lambda n: (pixels[start : start + n] for start in range(0, len(pixels), n)),
    )
