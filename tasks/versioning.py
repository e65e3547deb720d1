"""What a scheduled run does around the pipeline: pull the inputs its stages need from the DVC remote, push
what it made, and record the run in git and in Prefect, so a result on a worker is everyone's result.

- `pull_inputs`: `dvc pull` of the stages' dependencies that DVC tracks (outputs of other stages or of
  .dvc files), not everything: what dvc.lock already vouches for is then skipped by `dvc repro`.
- `push_outputs`: `dvc push` of every output to the remote.
- `record_run`: dvc.lock and the metrics as Prefect artifacts, then the run as a DVC experiment pushed to the
  git remote (`dvc exp save`, `dvc exp push`), or as a commit on a new branch pushed there. Never a commit
  on the branch the run was started from unless that branch is named.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.dvc_stages import run_logged

GIT_REMOTE = "origin"  # where the run came from (the worker's clone): experiments and branches go back there
IDENTITY = {"user.name": "distill-pipeline", "user.email": "distill-pipeline@localhost"}  # when the worker has none


class RecordError(ValueError):
    """A scheduled run cannot keep its record as asked: no DVC remote to pull from and push to, or a bad
    `record` value."""


def dvc(project_dir: Path, *args: str) -> None:
    """Run one dvc command in the project, its output to the run's log."""
    run_logged([sys.executable, "-m", "dvc", *args], project_dir, f"dvc {args[0]}")


def git(project_dir: Path, *args: str) -> str:
    """Run one git command in the project; return its output (raise with its error)."""
    result = subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def default_remote(project_dir: Path) -> str:
    """The project's default DVC remote; a clear error when there is none."""
    result = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=project_dir,
                            capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        raise RecordError("a scheduled run pulls and pushes through the project's default DVC remote, and it "
                           "has none: `dvc remote add -d storage s3://BUCKET/PATH`, commit .dvc/config, redeploy")
    return result.stdout.strip()


def tracked_dependencies(project_dir: Path) -> list[str]:
    """The stages' dependencies that are outputs of a stage or a .dvc file: what a run can pull."""
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        outputs = {str(out.fs_path) for out in repo.index.outs}
        deps = {str(dep.fs_path) for stage in repo.index.stages for dep in stage.deps}
        return sorted(str(Path(path).relative_to(Path(repo.root_dir).resolve())) for path in deps & outputs)


@task(name="pull_inputs", cache_policy=NO_CACHE)
def pull_inputs(project_dir: Path) -> list[str]:
    """Pull what the stages read from the default remote; those not there yet (a first run) are made anew."""
    remote = default_remote(project_dir)
    targets = tracked_dependencies(project_dir)
    get_run_logger().info("pulling the stages' inputs from DVC remote %s: %s", remote, ", ".join(targets))
    if targets:
        dvc(project_dir, "pull", "--allow-missing", *targets)
    return targets


@task(name="push_outputs", cache_policy=NO_CACHE)
def push_outputs(project_dir: Path) -> None:
    """Push every output of the pipeline to the default remote."""
    dvc(project_dir, "push")


def parse_record(record: str) -> tuple[str, str | None]:
    """`experiment`, `branch:<name>` or `none` -> (how, branch)."""
    how, _, branch = record.partition(":")
    if how not in ("experiment", "branch", "none") or (how == "branch") != bool(branch):
        raise RecordError(f"record {record!r}: use experiment (a DVC experiment pushed to the git remote), "
                           "branch:<name> (a commit on that new branch, pushed) or none")
    return how, branch or None


@task(name="record_run", cache_policy=NO_CACHE)
def record_run(project_dir: Path, record: str, name: str) -> str | None:
    """Post dvc.lock and the metrics as artifacts, then record the run in git as `record` says; return
    the experiment or branch name (None for `none`)."""
    how, branch = parse_record(record)
    lock = (project_dir / "dvc.lock").read_text()
    create_markdown_artifact(f"```yaml\n{lock}```", key="dvc-lock", description="dvc.lock of this run")
    metrics = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--md"], cwd=project_dir,
                             capture_output=True, text=True).stdout
    create_markdown_artifact(metrics or "no metrics", key="dvc-metrics", description="dvc metrics show")
    for key, value in IDENTITY.items():  # commits need an author; a worker's user may have none
        if subprocess.run(["git", "config", key], cwd=project_dir, capture_output=True).returncode != 0:
            git(project_dir, "config", key, value)
    logger = get_run_logger()
    if how == "experiment":
        dvc(project_dir, "exp", "save", "--force", "--name", name)
        dvc(project_dir, "exp", "push", GIT_REMOTE, name)
        logger.info("experiment %s pushed to %s: dvc exp pull %s %s; dvc exp apply %s", name, GIT_REMOTE,
                    GIT_REMOTE, name, name)
        return name
    if how == "branch":
        assert branch is not None  # parse_record gives branch:<name> its name
        started_on = git(project_dir, "rev-parse", "--abbrev-ref", "HEAD")
        if branch != started_on:
            git(project_dir, "checkout", "-b", branch)
        git(project_dir, "add", "dvc.lock", "params.yaml")
        git(project_dir, "commit", "--allow-empty", "-m", f"pipeline run {name}")
        git(project_dir, "push", GIT_REMOTE, f"HEAD:refs/heads/{branch}")
        logger.info("run %s committed to branch %s and pushed to %s", name, branch, GIT_REMOTE)
        return branch
    return None
