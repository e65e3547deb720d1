"""Stage `augment`: the training split -> the transfer set, K seeded augmented copies of each image.

Rows carry `source_index` (the row in train.parquet) and `copy` (0 is the original when kept), so every
augmented image can be traced back to its source. With mixup or cutmix on, they also carry `mix_label`
and `mix_weight` (the share of `label`). The training split is read and the transfer set written
`augment.batch_size` images at a time.
"""

from __future__ import annotations

import logging

from pipelines.config import Params
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage

log = logging.getLogger(__name__)


def augment(params: Params, paths: Paths = Paths()) -> int:
    """Write the transfer set built from the prepared training split; return its size."""
    from pipelines.data.images import open_image_set
    from pipelines.data.transfer import transfer_batches, transfer_columns
    from pipelines.data.writer import write_images

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
