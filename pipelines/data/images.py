"""Image datasets on disk, read memory-mapped.

On disk a dataset is Parquet with one row per image: `image` (the pixels, flattened C*H*W uint8),
`shape` ([C, H, W]) and `label`, plus optional per-row numbers (provenance, mixed labels); the schema
metadata holds the class names and the image shape, so a file is self-describing (pipelines/data/writer.py
writes them). Stages read them through memory-mapped Arrow copies (`open_image_set`), so no stage holds
more than a batch of pixels: datasets may be larger than memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from filelock import FileLock

from pipelines.core.atomic import atomic_path
from pipelines.core.errors import DataError, first_line, require_input

# Rows per record batch when a Parquet file is copied to Arrow: about this many bytes of pixels each.
ARROW_BATCH_BYTES = 32 * 2**20
# The stage that writes the image files of each folder (pipelines.core.paths.Paths, dvc.yaml's outs).
WRITTEN_BY = {"prepared": "prepare", "transfer": "augment"}


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
        if len(self._chunks) == 1:  # one record batch (a file written at once): a plain gather, the step's own
            return torch.from_numpy(self._chunks[0][rows])
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



def open_image_set(path: Path, cache_dir: Path) -> ImageSet:
    """A Parquet image file of this pipeline, its pixels memory-mapped from an Arrow copy in `cache_dir`.

    Labels and the other per-row numbers are read into memory (8 bytes a row); pixels stay on disk and
    the page cache until a batch asks for them. A file cut short or damaged is a DataError naming it and how
    to get it back (pyarrow alone says "Parquet magic bytes not found", naming no file)."""
    try:
        metadata = pq.read_schema(require_input(path)).metadata or {}
        if b"image_shape" not in metadata or b"class_names" not in metadata:
            raise DataError(f"{path}: not an image table of this pipeline (no image_shape/class_names metadata)")
        image_shape = tuple(json.loads(metadata[b"image_shape"]))
        table = _read_arrow_copy(path, cache_dir, image_shape)
    except (OSError, pa.ArrowException) as error:
        stage = WRITTEN_BY.get(path.parent.name)
        rerun = f"rerun {stage} (`dvc repro {stage}`)" if stage else "rerun the stage that writes it (`dvc repro`)"
        raise DataError(
            f"{path}: not a readable Parquet file of this pipeline ({first_line(error)}): it was cut short or "
            f"damaged. Get the last good one back with `dvc checkout --force {path}`, or {rerun}"
        ) from None
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


def _read_arrow_copy(path: Path, cache_dir: Path, image_shape: tuple[int, int, int]) -> pa.Table:
    """The memory-mapped Arrow copy of `path`; a copy that cannot be read (damaged in the cache) is made again."""
    copy = _arrow_copy(path, cache_dir, image_shape)
    try:
        return pa.ipc.open_file(pa.memory_map(str(copy))).read_all()
    except (OSError, pa.ArrowException):
        copy.unlink(missing_ok=True)
        return pa.ipc.open_file(pa.memory_map(str(_arrow_copy(path, cache_dir, image_shape)))).read_all()


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



def pixels_from_lists(column: pa.Array | pa.ChunkedArray, shape: list[int]) -> torch.Tensor:
    """uint8 images [N, *shape] from an Arrow column holding each image's pixels as one list."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.array(flat, dtype=np.uint8).reshape(len(column), *shape))  # a writable copy

