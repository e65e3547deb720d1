"""Stage `distill`: a distilled student of params.yaml's `distill` section, trained with its method
(pipelines/kd). dvc.yaml runs it once per student, as stage `distill@<name>` (`--student <name>`).

    python -m pipelines.distill                      # every student, one after another
    python -m pipelines.distill --student student_kd
"""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.config import Params, ParamsError
from pipelines.config.distributed import DistributedParams
from pipelines.core.launch import device_type, needs_workers, processes_per_node, torchrun_arguments
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage


def distill(params: Params, paths: Paths = Paths(), student: str | None = None) -> dict[str, dict[str, float]]:
    """Write models/<student>.pt, what its loss learned besides it (models/<student>.heads.pt) and its training
    log for `student` (default: every student); return the final metrics of each, by name."""
    from pipelines.engine.training import train_and_save
    from pipelines.kd import build_objective, check_students

    check_students(params)
    _check_student(params, student)
    results = {}
    for name in [student] if student else list(params.distill):
        training = params.student_training(name)
        objective = build_objective(name, params, paths)
        results[name] = train_and_save(name, training, objective, params, paths, heads=paths.heads(name))
    return results


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", help="the student to train (default: every student of the distill section)")


def _distributed(params: Params, options: dict[str, Any]) -> DistributedParams:
    """How the student runs: its own changes to `distributed`, else the student section's. Every student
    (no --student) runs under one launch, which must then suit each of them."""
    name = options["student"]
    _check_student(params, name)
    if name is not None or not params.distill:
        return params.distributed_for(params.student_training(name) if name is not None else params.student)
    settings = {name: params.distributed_for(params.student_training(name)) for name in params.distill}
    launches = {(needs_workers(each), *torchrun_arguments(each, "", [])) for each in settings.values()}
    if len(launches) > 1:
        raise ParamsError(f"the students {', '.join(settings)} run on different processes (their distributed "
                          f"changes); train one at a time with --student NAME, as dvc repro's distill@NAME stages do")
    for each in settings.values():  # (the launcher checks the settings it is given: those of one student)
        if needs_workers(each):
            each.check_processes(each.nnodes * processes_per_node(each), each.nnodes, device_type(params.device))
    return next(iter(settings.values()))


def _check_student(params: Params, student: str | None) -> None:
    if student is not None and student not in params.distill:
        raise ParamsError(f"no student {student!r} in {params.source}'s distill section; students: "
                          f"{', '.join(params.distill)}")


if __name__ == "__main__":
    run_stage(distill, _arguments, distributed=_distributed)
