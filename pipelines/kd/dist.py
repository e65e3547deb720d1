"""`dist`: DIST, distillation from a stronger teacher (Huang et al., 2022). Instead of matching the
teacher's probabilities exactly, the student matches their relations, by Pearson correlation: across
classes within each image (inter-class) and across the batch's images within each class (intra-class).
loss = T^2 * (beta * (1 - mean inter-class correlation) + gamma * (1 - mean intra-class correlation)),
on softmax(logits / T)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pipelines.config.base import Section
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context, LogitsSource, TeacherLogits


class DISTOptions(Section):
    temperature: float = Field(default=1.0, gt=0.0)  # T (the paper's default, 1)
    beta: float = Field(default=1.0, ge=0.0)  # weight of the inter-class relation
    gamma: float = Field(default=1.0, ge=0.0)  # weight of the intra-class relation


class DIST(TeacherLogits[DISTOptions]):
    Options = DISTOptions

    def __init__(self, teacher: LogitsSource, temperature: float, beta: float, gamma: float) -> None:
        super().__init__(teacher)
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    @classmethod
    def create(cls, options: DISTOptions, context: Context) -> DIST:
        return cls(cls.source(context), options.temperature, options.beta, options.gamma)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        student = F.softmax(logits / self.temperature, dim=1)
        teacher = F.softmax(self.teacher(logits, batch) / self.temperature, dim=1)
        inter = 1.0 - pearson(student, teacher).mean()  # each image's distribution over the classes
        intra = 1.0 - pearson(student.T, teacher.T).mean()  # each class's probabilities over the images
        return self.temperature**2 * (self.beta * inter + self.gamma * intra)


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    return F.cosine_similarity(a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), dim=1, eps=eps)
