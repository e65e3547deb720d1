"""`fitnet`: hint learning (Romero et al., 2015): the mean squared error between a teacher layer's output
(the hint) and a student layer's, through a learned connector when their shapes differ: a 1x1 convolution
to the teacher's channels, then a bilinear resize to its spatial size (a linear map for flat features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.config.base import Section
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context
from pipelines.kd.feature_term import FeatureTerm


class FitNetOptions(Section):
    student_layer: str = "features"  # module path in the student (its whole feature extractor by default)
    teacher_layer: str = "features"  # module path in the teacher


class Connector(nn.Module):
    """Student features [B, C, H, W] (or [B, D]) to the teacher's shape: 1x1 convolution, resize."""

    def __init__(self, student: torch.Size, teacher: torch.Size) -> None:
        super().__init__()
        self.size = tuple(teacher[2:])
        self.project = nn.Conv2d(student[1], teacher[1], 1) if len(teacher) == 4 else nn.Linear(student[1], teacher[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        if projected.dim() == 4 and projected.shape[2:] != self.size:
            projected = F.interpolate(projected, size=self.size, mode="bilinear", align_corners=False)
        return projected


class FitNet(FeatureTerm[FitNetOptions]):
    Options = FitNetOptions

    @classmethod
    def create(cls, options: FitNetOptions, context: Context) -> FitNet:
        return cls([(options.student_layer, options.teacher_layer)], context,
                   (f"{context.key}.student_layer", f"{context.key}.teacher_layer"))

    def build(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        [(student, teacher)] = shapes
        if len(student) != len(teacher):
            raise ValueError(f"fitnet: student features {tuple(student)} and teacher features {tuple(teacher)} "
                             f"are not both maps (4-d) or both vectors (2-d); choose other layers")
        self.connector = Connector(student, teacher) if student[1:] != teacher[1:] else nn.Identity()

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        [(student, teacher)] = self.features(batch)
        return F.mse_loss(self.connector(student).float(), teacher.float())
