"""The work pools of GPU nodes: prefect.yaml's docker deployment and deploy/kubernetes-job-template.json, checked
against Prefect's own base job templates and worker configurations for those worker types (no Docker daemon,
cluster or Prefect server runs here)."""

from __future__ import annotations

import asyncio
import json

import pytest

from flows.serve import deployment_spec
from tests.conftest import PROJECT_ROOT


class NoApi:
    """The Prefect client a worker resolves a job template's block and variable references with: the shipped
    templates have none, so building their configuration never asks for one (and a test that did would fail)."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the job template asked the Prefect API ({name}): it references a block or variable")


def default_template(worker_type: str) -> dict:
    """Prefect's own base job template for a worker type (prefect-docker, prefect-kubernetes)."""
    from prefect_docker.worker import DockerWorker
    from prefect_kubernetes.worker import KubernetesWorker

    return {"docker": DockerWorker, "kubernetes": KubernetesWorker}[worker_type].get_default_base_job_template()


def test_the_docker_deployment_s_job_variables_fit_the_docker_worker_and_ask_for_the_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_docker.worker import DockerWorkerJobConfiguration
    from prefect.utilities.schema_tools import validate

    for name, value in {"DISTILL_DOCKER_POOL": "gpu-docker", "DISTILL_IMAGE": "distill-pipeline:latest",
                        "DISTILL_DVC_CACHE": "/var/cache/dvc", "DISTILL_AWS_DIR": "/home/me/.aws"}.items():
        monkeypatch.setenv(name, value)
    template = default_template("docker")
    variables = deployment_spec("pipeline-docker")["work_pool"]["job_variables"]
    validate(variables, template["variables"], raise_on_error=True, preprocess=True, ignore_required=True)
    configuration = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(
        template, variables, client=NoApi()))
    assert configuration.image == "distill-pipeline:latest"
    assert configuration.volumes == ["/var/cache/dvc:/dvc-cache", "/home/me/.aws:/home/distill/.aws:ro"]
    assert configuration.container_create_kwargs["shm_size"] == "8g"
    assert configuration.container_create_kwargs["device_requests"] == [
        {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]


def test_the_kubernetes_job_template_is_prefect_s_with_gpus_shared_memory_and_the_remote_s_secret() -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    ours = json.loads((PROJECT_ROOT / "deploy" / "kubernetes-job-template.json").read_text())
    default = default_template("kubernetes")
    assert set(ours["job_configuration"]) == set(default["job_configuration"])
    assert set(default["variables"]["properties"]) < set(ours["variables"]["properties"])  # all of Prefect's, and more
    configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
        ours, {"gpu_count": 2}, client=NoApi()))
    pod = configuration.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == "distill-pipeline:latest"
    assert container["envFrom"] == [{"secretRef": {"name": "dvc-remote-credentials", "optional": True}}]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
