"""Stage `teacher_logits`: the teacher's logits for every transfer-set image, computed once.

DVC reruns this stage only when the teacher or the transfer set changes; the distilled students then read
the stored logits every epoch instead of running the teacher. They are written batch by batch into a
memory-mapped .npy file and mapped back (pipelines/data/logits.py), so neither side holds them all.
"""

from __future__ import annotations

import logging

from pipelines.config import Params
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage

log = logging.getLogger(__name__)


def teacher_logits(params: Params, paths: Paths = Paths()):
    """Write the logits [transfer images, classes] as float32 .npy, rows aligned with transfer.parquet;
    return them (a memory-mapped tensor)."""
    from pipelines.data.images import open_image_set
    from pipelines.data.logits import check_finite, open_logits, write_logits
    from pipelines.engine.checkpoint import load_model
    from pipelines.engine.inference import iter_logits
    from pipelines.engine.runtime import init_runtime

    runtime = init_runtime(params.device, params.distributed.timeout_s)
    teacher, checkpoint = load_model(paths.model("teacher"))
    transfer = open_image_set(paths.transfer, paths.arrow_cache)
    agree = 0
    with write_logits(paths.teacher_logits, len(transfer), checkpoint.model_config.num_classes) as stored:
        start = 0
        for logits in iter_logits(teacher.to(runtime.device), transfer.images, runtime.device):
            stored[start : start + len(logits)] = logits.numpy()
            agree += int((logits.argmax(1) == transfer.labels[start : start + len(logits)]).sum())
            start += len(logits)
        # (before the file replaces the last one: a teacher that diverged leaves the good logits in place)
        check_finite(stored, f"{paths.model('teacher')}'s logits of {paths.transfer}",
                     "the teacher diverged or was damaged: retrain it with `dvc repro train_teacher`")
    log.info("teacher logits for %d transfer images (teacher accuracy on them %.4f)", len(transfer),
             agree / len(transfer))
    return open_logits(paths.teacher_logits)


if __name__ == "__main__":
    run_stage(teacher_logits)
