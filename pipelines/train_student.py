"""Stage `train_student`: the student trained from scratch on the labels alone, the baseline for distillation.

It sees the same transfer set, architecture and budget as the distilled student, so the difference
between the two is what the teacher's soft targets add.
"""

from __future__ import annotations

from pipelines.config import Params
from pipelines.paths import Paths
from pipelines.stage import run_stage
from pipelines.train import train_and_save


def train_student(params: Params, paths: Paths = Paths()) -> dict[str, float]:
    """Write models/student_baseline.pt and its per-epoch training log."""
    return train_and_save("student_baseline", params.student, params, paths)


if __name__ == "__main__":
    run_stage(train_student)
