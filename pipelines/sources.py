"""Data sources: what `data.source` names, opened as a stream of uint8 image batches [B, C, H, W].

    digits                 scikit-learn's built-in 8x8 digits
    imagefolder:<dir>      one sub-folder of PNG/JPEG files per class; or train/ plus val/ and/or test/
                           folders of those, which fix those splits
    npz:<file>             arrays `x` (images) and `y` (integer labels); names in data.npz_keys
    parquet:<file or s3>   an image column (encoded PNG/JPEG bytes, Arrow fixed-shape tensors, or pixels
                           as a list with a shape) and a label column; names in data.parquet_columns
    torchvision:<Name>     CIFAR10, CIFAR100, MNIST or FashionMNIST (see pipelines/torchvision_data.py)

Labels, channels and size are read up front (1 channel when every image is grayscale, else RGB); pixels
are decoded batch by batch as prepare writes them, so a dataset need not fit in memory. Images of
different sizes need `data.resize`. A source that cannot be read raises DataError naming the file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits

from pipelines.config import DataParams, ParquetColumns
from pipelines.data import DataError, Source, pixels_from_lists
from pipelines.paths import SPLITS
from pipelines.torchvision_data import open_torchvision

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GRAY_MODES = ("L", "1", "I", "I;16")


def load_source(params: DataParams) -> Source:
    """The dataset that `data.source` names, its batches resized to `data.resize` if set."""
    kind, _, location = params.source.partition(":")
    if kind == "digits":
        source = _digits()
    elif kind == "imagefolder":
        source = _imagefolder(Path(location), params.resize)
    elif kind == "npz":
        source = _npz(Path(location), params.npz_keys.x, params.npz_keys.y)
    elif kind == "parquet":
        source = _parquet(location, params.parquet_columns, params.resize)
    else:
        source = open_torchvision(location, Path(params.download_dir).expanduser())
    # Decoded images (image folders, encoded Parquet) are resized as they are read; arrays are resized here.
    if params.resize is None or source.image_shape[1:] == tuple(params.resize):
        return source
    size = tuple(params.resize)
    return replace(
        source,
        image_shape=(source.image_shape[0], *size),
        batches=lambda n: (resize(torch.from_numpy(batch), size).numpy() for batch in source.batches(n)),
    )


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 images [N, C, H, W] resized to `size` (bilinear, antialiased when shrinking)."""
    resized = F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _digits() -> Source:
    digits = load_digits()
    # Pixels are intensities 0..16: rescale to the full uint8 range.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return Source(
        labels=digits.target.astype(np.int64),
        class_names=[str(name) for name in digits.target_names],
        image_shape=(1, 8, 8),
        batches=lambda n: (pixels[start : start + n] for start in range(0, len(pixels), n)),
    )


# --- image folders ------------------------------------------------------------------------------


def _imagefolder(root: Path, size: tuple[int, int] | None) -> Source:
    if not root.is_dir():
        raise DataError(f"data.source imagefolder:{root}: no such folder")
    # Split folders: train/ and at least one of val/, test/. The rows of train/ are split further into
    # whichever of val and test has no folder.
    split_folders = [split for split in SPLITS if (root / split).is_dir()]
    by_split = "train" in split_folders and len(split_folders) > 1
    folders = [root / split for split in split_folders] if by_split else [root]
    class_names = sorted({path.name for folder in folders for path in folder.iterdir() if path.is_dir()})
    if not class_names:
        raise DataError(f"{root}: no class folders (expected one sub-folder of images per class)")

    files: list[Path] = []
    labels: list[int] = []
    folder_of: list[int] = []
    for folder_index, folder in enumerate(folders):
        for label, name in enumerate(class_names):
            images = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if (folder / name).is_dir() and not images:
                raise DataError(f"{folder / name}: class folder with no PNG or JPEG images")
            files += images
            labels += [label] * len(images)
            folder_of += [folder_index] * len(images)

    headers = [_header(path, str(path)) for path in files]
    mode, image_size = _common_format(headers, size, root)

    def batches(n: int) -> Iterator[np.ndarray]:
        for start in range(0, len(files), n):
            yield _decode([(path, str(path)) for path in files[start : start + n]], mode, image_size)

    fixed = {}
    if by_split:
        folder_of_row = np.array(folder_of)
        fixed = {split: np.flatnonzero(folder_of_row == i) for i, split in enumerate(split_folders)}
        if len(split_folders) < len(SPLITS):  # train/'s rows go to the splits that have no folder
            del fixed["train"]
    channels = 3 if mode == "RGB" else 1
    return Source(np.array(labels, np.int64), class_names, (channels, *image_size), batches, fixed)


@contextmanager
def _open_image(file: Path | io.BytesIO, name: str) -> Iterator[Image.Image]:
    """The image in `file`; an unreadable or damaged one, found on opening or decoding, is a DataError naming it."""
    try:
        with Image.open(file) as image:
            yield image
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{name}: not a readable PNG or JPEG image ({error})") from None


def _header(file: Path | io.BytesIO, name: str) -> tuple[str, tuple[int, int]]:
    """(mode, (height, width)) from an image file's header, without decoding its pixels."""
    with _open_image(file, name) as image:
        return image.mode, (image.height, image.width)


def _common_format(
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


def _decode(images: list[tuple[Path | io.BytesIO, str]], mode: str, size: tuple[int, int]) -> np.ndarray:
    """Encoded images (each a file or bytes, with a name for errors) as one uint8 [B, C, H, W] in `mode`,
    each resized to `size` where it differs. Decoding runs on a thread per core: PIL releases the GIL."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return torch.stack(list(pool.map(lambda image: _pixels(*image, mode, size), images))).numpy()


def _pixels(file: Path | io.BytesIO, name: str, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """One image decoded as uint8 [C, H, W] in `mode` and at `size`."""
    with _open_image(file, name) as image:
        pixels = torch.from_numpy(np.array(image.convert(mode)))
    pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    if tuple(pixels.shape[1:]) != tuple(size):
        pixels = resize(pixels[None], size)[0]
    return pixels


# --- NumPy archives -----------------------------------------------------------------------------


def _npz(path: Path, x_key: str, y_key: str) -> Source:
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
    layout, image_shape = _array_layout(shape[1:], dtype, str(path))

    def batches(n: int) -> Iterator[np.ndarray]:
        for x in read_rows(n):
            yield _as_uint8_nchw(x, layout, str(path))

    labels, class_names = classes_from_labels(raw_labels)
    return Source(labels, class_names, image_shape, batches)


def _array_layout(shape: tuple[int, ...], dtype: np.dtype, where: str) -> tuple[str, tuple[int, int, int]]:
    """How an array of images of `shape` each is laid out: [H, W] is grayscale, [C, H, W] or [H, W, C]
    has C 1 or 3; uint8, or floats in [0, 1]. Returns the layout and the (C, H, W) shape."""
    if not (np.issubdtype(dtype, np.floating) or dtype == np.uint8):
        raise DataError(f"{where}: images must be uint8 or floats in [0, 1], got {dtype}")
    if len(shape) == 2:
        return "HW", (1, *shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        return "CHW", tuple(shape)
    if len(shape) == 3 and shape[2] in (1, 3):
        return "HWC", (shape[2], shape[0], shape[1])
    raise DataError(f"{where}: images must be [H, W], [H, W, C] or [C, H, W] with C 1 or 3, got {list(shape)}")


def _as_uint8_nchw(x: np.ndarray, layout: str, where: str) -> np.ndarray:
    """A batch [N, ...] in `layout` (see _array_layout) as uint8 [N, C, H, W]."""
    if np.issubdtype(x.dtype, np.floating):
        if x.min() < 0.0 or x.max() > 1.0:
            raise DataError(f"{where}: float images must be in [0, 1], got [{x.min():g}, {x.max():g}]")
        x = np.rint(x * 255.0)
    x = x.astype(np.uint8)
    if layout == "HW":
        return x[:, None]
    if layout == "HWC":
        return x.transpose(0, 3, 1, 2)
    return x


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


def _npy_header(file: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the header of an .npy stream, which is left at the first byte of data."""
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(file)
    return np.lib.format.read_array_header_2_0(file)


# --- Parquet ------------------------------------------------------------------------------------


def _parquet(location: str, columns: ParquetColumns, size: tuple[int, int] | None) -> Source:
    file = _open_parquet(location)
    names = file.schema_arrow.names
    missing = [column for column in (columns.image, columns.label) if column not in names]
    if missing:
        raise DataError(
            f"{location}: no column {', '.join(missing)} (it has {', '.join(names)}); set data.parquet_columns"
        )
    raw_labels = file.read(columns=[columns.label]).column(0).to_numpy(zero_copy_only=False)
    metadata = file.schema_arrow.metadata or {}
    # Files written by this pipeline carry their class names; integer labels index them.
    known = json.loads(metadata.get(b"class_names", b"null"))
    integer = np.issubdtype(raw_labels.dtype, np.integer)
    if known and integer and raw_labels.min() >= 0 and raw_labels.max() < len(known):
        labels, class_names = raw_labels.astype(np.int64), known
    else:
        labels, class_names = classes_from_labels(raw_labels)

    def image_chunks(n: int) -> Iterator[pa.Array]:
        for batch in file.iter_batches(batch_size=n, columns=[columns.image]):
            yield batch.column(0)

    image_type = file.schema_arrow.field(columns.image).type
    if pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type):
        return _encoded_parquet(location, image_chunks, labels, class_names, size)
    if isinstance(image_type, pa.FixedShapeTensorType):  # Arrow's tensor type: the column knows the shape
        dtype = np.dtype(image_type.value_type.to_pandas_dtype())
        layout, tensor_shape = _array_layout(tuple(image_type.shape), dtype, location)

        def tensors(n: int) -> Iterator[np.ndarray]:
            for chunk in image_chunks(n):
                yield _as_uint8_nchw(chunk.to_numpy_ndarray(), layout, location)

        return Source(labels, class_names, tensor_shape, tensors)
    shape = _list_image_shape(location, file, columns, metadata)

    def batches(n: int) -> Iterator[np.ndarray]:
        for chunk in image_chunks(n):
            if len(chunk.flatten()) != len(chunk) * int(np.prod(shape)):
                raise DataError(f"{location}: image shape {list(shape)} does not fit the pixels of every row")
            yield pixels_from_lists(chunk, list(shape)).numpy()

    return Source(labels, class_names, shape, batches)


def _open_parquet(location: str) -> pq.ParquetFile:
    """A local or s3:// Parquet file, opened for reading column by column and batch by batch.

    s3:// uses the standard AWS settings (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
    and AWS_ENDPOINT_URL for S3-compatible servers)."""
    if location.startswith("s3://"):
        try:
            filesystem, key = pafs.FileSystem.from_uri(location)  # reads the AWS_* variables
            return pq.ParquetFile(key, filesystem=filesystem, pre_buffer=False)
        except (OSError, pa.ArrowException) as error:
            raise DataError(f"data.source parquet:{location}: cannot read it ({error})") from None
    if not Path(location).is_file():
        raise DataError(f"data.source parquet:{location}: no such file")
    # Without pre_buffer=False, iterating a file keeps every row group it has read: memory grows with the file.
    return pq.ParquetFile(location, pre_buffer=False)


def _encoded_parquet(
    location: str,
    image_chunks: Callable[[int], Iterator[pa.Array]],
    labels: np.ndarray,
    class_names: list[str],
    size: tuple[int, int] | None,
) -> Source:
    """PNG/JPEG bytes per row: a first pass reads each image's header (mode, size), the second decodes."""
    headers = []
    row = 0
    for chunk in image_chunks(1024):
        for data in chunk.to_pylist():
            headers.append(_header(io.BytesIO(data), f"{location} row {row}"))
            row += 1
    mode, image_size = _common_format(headers, size, location)

    def batches(n: int) -> Iterator[np.ndarray]:
        row = 0
        for chunk in image_chunks(n):
            encoded = [(io.BytesIO(data), f"{location} row {row + i}") for i, data in enumerate(chunk.to_pylist())]
            row += len(encoded)
            yield _decode(encoded, mode, image_size)

    return Source(labels, class_names, (3 if mode == "RGB" else 1, *image_size), batches)


def _list_image_shape(location: str, file: pq.ParquetFile, columns: ParquetColumns, metadata: dict) -> tuple:
    """[C, H, W] of images stored as pixel lists: from the per-row shape column, or the image_shape metadata."""
    if columns.shape in file.schema_arrow.names:
        shapes = {tuple(shape) for shape in file.read(columns=[columns.shape]).column(0).to_pylist()}
        if len(shapes) > 1:
            raise DataError(
                f"{location}: images of different shapes {sorted(shapes)[:2]}: convert them to one size first"
            )
        [shape] = shapes
    elif b"image_shape" in metadata:
        shape = tuple(json.loads(metadata[b"image_shape"]))
    else:
        raise DataError(
            f"{location}: list images need a {columns.shape!r} column or image_shape metadata ([C, H, W])"
        )
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"{location}: image shape {list(shape)} is not [C, H, W] with C 1 or 3")
    return tuple(int(side) for side in shape)


def classes_from_labels(raw_labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The distinct label values, sorted, are the classes; each label becomes its class index."""
    values, labels = np.unique(raw_labels, return_inverse=True)
    return labels.astype(np.int64), [str(value) for value in values]
