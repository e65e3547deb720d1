"""Data sources: what `data.source` names, read into one uint8 ImageSet [N, C, H, W].

    digits               scikit-learn's built-in 8x8 digits
    imagefolder:<dir>    one sub-folder of PNG/JPEG files per class, or train/ val/ test/ folders of
                         those, which then fix the split
    npz:<file>           arrays `x` (images) and `y` (integer labels); names in data.npz_keys
    parquet:<file>       an image column (encoded PNG/JPEG bytes, or pixels as a list with a shape) and
                         a label column; names in data.parquet_columns

Channels and size come from the data (1 channel when every image is grayscale, else RGB); images of
different sizes need `data.resize`. A source that cannot be read raises DataError naming the file.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits

from pipelines.config import DataParams, ParquetColumns
from pipelines.data import DataError, ImageSet, pixels_from_lists
from pipelines.paths import SPLITS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class Source:
    data: ImageSet
    split_rows: dict[str, torch.Tensor] | None = None  # row indices per split, when the source fixes them


def load_source(params: DataParams) -> Source:
    """The whole dataset that `data.source` names, resized to `data.resize` if set."""
    kind, _, location = params.source.partition(":")
    if kind == "digits":
        source = Source(_digits())
    elif kind == "imagefolder":
        source = _imagefolder(Path(location), params.resize)
    elif kind == "npz":
        source = Source(_npz(Path(location), params.npz_keys.x, params.npz_keys.y))
    else:
        source = Source(_parquet(Path(location), params.parquet_columns, params.resize))
    # Decoded images (image folders, encoded Parquet) are resized as they are read; arrays are resized here.
    if params.resize is not None and tuple(source.data.images.shape[2:]) != tuple(params.resize):
        data = source.data
        source = Source(ImageSet(resize(data.images, params.resize), data.labels, data.class_names), source.split_rows)
    return source


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 images [N, C, H, W] resized to `size` (bilinear, antialiased when shrinking)."""
    resized = F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _digits() -> ImageSet:
    digits = load_digits()
    # Pixels are intensities 0..16: rescale to the full uint8 range.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return ImageSet(
        images=torch.from_numpy(pixels),
        labels=torch.from_numpy(digits.target.astype(np.int64)),
        class_names=[str(name) for name in digits.target_names],
    )


def _imagefolder(root: Path, size: tuple[int, int] | None) -> Source:
    if not root.is_dir():
        raise DataError(f"data.source imagefolder:{root}: no such folder")
    fixed = all((root / split).is_dir() for split in SPLITS)
    folders = [root / split for split in SPLITS] if fixed else [root]
    class_names = sorted({path.name for folder in folders for path in folder.iterdir() if path.is_dir()})
    if not class_names:
        raise DataError(f"{root}: no class folders (expected one sub-folder of images per class)")

    files: list[Path] = []
    labels: list[int] = []
    split_of: list[int] = []
    for split_index, folder in enumerate(folders):
        for label, name in enumerate(class_names):
            images = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if (folder / name).is_dir() and not images:
                raise DataError(f"{folder / name}: class folder with no PNG or JPEG images")
            files += images
            labels += [label] * len(images)
            split_of += [split_index] * len(images)

    images = _stack([_read_image(path) for path in files], size, root)
    data = ImageSet(images, torch.tensor(labels, dtype=torch.int64), class_names)
    split_rows = None
    if fixed:
        split_index = torch.tensor(split_of)
        split_rows = {split: torch.nonzero(split_index == i).flatten() for i, split in enumerate(SPLITS)}
    return Source(data, split_rows)


def _read_image(path: Path | io.BytesIO, name: str | None = None) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{name or path}: not a readable PNG or JPEG image ({error})") from None


def _stack(decoded: list[Image.Image], size: tuple[int, int] | None, where: Path) -> torch.Tensor:
    """Decoded images as one uint8 [N, C, H, W]: RGB if any image has color, else grayscale; resized to `size`."""
    color = any(image.mode not in ("L", "1", "I", "I;16") for image in decoded)
    tensors = [_to_chw(torch.from_numpy(np.array(image.convert("RGB" if color else "L")))) for image in decoded]
    if size is not None:  # resized one by one: images of different sizes cannot be stacked first
        tensors = [resize(tensor[None], size)[0] for tensor in tensors]
    sizes = sorted({tuple(tensor.shape[1:]) for tensor in tensors})
    if len(sizes) > 1:
        (h1, w1), (h2, w2) = sizes[:2]
        raise DataError(
            f"{where}: images of different sizes ({h1}x{w1}, {h2}x{w2}, ...): set data.resize: [height, width]"
        )
    return torch.stack(tensors)


def _to_chw(image: torch.Tensor) -> torch.Tensor:
    """A decoded image [H, W] (gray) or [H, W, 3] (RGB) as [C, H, W]."""
    return image[None] if image.ndim == 2 else image.permute(2, 0, 1)


def _npz(path: Path, x_key: str, y_key: str) -> ImageSet:
    if not path.is_file():
        raise DataError(f"data.source npz:{path}: no such file")
    with np.load(path) as arrays:
        missing = [key for key in (x_key, y_key) if key not in arrays]
        if missing:
            raise DataError(
                f"{path}: no array {', '.join(missing)} (it has {', '.join(arrays.files)}); set data.npz_keys"
            )
        x, y = arrays[x_key], arrays[y_key]
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    if np.issubdtype(x.dtype, np.floating):
        if x.min() < 0.0 or x.max() > 1.0:
            raise DataError(f"{path}: float images must be in [0, 1], got [{x.min():g}, {x.max():g}]")
        x = np.rint(x * 255.0)
    elif x.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8 or floats in [0, 1], got {x.dtype}")
    images = torch.from_numpy(x.astype(np.uint8))
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"{path}: images must be [N, H, W], [N, H, W, C] or [N, C, H, W] with C 1 or 3")
    return _with_classes_from_labels(images, y)


def _parquet(path: Path, columns: ParquetColumns, size: tuple[int, int] | None) -> ImageSet:
    if not path.is_file():
        raise DataError(f"data.source parquet:{path}: no such file")
    table = pq.read_table(path)
    missing = [column for column in (columns.image, columns.label) if column not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(missing)} (it has {', '.join(table.column_names)}); "
            "set data.parquet_columns"
        )
    image_column = table.column(columns.image)
    if pa.types.is_binary(image_column.type) or pa.types.is_large_binary(image_column.type):
        encoded = image_column.to_pylist()
        decoded = [_read_image(io.BytesIO(data), f"{path} row {row}") for row, data in enumerate(encoded)]
        images = _stack(decoded, size, path)
    else:
        images = _pixel_lists(path, table, columns)
    raw_labels = np.asarray(table.column(columns.label).to_pylist())
    # Files written by this pipeline carry their class names; integer labels index them.
    names = json.loads((table.schema.metadata or {}).get(b"class_names", b"null"))
    integer = np.issubdtype(raw_labels.dtype, np.integer)
    if names and integer and raw_labels.min() >= 0 and raw_labels.max() < len(names):
        return ImageSet(images.contiguous(), torch.from_numpy(raw_labels.astype(np.int64)), names)
    return _with_classes_from_labels(images, raw_labels)


def _with_classes_from_labels(images: torch.Tensor, raw_labels: np.ndarray) -> ImageSet:
    """The distinct label values, sorted, are the classes; each label becomes its class index."""
    values, labels = np.unique(raw_labels, return_inverse=True)
    return ImageSet(images.contiguous(), torch.from_numpy(labels.astype(np.int64)), [str(value) for value in values])


def _pixel_lists(path: Path, table: pa.Table, columns: ParquetColumns) -> torch.Tensor:
    """Pixels stored as lists: reshaped by the per-row shape column, or by the file's image_shape metadata."""
    if columns.shape in table.column_names:
        shapes = {tuple(shape) for shape in table.column(columns.shape).to_pylist()}
        if len(shapes) > 1:
            raise DataError(f"{path}: images of different shapes {sorted(shapes)[:2]}: convert them to one size first")
        [shape] = shapes
    elif b"image_shape" in (table.schema.metadata or {}):
        shape = tuple(json.loads(table.schema.metadata[b"image_shape"]))
    else:
        raise DataError(f"{path}: list images need a {columns.shape!r} column or image_shape metadata ([C, H, W])")
    column = table.column(columns.image)
    pixel_count = sum(len(chunk.flatten()) for chunk in column.chunks)
    if len(shape) != 3 or shape[0] not in (1, 3) or pixel_count != len(table) * int(np.prod(shape)):
        raise DataError(f"{path}: image shape {list(shape)} does not fit the pixels (expected [C, H, W], C 1 or 3)")
    return pixels_from_lists(column, list(shape))
