"""Data sources: what `data.source` names, opened as a stream of uint8 image batches [B, C, H, W].

    digits                 scikit-learn's built-in 8x8 digits                      digits.py
    imagefolder:<dir>      one sub-folder of PNG/JPEG files per class, or split folders  imagefolder.py
    npz:<file>             arrays of images and labels                             npz.py
    parquet:<file or s3>   an image column and a label column                      parquet.py
    torchvision:<Name>     CIFAR10, CIFAR100, MNIST or FashionMNIST                torchvision.py

The table of sources is pipelines.config.data.SOURCES (which imports no torch); READERS here gives the
function that opens each of its kinds (tests/test_docs.py checks that they name the same kinds). Labels,
channels and size are read up front (1 channel when every image is grayscale, else RGB); pixels are decoded
batch by batch as prepare writes them, so a dataset need not fit in memory.
Images of different sizes need `data.resize`. A source that cannot be read raises DataError naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from pipelines.config.data import DataParams
from pipelines.config.storage import StorageParams
from pipelines.data.sources.base import Source, resize
from pipelines.data.sources.digits import read_digits
from pipelines.data.sources.imagefolder import read_imagefolder
from pipelines.data.sources.npz import read_npz
from pipelines.data.sources.parquet import read_parquet
from pipelines.data.sources.torchvision import read_torchvision

__all__ = ["READERS", "Source", "load_source"]

# The reader of each kind of SOURCES: reader(location, params), and for Parquet the storage section too.
READERS: dict[str, Callable[..., Source]] = {
    "digits": read_digits,
    "imagefolder": read_imagefolder,
    "npz": read_npz,
    "parquet": read_parquet,
    "torchvision": read_torchvision,
}


def load_source(params: DataParams, storage: StorageParams = StorageParams()) -> Source:
    """The dataset that `data.source` names, its batches resized to `data.resize` if set. `storage` (params'
    storage section) says how to reach S3, for a Parquet file there."""
    kind, _, location = params.source.partition(":")
    on_s3 = (storage,) if kind == "parquet" else ()
    source = READERS[kind](location, params, *on_s3)
    # Decoded images (image folders, encoded Parquet) are resized as they are read; arrays are resized here.
    if params.resize is None or source.image_shape[1:] == tuple(params.resize):
        return source
    height, width = params.resize
    size = (height, width)
    return replace(
        source,
        image_shape=(source.image_shape[0], *size),
        batches=lambda n: (resize(torch.from_numpy(batch), size).numpy() for batch in source.batches(n)),
    )
