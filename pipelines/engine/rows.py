"""Values kept per row of the training set (its pixels, labels and mix columns, the teacher's stored logits and
features, the cache of its logits on views), read by a step's rows. When the speed settings keep the training
data on the GPU (`speed.data_on_device`) and a table fits in the share of free memory they allow, it is copied
there once and indexed there by rows that live there too: the step makes no host-to-device copy and never
waits on the device. Otherwise its rows are gathered on the host, from a memory map if the table is one (it
need not fit in memory), and copied, from page-locked memory without blocking where `speed.pin_memory` says."""

from __future__ import annotations

import logging
import math
from typing import Protocol, runtime_checkable

import torch

from pipelines.data.images import MappedImages
from pipelines.engine.runtime import Runtime

log = logging.getLogger(__name__)
CHUNK_ROWS = 4096  # rows copied at a time: the host never holds a second whole copy of a memory-mapped table


class RowTable:
    """A tensor whose first dimension is the training set's rows (or, for a cache of views, one whose second is),
    or the memory-mapped images of an Arrow file."""

    def __init__(self, values: torch.Tensor | MappedImages, name: str) -> None:
        self.values, self.name, self.pin = values, name, False
        self.device = values.device if isinstance(values, torch.Tensor) else torch.device("cpu")  # where it lives

    def keep_on(self, runtime: Runtime) -> None:
        """Copy the table to the runtime's GPU if the speed settings keep data there and it fits (see the module)."""
        self.pin = runtime.speed.pin_memory
        if not runtime.speed.data_on_device or not fits_on_device(self.values, runtime):
            return
        dtype = self.values.dtype if isinstance(self.values, torch.Tensor) else torch.uint8
        on_device = torch.empty(self.values.shape, dtype=dtype, device=runtime.device)
        for start in range(0, len(self.values), CHUNK_ROWS):
            on_device[start : start + CHUNK_ROWS] = self.values[start : start + CHUNK_ROWS].to(runtime.device)
        self.values, self.device = on_device, on_device.device
        log.info("%s stays on %s (%.2f GiB)", self.name, runtime.device, bytes_of(on_device) / 2**30)

    def pin_like(self, other: RowTable) -> None:
        """Stay on the host beside `other`, page-locked as it is."""
        self.pin = other.pin

    def rows(self, rows: torch.Tensor, device: torch.device, epoch: int | None = None) -> torch.Tensor:
        """The table's values at `rows` (of `epoch`, for a cache of views by epoch) on `device`."""
        return self.moved(self.gather(rows, epoch), device)

    def gather(self, rows: torch.Tensor, epoch: int | None = None) -> torch.Tensor:
        """The table's values at `rows` (of `epoch`) where the table lives: on the host, page-locked when
        `speed.pin_memory` says (what pipelines/engine/batches.py may gather ahead, in a thread)."""
        if rows.device != self.device:
            rows = rows.to(self.device)
        if epoch is None:
            gathered = self.values[rows]
        else:
            assert isinstance(self.values, torch.Tensor)  # a cache by epoch is a tensor
            gathered = self.values[epoch, rows]
        return gathered.pin_memory() if self.pin and self.device.type == "cpu" else gathered

    def moved(self, gathered: torch.Tensor, device: torch.device) -> torch.Tensor:
        """`gathered` on `device`, copied without blocking from page-locked memory."""
        return gathered if gathered.device == device else gathered.to(device, non_blocking=self.pin)


def fits_on_device(values: torch.Tensor | MappedImages, runtime: Runtime) -> bool:
    """Whether `values` fit in `speed.data_on_device_max_share` of the GPU's free memory (now)."""
    if runtime.device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(runtime.device)
    return bytes_of(values) <= runtime.speed.data_on_device_max_share * free


def bytes_of(values: torch.Tensor | MappedImages) -> int:
    return math.prod(values.shape) * (values.element_size() if isinstance(values, torch.Tensor) else 1)


@runtime_checkable
class KeepsRows(Protocol):
    """An objective, term or teacher that reads tables by the batch's rows: a strategy's preparation offers them
    the device (`keep_on`) once they are set up."""

    def row_tables(self) -> list[RowTable]: ...


def row_tables_of(*holders: object) -> list[RowTable]:
    """The tables of those of `holders` that keep some, each once."""
    tables = [table for holder in holders if isinstance(holder, KeepsRows) for table in holder.row_tables()]
    return list({id(table): table for table in tables}.values())
