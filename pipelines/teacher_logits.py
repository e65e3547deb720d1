"""Stage `teacher_logits`: the teacher's logits for every transfer-set image, computed once.

DVC reruns this stage only when the teacher or the transfer set changes; `distill` then reads the
stored logits every epoch instead of running the teacher.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from pipelines.atomic import atomic_path
from pipelines.checkpoint import load_model
from pipelines.config import Params
from pipelines.data import open_image_set
from pipelines.paths import Paths
from pipelines.runtime import init_runtime
from pipelines.stage import run_stage
from pipelines.predict import predict_logits

log = logging.getLogger(__name__)


def teacher_logits(params: Params, paths: Paths = Paths()) -> torch.Tensor:
    """Write the logits [transfer images, classes] as float32 .npy, rows aligned with transfer.parquet."""
    runtime = init_runtime(params.device)
    teacher, _ = load_model(paths.model("teacher"))
    transfer = open_image_set(paths.transfer, paths.arrow_cache)
    logits = predict_logits(teacher.to(runtime.device), transfer.images, runtime.device)
    with atomic_path(paths.teacher_logits) as tmp:
        with open(tmp, "wb") as file:
            np.save(file, logits.numpy().astype(np.float32))
    agreement = (logits.argmax(1) == transfer.labels).float().mean().item()
    log.info("teacher logits for %d transfer images (teacher accuracy on them %.4f)", len(logits), agreement)
    return logits


if __name__ == "__main__":
    run_stage(teacher_logits)
