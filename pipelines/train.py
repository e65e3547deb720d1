"""The training loop shared by the teacher, the baseline student and the distilled student.

An epoch is a seeded permutation of row indices and a batch is a slice of it: the batch's images are
gathered from the (memory-mapped) set and moved to the device, so there is no per-sample Python work and
the dataset need not fit in memory. Under torchrun each rank gathers only its share of every global
batch and DDP averages the gradients; only the main rank logs and writes.
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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipelines.atomic import atomic_path
from pipelines.checkpoint import save_checkpoint
from pipelines.config import DistillParams, GradClipParams, Params, TrainingParams
from pipelines.data import ImageSet, open_image_set
from pipelines.early_stopping import EarlyStopping
from pipelines.losses import cross_entropy, hinton_kd_loss
from pipelines.models import build_model, count_parameters, model_config
from pipelines.optim import build_optimizer, build_schedule, l1_penalty, steps_per_epoch
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
) -> tuple[nn.Module, dict[str, float]]:
    """Train `model`; with `teacher_logits` (one row per training image) use the KD loss of `distill`.

    Returns the module to keep (the EMA of the weights when `ema_decay` is set, else `model`, restored to
    its best epoch under early stopping) and its final metrics. Logs the learning rate every step, and
    train loss, validation loss and accuracy every epoch, to dvclive in `log_dir` (written atomically).
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
    regularization = training.regularization
    epochs = training.train.epochs
    batch_size = len(train_set) if training.train.batch_size == "full" else training.train.batch_size
    steps = steps_per_epoch(len(train_set), batch_size, runtime.world_size)
    optimizer = build_optimizer(model, training.optimizer, regularization)
    schedule = build_schedule(optimizer, training.schedule, epochs, steps)
    ema = None
    if regularization.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(regularization.ema_decay), use_buffers=True)
    kept = ema.module if ema is not None else model  # the weights that are validated and saved
    stopper = EarlyStopping(regularization.early_stopping) if regularization.early_stopping else None

    mix_labels, mix_weights = train_set.columns.get("mix_label"), train_set.columns.get("mix_weight")
    # Every rank draws the same permutation, then takes its own slice of each global batch.
    order = torch.Generator().manual_seed(seed)

    with atomic_path(log_dir) if (log_dir and runtime.is_main) else nullcontext() as live_dir:
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) if live_dir else None
        started = time.perf_counter()
        step = 0
        for epoch in range(epochs):
            model.train()
            loss_sum = torch.zeros((), device=device)
            seen = torch.zeros((), device=device)
            permutation = torch.randperm(len(train_set), generator=order)
            for start in range(0, steps * batch_size, batch_size):
                rows = permutation[start : start + batch_size][runtime.rank :: runtime.world_size]
                logits = network(train_set.images[rows].to(device).float().div_(255.0))
                labels = train_set.labels[rows].to(device)
                mixed = {}
                if mix_labels is not None:
                    mixed = {"mix_labels": mix_labels[rows].to(device), "mix_weights": mix_weights[rows].to(device)}
                if teacher_logits is None:
                    loss = cross_entropy(logits, labels, regularization.label_smoothing, **mixed)
                else:
                    loss = hinton_kd_loss(
                        logits, teacher_logits[rows].to(device), labels, distill.temperature, distill.alpha,
                        regularization.label_smoothing, **mixed,
                    )
                objective = loss + regularization.l1 * l1_penalty(model) if regularization.l1 else loss
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                clip_gradients(model, regularization.grad_clip)
                if live:
                    live.step = step
                    live.log_metric("lr", optimizer.param_groups[0]["lr"])
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                schedule.after_step()
                loss_sum += loss.detach() * len(rows)
                seen += len(rows)
                step += 1

            if runtime.distributed:
                dist.all_reduce(loss_sum)
                dist.all_reduce(seen)
            # Every rank validates the same (identical) weights on the whole split: no gather needed.
            metrics = {"train_loss": (loss_sum / seen).item(), **validate(kept, val_set, device)}
            schedule.after_epoch(metrics)
            if live:
                live.step = step - 1  # epoch metrics sit at the epoch's last optimizer step
                live.log_metric("epoch", epoch + 1)
                for name, value in metrics.items():
                    live.log_metric(name, value)
            if runtime.is_main:
                summary = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
                log.info("epoch %d/%d step %d %s", epoch + 1, epochs, step, summary)
            if stopper is not None and stopper.update(metrics[stopper.params.metric], kept):
                log.info("early stopping after epoch %d: best %s %.4f at epoch %d", epoch + 1,
                         stopper.params.metric, stopper.best_value, stopper.best_epoch + 1)
                break

        result = {"epochs": epoch + 1, "steps": step, **metrics}
        if stopper is not None and stopper.best_state is not None:  # None: the metric was never a number
            kept.load_state_dict(stopper.best_state)
            result |= {"best_epoch": stopper.best_epoch + 1, **validate(kept, val_set, device)}
        if live:
            live.summary.update(result)
            live.log_metric("train_seconds", time.perf_counter() - started, plot=False)
            live.end()
    return kept, result


def clip_gradients(model: nn.Module, clip: GradClipParams | None) -> None:
    """Clip in place, after backward (and DDP's all-reduce) and before the step."""
    if clip is None:
        return
    if clip.by == "norm":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip.max)
    else:
        torch.nn.utils.clip_grad_value_(model.parameters(), clip.max)


def validate(model: nn.Module, val_set: ImageSet, device: torch.device) -> dict[str, float]:
    """Validation loss and accuracy of `model` on the whole split."""
    logits = predict_logits(model, val_set.images, device)
    return {
        "val_loss": F.cross_entropy(logits, val_set.labels).item(),
        "val_accuracy": (logits.argmax(1) == val_set.labels).float().mean().item(),
    }


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
    transfer = open_image_set(paths.transfer, paths.arrow_cache)
    val = open_image_set(paths.split("val"), paths.arrow_cache)
    torch.manual_seed(params.seed)
    config = model_config(training.model, card)
    model = build_model(config)
    log.info(
        "%s: %d parameters, %d training images, device %s x %d",
        name, count_parameters(model), len(transfer), runtime.device, runtime.world_size,
    )
    distill = params.distill if teacher_logits is not None else None
    kept, metrics = fit(
        model, transfer, val, training, runtime, params.seed, paths.training_log(name), teacher_logits, distill
    )
    if runtime.is_main:
        save_checkpoint(paths.model(name), kept, config, metrics)
    shutdown(runtime)
    return metrics
