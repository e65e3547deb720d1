"""Stage `teacher_logits`: the teacher's logits for every transfer-set image, computed once.

DVC reruns this stage only when the teacher or the transfer set changes; `distill` then reads the
stored logits every epoch instead of running the teacher. They are written batch by batch into a
memory-mapped .npy file, and `distill` maps it back, so neither side holds them all in memory.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from pipelines.atomic import atomic_path
from pipelines.checkpoint import load_model
from pipelines.config import Params
from pipelines.data import open_image_set, open_logits
from pipelines.paths import Paths
from pipelines.predict import iter_logits
from pipelines.runtime import init_runtime
from pipelines.stage import run_stage

log = logging.getLogger(__name__)


def teacher_logits(params: Params, paths: Paths = Paths()) -> torch.Tensor:
    """Write the logits [transfer images, classes] as float32 .npy, rows aligned with transfer.parquet;
    return them (memory-mapped)."""
    runtime = init_runtime(params.device)
    teacher, config = load_model(paths.model("teacher"))
    transfer = open_image_set(paths.transfer, paths.arrow_cache)
    agree = 0
    with atomic_path(paths.teacher_logits) as tmp:
        stored = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                           shape=(len(transfer), config["model_config"]["num_classes"]))
        start = 0
        for logits in iter_logits(teacher.to(runtime.device), transfer.images, runtime.device):
            stored[start : start + len(logits)] = logits.numpy()
            agree += int((logits.argmax(1) == transfer.labels[start : start + len(logits)]).sum())
            start += len(logits)
        stored.flush()
        del stored  # close the map before the file is renamed into place
    log.info("teacher logits for %d transfer images (teacher accuracy on them %.4f)", len(transfer),
             agree / len(transfer))
    return open_logits(paths.teacher_logits)


if __name__ == "__main__":
    run_stage(teacher_logits)
