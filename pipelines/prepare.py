"""Stage `prepare`: the data source -> stratified, seeded train/val/test Parquet splits and a dataset card.

The source is streamed `data.batch_size` images at a time into the three split files, so prepare's
memory stays bounded however large the dataset is.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

from pipelines.config import Params
from pipelines.core.paths import SPLITS, Paths
from pipelines.core.stage import run_stage

log = logging.getLogger(__name__)


def prepare(params: Params, paths: Paths = Paths()):
    """Write the three splits and the card; return the card (a DatasetCard)."""
    import numpy as np

    from pipelines.core.errors import DataError
    from pipelines.data.card import DatasetCard, PixelStats, check_normalize, write_card
    from pipelines.data.sources import load_source
    from pipelines.data.split import assign_splits, require_two_classes
    from pipelines.data.writer import write_images

    data = params.data
    source = load_source(data, params.storage)
    require_two_classes(source.labels, source.class_names, data.source)
    check_normalize(data.normalize, source.image_shape[0])
    rows = assign_splits(source.labels, source.class_names, source.fixed_splits, data.split, params.seed)
    split_of = np.empty(len(source.labels), np.int8)  # the split index of every row
    for index, name in enumerate(SPLITS):
        split_of[rows[name]] = index

    stats = PixelStats(source.image_shape[0])  # of the training split: the default normalization
    with ExitStack() as files:
        writers = [files.enter_context(write_images(paths.split(name), source.image_shape, source.class_names))
                   for name in SPLITS]
        start = 0
        for batch in source.batches(data.batch_size):
            split = split_of[start : start + len(batch)]
            labels = source.labels[start : start + len(batch)]
            for index, (name, writer) in enumerate(zip(SPLITS, writers)):
                in_split = split == index
                writer.write(batch[in_split], labels[in_split])
                if name == "train":
                    stats.add(batch[in_split])
            if (start + len(batch)) * 10 // len(source.labels) > start * 10 // len(source.labels):
                log.info("prepare: %d of %d images", start + len(batch), len(source.labels))  # every 10%
            start += len(batch)
        if start != len(source.labels):
            raise DataError(f"{data.source}: {start} images but {len(source.labels)} labels")
        checksums = {name: writer.checksum() for name, writer in zip(SPLITS, writers)}

    mean, std = data.normalize.mean, data.normalize.std  # given together (NormalizeParams), or neither
    mean_std = (mean, std) if mean is not None and std is not None else stats.mean_std()
    split_labels = {name: source.labels[rows[name]] for name in SPLITS}
    card = DatasetCard.build(data.source, source.class_names, source.image_shape, split_labels, checksums, mean_std)
    write_card(paths.card, card)
    log.info("prepared %s: %s", data.source, {name: len(labels) for name, labels in split_labels.items()})
    return card


if __name__ == "__main__":
    run_stage(prepare)
