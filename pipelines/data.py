"""Image datasets as tensors, and their on-disk form: Parquet with a fixed-shape uint8 image column.

Each row holds `image` (the pixels, flattened C*H*W uint8), `shape` ([C, H, W]) and `label`; the
schema metadata holds the class names and the image shape, so a file is self-describing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.model_selection import train_test_split

from pipelines.atomic import atomic_path
from pipelines.config import NormalizeParams, SplitParams


class DataError(ValueError):
    """Data that cannot be read as asked; the message names the file and what to change."""


@dataclass(frozen=True)
class ImageSet:
    """Images as one uint8 tensor [N, C, H, W] with int64 labels [N]: batches are slices, never per-sample work."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        return channels, height, width

    def checksum(self) -> str:
        """sha256 of pixels and labels: identical content gives the same digest, whatever the file."""
        digest = hashlib.sha256()
        digest.update(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.numpy().astype("<i8").tobytes())
        return digest.hexdigest()


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


def stratified_split(labels: torch.Tensor, split: SplitParams, seed: int) -> dict[str, torch.Tensor]:
    """Row indices of train/val/test, each keeping the class proportions of the whole set."""
    indices = np.arange(len(labels))
    y = labels.numpy()
    train, rest = train_test_split(indices, train_size=split.train, stratify=y, random_state=seed)
    val_share = split.val / (split.val + split.test)
    val, test = train_test_split(rest, train_size=val_share, stratify=y[rest], random_state=seed)
    return {name: torch.from_numpy(np.sort(part)) for name, part in (("train", train), ("val", val), ("test", test))}


def subset(data: ImageSet, rows: torch.Tensor) -> ImageSet:
    return ImageSet(data.images[rows], data.labels[rows], data.class_names)


def to_table(data: ImageSet, extra_columns: dict[str, torch.Tensor] | None = None) -> pa.Table:
    """The Arrow table of an ImageSet (plus optional integer columns such as `copy`)."""
    channels, height, width = data.image_shape
    flat = data.images.reshape(len(data), -1).contiguous().numpy()
    image = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.uint8()), flat.shape[1])
    shape = pa.FixedSizeListArray.from_arrays(
        pa.array(np.tile(np.array([channels, height, width], np.int32), len(data)), pa.int32()), 3
    )
    columns = {"image": image, "shape": shape, "label": pa.array(data.labels.numpy(), pa.int64())}
    for name, values in (extra_columns or {}).items():
        columns[name] = pa.array(values.numpy(), pa.int64())
    metadata = {
        "class_names": json.dumps(data.class_names),
        "image_shape": json.dumps([channels, height, width]),
    }
    return pa.table(columns).replace_schema_metadata(metadata)


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_image_set(path: Path) -> ImageSet:
    """Load a Parquet image file written by `to_table`."""
    table = pq.read_table(path, columns=["image", "label"])
    metadata = table.schema.metadata or {}
    if b"image_shape" not in metadata or b"class_names" not in metadata:
        raise ValueError(f"{path}: not an image table of this pipeline (no image_shape/class_names metadata)")
    images = pixels_from_lists(table.column("image"), json.loads(metadata[b"image_shape"]))
    labels = torch.from_numpy(table.column("label").to_numpy().copy())
    return ImageSet(images, labels, json.loads(metadata[b"class_names"]))


def pixels_from_lists(column: pa.ChunkedArray, shape: list[int]) -> torch.Tensor:
    """uint8 images [N, *shape] from an Arrow column holding each image's pixels as one list."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.array(flat, dtype=np.uint8).reshape(len(column), *shape))  # a writable copy


def dataset_card(splits: dict[str, ImageSet], source: str, normalize: NormalizeParams | None = None) -> dict:
    """A small JSON summary: counts per class and split, image shape, normalization and checksums.

    The models normalize their input with the card's per-channel mean and std: `normalize`'s when set,
    else the training split's own statistics."""
    train = splits["train"]
    pixels = train.images.float() / 255.0
    mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).tolist()
    if normalize is not None and normalize.mean is not None:
        if len(normalize.mean) != len(mean):
            raise DataError(f"data.normalize has {len(normalize.mean)} values per statistic; the images have "
                            f"{len(mean)} channel(s)")
        mean, std = normalize.mean, normalize.std
    return {
        "source": source,
        "class_names": train.class_names,
        "image_shape": list(train.image_shape),
        "num_classes": len(train.class_names),
        "pixel_mean": mean,
        "pixel_std": std,
        "splits": {
            name: {
                "count": len(part),
                "per_class": {
                    class_name: int((part.labels == index).sum())
                    for index, class_name in enumerate(part.class_names)
                },
                "sha256": part.checksum(),
            }
            for name, part in splits.items()
        },
    }
