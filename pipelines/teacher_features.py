"""Stage `teacher_features`: the teacher's features of the layers a distilled student's feature-based terms
read (fitnet, at, rkd, crd), for every transfer-set image, stored once in data/teacher_features/<student>/
when they fit in `teacher_features.max_cache_gb` (pipelines/kd/teacher.py); otherwise only a manifest that
says why, and the student runs the teacher live. dvc.yaml runs it once per student, as stage
`teacher_features@<name>` (`--student <name>`), before `distill@<name>`.

    python -m pipelines.teacher_features --student student_kd
"""

from __future__ import annotations

import argparse
import logging

from pipelines.config import Params, ParamsError
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage

log = logging.getLogger(__name__)


def teacher_features(params: Params, paths: Paths = Paths(), student: str | None = None) -> dict[str, dict]:
    """Write data/teacher_features/<student>/ for `student` (default: every student); return each manifest."""
    from pipelines.data.images import open_image_set
    from pipelines.engine.runtime import init_runtime
    from pipelines.kd import check_students, teacher_layers
    from pipelines.kd.teacher import write_teacher_features

    check_students(params)
    if student is not None and student not in params.distill:
        raise ParamsError(f"no student {student!r} in {params.source}'s distill section; students: "
                          f"{', '.join(params.distill)}")
    runtime = init_runtime(params.device, params.distributed.timeout_s)
    transfer = open_image_set(paths.transfer, paths.arrow_cache)
    manifests = {}
    for name in [student] if student else list(params.distill):
        manifests[name] = write_teacher_features(
            paths.teacher_features(name), paths.model("teacher"), transfer, teacher_layers(params.distill[name]),
            params.teacher_features.max_cache_gb * 2**30, runtime.device)
        stored = ", ".join(manifests[name]["layers"]) or "nothing"
        log.info("teacher features for %s: stored %s (%s)", name, stored, manifests[name]["reason"])
    return manifests


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", help="the student whose teacher features to store (default: every student)")


if __name__ == "__main__":
    run_stage(teacher_features, _arguments)
