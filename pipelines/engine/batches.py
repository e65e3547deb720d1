"""Where a training step's batch comes from: the rows of the training set, gathered from the (memory-mapped) set
and moved to the device, or gathered on the device from a copy made once when the data fits there
(pipelines/engine/rows.py). An epoch's batches are slices of a seeded permutation of the rows, moved to where
the pixels are once per epoch, so there is no per-sample Python work, no copy of indices per step, and the
dataset need not fit in memory."""

from __future__ import annotations

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
        for table in (self.labels, *mix):
            if self.pixels.device == self.device:  # the small columns follow the pixels
                table.keep_on(runtime)
        self.mix = mix or None
        self.memory_format = torch.channels_last if runtime.speed.channels_last else torch.contiguous_format

    @property
    def rows_device(self) -> torch.device:
        """Where an epoch's row indices belong: beside the pixels."""
        return self.pixels.device

    def __call__(self, rows: torch.Tensor) -> Batch:
        mix_labels, mix_weights = (table.rows(rows, self.device) for table in self.mix) if self.mix else (None, None)
        return Batch(
            images=self.pixels.rows(rows, self.device).float().div_(255.0).contiguous(memory_format=self.memory_format),
            labels=self.labels.rows(rows, self.device),
            rows=rows,
            mix_labels=mix_labels,
            mix_weights=mix_weights,
        )

