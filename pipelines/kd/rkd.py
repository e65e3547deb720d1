"""`rkd`: relational knowledge distillation (Park et al., 2019) on the penultimate embeddings (what enters
the classifier): the student keeps the teacher's relations between the batch's images rather than their
features. distance_weight * Huber(student's pairwise distances, teacher's), each normalized by its mean,
+ angle_weight * Huber(cosines of the angles of every triplet, the student's against the teacher's). The
embeddings may differ in size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pipelines.config.base import Section
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context
from pipelines.kd.feature_term import FeatureTerm


class RKDOptions(Section):
    student_layer: str = "classifier"  # the embedding is what enters this layer of the student
    teacher_layer: str = "classifier"  # ... and of the teacher
    distance_weight: float = Field(default=25.0, ge=0.0)  # the paper's weights
    angle_weight: float = Field(default=50.0, ge=0.0)


class RKD(FeatureTerm[RKDOptions]):
    Options = RKDOptions
    of_inputs = True

    def __init__(self, pairs: list[tuple[str, str]], context: Context, keys: tuple[str, str], distance_weight: float,
                 angle_weight: float) -> None:
        super().__init__(pairs, context, keys)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    @classmethod
    def create(cls, options: RKDOptions, context: Context) -> RKD:
        return cls([(options.student_layer, options.teacher_layer)], context,
                   (f"{context.key}.student_layer", f"{context.key}.teacher_layer"),
                   options.distance_weight, options.angle_weight)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        [(student, teacher)] = self.features(batch)
        student, teacher = student.flatten(1).float(), teacher.flatten(1).float()
        distance = F.smooth_l1_loss(normalized_distances(student), normalized_distances(teacher))
        angle = F.smooth_l1_loss(triplet_angles(student), triplet_angles(teacher))
        return self.distance_weight * distance + self.angle_weight * angle


def normalized_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances [B, B], divided by their mean over distinct pairs."""
    squared = embeddings.pow(2).sum(dim=1)
    distances = (squared[:, None] + squared[None, :] - 2 * embeddings @ embeddings.T).clamp_min(eps).sqrt()
    distances = distances * (1 - torch.eye(len(embeddings), device=embeddings.device))  # zero on the diagonal
    return distances / distances[distances > 0].mean()


def triplet_angles(embeddings: torch.Tensor) -> torch.Tensor:
    """cos of the angle at each image j between every other two, i and k: [B * B * B]."""
    differences = F.normalize(embeddings[None, :, :] - embeddings[:, None, :], p=2, dim=2)
    return torch.bmm(differences, differences.transpose(1, 2)).flatten()
