"""Stage `augment`: the training split -> the transfer set, K seeded augmented copies of each image.

Rows carry `source_index` (the row in train.parquet) and `copy` (0 is the original when kept), so every
augmented image can be traced back to its source.
"""

from __future__ import annotations

import logging

import torch

from pipelines.config import AugmentParams, Params
from pipelines.data import ImageSet, read_image_set, to_table, write_parquet
from pipelines.paths import Paths
from pipelines.stage import run_stage
from pipelines.transforms import augment_batch

log = logging.getLogger(__name__)


def build_transfer_set(train: ImageSet, params: AugmentParams, seed: int) -> tuple[ImageSet, dict[str, torch.Tensor]]:
    """The transfer set and its provenance columns (`source_index`, `copy`)."""
    generator = torch.Generator().manual_seed(seed)
    source = torch.arange(len(train))
    parts, sources, copies = [], [], []
    if params.include_original:
        parts.append(train.images)
        sources.append(source)
        copies.append(torch.zeros(len(train), dtype=torch.int64))
    for copy in range(1, params.copies + 1):
        for start in range(0, len(train), params.batch_size):
            batch = train.images[start : start + params.batch_size].float() / 255.0
            augmented = augment_batch(batch, params, generator)
            parts.append(torch.round(augmented * 255.0).to(torch.uint8))
        sources.append(source)
        copies.append(torch.full((len(train),), copy, dtype=torch.int64))
    source_index = torch.cat(sources)
    transfer = ImageSet(torch.cat(parts), train.labels[source_index], train.class_names)
    return transfer, {"source_index": source_index, "copy": torch.cat(copies)}


def augment(params: Params, paths: Paths = Paths()) -> ImageSet:
    """Write the transfer set built from the prepared training split."""
    train = read_image_set(paths.split("train"))
    transfer, provenance = build_transfer_set(train, params.augment, params.seed)
    write_parquet(paths.transfer, to_table(transfer, provenance))
    log.info("transfer set: %d images from %d training images", len(transfer), len(train))
    return transfer


if __name__ == "__main__":
    run_stage(augment)
