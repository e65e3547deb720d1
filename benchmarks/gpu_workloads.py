"""The workloads of benchmarks/gpu_check.py: synthetic CIFAR-shaped data made in the process, a ResNet-18-sized
teacher and a distilled student (params' student, under Hinton's kd + ce loss on the stored transfer set, the
loss the tuned loop knows), each with what the engine trains it under (the objective its stage builds, from
params) and what the tuned loop trains it under (benchmarks/tuned_loop.py). The teacher's checkpoint and its
stored logits are written where the stages would write them (pipelines.core.paths.Paths), so the engine's
distillation objective reads them as the distill stage does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from benchmarks.tuned_loop import Criterion, cross_entropy, distillation_loss
from pipelines.config import Params, load_params
from pipelines.config.training import TrainingParams
from pipelines.core.paths import Paths
from pipelines.data.card import DatasetCard
from pipelines.data.images import ImageSet
from pipelines.data.logits import open_logits, write_logits
from pipelines.engine.checkpoint import load_model, save_checkpoint
from pipelines.engine.inference import predict_logits
from pipelines.engine.objective import CrossEntropy, Objective
from pipelines.engine.training import model_config
from pipelines.kd import build_objective
from pipelines.models import build_model


@dataclass(frozen=True)
class Sizes:
    """How much the check runs: the defaults are sized for at most 8 minutes on one GPU."""

    images: int = 10_000  # training images of each workload
    val_images: int = 2048
    side: int = 32  # images are 3 x side x side
    teacher_epochs: int = 2  # of each timed run
    student_epochs: int = 5
    repeats: int = 3
    batch_size: int | None = None  # None: params'
    teacher: tuple[int, int, int] = (64, 4, 2)  # resnet width, stages, blocks per stage: ResNet-18's size


WORKLOADS = ("teacher", "student_kd", "student_live")
# The students' loss, the teacher's logits stored or run live, on the images as stored (`student.views: null`
# below): what the tuned loop implements (the shipped student_kd adds views and function matching, which it does not).
HINTON = {"losses": [{"method": "kd", "weight": 0.9, "temperature": 8.0}, {"method": "ce", "weight": 0.1}]}
SMOKE = Sizes(images=64, val_images=32, side=8, teacher_epochs=1, student_epochs=1, repeats=1, batch_size=16,
              teacher=(4, 2, 1))


@dataclass
class Workload:
    """A model to train, its data, and how each side trains it."""

    name: str
    training: TrainingParams
    train_set: ImageSet
    val_set: ImageSet
    epochs: int  # of each timed run
    seed: int
    model: Callable[[], nn.Module]  # a fresh model, the same initial weights each time
    objective: Callable[[], Objective]  # the engine's objective, as the stage builds it
    criterion: Criterion  # the tuned loop's loss
    stored: torch.Tensor | None = None  # the stored teacher logits the tuned loop reads
    live_teacher: Callable[[], nn.Module] | None = None  # the teacher the tuned loop runs on each batch


def synthetic(images: int, classes: int, side: int, seed: int) -> ImageSet:
    """Random uint8 3 x `side` x `side` pixels and labels of `classes` classes."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (images,), generator=generator)
    pixels = torch.randint(256, (images, 3, side, side), dtype=torch.uint8, generator=generator)
    return ImageSet(pixels, labels, [f"class_{index}" for index in range(classes)])


def card(train_set: ImageSet) -> DatasetCard:
    """What `prepare` would record of the set: shape, classes and per-channel statistics."""
    pixels = train_set.images[:1000].float().div(255.0)
    mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).tolist()
    return DatasetCard("synthetic", train_set.class_names, train_set.image_shape, len(train_set.class_names),
                       mean, std, {})


def seeded(build: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    """`build`, called after seeding torch's generator: the same initial weights every time."""

    def model() -> nn.Module:
        torch.manual_seed(seed)
        return build()
    return model


def with_train(training: TrainingParams, epochs: int, batch_size: int | None) -> TrainingParams:
    train = training.train.model_copy(update={"epochs": epochs} | ({"batch_size": batch_size} if batch_size else {}))
    return training.model_copy(update={"train": train})


def kd_criterion(params: Params, student: str) -> Criterion:
    """The tuned loop's form of the student's loss: its kd and ce terms, with their weights and temperature."""
    terms = {term.method: term for term in params.distill[student].losses}
    if set(terms) != {"kd", "ce"} or len(params.distill[student].losses) != 2:
        raise ValueError(f"distill.{student}: the tuned loop knows a loss of one kd and one ce term")
    return distillation_loss(terms["kd"].weight, terms["kd"].options.get("temperature", 4.0), terms["ce"].weight)


def workloads(params_file: Path, sizes: Sizes, device: torch.device, folder: Path) -> list[Workload]:
    """The three workloads, with the teacher's checkpoint and stored logits written under `folder` as the
    pipeline's stages lay them out (pipelines.core.paths.Paths)."""
    width, depth, blocks = sizes.teacher
    params = load_params(params_file, {
        "device": device.type, "teacher.model.arch": "resnet", "teacher.model.width": width,
        "teacher.model.depth": depth, "teacher.model.blocks_per_stage": blocks, "student.views": None,
        "distill": {"student_kd": {**HINTON, "teacher": "stored"}, "student_live": {**HINTON, "teacher": "live"}}})
    paths, seed = Paths(folder), params.seed
    ten, hundred = (synthetic(sizes.images, classes, sizes.side, seed + classes) for classes in (10, 100))
    val_ten, val_hundred = (synthetic(sizes.val_images, classes, sizes.side, seed + 1 + classes)
                            for classes in (10, 100))
    teacher_config = model_config(params.teacher.model, card(hundred))
    teacher = seeded(partial(build_model, teacher_config), seed)()  # untrained: its speed is what counts
    save_checkpoint(paths.model("teacher"), teacher.state_dict(), teacher_config, {})
    with write_logits(paths.teacher_logits, len(hundred), 100) as stored:
        stored[:] = predict_logits(teacher.to(device), hundred.images, device).numpy()
    smoothing = params.teacher.regularization.label_smoothing
    found = [Workload("teacher", with_train(params.teacher, sizes.teacher_epochs, sizes.batch_size), ten, val_ten,
                      sizes.teacher_epochs, seed,
                      seeded(partial(build_model, model_config(params.teacher.model, card(ten))), seed),
                      partial(CrossEntropy, smoothing), cross_entropy(smoothing))]
    for name in ("student_kd", "student_live"):
        training = with_train(params.student_training(name), sizes.student_epochs, sizes.batch_size)
        found.append(Workload(
            name, training, hundred, val_hundred, sizes.student_epochs, seed,
            seeded(partial(build_model, model_config(training.model, card(hundred))), seed),
            partial(build_objective, name, params, paths), kd_criterion(params, name),
            stored=open_logits(paths.teacher_logits) if name == "student_kd" else None,
            live_teacher=partial(load_teacher, paths) if name == "student_live" else None))
    return found


def load_teacher(paths: Paths) -> nn.Module:
    """The teacher of the checkpoint, frozen, as the tuned loop runs it live."""
    return load_model(paths.model("teacher"))[0].requires_grad_(False)
