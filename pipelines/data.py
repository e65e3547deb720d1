"""Image datasets on disk and in memory.

On disk a dataset is Parquet with one row per image: `image` (the pixels, flattened C*H*W uint8),
`shape` ([C, H, W]) and `label`, plus optional per-row numbers (provenance, mixed labels); the schema
metadata holds the class names and the image shape, so a file is self-describing. Files are written
batch by batch (`write_images`) and read memory-mapped (`open_image_set`), so neither side holds more
than a batch of pixels: datasets may be larger than memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from filelock import FileLock
from sklearn.model_selection import train_test_split

from pipelines.atomic import atomic_path
from pipelines.config import NormalizeParams, SplitParams
from pipelines.paths import SPLITS

# Rows per record batch when a Parquet file is copied to Arrow: about this many bytes of pixels each.
ARROW_BATCH_BYTES = 32 * 2**20


class DataError(ValueError):
    """Data that cannot be read as asked; the message names the file and what to change."""


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


class MappedImages:
    """The image column of a memory-mapped Arrow file, as numpy views of the mapped record batches.

    Indexing with a slice or row indices copies only those rows out of the map into a uint8 tensor
    [n, C, H, W], so training gathers batch by batch and the rest of the file stays on disk."""

    def __init__(self, column: pa.ChunkedArray, image_shape: tuple[int, int, int]):
        self.image_shape = image_shape
        # flatten() of a fixed-size list array is a zero-copy view of its pixels, and so is to_numpy().
        self._chunks = [
            chunk.flatten().to_numpy(zero_copy_only=True).reshape(len(chunk), *image_shape) for chunk in column.chunks
        ]
        self._starts = np.cumsum([0] + [len(chunk) for chunk in self._chunks])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.image_shape)

    def __getitem__(self, rows: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        rows = np.arange(*rows.indices(len(self))) if isinstance(rows, slice) else np.asarray(rows)
        out = np.empty((len(rows), *self.image_shape), np.uint8)
        chunk_of = np.searchsorted(self._starts, rows, side="right") - 1
        for chunk in np.unique(chunk_of):
            here = chunk_of == chunk
            out[here] = self._chunks[chunk][rows[here] - self._starts[chunk]]
        return torch.from_numpy(out)


@dataclass(frozen=True)
class ImageSet:
    """Images [N, C, H, W] uint8 (a tensor, or memory-mapped rows) with int64 labels [N] and class names.

    `columns` holds the file's other per-row numbers (`source_index`, `copy`, `mix_label`, `mix_weight`).
    A batch is `images[rows]`: a slice or gather, never per-sample work."""

    images: torch.Tensor | MappedImages
    labels: torch.Tensor
    class_names: list[str]
    columns: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        return channels, height, width


def assign_splits(
    labels: np.ndarray, fixed: dict[str, np.ndarray], split: SplitParams, seed: int
) -> dict[str, np.ndarray]:
    """Sorted row indices of train/val/test: the splits in `fixed` as given, the others a seeded split of the
    remaining rows that keeps each class's share and the `split` proportions among themselves."""
    missing = [name for name in SPLITS if name not in fixed]
    taken = np.concatenate([np.asarray(rows, np.int64) for rows in fixed.values()] or [np.empty(0, np.int64)])
    remaining = np.setdiff1d(np.arange(len(labels)), taken)
    rows = dict(fixed)
    try:
        if len(missing) == 1:
            rows[missing[0]] = remaining
        elif missing:
            shares = [getattr(split, name) for name in missing]
            first, rest = train_test_split(
                remaining, train_size=shares[0] / sum(shares), stratify=labels[remaining], random_state=seed
            )
            rows[missing[0]] = first
            if len(missing) == 2:
                rows[missing[1]] = rest
            else:
                second, third = train_test_split(
                    rest, train_size=shares[1] / sum(shares[1:]), stratify=labels[rest], random_state=seed
                )
                rows[missing[1]], rows[missing[2]] = second, third
    except ValueError as error:  # scikit-learn's reason: a class too small, a split smaller than the classes
        raise DataError(
            f"cannot split {len(remaining)} images into {', '.join(missing)} keeping every class in each: {error}. "
            "Add images, change data.split, or fix the splits with split folders"
        ) from None
    return {name: np.sort(np.asarray(rows[name], np.int64)) for name in SPLITS}


def image_schema(
    image_shape: tuple[int, int, int], class_names: list[str], columns: dict[str, pa.DataType] | None = None
) -> pa.Schema:
    """The Parquet schema of an image file of this pipeline, with its self-describing metadata."""
    fields = [
        pa.field("image", pa.list_(pa.uint8(), int(np.prod(image_shape)))),
        pa.field("shape", pa.list_(pa.int32(), 3)),
        pa.field("label", pa.int64()),
        *(pa.field(name, kind) for name, kind in (columns or {}).items()),
    ]
    metadata = {"class_names": json.dumps(class_names), "image_shape": json.dumps(list(image_shape))}
    return pa.schema(fields, metadata=metadata)


class ImageWriter:
    """Appends batches of images to an open Parquet file (one row group per batch) and keeps a checksum."""

    def __init__(self, writer: pq.ParquetWriter, image_shape: tuple[int, int, int]):
        self._writer = writer
        self._image_shape = image_shape
        self._pixels = hashlib.sha256()
        self._labels: list[np.ndarray] = []

    def write(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, **columns) -> None:
        """Append uint8 images [B, C, H, W] with their labels and the file's other columns (one value per row)."""
        if len(images) == 0:
            return
        flat = np.ascontiguousarray(np.asarray(images, np.uint8)).reshape(len(images), -1)
        labels = np.asarray(labels, np.int64)
        self._pixels.update(flat.tobytes())
        self._labels.append(labels)
        shape = np.tile(np.array(self._image_shape, np.int32), len(flat))
        arrays = {
            "image": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.uint8()), flat.shape[1]),
            "shape": pa.FixedSizeListArray.from_arrays(pa.array(shape, pa.int32()), 3),
            "label": pa.array(labels, pa.int64()),
        }
        for name, values in columns.items():
            arrays[name] = pa.array(np.asarray(values), self._writer.schema.field(name).type)
        self._writer.write_table(pa.table(arrays, schema=self._writer.schema))

    def checksum(self) -> str:
        """sha256 of all pixels, then all labels: identical content gives the same digest, whatever the file."""
        digest = self._pixels.copy()
        for labels in self._labels:
            digest.update(labels.astype("<i8").tobytes())
        return digest.hexdigest()


@contextmanager
def write_images(
    path: Path,
    image_shape: tuple[int, int, int],
    class_names: list[str],
    columns: dict[str, pa.DataType] | None = None,
) -> Iterator[ImageWriter]:
    """An ImageWriter on a temporary file that replaces `path` only when the block finishes without error."""
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, image_schema(image_shape, class_names, columns))
        try:
            yield ImageWriter(writer, image_shape)
        finally:
            writer.close()


def open_image_set(path: Path, cache_dir: Path) -> ImageSet:
    """A Parquet image file of this pipeline, its pixels memory-mapped from an Arrow copy in `cache_dir`.

    Labels and the other per-row numbers are read into memory (8 bytes a row); pixels stay on disk and
    the page cache until a batch asks for them."""
    metadata = pq.read_schema(path).metadata or {}
    if b"image_shape" not in metadata or b"class_names" not in metadata:
        raise DataError(f"{path}: not an image table of this pipeline (no image_shape/class_names metadata)")
    image_shape = tuple(json.loads(metadata[b"image_shape"]))
    table = pa.ipc.open_file(pa.memory_map(str(_arrow_copy(path, cache_dir, image_shape)))).read_all()
    columns = {
        name: torch.from_numpy(table.column(name).to_numpy().copy())
        for name in table.column_names
        if name not in ("image", "shape", "label")
    }
    return ImageSet(
        images=MappedImages(table.column("image"), image_shape),
        labels=torch.from_numpy(table.column("label").to_numpy().copy()),
        class_names=json.loads(metadata[b"class_names"]),
        columns=columns,
    )


def _arrow_copy(path: Path, cache_dir: Path, image_shape: tuple[int, int, int]) -> Path:
    """An uncompressed Arrow IPC copy of a Parquet file, which can be memory-mapped (Parquet cannot).

    Made once per version of the file (its path, size and mtime name the copy), under a lock so that
    concurrent stages and torchrun ranks share it; the copy of an older version is removed."""
    stat = path.stat()
    resolved = str(path.resolve())
    file_key = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    version_key = hashlib.sha256(f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir / f"{path.stem}-{file_key}-{version_key}.arrow"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{path.stem}-{file_key}.lock")):
        if not target.exists():
            for stale in cache_dir.glob(f"{path.stem}-{file_key}-*.arrow"):
                stale.unlink()
            parquet = pq.ParquetFile(path, pre_buffer=False)  # else it keeps every row group it read
            rows_per_batch = max(1, ARROW_BATCH_BYTES // int(np.prod(image_shape)))
            with atomic_path(target) as tmp, pa.OSFile(str(tmp), "wb") as sink:
                with pa.ipc.new_file(sink, parquet.schema_arrow) as writer:
                    for batch in parquet.iter_batches(batch_size=rows_per_batch):
                        writer.write_batch(batch)
    return target


def open_logits(path: Path) -> torch.Tensor:
    """Stored logits (.npy) as a memory-mapped tensor: each batch reads its own rows. Copy-on-write ("c")
    gives the writable array torch wants without ever writing to the file."""
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def pixels_from_lists(column: pa.Array | pa.ChunkedArray, shape: list[int]) -> torch.Tensor:
    """uint8 images [N, *shape] from an Arrow column holding each image's pixels as one list."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.array(flat, dtype=np.uint8).reshape(len(column), *shape))  # a writable copy


class PixelStats:
    """Per-channel mean and standard deviation of uint8 images on the [0, 1] scale, from a histogram of each
    channel's values kept batch by batch: exact integers, so the result does not depend on the batching."""

    def __init__(self, channels: int):
        self.histograms = np.zeros((channels, 256), np.int64)

    def add(self, images: np.ndarray) -> None:
        for channel in range(images.shape[1]):
            self.histograms[channel] += np.bincount(images[:, channel].reshape(-1), minlength=256)

    def mean_std(self) -> tuple[list[float], list[float]]:
        means, stds = [], []
        values = np.arange(256, dtype=object)  # Python integers: the sums cannot overflow
        for histogram in self.histograms.astype(object):
            n, total, squares = histogram.sum(), (histogram * values).sum(), (histogram * values * values).sum()
            means.append(total / n / 255.0)
            # Unbiased variance from exact integers: (n * sum(x^2) - sum(x)^2) / (n (n - 1)).
            stds.append(float(np.sqrt((n * squares - total * total) / (n * max(n - 1, 1)))) / 255.0)
        return means, stds


def dataset_card(
    source: str,
    class_names: list[str],
    image_shape: tuple[int, int, int],
    split_labels: dict[str, np.ndarray],
    checksums: dict[str, str],
    mean_std: tuple[list[float], list[float]],
) -> dict:
    """A small JSON summary: counts per class and split, image shape, normalization and checksums.

    The models normalize their input with the card's per-channel `pixel_mean` and `pixel_std`."""
    mean, std = mean_std
    return {
        "source": source,
        "class_names": class_names,
        "image_shape": list(image_shape),
        "num_classes": len(class_names),
        "pixel_mean": mean,
        "pixel_std": std,
        "splits": {
            name: {
                "count": len(labels),
                "per_class": {
                    class_name: int((labels == index).sum()) for index, class_name in enumerate(class_names)
                },
                "sha256": checksums[name],
            }
            for name, labels in split_labels.items()
        },
    }


def check_normalize(normalize: NormalizeParams, channels: int) -> None:
    """data.normalize, when given, must have one mean and std per channel of the images."""
    if normalize.mean is not None and len(normalize.mean) != channels:
        raise DataError(
            f"data.normalize has {len(normalize.mean)} values per statistic; the images have {channels} channel(s)"
        )
