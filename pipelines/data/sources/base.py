"""What every data source gives `prepare`, and the helpers sources share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Source:
    """A dataset as `prepare` streams it: labels and image shape known up front, pixels read batch by batch.

    `batches(n)` yields uint8 arrays [B, C, H, W] (B <= n) of every row in order, so memory holds one batch
    of pixels at a time; `fixed_splits` holds the sorted rows of each split the source itself fixes (for
    example an official test set), and prepare splits the remaining rows."""

    labels: np.ndarray  # int64 class index of every row
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W) of every batch `batches` yields
    batches: Callable[[int], Iterator[np.ndarray]]
    fixed_splits: dict[str, np.ndarray] = field(default_factory=dict)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 images [N, C, H, W] resized to `size` (bilinear, antialiased when shrinking)."""
    resized = F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def classes_from_labels(raw_labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The distinct label values, sorted, are the classes; each label becomes its class index."""
    values, labels = np.unique(raw_labels, return_inverse=True)
    return labels.astype(np.int64), [str(value) for value in values]
