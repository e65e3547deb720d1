"""What a crash leaves behind: never a half-written artifact, temporary files that the next run sweeps,
and a damaged checkpoint reported by name with the way to get it back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import Params
from pipelines.core.atomic import atomic_path, write_text
from pipelines.core.errors import CheckpointError
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_checkpoint
from tasks.params import write_overrides
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS, TINY_OVERRIDES, run

DEAD_PID = 2**22 + 1  # above Linux's largest pid: no process has it


def test_a_write_sweeps_the_temporary_files_a_killed_writer_left(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    dead_file, dead_folder = tmp_path / f".report.md.tmp-{DEAD_PID}", tmp_path / f".report.md.tmp-{DEAD_PID + 1}"
    dead_file.write_text("half a report")
    dead_folder.mkdir()
    not_a_pid = tmp_path / f".report.md.tmp-{os.getpid()}-other"  # not a writer's name: left alone
    not_a_pid.write_text("someone else's")
    other_artifact = tmp_path / f".plot.json.tmp-{DEAD_PID}"
    other_artifact.write_text("another artifact's leftover, swept when that one is written")

    write_text(target, "the report")

    assert target.read_text() == "the report"
    assert not dead_file.exists() and not dead_folder.exists()
    assert not_a_pid.exists() and other_artifact.exists()


@pytest.mark.integration
def test_a_live_writer_s_temporary_file_is_left_alone(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".report.md.tmp-{parent.pid}"
        live.write_text("being written")
        write_text(tmp_path / "report.md", "the report")
        assert live.exists()
    finally:
        parent.kill()
        parent.wait()


def test_an_old_version_moved_aside_is_kept_until_the_artifact_is_back_in_place(tmp_path: Path) -> None:
    # A writer killed between moving a folder aside and moving its new one in leaves only the old one.
    target, aside = tmp_path / "plots", tmp_path / f".plots.old-{DEAD_PID}"
    aside.mkdir()
    with atomic_path(target) as tmp:
        tmp.mkdir()
    assert aside.exists(), "the only version there was is not thrown away"
    with atomic_path(target) as tmp:
        tmp.mkdir()
    assert not aside.exists() and target.is_dir()


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a checkpoint"])
def test_a_damaged_checkpoint_is_named_with_how_to_get_it_back(trained_pipeline, tmp_path: Path, damage: str) -> None:
    _, paths = trained_pipeline
    whole = paths.model("teacher").read_bytes()
    damaged = tmp_path / "teacher.pt"
    damaged.write_bytes({"truncated": whole[: len(whole) // 3], "empty": b"", "not a checkpoint": b"{}\n"}[damage])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(damaged)
    message = str(caught.value)
    assert message.startswith(f"{damaged}: not a readable checkpoint of this pipeline")
    assert f"dvc checkout --force {damaged}" in message


@pytest.mark.integration
def test_evaluate_on_a_truncated_checkpoint_exits_1_naming_it_without_a_traceback(trained_pipeline, tmp_path) -> None:
    params, shared = trained_pipeline
    root = tmp_path / "root"
    shutil.copytree(shared.root, root)
    teacher = Paths(root).model("teacher")
    teacher.write_bytes(teacher.read_bytes()[:5000])
    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, TINY_OVERRIDES)

    result = run([sys.executable, "-m", "pipelines.evaluate", "--params", str(params_file), "--root", str(root)],
                 PROJECT_ROOT, check=False)

    assert result.returncode == 1
    assert f"{teacher}: not a readable checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not Paths(root).eval_metrics.exists()


@pytest.mark.slow
def test_a_teacher_stage_killed_mid_epoch_keeps_the_last_model_and_its_rerun_sweeps_the_leftovers(
    trained_pipeline, tmp_path: Path, tiny_params: Params
) -> None:
    _, shared = trained_pipeline
    paths = Paths(tmp_path / "root")
    shutil.copytree(shared.root, paths.root)
    last_good = paths.model("teacher").read_bytes()
    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {**TINY_OVERRIDES, "teacher.train.epochs": 50})
    command = [sys.executable, "-m", "pipelines.train_teacher", "--params", str(params_file), "--root", str(paths.root)]
    stage = subprocess.Popen(command, cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True)
    for line in stage.stderr:
        if "epoch 2/50" in line:  # mid-run: the training log is being written
            break
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    leftovers = list(paths.training_log("teacher").parent.glob(".teacher.tmp-*"))
    assert leftovers, "the killed run left its temporary training log"
    assert paths.model("teacher").read_bytes() == last_good

    write_overrides(params_file, {"teacher.train.epochs": 1})
    run(command, PROJECT_ROOT)

    assert not any(path.exists() for path in leftovers)
    assert [path.name for path in paths.root.rglob(".*tmp-*")] == []
