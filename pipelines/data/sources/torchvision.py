"""torchvision's MNIST, FashionMNIST, CIFAR10 and CIFAR100, read from the files torchvision downloads.

The files sit where torchvision keeps them, so `download_dir` may be an existing torchvision root:

    MNIST, FashionMNIST   <dir>/<Name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
                          (the .gz files, or the uncompressed idx files torchvision extracts beside them)
    CIFAR10               <dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta},
                          or the archive <dir>/cifar-10-python.tar.gz (extracted there)
    CIFAR100              <dir>/cifar-100-python/{train,test,meta}, or <dir>/cifar-100-python.tar.gz

Missing files are downloaded from torchvision's mirrors and checked against its md5 sums; offline, the
DataError says which files to fetch, from where, and into which folder. Rows are the official training set,
then the official test set, which is the source's fixed "test" split. Pixels are streamed: memory holds
one batch (plus, for CIFAR, the one pickle file being read), never the whole dataset.

torchvision itself is not imported: its wheels are built against one exact torch build and do not import
beside the CPU torch wheel this project installs, and reading these formats takes only numpy.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config.data import TORCHVISION_DATASETS, DataParams
from pipelines.core.errors import DataError
from pipelines.data.sources.base import Source
from pipelines.data.sources.torchvision_downloads import DOWNLOADS, extract, fetch_missing

MNIST_CLASSES: dict[str, list[str]] = {
    "MNIST": [str(digit) for digit in range(10)],
    "FashionMNIST": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
MNIST_PARTS = ("train", "t10k")  # the official training set, then the official test set


@dataclass(frozen=True)
class CifarLayout:
    folder: str  # the folder the archive extracts to
    archive: str
    train: tuple[str, ...]  # pickle files of the official training set, in order
    test: tuple[str, ...]
    meta: str  # the pickle file holding the class names ...
    names_key: str  # ... under this key
    labels_key: str  # the key of the labels in each data file


CIFAR: dict[str, CifarLayout] = {
    "CIFAR10": CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                           tuple(f"data_batch_{index}" for index in range(1, 6)), ("test_batch",),
                           "batches.meta", "label_names", "labels"),
    "CIFAR100": CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
                            "meta", "fine_label_names", "fine_labels"),
}
CIFAR_SHAPE = (3, 32, 32)


def read_torchvision(location: str, params: DataParams) -> Source:
    """`torchvision:<Name>`: the dataset from its torchvision files under `data.download_dir`."""
    return open_torchvision(location, Path(params.download_dir).expanduser())


def open_torchvision(name: str, download_dir: Path) -> Source:
    """The dataset `name` from its torchvision files under `download_dir`, downloading those missing."""
    if name in MNIST_CLASSES:
        return _mnist(name, download_dir)
    if name in CIFAR:
        return _cifar(name, download_dir)
    raise DataError(f"unknown torchvision dataset {name!r}; valid names: {', '.join(TORCHVISION_DATASETS)}")


# --- MNIST and FashionMNIST: idx files ------------------------------------------------------------


def _mnist(name: str, root: Path) -> Source:
    raw = root / name / "raw"
    missing = [file for file in DOWNLOADS[name] if _idx_file(raw, file.removesuffix(".gz")) is None]
    fetch_missing(name, root, raw, missing,
                  "the .gz files, or the uncompressed idx files torchvision extracts from them")
    images = [_fetched_idx_file(raw, f"{part}-images-idx3-ubyte") for part in MNIST_PARTS]
    labels = [_idx_labels(_fetched_idx_file(raw, f"{part}-labels-idx1-ubyte")) for part in MNIST_PARTS]
    shapes = [_idx_image_header(path) for path in images]
    for path, (count, _, _), part_labels in zip(images, shapes, labels):
        if count != len(part_labels):
            raise DataError(f"{path}: {count} images but {len(part_labels)} labels in its labels file")
    if shapes[0][1:] != shapes[1][1:]:
        raise DataError(f"{raw}: training images are {shapes[0][1:]} pixels but test images {shapes[1][1:]}")
    _, height, width = shapes[0]
    return _source(labels, MNIST_CLASSES[name], (1, height, width),
                   [partial(_idx_image_batches, path) for path in images], raw)


def _idx_file(raw: Path, name: str) -> Path | None:
    """The uncompressed idx file if torchvision extracted it, else the downloaded .gz; None if neither is there."""
    return next((path for path in (raw / name, raw / f"{name}.gz") if path.is_file()), None)


def _fetched_idx_file(raw: Path, name: str) -> Path:
    path = _idx_file(raw, name)
    assert path is not None  # fetch_missing has downloaded every missing file (or raised)
    return path


def _idx_labels(path: Path) -> np.ndarray:
    with _reading(path) as stream:
        (count,) = _idx_header(stream, path, "labels", ndim=1)
        return np.frombuffer(_read_exact(stream, count, path), np.uint8).astype(np.int64)


def _idx_image_header(path: Path) -> tuple[int, int, int]:
    with _reading(path) as stream:
        count, height, width = _idx_header(stream, path, "images", ndim=3)
        return count, height, width


def _idx_image_batches(path: Path, size: int) -> Iterator[np.ndarray]:
    with _reading(path) as stream:
        count, height, width = _idx_header(stream, path, "images", ndim=3)
        for start in range(0, count, size):
            batch = np.empty((min(size, count - start), 1, height, width), np.uint8)
            _read_into(stream, batch, path)
            yield batch


def _idx_header(stream: io.BufferedIOBase, path: Path, what: str, ndim: int) -> tuple[int, ...]:
    """The dimensions in an idx header: 0x00 0x00, type 0x08 (uint8), ndim, then ndim big-endian uint32."""
    magic = _read_exact(stream, 4, path)
    if magic != bytes([0, 0, 0x08, ndim]):
        raise DataError(f"{path}: not an idx file of uint8 {what} (header {magic.hex()}, expected 000008{ndim:02x})")
    return struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path))


@contextmanager
def _reading(path: Path) -> Iterator[io.BufferedIOBase]:
    """`path` opened for reading, gunzipped if it ends in .gz; a damaged file is a DataError naming it."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as stream:
            yield stream
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: unreadable ({error}); delete it to download it again") from None


def _read_exact(stream: io.BufferedIOBase, count: int, path: Path) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise DataError(f"{path}: the file ends early (truncated?); delete it to download it again")
    return data


def _read_into(stream: io.BufferedIOBase, out: np.ndarray, path: Path) -> None:
    """Fill the contiguous array `out` from `stream`."""
    view = out.reshape(-1).data  # a memoryview of its bytes
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled:])
        if not got:
            raise DataError(f"{path}: the file ends early (truncated?); delete it to download it again")
        filled += got


# --- CIFAR10 and CIFAR100: pickled batches -------------------------------------------------------


def _cifar(name: str, root: Path) -> Source:
    layout = CIFAR[name]
    folder = root / layout.folder
    files = [*layout.train, *layout.test, layout.meta]
    if not all((folder / file).is_file() for file in files):
        archive = root / layout.archive
        if not archive.is_file():
            fetch_missing(name, root, root, [layout.archive],
                          f"or its extracted folder {layout.folder}/ holding {', '.join(files)}")
        extract(archive, folder, files)
    class_names = [str(class_name) for class_name in _pickled(folder / layout.meta, layout.names_key)]
    data_files = [folder / file for file in (*layout.train, *layout.test)]
    labels = [np.asarray(_pickled(path, layout.labels_key), np.int64) for path in data_files]
    readers = [partial(_cifar_batches, path, len(file_labels)) for path, file_labels in zip(data_files, labels)]
    return _source(labels, class_names, CIFAR_SHAPE, readers, folder, test_parts=len(layout.test))


def _cifar_batches(path: Path, count: int, size: int) -> Iterator[np.ndarray]:
    data = _pickled(path, "data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (count, math.prod(CIFAR_SHAPE)):
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' should be uint8 [{count}, 3072] (one row of 3x32x32 pixels per label), "
                        f"found {found}")
    images = data.reshape(count, *CIFAR_SHAPE)
    for start in range(0, count, size):
        yield images[start : start + size]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain values and numpy arrays only: a pickle naming anything else (code to run) is refused."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR file")
        return super().find_class(module, name)


def _pickled(path: Path, key: str) -> Any:
    """The value under `key` in the pickled dict of a CIFAR file (Python 2 pickles: strings are latin-1)."""
    try:
        with path.open("rb") as file:
            entry = _ArrayUnpickler(file, encoding="latin1").load()
    except Exception as error:  # unpickling damaged data can raise almost anything
        raise DataError(f"{path}: not a readable CIFAR pickle file ({error}); delete it to download it again") from None
    if not isinstance(entry, dict) or key not in entry:
        keys = ", ".join(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise DataError(f"{path}: no {key!r} in this CIFAR file (it has {keys})")
    return entry[key]


# --- shared: the Source ---------------------------------------------------------------------------


def _source(labels: list[np.ndarray], class_names: list[str], image_shape: tuple[int, int, int],
            parts: Sequence[Callable[[int], Iterator[np.ndarray]]], where: Path, test_parts: int = 1) -> Source:
    """A Source of the parts in order (one labels array and one batch reader per file); the last
    `test_parts` are the official test set."""
    all_labels = np.concatenate(labels)
    if len(all_labels) and (all_labels.min() < 0 or all_labels.max() >= len(class_names)):
        raise DataError(f"{where}: labels {all_labels.min()}..{all_labels.max()} do not index the "
                        f"{len(class_names)} classes")
    test_rows = sum(len(part) for part in labels[len(labels) - test_parts:])

    def batches(size: int) -> Iterator[np.ndarray]:
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        for part in parts:
            yield from part(size)

    return Source(all_labels, class_names, image_shape, batches,
                  {"test": np.arange(len(all_labels) - test_rows, len(all_labels))})
