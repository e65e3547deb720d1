"""Writing image datasets: Parquet files of this pipeline, batch by batch (one row group per batch), each
replacing its target atomically once complete (the format: pipelines/data/images.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.core.atomic import atomic_path


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

