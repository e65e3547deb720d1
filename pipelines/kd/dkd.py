"""`dkd`: decoupled knowledge distillation (Zhao et al., 2022). The KD loss split into its target-class
part (TCKD: the binary distribution target / every other class) and its non-target part (NCKD: the
distribution among the other classes), weighted on their own: alpha * TCKD + beta * NCKD, each a
T^2-scaled KL(teacher || student) averaged over the batch. The target is the batch's label (an image's
first label under mixup/cutmix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pipelines.config.base import Section
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context, LogitsSource, TeacherLogits


class DKDOptions(Section):
    temperature: float = Field(default=4.0, gt=0.0)  # T, as in kd
    alpha: float = Field(default=1.0, ge=0.0)  # weight of the target-class term (the paper's default)
    beta: float = Field(default=8.0, ge=0.0)  # weight of the non-target-class term (the paper's CIFAR-100 default)


class DKD(TeacherLogits[DKDOptions]):
    Options = DKDOptions

    def __init__(self, teacher: LogitsSource, temperature: float, alpha: float, beta: float) -> None:
        super().__init__(teacher)
        self.temperature, self.alpha, self.beta = temperature, alpha, beta

    @classmethod
    def create(cls, options: DKDOptions, context: Context) -> DKD:
        return cls(cls.source(context), options.temperature, options.alpha, options.beta)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        tckd, nckd = decoupled_kd(logits, self.teacher(logits, batch), batch.labels, self.temperature)
        return self.alpha * tckd + self.beta * nckd


def decoupled_kd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of student logits against teacher logits [B, classes] for target `labels` [B]."""
    target = F.one_hot(labels, student.shape[1]).bool()
    student_probs = F.softmax(student / temperature, dim=1)
    teacher_probs = F.softmax(teacher / temperature, dim=1)
    # Target class against the rest: two-way distributions [B, 2].
    student_binary = torch.stack([student_probs[target], 1.0 - student_probs[target]], dim=1)
    teacher_binary = torch.stack([teacher_probs[target], 1.0 - teacher_probs[target]], dim=1)
    tckd = F.kl_div(student_binary.clamp_min(1e-12).log(), teacher_binary, reduction="batchmean")
    # Among the other classes: the target class masked out of both softmaxes.
    masked = torch.finfo(student.dtype).min
    student_rest = F.log_softmax((student / temperature).masked_fill(target, masked), dim=1)
    teacher_rest = F.log_softmax((teacher / temperature).masked_fill(target, masked), dim=1)
    nckd = F.kl_div(student_rest.masked_fill(target, 0.0), teacher_rest.masked_fill(target, 0.0),
                    log_target=True, reduction="batchmean")
    return tckd * temperature**2, nckd * temperature**2
