"""`hinton`: knowledge distillation on the teacher's softened logits (Hinton et al., 2015), read from the
logits the `teacher_logits` stage stored for every transfer-set image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipelines.config.base import Probability, Section
from pipelines.core.paths import Paths
from pipelines.data.images import ImageSet
from pipelines.data.logits import open_logits
from pipelines.engine.objective import Batch, cross_entropy
from pipelines.kd.base import Method


class HintonOptions(Section):
    temperature: float = Field(gt=0.0)  # T: softens both distributions
    alpha: Probability  # weight of the soft-target term


class Hinton(Method):
    """loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, labels).

    p^T = softmax(logits / T). The teacher's softened distribution is the target, as in the paper; the
    T^2 factor keeps the soft term's gradient on the same scale as the hard term's when T changes. The KL
    term is averaged over the batch, like the cross-entropy; label smoothing and mixed labels apply to the
    hard term. Logged terms: `soft` (the KL) and `hard` (the cross-entropy), before weighting.
    """

    Options = HintonOptions

    def __init__(self, teacher_logits: torch.Tensor, temperature: float, alpha: float, label_smoothing: float = 0.0):
        super().__init__()
        self.teacher_logits = teacher_logits  # [transfer images, classes], rows aligned with the training set
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing

    @classmethod
    def create(cls, options: HintonOptions, label_smoothing: float, paths: Paths) -> Hinton:
        return cls(open_logits(paths.teacher_logits), options.temperature, options.alpha, label_smoothing)

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        if len(self.teacher_logits) != len(train_set):
            raise ValueError(f"{len(self.teacher_logits)} teacher logits for {len(train_set)} training images")

    def forward(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch.images)
        teacher = self.teacher_logits[batch.rows].to(logits.device)
        soft, hard = soft_target_loss(logits, teacher, self.temperature), cross_entropy(logits, batch, self.label_smoothing)
        loss = self.alpha * self.temperature**2 * soft + (1.0 - self.alpha) * hard
        return loss, {"soft": soft.detach(), "hard": hard.detach()}


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T), averaged over the batch."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
