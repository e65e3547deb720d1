"""Scheduled runs, for real on loopback: a Prefect server, prefect.yaml's deployments registered with
`prefect deploy`, a process worker that runs them from a fresh clone of a bare git repository, and the DVC
remote on a local S3 server (moto). The runs pull their inputs, push their outputs, post artifacts and
push their experiment to the git remote; the deployment's concurrency limit makes a second run wait."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.serve import deployment_spec
from tasks.versioning import RecordError, parse_record
from tests.conftest import PREFECT_STARTUP_TIMEOUT_S, PROJECT_FILES, PROJECT_ROOT, TINY_OVERRIDES, copy_project, run
from tests.s3_server import S3Server

# What a clone needs beyond the pipeline's own files: the deployments and the lock their pull step installs.
REPOSITORY_FILES = (*PROJECT_FILES, "prefect.yaml", "requirements.lock")
RUN_TIMEOUT_S = 420
MAKEFILE = (PROJECT_ROOT / "Makefile").read_text()


def test_record_takes_experiment_a_named_branch_or_none() -> None:
    assert parse_record("experiment") == ("experiment", None)
    assert parse_record("branch:results/nightly") == ("branch", "results/nightly")
    assert parse_record("none") == ("none", None)
    for bad in ("branch", "branch:", "commit:main", "exp"):
        with pytest.raises(RecordError, match="use experiment .* branch:<name> .* or none"):
            parse_record(bad)


def test_a_run_given_the_old_publish_parameter_is_refused_naming_record() -> None:
    from prefect.exceptions import ParameterBindError, SignatureMismatchError

    from flows.scheduled import scheduled_distillation

    # A deployment run's parameters (the worker validates them before the flow starts), then a call in Python.
    with pytest.raises(SignatureMismatchError, match=r"expects parameters \['overrides', 'record', 'project_dir'\]"):
        scheduled_distillation.validate_parameters({"publish": "none"})
    with pytest.raises(ParameterBindError, match=r"unexpected keyword argument 'publish'(.|\n)* record: 'str'"):
        scheduled_distillation(publish="none")


def test_prefect_yaml_declares_a_scheduled_pipeline_off_by_default_and_on_demand_studies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    deployments = {item["name"]: item for item in spec["deployments"]}
    assert set(deployments) == {"pipeline", "pipeline-docker", "optimization-study", "kd-methods-study"}
    assert not deployments["optimization-study"]["schedules"] and not deployments["kd-methods-study"]["schedules"]
    makefile_defaults = {"DISTILL_CRON": "0 3 * * *", "DISTILL_TIMEZONE": "UTC", "DISTILL_SCHEDULE_ACTIVE": "false",
                         "DISTILL_WORK_POOL": "gpu-process"}
    for name, value in makefile_defaults.items():
        assert f"export {name} ?= {value if name != 'DISTILL_WORK_POOL' else '$(POOL)'}" in MAKEFILE
    for name, value in makefile_defaults.items():
        monkeypatch.setenv(name, value)
    pipeline = deployment_spec("pipeline")
    assert pipeline["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC", "active": "false"}]
    assert pipeline["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert pipeline["parameters"] == {"overrides": {}, "record": "experiment"}


def git_repository(tmp_path: Path, bucket: str, endpoint_url: str) -> Path:
    """A bare repository holding the project (shipped params) with its default DVC remote on the S3 server."""
    work = tmp_path / "seed"
    copy_project(work, REPOSITORY_FILES)
    run(["git", "init", "-q", "-b", "main"], work)
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/dvc"], work)
    run(["dvc", "remote", "modify", "storage", "endpointurl", endpoint_url], work)
    for command in (["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"]):
        run(command, work)
    bare = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", str(work), str(bare)], tmp_path)
    return bare


@pytest.fixture
def prefect_api(tmp_path: Path):
    """A real Prefect server (`prefect server start`, its services included: the scheduler) on loopback, with
    its own database; this process's client points at it. Yields the API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The scheduler every 2 s, and a run queued behind the deployment's concurrency limit retried every 2 s
    # (30 s by default): the tests wait for these, not for the pipeline.
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-server"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
               PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2")
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, PREFECT_STARTUP_TIMEOUT_S, "the Prefect server")
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        stop(server)
        log.close()


def stop(process: subprocess.Popen, grace_s: float = 60.0) -> None:
    """End a process started in its own session and everything it started: SIGTERM, then SIGKILL after the grace."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(predicate, timeout: float, what: str, step: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_a_deployed_pipeline_runs_on_a_worker_from_a_fresh_clone_and_records_its_run(
    prefect_api: str, s3_server: S3Server, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, DeploymentFilter, FlowRunFilter, FlowRunFilterParentFlowRunId,
    )
    from prefect.deployments import run_deployment

    bucket = s3_server.make_bucket()
    bare = git_repository(tmp_path, bucket, s3_server.endpoint_url)
    checkout = tmp_path / "checkout"  # where a user runs `make deploy`
    run(["git", "clone", "-q", str(bare), str(checkout)], tmp_path)
    env = dict(os.environ, **s3_server.env, PREFECT_API_URL=prefect_api,
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
               DISTILL_WORK_POOL="test-gpu", DISTILL_CRON="0 3 * * *", DISTILL_TIMEZONE="UTC",
               DISTILL_SCHEDULE_ACTIVE="true", DISTILL_DOCKER_POOL="test-docker", DISTILL_IMAGE="distill-pipeline:test",
               DISTILL_DVC_CACHE=str(tmp_path / "dvc-cache"), DISTILL_AWS_DIR=str(tmp_path / "aws"),
               PREFECT_WORKER_QUERY_SECONDS="2")  # the worker polls for runs every 2 s (10 s by default)
    prefect = [str(Path(sys.executable).parent / "prefect")]
    for command in (["work-pool", "create", "test-gpu", "--type", "process", "--overwrite"],
                    ["work-pool", "create", "test-docker", "--type", "docker", "--overwrite"],
                    ["concurrency-limit", "create", "gpu", "1"],  # as make deploy: one device stage at a time
                    ["--no-prompt", "deploy", "--all"]):
        subprocess.run(prefect + command, cwd=checkout, env=env, check=True, capture_output=True)

    with get_client(sync_client=True) as client:
        deployments = {item.name: item for item in client.read_deployments()}
        assert {"pipeline", "pipeline-docker", "optimization-study", "kd-methods-study"} <= set(deployments)
        docker = deployments["pipeline-docker"]
        assert docker.work_pool_name == "test-docker" and docker.job_variables["image"] == "distill-pipeline:test"
        pipeline = deployments["pipeline"]
        assert pipeline.global_concurrency_limit.limit == 1 and pipeline.work_pool_name == "test-gpu"
        assert pipeline.concurrency_options.collision_strategy == "ENQUEUE"
        assert pipeline.parameters == {"overrides": {}, "record": "experiment"}
        upcoming = wait_for(lambda: client.read_flow_runs(
            deployment_filter=DeploymentFilter(id={"any_": [pipeline.id]})), 60, "the schedule's upcoming runs")
        assert all(flow_run.state.is_scheduled() for flow_run in upcoming)
        client.pause_deployment(pipeline.id)  # from here on, only the triggered runs (pausing drops the scheduled ones)

    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(prefect + ["worker", "start", "--pool", "test-gpu", "--type", "process"],
                              cwd=tmp_path, env=env, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        overrides = {key: value for key, value in TINY_OVERRIDES.items()}
        first = run_deployment("scheduled-distillation/pipeline", parameters={"overrides": overrides}, timeout=0)
        second = run_deployment("scheduled-distillation/pipeline",
                                parameters={"overrides": overrides, "record": "none"}, timeout=0)
        with get_client(sync_client=True) as client:
            def final(flow_run_id):
                state = client.read_flow_run(flow_run_id).state
                return state if state.is_final() else None

            first_state = wait_for(lambda: final(first.id), RUN_TIMEOUT_S, "the first run", step=2)
            assert first_state.is_completed(), (tmp_path / "worker.log").read_text()[-5000:]
            second_state = wait_for(lambda: final(second.id), RUN_TIMEOUT_S, "the second run", step=2)
            assert second_state.is_completed(), (tmp_path / "worker.log").read_text()[-5000:]
            first_run, second_run = client.read_flow_run(first.id), client.read_flow_run(second.id)
            earlier, later = sorted((first_run, second_run), key=lambda flow_run: flow_run.start_time)
            assert later.start_time >= earlier.end_time  # the concurrency limit queued one behind the other
            runs = [first.id, *(subflow.id for subflow in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[first.id]))))]  # the distillation subflow
            artifacts = {artifact.key for artifact in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=runs)))}
            assert {"dvc-lock", "dvc-metrics", "distillation-report", "model-comparison",
                    "params-overrides"} <= artifacts
    finally:
        stop(worker)
        worker_log.close()

    experiments = run(["git", "ls-remote", str(bare), "refs/exps/*"], tmp_path).stdout
    assert f"run-{first_run.name}" in experiments
    assert run(["git", "ls-remote", "--heads", str(bare)], tmp_path).stdout.count("refs/heads/") == 1  # main only
    stored = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="dvc/")
    assert stored["KeyCount"] > 0


@pytest.mark.slow
def test_make_serve_registers_the_pipeline_with_its_schedule_from_prefect_yaml(prefect_api: str,
                                                                               tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    env = dict(os.environ, PREFECT_API_URL=prefect_api, DISTILL_CRON="30 2 * * 1", DISTILL_TIMEZONE="UTC",
               DISTILL_SCHEDULE_ACTIVE="false")
    log = (tmp_path / "serve.log").open("w")
    served = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=PROJECT_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            def registered():
                return next((item for item in client.read_deployments() if item.name == "pipeline"), None)

            deployment = wait_for(registered, 90, "the served deployment")
            assert deployment.parameters == {"overrides": {}, "record": "experiment"}
            assert deployment.tags == ["distillation"]
            assert [(item.schedule.cron, item.active) for item in deployment.schedules] == [("30 2 * * 1", False)]
            assert deployment.global_concurrency_limit.limit == 1
    finally:
        stop(served)
        log.close()


@pytest.mark.integration
def test_a_project_without_a_dvc_remote_is_told_how_to_add_one(project: Path) -> None:
    from tasks.versioning import default_remote

    with pytest.raises(RecordError, match=r"dvc remote add -d storage s3://BUCKET/PATH"):
        default_remote(project)


@pytest.mark.slow
def test_a_run_recorded_as_a_branch_pushes_a_new_branch_and_leaves_its_own_alone(
    prefect_server, s3_env: S3Server, project: Path, tmp_path: Path
) -> None:
    from flows.scheduled import scheduled_distillation

    bucket = s3_env.make_bucket()
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/dvc"], project)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3_env.endpoint_url], project)
    run(["git", "commit", "-qam", "remote"], project)
    bare = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", str(project), str(bare)], tmp_path)
    run(["git", "remote", "add", "origin", str(bare)], project)
    started_on = run(["git", "rev-parse", "HEAD"], project).stdout.strip()

    result = scheduled_distillation(overrides={"student.train.epochs": 2}, record="branch:results/nightly",
                                    project_dir=str(project))

    assert result["recorded_as"] == "results/nightly"
    heads = run(["git", "ls-remote", "--heads", str(bare)], tmp_path).stdout
    assert "refs/heads/results/nightly" in heads and started_on in heads  # the start branch did not move
    committed = run(["git", "show", "results/nightly:params.yaml"], bare).stdout
    assert "epochs: 2" in committed and run(["git", "show", "results/nightly:dvc.lock"], bare).returncode == 0
    assert s3_env.client().list_objects_v2(Bucket=bucket, Prefix="dvc/")["KeyCount"] > 0
