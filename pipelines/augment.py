"""Stage `augment`: the training split -> the transfer set, K seeded augmented copies of each image.

Rows carry `source_index` (the row in train.parquet) and `copy` (0 is the original when kept), so every
augmented image can be traced back to its source. With mixup or cutmix on, they also carry `mix_label`
and `mix_weight` (the share of `label`). The training split is read and the transfer set written
`augment.batch_size` images at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import torch

from pipelines.config import AugmentParams, Params
from pipelines.data import ImageSet, open_image_set, write_images
from pipelines.paths import Paths
from pipelines.stage import run_stage
from pipelines.transforms import augment_batch, mix_batch

log = logging.getLogger(__name__)


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


def augment(params: Params, paths: Paths = Paths()) -> int:
    """Write the transfer set built from the prepared training split; return its size."""
    train = open_image_set(paths.split("train"), paths.arrow_cache)
    count = 0
    columns = transfer_columns(params.augment)
    with write_images(paths.transfer, train.image_shape, train.class_names, columns) as writer:
        for batch in transfer_batches(train, params.augment, params.seed):
            writer.write(batch.images, batch.labels, **batch.columns)
            count += len(batch.images)
    log.info("transfer set: %d images from %d training images", count, len(train))
    return count


if __name__ == "__main__":
    run_stage(augment)
