"""`kd`: knowledge distillation on the teacher's softened logits (Hinton et al., 2015),
T^2 * KL(p_teacher^T || p_student^T) with p^T = softmax(logits / T), averaged over the batch.

The teacher's softened distribution is the target, as in the paper; the T^2 factor keeps the term's
gradient on the scale of a hard-label term's when T changes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pipelines.config.base import Section
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context, LogitsSource, TeacherLogits


class KDOptions(Section):
    temperature: float = Field(default=4.0, gt=0.0)  # T: softens both distributions


class KD(TeacherLogits[KDOptions]):
    Options = KDOptions

    def __init__(self, teacher: LogitsSource, temperature: float) -> None:
        super().__init__(teacher)
        self.temperature = temperature

    @classmethod
    def create(cls, options: KDOptions, context: Context) -> KD:
        return cls(cls.source(context), options.temperature)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.temperature**2 * soft_target_loss(logits, self.teacher(logits, batch), self.temperature)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T), averaged over the batch."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
