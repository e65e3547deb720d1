"""The seam between the training loop and what it minimizes.

An Objective turns a batch into the loss to minimize and its named terms (for the training log). It is an
nn.Module, so whatever it learns itself (an adapter from the student's features to the teacher's) is
trained beside the model: the loop gives its parameters to the optimizer and wraps model and objective in
DDP together. Cross-entropy on the labels lives here, for the teacher and the baseline student; the
distillation objectives live in pipelines.kd, one module each. An objective that reads the model's inner
layers or runs a live teacher says so through pipelines/engine/capture.py's `ReadsLayers`, for the strategies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.data.images import ImageSet


@dataclass(frozen=True)
class Batch:
    """One training batch on the model's device (`rows` index the training set: on the device when its pixels are
    kept there, else on the CPU)."""

    images: torch.Tensor  # float pixels in [0, 1], [B, C, H, W]
    labels: torch.Tensor  # int64 [B]
    rows: torch.Tensor  # the batch's row indices in the training set: per-row data (stored logits) is read by them
    mix_labels: torch.Tensor | None = None  # with mixup/cutmix: each image's second label ...
    mix_weights: torch.Tensor | None = None  # ... and the share of `labels` in it
    epoch: int = 0  # the epoch whose fresh views these are (a cache of the teacher's outputs on views is by epoch)


BatchOf = Callable[[torch.Tensor], Batch]  # the batch of some rows of the training set, on the device


class Objective(nn.Module):
    """Turns a batch into (loss, named terms). `setup` runs once before training starts, `teardown` after."""

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        """Check what the objective needs of the training data and attach what it needs to the model (forward
        hooks, adapters sized to the model's features): called by `fit` before the optimizer is built."""

    def forward(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of `model` on `batch` (the model's own forward runs here) and its terms, each a scalar."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Detach what `setup` attached to the model (forward hooks): called by `fit` once training is over."""


class CrossEntropy(Objective):
    """Cross-entropy with the labels (and label smoothing): how the teacher and the baseline student learn."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return cross_entropy(model(batch.images), batch, self.label_smoothing), {}


def cross_entropy(logits: torch.Tensor, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of `logits` with the batch's labels; for images mixed by mixup or cutmix, each image's
    loss against both of its labels, weighted by each one's share."""
    if batch.mix_labels is None:
        return F.cross_entropy(logits, batch.labels, label_smoothing=label_smoothing)
    first = F.cross_entropy(logits, batch.labels, label_smoothing=label_smoothing, reduction="none")
    second = F.cross_entropy(logits, batch.mix_labels, label_smoothing=label_smoothing, reduction="none")
    assert batch.mix_weights is not None  # the augment stage writes both columns, or neither
    return (batch.mix_weights * first + (1.0 - batch.mix_weights) * second).mean()
