"""Fresh views: every training step sees a new augmented view of each of its images, made on the model's device
as tensor ops on the whole batch (pipelines/data/transforms.py's transforms, the `views` setting of each model).

Each image's view in an epoch is drawn from a hash of (seed, epoch, its row) (`KeyedDraws`), not from a stream:
it is the same whatever the batch it falls in, the number of processes and the strategy, the device, and
whether the run was resumed, so nothing of it needs saving, and a teacher run live on the batch labels exactly
the view the student sees. With `mix`, each image is mixed with the view of a partner drawn the same way from
the whole training set, whose label joins the batch's mix columns.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pipelines.config.base import ParamsError
from pipelines.config.data import TransformParams
from pipelines.data.draws import KeyedDraws
from pipelines.data.images import ImageSet
from pipelines.data.transforms import mix_pairs, view_batch
from pipelines.engine.objective import Batch, BatchOf
from pipelines.engine.runtime import Runtime

PARTNER = 0x9E3779B9  # what keys an image's partner draw apart from its own view's (any odd constant)


class FreshViews:
    """The batches of each epoch, viewed afresh (see the module's doc)."""

    def __init__(self, source: BatchOf, train_set: ImageSet, params: TransformParams, seed: int,
                 memory_format: torch.memory_format) -> None:
        if params.mix.enabled and "mix_label" in train_set.columns:
            raise ParamsError("views.mix: the transfer set is mixed already (augment.mix); mix the images once, "
                              "in one of the two")
        self.source, self.rows, self.params, self.seed = source, len(train_set), params, seed
        self.memory_format = memory_format  # channels_last where the speed settings ask for it

    def of_epoch(self, epoch: int) -> BatchOf:
        """The function that makes the batch of some rows, each image in its view of epoch `epoch`."""
        return lambda rows: self.view(self.source(rows), epoch)

    def view(self, batch: Batch, epoch: int) -> Batch:
        device = batch.images.device
        images = view_batch(batch.images, self.params, KeyedDraws(self.seed, epoch, batch.rows, device))
        if not self.params.mix.enabled:
            return replace(batch, images=images.contiguous(memory_format=self.memory_format), epoch=epoch)
        partner_key = KeyedDraws(self.seed ^ PARTNER, epoch, batch.rows, device)
        partner_rows = partner_key.integers(self.rows)
        partners = self.source(partner_rows)
        partner_images = view_batch(partners.images, self.params, KeyedDraws(self.seed, epoch, partner_rows, device))
        mixed, mix_labels, mix_weights = mix_pairs(images, batch.labels, partner_images, partners.labels,
                                                   self.params.mix, partner_key)
        return replace(batch, images=mixed.contiguous(memory_format=self.memory_format), mix_labels=mix_labels,
                       mix_weights=mix_weights, epoch=epoch)


class StoredImages:
    """`views` off: the images as stored, every epoch."""

    def __init__(self, source: BatchOf) -> None:
        self.source = source

    def of_epoch(self, epoch: int) -> BatchOf:
        return self.source


def fresh_views(source: BatchOf, train_set: ImageSet, params: TransformParams | None, seed: int,
                runtime: Runtime) -> FreshViews | StoredImages:
    """Fresh views of the batches `source` makes, as `params` (a model's `views`) say; the stored images when
    they are off."""
    if params is None or not params.enabled:
        return StoredImages(source)
    memory_format = torch.channels_last if runtime.speed.channels_last else torch.contiguous_format
    return FreshViews(source, train_set, params, seed, memory_format)
