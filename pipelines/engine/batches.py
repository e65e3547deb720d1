"""Where a training step's batch comes from: the rows of the training set, gathered from the (memory-mapped) set
and moved to the device, or gathered on the device from a copy made once when the data fits there
(pipelines/engine/rows.py). An epoch's batches are slices of a seeded permutation of the rows, moved to where
the pixels are once per epoch, so there is no per-sample Python work, no copy of indices per step, and the
dataset need not fit in memory.

When the data stays on the host (it does not fit on the GPU) and `speed.prefetch` applies, a background
thread gathers the rows of the next step (the loop names them, `ahead`) into page-locked memory while the
device works on this one; the step then only starts their copy. The batch is the same either way: a
prefetched gather is used only for the very rows asked for."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from pipelines.data.images import ImageSet
from pipelines.engine.objective import Batch
from pipelines.engine.rows import RowTable
from pipelines.engine.runtime import Runtime


class BatchSource:
    """The batch of some rows of `train_set` on the runtime's device (a `BatchOf`)."""

    def __init__(self, train_set: ImageSet, runtime: Runtime) -> None:
        self.device = runtime.device
        self.pixels = RowTable(train_set.images, "the training set's pixels")
        self.pixels.keep_on(runtime)
        self.labels = RowTable(train_set.labels, "its labels")
        mix = [RowTable(train_set.columns[name], name) for name in ("mix_label", "mix_weight")
               if name in train_set.columns]
        for table in (self.labels, *mix):  # the small columns follow the pixels
            if self.pixels.device == self.device:
                table.keep_on(runtime)
            else:
                table.pin_like(self.pixels)
        self.tables = [self.pixels, self.labels, *mix]
        self.memory_format = torch.channels_last if runtime.speed.channels_last else torch.contiguous_format
        on_host = runtime.speed.prefetch and self.pixels.device.type == "cpu"
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="batches") if on_host else None
        self.gathering: deque[tuple[torch.Tensor, Future[list[torch.Tensor]]]] = deque()

    @property
    def rows_device(self) -> torch.device:
        """Where an epoch's row indices belong: beside the pixels."""
        return self.pixels.device

    @property
    def prefetching(self) -> bool:
        """Whether rows are gathered ahead (`ahead`): the data is on the host and `speed.prefetch` applies."""
        return self.pool is not None

    def ahead(self, reads: list[torch.Tensor]) -> None:
        """Start gathering `reads`, the rows the next step will ask for, in the background (when prefetching)."""
        if self.pool is not None:
            self.gathering.extend((rows, self.pool.submit(self._gather, rows)) for rows in reads if len(rows))

    def __call__(self, rows: torch.Tensor) -> Batch:
        pixels, labels, *mix = (table.moved(values, self.device)
                                for table, values in zip(self.tables, self._gathered(rows)))
        return Batch(
            images=pixels.float().div_(255.0).contiguous(memory_format=self.memory_format),
            labels=labels,
            rows=rows,
            mix_labels=mix[0] if mix else None,
            mix_weights=mix[1] if mix else None,
        )

    def _gathered(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Every table's values at `rows`: those gathered ahead if they were these rows, else gathered now."""
        while self.gathering:
            expected, gathered = self.gathering.popleft()
            if expected.shape == rows.shape and torch.equal(expected, rows):
                return gathered.result()
        return self._gather(rows)

    def _gather(self, rows: torch.Tensor) -> list[torch.Tensor]:
        return [table.gather(rows) for table in self.tables]
