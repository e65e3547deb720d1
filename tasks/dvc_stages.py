"""One Prefect task per DVC stage of dvc.yaml, in the order the DVC pipeline's graph allows. Each runs
`dvc repro --single-item <stage>`, so a flow run and `dvc repro` share one cache and one dvc.lock: a stage
whose inputs did not change is skipped by DVC.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE

# Lines of a failed stage's output repeated in the exception, so the flow's error shows the stage's own message.
ERROR_TAIL_LINES = 25
# Stages that train or run a model on the device. Their tasks carry this tag, so a tag concurrency limit
# (`prefect concurrency-limit create gpu 1`, which `make deploy` sets) lets one of them run at a time.
DEVICE_TAG = "gpu"
DEVICE_STAGES = ("train_teacher", "train_student", "teacher_logits", "teacher_features", "distill")


class StageFailed(RuntimeError):
    """A stage (or study run) exited non-zero; the message ends with its own output."""


def dvc_stages(project_dir: Path) -> list[str]:
    """dvc.yaml's stages, `foreach` expanded (distill@student_kd, ...), each after the stages it depends on
    and otherwise in file order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        position = {stage: index for index, stage in enumerate(repo.index.stages)}
        # DVC's graph points from each stage to the stages it depends on.
        order = nx.lexicographical_topological_sort(repo.index.graph.reverse(copy=False), key=position.get)
        # names in the project's one dvc.yaml (addressing is relative to the cwd)
        return [stage.name for stage in order]


def run_dvc_stage(stage: str, project_dir: Path) -> None:
    """Reproduce one stage through DVC, streaming its output to the run's log."""
    run_logged([sys.executable, "-m", "dvc", "repro", "--single-item", stage], project_dir, f"stage {stage}")


def run_logged(command: list[str], project_dir: Path, what: str) -> None:
    """Run `command` in the project, each output line to the run's log; raise StageFailed with its last lines."""
    logger = get_run_logger()
    env = dict(os.environ)
    # dvc.yaml's `python -m pipelines.<stage>` must find this interpreter (the project's venv) first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
    with subprocess.Popen(
        command, cwd=project_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None  # stdout=PIPE
        for line in process.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                tail.append(line)
    if process.returncode != 0:
        raise StageFailed(f"{what} failed (exit code {process.returncode}):\n" + "\n".join(tail))


def dvc_stage_task(stage: str) -> Task[[Path], None]:
    """The Prefect task that reproduces `stage`. DVC decides what to rerun, so Prefect caches nothing."""

    def reproduce(project_dir: Path) -> None:
        run_dvc_stage(stage, project_dir)

    tags = [DEVICE_TAG] if stage.split("@")[0] in DEVICE_STAGES else []
    return task(name=stage, task_run_name=stage, cache_policy=NO_CACHE, tags=tags,
                description=f"dvc repro --single-item {stage}")(reproduce)
