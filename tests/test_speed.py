"""The GPU speed paths (params' `speed` section) apply on CUDA only, and the GPU check script that measures
them runs as is: on a machine without CUDA it says so, and its plumbing runs on the CPU."""

from __future__ import annotations

import sys

import pytest
import torch

from pipelines.config.speed import SpeedParams
from pipelines.engine.runtime import init_runtime
from tests.conftest import PROJECT_ROOT, run

ALL_ON = SpeedParams(bf16=True, compile=True, channels_last=True, pin_memory=True, data_on_device=True)


def test_every_speed_path_is_off_on_the_cpu_whatever_params_say() -> None:
    runtime = init_runtime("cpu", speed=ALL_ON)
    assert not any(runtime.speed.model_dump(
        include=set(SpeedParams.model_fields) - {"data_on_device_max_share"}).values())
    with runtime.autocast():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check itself")
def test_the_gpu_check_says_it_needs_a_cuda_device_and_exits_2() -> None:
    result = run([sys.executable, "-m", "benchmarks.gpu_check"], PROJECT_ROOT, check=False)
    assert result.returncode == 2
    assert "no CUDA device is visible: this check needs one" in result.stderr


@pytest.mark.slow
def test_the_gpu_check_runs_every_training_stage_under_each_setting_on_the_cpu() -> None:
    result = run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--epochs", "1", "--copies", "1",
                  "--teacher-width", "4", "--settings", "fp32,bf16"], PROJECT_ROOT)
    rows = [line.split(" | ") for line in result.stdout.splitlines()
            if line.startswith("| fp32") or line.startswith("| bf16")]
    assert [(row[0], row[1]) for row in rows] == [
        (f"| {setting}", stage) for setting in ("fp32", "bf16")
        for stage in ("train_teacher", "train_student", "teacher_logits", "distill")]
    accuracy = {(row[0], row[1]): row[5] for row in rows}
    assert accuracy[("| fp32", "distill")] == accuracy[("| bf16", "distill")], "on the CPU both settings are plain fp32"
