"""Stage `distill`: the student trained with Hinton's knowledge distillation on the stored teacher logits."""

from __future__ import annotations

from pipelines.config import Params
from pipelines.data import open_logits
from pipelines.paths import Paths
from pipelines.stage import run_stage
from pipelines.train import train_and_save


def distill(params: Params, paths: Paths = Paths()) -> dict[str, float]:
    """Write models/student_kd.pt and its per-epoch training log."""
    teacher_logits = open_logits(paths.teacher_logits)
    return train_and_save("student_kd", params.distill_training(), params, paths, teacher_logits)


if __name__ == "__main__":
    run_stage(distill)
