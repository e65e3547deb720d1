"""A training run whose loss or weights stop being finite, and stored teacher outputs that are not finite or
not of the transfer set's shape: the stage stops with a message naming the model (or file), the step and
what to change, and the good model it would have replaced stays as it was, byte for byte."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.config import load_params
from pipelines.core.errors import DataError
from pipelines.core.paths import Paths
from pipelines.core.stage import exit_on_user_error
from pipelines.data.images import open_image_set
from pipelines.data.logits import open_logits
from pipelines.distill import distill
from pipelines.engine.divergence import DivergenceWatch, TrainingDiverged
from pipelines.engine.runtime import init_runtime
from pipelines.kd.teacher import Teacher, write_teacher_features
from pipelines.teacher_logits import teacher_logits
from pipelines.train_student import train_student
from tests.conftest import SHIPPED_PARAMS, STORED_KD, TINY_OVERRIDES

DIVERGING = {**TINY_OVERRIDES, "student.optimizer": {"name": "sgd", "lr": 1.0e6}, "student.train.epochs": 2}


@pytest.fixture
def project(trained_pipeline, tmp_path: Path) -> Paths:
    """A copy of the trained tiny pipeline's root, whose files a test may break."""
    _, shared = trained_pipeline
    shutil.copytree(shared.root, tmp_path / "root")
    return Paths(tmp_path / "root")


def test_a_diverged_run_stops_naming_the_model_step_and_learning_rate_and_keeps_the_good_model(project: Paths) -> None:
    good = project.model("student_baseline").read_bytes()
    log = sorted(path.read_bytes() for path in project.training_log("student_baseline").rglob("*") if path.is_file())

    with pytest.raises(TrainingDiverged) as caught:
        train_student(load_params(SHIPPED_PARAMS, DIVERGING), project)

    message = str(caught.value)
    assert re.match(r"student_baseline: training diverged: the (loss stopped being finite at|weights stopped being "
                    r"finite in) optimizer steps? [\d to]+ of epoch 1 \(learning rate 1e\+06\); [\d,]+ values of the "
                    r"weights and batch norm statistics are NaN or infinite\. ", message), message
    assert f"{project.model('student_baseline')} is kept as it was" in message
    assert "student.optimizer.lr" in message and "student.regularization.grad_clip" in message
    assert caught.value.steps[1] <= 20  # caught in the first epoch (or at its first save of the training state)
    assert project.model("student_baseline").read_bytes() == good
    assert sorted(path.read_bytes() for path in project.training_log("student_baseline").rglob("*")
                  if path.is_file()) == log  # the training log is not replaced either
    assert not (project.root / ".resume").exists()  # no training state of the diverged run is kept


def test_a_diverged_stage_exits_1_with_its_message_alone(project: Paths, capsys: pytest.CaptureFixture) -> None:
    good = project.model("student_baseline").read_bytes()
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(train_student, load_params(SHIPPED_PARAMS, DIVERGING), project)
    assert exited.value.code == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("student_baseline: training diverged: ") and stderr.count("\n") == 1
    assert project.model("student_baseline").read_bytes() == good


def test_the_watch_names_the_first_step_whose_loss_is_not_finite_and_the_learning_rate_it_ran_at() -> None:
    watch = DivergenceWatch(torch.nn.Linear(2, 2), init_runtime("cpu"))
    total = torch.tensor(0.0)
    for step, loss, lr in [(1, 1.0, 0.1), (2, 2.0, 0.2), (3, float("inf"), 0.3), (4, 1.0, 0.4)]:
        total = total + loss  # the loop's epoch sum
        watch.watch(step, total, lr)
    with pytest.raises(TrainingDiverged, match=re.escape(
            "training diverged: the loss stopped being finite at optimizer step 3 of epoch 5 (learning rate 0.3); "
            "0 values of the weights and batch norm statistics are NaN or infinite")):
        watch.check(4)


def test_weights_or_statistics_that_stop_being_finite_are_caught_even_with_finite_losses() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    watch = DivergenceWatch(model, init_runtime("cpu"))
    watch.watch(1, torch.tensor(0.5), 0.1)
    watch.check(0)  # all finite: nothing happens
    watch.watch(2, torch.tensor(1e30), 0.2)
    watch.watch(3, torch.tensor(2e30), 0.1)
    model[1].running_var[0] = float("inf")
    with pytest.raises(TrainingDiverged, match=re.escape(
            "the weights stopped being finite in optimizer steps 2 to 3 of epoch 2 (learning rates 0.1 to 0.2); 1 "
            "values")):
        watch.check(1)


# --- stored teacher logits and features -------------------------------------------------------------


def test_nan_teacher_logits_stop_distill_naming_the_file_and_what_to_rerun(project: Paths,
                                                                          capsys: pytest.CaptureFixture) -> None:
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, **STORED_KD})  # a student of the stored logits
    stored = np.load(project.teacher_logits)
    stored[7, 3] = np.nan
    stored[9] = np.inf
    np.save(project.teacher_logits, stored)
    good = project.model("student_kd").read_bytes()

    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(distill, params, project, "student_kd")

    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        f"{project.teacher_logits}: 11 of {stored.size:,} values are NaN or infinite (the first in row 7); rerun "
        f"`dvc repro teacher_logits` (it refuses a teacher whose logits are not finite: retrain it with `dvc repro "
        f"train_teacher` if so)\n")
    assert project.model("student_kd").read_bytes() == good
    assert not (project.root / ".resume").exists()  # the failed run leaves no lock behind


@pytest.mark.parametrize("shape", ["fewer rows", "other classes"])
def test_teacher_logits_of_another_shape_are_refused(project: Paths, shape: str) -> None:
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, **STORED_KD})  # a student of the stored logits
    stored = np.load(project.teacher_logits)
    np.save(project.teacher_logits, stored[:-1] if shape == "fewer rows" else stored[:, :7])
    good = project.model("student_kd").read_bytes()

    with pytest.raises(DataError, match=r"the stored teacher logits are \d+ rows of \d+ classes, the transfer set "
                                        r"\d+ images of 10: .*rerun `dvc repro teacher_logits`"):
        distill(params, project, "student_kd")
    assert project.model("student_kd").read_bytes() == good


def test_truncated_teacher_logits_are_named_with_how_to_get_them_back(project: Paths) -> None:
    whole = project.teacher_logits.read_bytes()
    project.teacher_logits.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=re.escape(f"{project.teacher_logits}: not readable teacher logits")) as caught:
        open_logits(project.teacher_logits)
    assert f"dvc checkout --force {project.teacher_logits}" in str(caught.value)


def test_a_teacher_whose_logits_are_not_finite_leaves_the_stored_logits_as_they_were(trained_pipeline,
                                                                                     project: Paths) -> None:
    params, _ = trained_pipeline
    teacher = torch.load(project.model("teacher"), weights_only=True)
    first = next(name for name, value in teacher["state_dict"].items() if value.is_floating_point())
    teacher["state_dict"][first].fill_(float("nan"))
    torch.save(teacher, project.model("teacher"))
    good = project.teacher_logits.read_bytes()

    with pytest.raises(DataError, match=re.escape(f"{project.model('teacher')}'s logits of {project.transfer}: ")
                       ) as caught:
        teacher_logits(params, project)
    assert "retrain it with `dvc repro train_teacher`" in str(caught.value)
    assert project.teacher_logits.read_bytes() == good


def test_stored_teacher_features_that_are_not_finite_or_of_other_data_are_refused(project: Paths) -> None:
    transfer = open_image_set(project.transfer, project.arrow_cache)
    folder = project.root / "features"
    layer = ("features", False)
    write_teacher_features(folder, project.model("teacher"), transfer, [layer], 2**30, torch.device("cpu"))
    array = folder / "features.output.npy"
    values = np.load(array)
    values[0, 0, 0, 0] = np.nan
    np.save(array, values)

    with pytest.raises(DataError, match=re.escape(f"{array}: 1 of {values.size:,} values are NaN or infinite "
                                                  f"(the first in row 0); rerun `dvc repro teacher_features`")):
        Teacher(project.model("teacher"), folder).attach([(layer, "key")], torch.device("cpu"), len(transfer))
    with pytest.raises(DataError, match=re.escape(f"{folder}: teacher features of {len(transfer)} images, the "
                                                  f"transfer set has {len(transfer) + 1}")):
        Teacher(project.model("teacher"), folder).attach([(layer, "key")], torch.device("cpu"), len(transfer) + 1)
