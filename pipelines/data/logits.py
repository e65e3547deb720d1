"""Stored logits (data/teacher_logits/transfer_logits.npy): one float32 row per transfer-set image,
written batch by batch into a memory-mapped .npy and mapped back, so neither side holds them all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from pipelines.core.atomic import atomic_path
from pipelines.core.errors import DataError, first_line, require_input


@contextmanager
def write_logits(path: Path, rows: int, classes: int) -> Iterator[np.ndarray]:
    """A writable memory-mapped array [rows, classes] on a temporary file that replaces `path` once the block
    finishes without error."""
    with atomic_path(path) as tmp:
        stored = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, classes))
        yield stored
        stored.flush()
        del stored  # close the map before the file is renamed into place


def open_logits(path: Path) -> torch.Tensor:
    """Stored logits (.npy) as a memory-mapped tensor: each batch reads its own rows. Copy-on-write ("c")
    gives the writable array torch wants without ever writing to the file. DataError naming the file and what
    to rerun when it is missing, cut short, not a [rows, classes] array, or holds a value that is not finite
    (one pass over the file, a block of rows at a time)."""
    rerun = f"get them back with `dvc checkout --force {path}`, or rerun `dvc repro teacher_logits`"
    try:
        stored = np.load(require_input(path), mmap_mode="c")
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: not readable teacher logits ({first_line(error)}): cut short or damaged; {rerun}"
                        ) from None
    if stored.ndim != 2 or not np.issubdtype(stored.dtype, np.floating):
        raise DataError(f"{path}: a {stored.dtype} array of shape {list(stored.shape)}, not the [images, classes] "
                        f"float logits the teacher_logits stage writes; {rerun}")
    check_finite(stored, f"{path}", "rerun `dvc repro teacher_logits` (it refuses a teacher whose logits are not "
                                    "finite: retrain it with `dvc repro train_teacher` if so)")
    return torch.from_numpy(stored)


def check_finite(values: np.ndarray, what: str, fix: str, block: int = 65536) -> None:
    """DataError naming `what`, how many of its values are NaN or infinite and the first row holding one."""
    bad, first = 0, None
    for start in range(0, len(values), block):
        finite = np.isfinite(values[start : start + block])
        if not finite.all():
            rows = np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))
            first = start + int(rows[0]) if first is None else first
            bad += int(finite.size - finite.sum())
    if bad:
        raise DataError(f"{what}: {bad:,} of {values.size:,} values are NaN or infinite (the first in row {first}); "
                        f"{fix}")
