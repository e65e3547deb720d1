"""Stage `train_teacher`: the large CNN trained on the transfer set, validated on `val` every epoch."""

from __future__ import annotations

from pipelines.config import Params
from pipelines.paths import Paths
from pipelines.stage import run_stage
from pipelines.train import train_and_save


def train_teacher(params: Params, paths: Paths = Paths()) -> dict[str, float]:
    """Write models/teacher.pt and its per-epoch training log."""
    return train_and_save("teacher", params.teacher, params, paths)


if __name__ == "__main__":
    run_stage(train_teacher)
