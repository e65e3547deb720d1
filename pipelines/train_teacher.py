"""Stage `train_teacher`: the large model trained on the transfer set's labels, validated on `val` every epoch."""

from __future__ import annotations

from pipelines.config import Params
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage


def train_teacher(params: Params, paths: Paths = Paths()) -> dict[str, float]:
    """Write models/teacher.pt and its per-epoch training log."""
    from pipelines.engine.objective import CrossEntropy
    from pipelines.engine.training import train_and_save

    objective = CrossEntropy(params.teacher.regularization.label_smoothing)
    return train_and_save("teacher", params.teacher, objective, params, paths)


if __name__ == "__main__":
    run_stage(train_teacher, distributed=lambda params, options: params.distributed_for(params.teacher))
