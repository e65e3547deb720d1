"""One Prefect task per DVC stage of dvc.yaml, in the order the DVC pipeline's graph allows. One `dvc status`
up front, in this process, finds the stages that changed; each of those, and each stage downstream of them,
runs `dvc repro --single-item <stage>`, so a flow run and `dvc repro` share one cache and one dvc.lock. The
others are up to date: their tasks end at once, without a process of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

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
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        # names in the project's one dvc.yaml (addressing is relative to the cwd)
        return [stage.name for stage in _in_order(repo)]


def stage_plan(project_dir: Path) -> dict[str, bool]:
    """dvc.yaml's stages in the order of `dvc_stages`, each True when the flow must reproduce it: `dvc status`
    finds it changed (its command, a dependency or parameter against dvc.lock, a missing or modified output),
    or finds a stage it depends on, directly or not, changed. The latter's own inputs change only once those
    upstream have run, so it runs too and DVC decides then, as `dvc repro` would. A stage False is up to date
    and stays so, nothing upstream of it running."""
    import networkx as nx
    from dvc.repo import Repo, lock_repo

    # One lock over the order and the status: both read the same dvc.yaml, dvc.lock and params.
    with Repo(str(project_dir)) as repo, lock_repo(repo):
        graph = repo.index.graph  # DVC's graph points from each stage to the stages it depends on
        order = _in_order(repo)
        addresses = repo.status()  # {stage's address: what changed}, the changed stages alone
        changed = [stage for stage in order if stage.addressing in addresses]
        reached = set(changed).union(*(nx.ancestors(graph, stage) for stage in changed))
        return {stage.name: stage in reached for stage in order}


def _in_order(repo: Repo) -> list[Stage]:
    """The repository's stages, each after those it depends on and otherwise in file order."""
    import networkx as nx

    position = {stage: index for index, stage in enumerate(repo.index.stages)}
    return list(nx.lexicographical_topological_sort(repo.index.graph.reverse(copy=False), key=position.get))


def run_dvc_stage(stage: str, project_dir: Path) -> None:
    """Reproduce one stage through DVC, streaming its output to the run's log."""
    run_logged([sys.executable, "-m", "dvc", "repro", "--single-item", stage], project_dir, f"stage {stage}")


def run_logged(command: list[str], project_dir: Path, what: str, env_vars: dict[str, str] | None = None) -> None:
    """Run `command` in the project (with `env_vars` set), each output line to the run's log; raise StageFailed
    with its last lines."""
    logger = get_run_logger()
    env = dict(os.environ) | (env_vars or {})
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


def up_to_date_task(stage: str) -> Task[[], State]:
    """The Prefect task that stands for `stage` when the flow's `dvc status` found it and every stage upstream
    of it unchanged: it logs DVC's own line and ends in a Completed state named Skipped, starting no process
    and taking no device slot (no tag)."""

    def up_to_date() -> State:
        get_run_logger().info("Stage '%s' didn't change, skipping", stage)
        return Completed(name="Skipped", message="up to date (dvc status)")

    return task(name=stage, task_run_name=stage, cache_policy=NO_CACHE,
                description=f"{stage}: up to date, not run")(up_to_date)
