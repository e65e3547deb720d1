"""Stage `distill`: the student trained with Hinton's knowledge distillation on the stored teacher logits."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.config import Params
from pipelines.paths import Paths
from pipelines.stage import run_stage
from pipelines.train import train_and_save


def distill(params: Params, paths: Paths = Paths()) -> dict[str, float]:
    """Write models/student_kd.pt and its per-epoch training log."""
    # Memory-mapped: each batch reads its own rows. Copy-on-write ("c") gives a writable array for torch
    # without ever writing to the file.
    teacher_logits = torch.from_numpy(np.load(paths.teacher_logits, mmap_mode="c"))
    return train_and_save("student_kd", params.distill_training(), params, paths, teacher_logits)


if __name__ == "__main__":
    run_stage(distill)
