"""Stored logits (data/teacher_logits/transfer_logits.npy): one float32 row per transfer-set image,
written batch by batch into a memory-mapped .npy and mapped back, so neither side holds them all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from pipelines.core.atomic import atomic_path


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
    gives the writable array torch wants without ever writing to the file."""
    return torch.from_numpy(np.load(path, mmap_mode="c"))
