"""A distilled student on fresh views with its teacher run live, as the `distill` stage runs it: killed mid-epoch
it resumes to the weights of a run never interrupted, and it learns the same under ddp and fsdp, and as a
pipeline of three stages and of one."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_checkpoint
from tasks.params import write_overrides
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS, TINY_OVERRIDES, run
from tests.test_resume import kill_after_save

LIVE_ON_FRESH_VIEWS = {
    **TINY_OVERRIDES, "device": "cpu",
    "distill.student_kd.teacher": "live",
    "distill.student_kd.views": {"rotation_degrees": 10, "pad_crop": 1, "noise_std": 0.05,
                                 "mix": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}},
    "distill.student_kd.losses": [{"method": "kd", "temperature": 2.0},
                                  {"method": "fitnet", "student_layer": "features.0", "teacher_layer": "features.3"}],
}


@pytest.fixture
def live_root(trained_pipeline, tmp_path: Path) -> tuple[Paths, Path]:
    """A copy of the tiny trained pipeline, its params file set for a live teacher on fresh views."""
    _, shared = trained_pipeline
    paths = Paths(tmp_path / "root")
    shutil.copytree(shared.root, paths.root)
    params_file = paths.root / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, LIVE_ON_FRESH_VIEWS)
    return paths, params_file


def distill_command(paths: Paths, params_file: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.distill", "--student", "student_kd", "--params", str(params_file),
            "--root", str(paths.root)]


def learned(paths: Paths) -> dict[str, torch.Tensor]:
    return {**load_checkpoint(paths.model("student_kd")).state_dict,
            **torch.load(paths.heads("student_kd"), weights_only=True)}


@pytest.mark.slow
def test_a_student_on_fresh_views_with_a_live_teacher_resumes_to_the_same_weights(live_root) -> None:
    paths, params_file = live_root
    write_overrides(params_file, {"resume.every_minutes": 0, "distill.student_kd.train": {"epochs": 2,
                                                                                           "batch_size": 16}})
    command = distill_command(paths, params_file)
    run(command, PROJECT_ROOT)
    uninterrupted = learned(paths)

    killed = kill_after_save(command, paths, step=10, model="student_kd")
    assert killed.wait(timeout=120) == -signal.SIGKILL and list(paths.resume_states(".resume", "student_kd").iterdir())
    result = run(command, PROJECT_ROOT)
    assert "resuming from" in result.stderr
    resumed = learned(paths)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)


@pytest.mark.slow
def test_a_live_teacher_on_fresh_views_teaches_the_same_under_ddp_and_fsdp(live_root) -> None:
    paths, params_file = live_root
    weights = {}
    for strategy in ("ddp", "fsdp"):
        write_overrides(params_file, {"distributed.nproc_per_node": 2, "distributed.strategy": strategy})
        run(distill_command(paths, params_file), PROJECT_ROOT)
        weights[strategy] = learned(paths)
    assert weights["ddp"].keys() == weights["fsdp"].keys()
    for key, value in weights["ddp"].items():
        assert (value.float() - weights["fsdp"][key].float()).abs().max() <= 1e-5, key


@pytest.mark.slow
def test_a_live_teacher_on_fresh_views_teaches_the_same_in_three_pipeline_stages_as_in_one(live_root) -> None:
    paths, params_file = live_root
    weights, logs = {}, {}
    for processes in (1, 3):
        write_overrides(params_file, {"distill.student_kd.train.batch_size": 24, "distributed.microbatches": 2,
                                      "distributed.strategy": "pipeline", "distributed.nproc_per_node": processes})
        logs[processes] = run(distill_command(paths, params_file), PROJECT_ROOT).stderr
        weights[processes] = learned(paths)
    assert "the live ConvNet runs in the pipeline's 3 stages" in logs[3]
    for key, value in weights[1].items():
        assert (value.float() - weights[3][key].float()).abs().max() <= 1e-5, key
