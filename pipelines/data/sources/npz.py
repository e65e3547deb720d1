"""`npz:<file>`: arrays of images and integer labels (names in data.npz_keys), streamed from the archive."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from pipelines.config.data import DataParams
from pipelines.core.errors import DataError
from pipelines.data.sources.arrays import array_layout, as_uint8_nchw
from pipelines.data.sources.base import Source, classes_from_labels

log = logging.getLogger(__name__)


def read_npz(location: str, params: DataParams) -> Source:
    path, x_key, y_key = Path(location), params.npz_keys.x, params.npz_keys.y
    if not path.is_file():
        raise DataError(f"data.source npz:{path}: no such file")
    with np.load(path) as arrays:
        missing = [key for key in (x_key, y_key) if key not in arrays]
        if missing:
            raise DataError(
                f"{path}: no array {', '.join(missing)} (it has {', '.join(arrays.files)}); set data.npz_keys"
            )
        raw_labels = arrays[y_key]
    shape, dtype, read_rows = _npy_rows(path, x_key)
    if shape[0] != len(raw_labels):
        raise DataError(f"{path}: {shape[0]} images but {len(raw_labels)} labels")
    layout, image_shape = array_layout(shape[1:], dtype, f"{path}: array {x_key}")

    def batches(n: int) -> Iterator[np.ndarray]:
        start = 0
        for x in read_rows(n):
            yield as_uint8_nchw(x, layout, f"{path}: array {x_key}, images {start} to {start + len(x) - 1}")
            start += len(x)

    labels, class_names = classes_from_labels(raw_labels)
    return Source(labels, class_names, image_shape, batches)


def _npy_rows(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype, Callable[[int], Iterator[np.ndarray]]]:
    """(shape, dtype, read_rows) of array `key` in an .npz: read_rows(n) streams it n rows at a time
    from the (possibly compressed) zip member, never holding the whole array."""
    member = f"{key}.npy"
    with zipfile.ZipFile(path) as archive, archive.open(member) as file:
        shape, fortran_order, dtype = _npy_header(file)
    if fortran_order:  # column-major arrays cannot be cut into rows without loading them
        log.warning("%s: array %s is in Fortran order and is read whole; save it C-ordered to stream it", path, key)

    def read_rows(n: int) -> Iterator[np.ndarray]:
        if fortran_order:
            with np.load(path) as arrays:
                whole = arrays[key]
            yield from (whole[start : start + n] for start in range(0, len(whole), n))
            return
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        with zipfile.ZipFile(path) as archive, archive.open(member) as file:
            _npy_header(file)
            for start in range(0, shape[0], n):
                count = min(n, shape[0] - start)
                data = file.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise DataError(f"{path}: array {key} is truncated")
                yield np.frombuffer(data, dtype).reshape(count, *shape[1:])

    return shape, dtype, read_rows


def _npy_header(file: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the header of an .npy stream, which is left at the first byte of data."""
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(file)
    return np.lib.format.read_array_header_2_0(file)
