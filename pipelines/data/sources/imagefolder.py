"""`imagefolder:<dir>`: one sub-folder of PNG/JPEG files per class; or train/ plus val/ and/or test/
folders of those, which fix those splits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipelines.config.data import DataParams
from pipelines.core.errors import DataError
from pipelines.core.paths import SPLITS
from pipelines.data.sources.base import Source
from pipelines.data.sources.encoded import common_format, decode, read_header

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_imagefolder(location: str, params: DataParams) -> Source:
    root, size = Path(location), params.resize
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

    headers = [read_header(path, str(path)) for path in files]
    mode, image_size = common_format(headers, size, root)

    def batches(n: int) -> Iterator[np.ndarray]:
        for start in range(0, len(files), n):
            yield decode([(path, str(path)) for path in files[start : start + n]], mode, image_size)

    fixed = {}
    if by_split:
        folder_of_row = np.array(folder_of)
        fixed = {split: np.flatnonzero(folder_of_row == i) for i, split in enumerate(split_folders)}
        if len(split_folders) < len(SPLITS):  # train/'s rows go to the splits that have no folder
            del fixed["train"]
    channels = 3 if mode == "RGB" else 1
    return Source(np.array(labels, np.int64), class_names, (channels, *image_size), batches, fixed)
