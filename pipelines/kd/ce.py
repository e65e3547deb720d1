"""`ce`: cross-entropy with the labels (and label smoothing, mixup/cutmix labels): the hard-label term."""

from __future__ import annotations

import torch

from pipelines.config.base import Section
from pipelines.engine.objective import Batch, cross_entropy
from pipelines.kd.base import Context, Term


class CEOptions(Section):
    pass  # label smoothing is the student's regularization.label_smoothing


class CE(Term[CEOptions]):
    Options = CEOptions

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    @classmethod
    def create(cls, options: CEOptions, context: Context) -> CE:
        return cls(context.label_smoothing)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return cross_entropy(logits, batch, self.label_smoothing)
