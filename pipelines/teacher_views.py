"""Stage `teacher_views`: for a distilled student with `teacher: cached`, the teacher's logits on every epoch's
fresh views of every transfer image, stored once in data/teacher_views/<student>/ (pipelines/kd/view_cache.py)
so that the student replays them without running the teacher; for any other student, a manifest saying there is
none. dvc.yaml runs it once per student, as stage `teacher_views@<name>` (`--student <name>`), before
`distill@<name>`; its deps and params (the teacher, the transfer set, the seed, the student's views and epochs,
`teacher_views`) are what the cached logits are of, so a change of any reruns it.

    python -m pipelines.teacher_views --student student_kd
"""

from __future__ import annotations

import argparse
import logging

from pipelines.config import Params, ParamsError
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage

log = logging.getLogger(__name__)


def teacher_views(params: Params, paths: Paths = Paths(), student: str | None = None) -> dict[str, dict]:
    """Write data/teacher_views/<student>/ for `student` (default: every student); return each manifest."""
    from pipelines.data.images import open_image_set
    from pipelines.engine.runtime import init_runtime
    from pipelines.kd.view_cache import view_key, write_no_cache, write_view_cache

    if student is not None and student not in params.distill:
        raise ParamsError(f"no student {student!r} in {params.source}'s distill section; students: "
                          f"{', '.join(params.distill)}")
    runtime = init_runtime(params.device, params.distributed.timeout_s, params.speed)
    manifests = {}
    for name in [student] if student else list(params.distill):
        training = params.student_training(name)
        if params.distill[name].teacher != "cached" or training.views is None:
            manifests[name] = write_no_cache(paths.teacher_views(name), f"distill.{name}.teacher is "
                                                                        f"{params.distill[name].teacher}, not cached")
            continue
        transfer = open_image_set(paths.transfer, paths.arrow_cache)
        key = view_key(params.seed, training.views, training.train.epochs, len(transfer))
        manifests[name] = write_view_cache(paths.teacher_views(name), paths.model("teacher"), transfer, key,
                                           training.views, params.teacher_views.top_k,
                                           params.teacher_views.max_cache_gb * 2**30, runtime)
    return manifests


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", help="the student whose teacher views to cache (default: every student)")


if __name__ == "__main__":
    run_stage(teacher_views, _arguments)
