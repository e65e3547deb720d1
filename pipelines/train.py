"""The training loop shared by the teacher, the baseline student and the distilled student.

Data stays as tensors on the device: an epoch is a seeded permutation of row indices, and a batch is a
slice of it, so there is no per-sample Python work. Under torchrun each rank takes its share of every
global batch and DDP averages the gradients; only the main rank logs and writes.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dvclive import Live
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.atomic import atomic_path
from pipelines.checkpoint import save_checkpoint
from pipelines.config import DistillParams, Params, TrainingParams
from pipelines.data import ImageSet, read_image_set
from pipelines.losses import hinton_kd_loss
from pipelines.models import build_model, count_parameters, model_config
from pipelines.optim import build_optimizer, build_schedule
from pipelines.paths import Paths
from pipelines.predict import predict_logits
from pipelines.runtime import Runtime, init_runtime, shutdown

log = logging.getLogger(__name__)


def fit(
    model: nn.Module,
    train_set: ImageSet,
    val_set: ImageSet,
    training: TrainingParams,
    runtime: Runtime,
    seed: int,
    log_dir: Path | None = None,
    teacher_logits: torch.Tensor | None = None,
    distill: DistillParams | None = None,
) -> dict[str, float]:
    """Train `model` in place; with `teacher_logits` (one row per training image) use the KD loss of `distill`.

    Logs train loss, validation loss and accuracy and the learning rate per epoch to dvclive in `log_dir`
    (written atomically at the end) and returns the final epoch's metrics.
    """
    if (teacher_logits is None) != (distill is None):
        raise ValueError("teacher_logits and distill go together")
    if teacher_logits is not None and len(teacher_logits) != len(train_set):
        raise ValueError(f"{len(teacher_logits)} teacher logits for {len(train_set)} training images")

    device = runtime.device
    model.to(device)
    network = model
    if runtime.distributed:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, training.optimizer)
    schedule = build_schedule(optimizer, training.schedule, training.train.epochs)

    images, labels = train_set.images.to(device), train_set.labels.to(device)
    soft_targets = teacher_logits.to(device) if teacher_logits is not None else None
    batch_size = training.train.batch_size
    # Every rank draws the same permutation, then takes its own slice of each global batch. A last batch
    # too small to give every rank a row is dropped: all ranks must take part in every step.
    order = torch.Generator().manual_seed(seed)
    batch_starts = range(0, len(images) - runtime.world_size + 1, batch_size)

    with atomic_path(log_dir) if (log_dir and runtime.is_main) else nullcontext() as live_dir:
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) if live_dir else None
        started = time.perf_counter()
        for epoch in range(training.train.epochs):
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            loss_sum = torch.zeros((), device=device)
            seen = torch.zeros((), device=device)
            permutation = torch.randperm(len(images), generator=order).to(device)
            for start in batch_starts:
                rows = permutation[start : start + batch_size][runtime.rank :: runtime.world_size]
                x = images[rows].float().div_(255.0)
                logits = network(x)
                if soft_targets is None:
                    loss = F.cross_entropy(logits, labels[rows])
                else:
                    loss = hinton_kd_loss(
                        logits, soft_targets[rows], labels[rows], distill.temperature, distill.alpha
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(rows)
                seen += len(rows)
            schedule.step()

            if runtime.distributed:
                dist.all_reduce(loss_sum)
                dist.all_reduce(seen)
            # Every rank validates the same (identical) weights on the whole split: no gather needed.
            val_logits = predict_logits(model, val_set.images, device)
            metrics = {
                "train_loss": (loss_sum / seen).item(),
                "val_loss": F.cross_entropy(val_logits, val_set.labels).item(),
                "val_accuracy": (val_logits.argmax(1) == val_set.labels).float().mean().item(),
            }
            if live:
                for name, value in metrics.items():
                    live.log_metric(name, value)
                live.log_metric("lr", lr)
                live.next_step()
            if runtime.is_main:
                summary = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
                log.info("epoch %d/%d lr %.4g %s", epoch + 1, training.train.epochs, lr, summary)
        if live:
            live.log_metric("train_seconds", time.perf_counter() - started, plot=False)
            live.end()
    return {"epochs": training.train.epochs, **metrics}


def train_and_save(
    name: str,
    training: TrainingParams,
    params: Params,
    paths: Paths,
    teacher_logits: torch.Tensor | None = None,
) -> dict[str, float]:
    """A training stage: build model `name` for the prepared data, fit it on the transfer set, save it."""
    runtime = init_runtime(params.device)
    card = json.loads(paths.card.read_text())
    transfer = read_image_set(paths.transfer)
    val = read_image_set(paths.split("val"))
    torch.manual_seed(params.seed)
    config = model_config(training.model, card)
    model = build_model(config)
    log.info(
        "%s: %d parameters, %d training images, device %s x %d",
        name, count_parameters(model), len(transfer), runtime.device, runtime.world_size,
    )
    distill = params.distill if teacher_logits is not None else None
    metrics = fit(
        model, transfer, val, training, runtime, params.seed, paths.training_log(name), teacher_logits, distill
    )
    if runtime.is_main:
        save_checkpoint(paths.model(name), model, config, metrics)
    shutdown(runtime)
    return metrics
