"""Training stages on tiny data: checkpoints, dvclive logs, determinism, teacher logits, distillation.

The optimizer and schedule factories are specified in test_optim.py, regularization in test_regularization.py.
"""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import SHIPPED_PARAMS, STORED_KD, TINY_OVERRIDES, read_image_set
from pipelines.augment import augment
from pipelines.engine.checkpoint import load_model
from pipelines.config import load_params
from pipelines.data.images import ImageSet, open_image_set
from pipelines.distill import distill
from pipelines.engine.training import model_config
from pipelines.models import ModelConfig, build_model, count_parameters
from pipelines.engine.schedules import steps_per_epoch
from pipelines.core.errors import DataError
from pipelines.core.paths import Paths
from pipelines.engine.inference import predict_logits
from pipelines.prepare import prepare
from pipelines.data.card import DatasetCard, read_card
from pipelines.engine.objective import Batch, CrossEntropy, Objective
from pipelines.engine.runtime import Runtime
from pipelines.teacher_logits import teacher_logits
from pipelines.engine.loop import fit
from pipelines.train_teacher import train_teacher

CPU = torch.device("cpu")
DIGITS_CARD = DatasetCard("digits", [str(digit) for digit in range(10)], (1, 8, 8), 10, [0.3], [0.4], {})


def copy_inputs(source: Paths, target: Paths) -> None:
    """The prepared splits, card and transfer set of `source`, copied under `target` (no models, no logits)."""
    shutil.copytree(source.prepared, target.prepared)
    shutil.copytree(source.transfer.parent, target.transfer.parent)


def read_tsv(path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


# --- train_teacher ---------------------------------------------------------------------------------


def test_train_teacher_writes_a_weights_only_checkpoint_with_state_dict_config_and_metrics(trained_pipeline):
    params, paths = trained_pipeline
    checkpoint = torch.load(paths.model("teacher"), map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"state_dict", "model_config", "metrics"}
    config = checkpoint["model_config"]
    assert (config["width"], config["depth"]) == (params.teacher.model.width, params.teacher.model.depth)
    assert config["num_classes"] == 10 and config["in_channels"] == 1 and config["image_size"] == [8, 8]
    model = build_model(ModelConfig.from_dict(config))
    model.load_state_dict(checkpoint["state_dict"])  # strict: every key and shape matches
    assert checkpoint["metrics"]["epochs"] == params.teacher.train.epochs
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(checkpoint["metrics"])


def test_checkpoint_metrics_describe_the_saved_weights(trained_pipeline):
    _, paths = trained_pipeline
    model, checkpoint = load_model(paths.model("teacher"))
    val = read_image_set(paths.split("val"))
    logits = predict_logits(model, val.images, CPU)
    accuracy = float((logits.argmax(1) == val.labels).float().mean())
    assert accuracy == pytest.approx(checkpoint.metrics["val_accuracy"], abs=1e-6)
    loss = float(nn.functional.cross_entropy(logits, val.labels))
    assert loss == pytest.approx(checkpoint.metrics["val_loss"], rel=1e-5)


def teacher_steps_per_epoch(params, paths: Paths) -> int:
    return steps_per_epoch(len(read_image_set(paths.transfer)), params.teacher.train.batch_size, world_size=1)


def test_training_log_is_a_dvclive_folder_with_an_lr_row_per_step_and_a_metric_row_per_epoch(trained_pipeline):
    params, paths = trained_pipeline
    log_dir = paths.training_log("teacher")
    assert log_dir == paths.root / "metrics" / "train" / "teacher"
    summary = json.loads((log_dir / "metrics.json").read_text())
    _, checkpoint = load_model(paths.model("teacher"))
    for name in ("train_loss", "val_loss", "val_accuracy"):
        assert summary[name] == pytest.approx(checkpoint.metrics[name])
    steps, epochs = teacher_steps_per_epoch(params, paths), params.teacher.train.epochs
    assert steps > 1 and checkpoint.metrics["steps"] == epochs * steps
    plots = log_dir / "plots" / "metrics"
    # The learning rate of every optimizer step; epoch metrics at each epoch's last step.
    lr_rows = read_tsv(plots / "lr.tsv")
    assert [int(row["step"]) for row in lr_rows] == list(range(epochs * steps))
    for name in ("val_accuracy", "train_loss"):
        rows = read_tsv(plots / f"{name}.tsv")
        assert [int(row["step"]) for row in rows] == [(epoch + 1) * steps - 1 for epoch in range(epochs)]
    assert float(lr_rows[0]["lr"]) == pytest.approx(params.teacher.optimizer.lr)


def test_training_lowers_the_loss_over_three_epochs_on_the_cosine_schedule(trained_pipeline, tmp_path):
    _, shared = trained_pipeline
    paths = Paths(tmp_path)
    copy_inputs(shared, paths)
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "teacher.train.epochs": 3})
    train_teacher(params, paths)
    plots = paths.training_log("teacher") / "plots" / "metrics"
    losses = [float(row["train_loss"]) for row in read_tsv(plots / "train_loss.tsv")]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    # The shipped teacher schedule is a per-epoch cosine: every step of epoch k logs
    # min + (lr - min) * (1 + cos(pi k / E)) / 2.
    assert params.teacher.schedule.interval == "epoch" and params.teacher.schedule.warmup == 0
    steps = teacher_steps_per_epoch(params, paths)
    lr, min_lr = params.teacher.optimizer.lr, params.teacher.schedule.min_lr
    expected = [min_lr + (lr - min_lr) * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3) for _ in range(steps)]
    assert [float(row["lr"]) for row in read_tsv(plots / "lr.tsv")] == pytest.approx(expected)


def test_the_same_params_train_bit_identical_weights_and_metrics(trained_pipeline, tmp_path):
    params, shared = trained_pipeline
    paths = Paths(tmp_path)
    copy_inputs(shared, paths)
    metrics = train_teacher(params, paths)
    first = torch.load(shared.model("teacher"), weights_only=True)
    second = torch.load(paths.model("teacher"), weights_only=True)
    assert second["metrics"] == first["metrics"] == metrics
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name
    for name in ("train_loss", "val_accuracy", "lr"):
        plot = f"plots/metrics/{name}.tsv"
        assert (paths.training_log("teacher") / plot).read_text() == (shared.training_log("teacher") / plot).read_text()


# --- teacher_logits and distill --------------------------------------------------------------------


def test_teacher_logits_are_the_teachers_outputs_one_row_per_transfer_image(trained_pipeline):
    _, paths = trained_pipeline
    stored = np.load(paths.teacher_logits)
    transfer = read_image_set(paths.transfer)
    assert stored.dtype == np.float32
    assert stored.shape == (len(transfer), 10)
    teacher, _ = load_model(paths.model("teacher"))
    expected = predict_logits(teacher, transfer.images, CPU, batch_size=256)
    assert torch.allclose(torch.from_numpy(stored), expected, atol=1e-5)


def test_teacher_logits_stage_returns_what_it_writes(trained_pipeline, tmp_path):
    params, shared = trained_pipeline
    paths = Paths(tmp_path)
    copy_inputs(shared, paths)
    paths.model("teacher").parent.mkdir(parents=True)
    shutil.copy2(shared.model("teacher"), paths.model("teacher"))
    returned = teacher_logits(params, paths)
    assert np.array_equal(returned.numpy(), np.load(paths.teacher_logits))


def test_distill_trains_the_student_from_the_stored_logits_not_the_labels(trained_pipeline, tmp_path):
    _, shared = trained_pipeline
    paths = Paths(tmp_path)
    copy_inputs(shared, paths)
    transfer_count = len(read_image_set(paths.transfer))
    # Stored "teacher" logits that put every image in class 3, whatever its label.
    fake = np.zeros((transfer_count, 10), np.float32)
    fake[:, 3] = 20.0
    paths.teacher_logits.parent.mkdir(parents=True)
    np.save(paths.teacher_logits, fake)
    params = load_params(
        SHIPPED_PARAMS,
        {**TINY_OVERRIDES, **STORED_KD, "distill.student_kd.losses": [{"method": "kd", "temperature": 4.0}],
         "distill.student_kd.train": {"epochs": 3, "batch_size": 128}},
    )

    metrics = distill(params, paths)["student_kd"]

    student, checkpoint = load_model(paths.model("student_kd"))
    assert checkpoint.metrics == metrics and metrics["epochs"] == 3
    assert (checkpoint.model_config.width, checkpoint.model_config.depth) == (
        params.student.model.width, params.student.model.depth)
    val = read_image_set(paths.split("val"))
    predictions = predict_logits(student, val.images, CPU).argmax(1)
    assert float((val.labels == 3).float().mean()) < 0.2  # the labels say class 3 is one digit in ten
    assert float((predictions == 3).float().mean()) > 0.9  # the student learned the stored logits instead


def test_distill_refuses_logits_whose_row_count_does_not_match_the_transfer_set(trained_pipeline, tmp_path):
    _, shared = trained_pipeline
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, **STORED_KD})
    paths = Paths(tmp_path)
    copy_inputs(shared, paths)
    stored = np.load(shared.teacher_logits)
    paths.teacher_logits.parent.mkdir(parents=True)
    np.save(paths.teacher_logits, stored[:-1])

    with pytest.raises(DataError, match=f"the stored teacher logits are {len(stored) - 1} rows of 10 classes, the "
                                        f"transfer set {len(stored)} images of 10"):
        distill(params, paths)
    assert not paths.model("student_kd").exists()
    assert not paths.training_log("student_kd").exists()


# --- model sizes -----------------------------------------------------------------------------------


def test_shipped_student_has_at_most_a_tenth_of_the_teachers_parameters():
    params = load_params(SHIPPED_PARAMS)
    teacher = build_model(model_config(params.teacher.model, DIGITS_CARD))
    student = build_model(model_config(params.student.model, DIGITS_CARD))
    assert count_parameters(student) * 10 <= count_parameters(teacher)
    for model in (teacher, student):
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


# --- memory-mapped data and mixed labels -------------------------------------------------------------


def fit_linear(train_set: ImageSet, val_set: ImageSet) -> dict[str, torch.Tensor]:
    """The weights of a small linear model after two epochs of the shipped student settings on `train_set`, its
    images as stored (no fresh views)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    training = load_params(SHIPPED_PARAMS, {"student.train.epochs": 2, "student.views": None}).student
    objective = CrossEntropy(training.regularization.label_smoothing)
    return fit(model, train_set, val_set, objective, training, Runtime(CPU, 0, 1), seed=0).model.state_dict()


def test_training_from_the_memory_mapped_files_equals_training_from_tensors(trained_pipeline, tmp_path):
    _, paths = trained_pipeline
    mapped = fit_linear(open_image_set(paths.transfer, tmp_path), open_image_set(paths.split("val"), tmp_path))
    in_memory = fit_linear(read_image_set(paths.transfer), read_image_set(paths.split("val")))
    assert all(torch.equal(mapped[name], in_memory[name]) for name in mapped)


def test_a_row_mixed_wholly_with_another_label_trains_as_if_it_had_that_label(trained_pipeline):
    _, paths = trained_pipeline
    transfer, val = read_image_set(paths.transfer), read_image_set(paths.split("val"))
    other = (transfer.labels + 1) % 10
    relabelled = ImageSet(transfer.images, other, transfer.class_names)
    mixed = ImageSet(transfer.images, transfer.labels, transfer.class_names,
                     {"mix_label": other, "mix_weight": torch.zeros(len(transfer))})
    half = ImageSet(transfer.images, transfer.labels, transfer.class_names,
                    {"mix_label": other, "mix_weight": torch.full((len(transfer),), 0.5)})
    by_mix, by_label, by_half = fit_linear(mixed, val), fit_linear(relabelled, val), fit_linear(half, val)
    assert all(torch.allclose(by_mix[name], by_label[name], atol=1e-6) for name in by_mix)
    assert not torch.allclose(by_half["1.weight"], by_label["1.weight"], atol=1e-3)


def test_teacher_and_distilled_student_train_on_a_cutmix_transfer_set(tmp_path):
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, **STORED_KD, "augment.mix.cutmix_alpha": 1.0})
    paths = Paths(tmp_path)
    for stage in (prepare, augment, train_teacher, teacher_logits, distill):
        stage(params, paths)
    logits = np.load(paths.teacher_logits)
    transfer = read_image_set(paths.transfer)
    assert len(logits) == len(transfer) and (transfer.columns["mix_weight"] < 1).any()
    _, checkpoint = load_model(paths.model("student_kd"))
    assert math.isfinite(checkpoint.metrics["train_loss"])


class LearnedTemperature(Objective):
    """Cross-entropy of logits divided by a temperature the objective learns itself: a parameter of the
    objective's own, like a feature adapter of a distillation method."""

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.seen_model: nn.Module | None = None

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        self.seen_model = model

    def forward(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scaled = model(batch.images) / self.log_temperature.exp()
        loss = nn.functional.cross_entropy(scaled, batch.labels)
        return loss, {"temperature": self.log_temperature.exp().detach()}


def test_the_loop_trains_the_objective_s_own_parameters_and_logs_its_terms(trained_pipeline, tmp_path):
    _, paths = trained_pipeline
    train_set = open_image_set(paths.transfer, paths.arrow_cache)
    training = load_params(SHIPPED_PARAMS, TINY_OVERRIDES).student
    torch.manual_seed(0)
    model = build_model(model_config(training.model, read_card(paths.card)))
    objective = LearnedTemperature()

    metrics = fit(model, train_set, train_set, objective, training, Runtime(CPU), seed=0,
                  log_dir=tmp_path / "log").metrics

    assert objective.seen_model is model
    assert objective.log_temperature.item() != 0.0  # the optimizer stepped it
    assert metrics["train_temperature"] > 0.0 and metrics["train_temperature"] != 1.0  # the epoch's mean term
    logged = json.loads((tmp_path / "log" / "metrics.json").read_text())
    assert logged["train_temperature"] == pytest.approx(metrics["train_temperature"])
