"""Where a training step's batch comes from: the rows of the training set, gathered from the (memory-mapped) set
and moved to the device, or gathered on the device from a copy made once when the data fits there. An epoch's
batches are slices of a seeded permutation of the rows, so there is no per-sample Python work and the dataset
need not fit in memory."""

from __future__ import annotations

import logging
import math

import torch

from pipelines.data.images import ImageSet
from pipelines.engine.objective import Batch, BatchOf
from pipelines.engine.runtime import Runtime

log = logging.getLogger(__name__)


def batch_source(train_set: ImageSet, runtime: Runtime) -> BatchOf:
    """The function that makes the batch of some rows of `train_set` on the runtime's device. Pixels are
    gathered from the (memory-mapped) set, pinned and copied without blocking, or, when `speed.data_on_device`
    applies and they fit, gathered on the device from a copy made once."""
    device, speed = runtime.device, runtime.speed
    pixels: torch.Tensor | None = None
    if speed.data_on_device and _fits_on_device(train_set, runtime):
        pixels = torch.empty(train_set.images.shape, dtype=torch.uint8, device=device)
        for start in range(0, len(train_set), 4096):  # in chunks: the host never holds a second whole copy
            pixels[start : start + 4096] = train_set.images[start : start + 4096].to(device)
        log.info("the training set's pixels stay on %s (%.2f GiB)", device, pixels.numel() / 2**30)
    mix_labels, mix_weights = train_set.columns.get("mix_label"), train_set.columns.get("mix_weight")
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format

    def batch_of(rows: torch.Tensor) -> Batch:
        if pixels is not None:
            images = pixels[rows.to(device)]
        else:
            gathered = train_set.images[rows]
            images = (gathered.pin_memory() if speed.pin_memory else gathered).to(device, non_blocking=speed.pin_memory)
        return Batch(
            images=images.float().div_(255.0).contiguous(memory_format=memory_format),
            labels=train_set.labels[rows].to(device),
            rows=rows,
            mix_labels=None if mix_labels is None else mix_labels[rows].to(device),
            mix_weights=None if mix_weights is None else mix_weights[rows].to(device),
        )

    return batch_of


def _fits_on_device(train_set: ImageSet, runtime: Runtime) -> bool:
    free, _ = torch.cuda.mem_get_info(runtime.device)
    return math.prod(train_set.images.shape) <= runtime.speed.data_on_device_max_share * free
