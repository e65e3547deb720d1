"""The transfer set, batch by batch: the training images (if kept) and K seeded augmented copies of each,
with the columns that trace every row to its source (`source_index`, `copy`) and, with mixup or cutmix,
its second label (`mix_label`) and the share of the first (`mix_weight`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import torch

from pipelines.config.data import AugmentParams
from pipelines.data.images import ImageSet
from pipelines.data.transforms import augment_batch, mix_batch


@dataclass(frozen=True)
class TransferBatch:
    images: torch.Tensor  # uint8 [B, C, H, W]
    labels: torch.Tensor
    columns: dict[str, torch.Tensor]  # source_index, copy, and mix_label/mix_weight when mixing


def transfer_columns(params: AugmentParams) -> dict[str, pa.DataType]:
    """The transfer set's per-row columns besides image, shape and label."""
    columns = {"source_index": pa.int64(), "copy": pa.int64()}
    if params.mix.enabled:
        columns |= {"mix_label": pa.int64(), "mix_weight": pa.float32()}
    return columns


def transfer_batches(train: ImageSet, params: AugmentParams, seed: int) -> Iterator[TransferBatch]:
    """The transfer set batch by batch: the originals (if kept), then each augmented copy of the training split."""
    generator = torch.Generator().manual_seed(seed)
    copies = ([0] if params.include_original else []) + list(range(1, params.copies + 1))
    for copy in copies:
        for start in range(0, len(train), params.batch_size):
            images = train.images[start : start + params.batch_size]
            labels = train.labels[start : start + len(images)]
            source_index = torch.arange(start, start + len(images))
            columns = {"source_index": source_index, "copy": torch.full((len(images),), copy, dtype=torch.int64)}
            if copy > 0:
                augmented = augment_batch(images.float() / 255.0, params, generator)
                if params.mix.enabled:
                    augmented, mix_labels, mix_weights = mix_batch(augmented, labels, params.mix, generator)
                    columns |= {"mix_label": mix_labels, "mix_weight": mix_weights}
                images = torch.round(augmented * 255.0).to(torch.uint8)
            elif params.mix.enabled:
                columns |= {"mix_label": labels, "mix_weight": torch.ones(len(images))}
            yield TransferBatch(images, labels, columns)
