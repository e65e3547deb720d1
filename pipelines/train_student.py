"""Stage `train_student`: the student trained from scratch on the labels alone, the baseline for distillation.

It sees the same transfer set, architecture and budget as the distilled students (unless one of them
changes its own), so the difference is what the teacher adds.
"""

from __future__ import annotations

from pipelines.config import Params
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage


def train_student(params: Params, paths: Paths = Paths()) -> dict[str, float]:
    """Write models/student_baseline.pt and its per-epoch training log."""
    from pipelines.engine.objective import CrossEntropy
    from pipelines.engine.training import train_and_save

    objective = CrossEntropy(params.student.regularization.label_smoothing)
    return train_and_save("student_baseline", params.student, objective, params, paths)


if __name__ == "__main__":
    run_stage(train_student, distributed=lambda params, options: params.distributed_for(params.student))
