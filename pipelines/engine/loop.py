"""The training loop shared by the teacher, the baseline student, every distilled student and the study.

`fit` trains a model under an Objective (pipelines/engine/objective.py), which turns each batch into the
loss: the loop itself knows nothing of labels, teachers or distillation. An epoch is a seeded permutation
of row indices and a batch is a slice of it: the batch's images are gathered from the (memory-mapped) set
and moved to the device (the next step's gathered meanwhile, pipelines/engine/batches.py), so there is no
per-sample Python work and the dataset need not fit in memory.
How the model lies on the processes and how a step's gradient is computed on them is the strategy's
(pipelines/engine/strategies/); what a resumable run saves and loads is pipelines/engine/resume/'s; the
EMA, early stopping and the training log have do-nothing stand-ins when they are off, so the loop below
reads the same whatever is on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.config.distributed import DistributedParams
from pipelines.config.training import TrainingParams
from pipelines.data.images import ImageSet
from pipelines.engine.batches import BatchSource
from pipelines.engine.divergence import DivergenceWatch
from pipelines.engine.early_stopping import early_stopping
from pipelines.engine.inference import ValidationSplit
from pipelines.engine.ema import weight_average
from pipelines.engine.objective import Objective
from pipelines.engine.optim import add_l1_gradient, build_optimizer
from pipelines.engine.resume import NoResume, Progress, Resume, TrainingState
from pipelines.engine.runtime import Runtime
from pipelines.engine.schedules import build_schedule
from pipelines.engine.strategies import build_strategy
from pipelines.engine.strategies.base import StateDict, StepTerms, Strategy
from pipelines.engine.training_log import open_training_log
from pipelines.engine.views import fresh_views

log = logging.getLogger(__name__)


@dataclass
class Trained:
    """What `fit` returns: the model (holding the weights to keep on the main process), its final metrics, and
    the whole state dicts of the model and of the objective (what it learned itself), on the main process."""

    model: nn.Module
    metrics: dict[str, float]
    state_dict: StateDict
    objective_state_dict: StateDict


def fit(model: nn.Module, train_set: ImageSet, val_set: ImageSet, objective: Objective, training: TrainingParams,
        runtime: Runtime, seed: int, log_dir: Path | None = None, distributed: DistributedParams = DistributedParams(),
        resume: Resume | NoResume = NoResume()) -> Trained:
    """Train `model` to minimize `objective` on `train_set` as `training` says, validating on `val_set` every
    epoch, on the processes as `distributed` says (docs/architecture.md); log to dvclive in `log_dir`."""
    regularization, epochs, speed = training.regularization, training.train.epochs, runtime.speed
    batch_size = len(train_set) if training.train.batch_size == "full" else training.train.batch_size
    strategy = build_strategy(runtime, distributed)
    layout = strategy.prepare(model, objective, train_set, batch_size)
    optimizer = build_optimizer(layout.trained, training.optimizer, regularization, speed.optimizer_implementation)
    scale_learning_rate(optimizer, distributed.lr_scaling, layout.batch_shares)  # before the schedule reads it
    schedule = build_schedule(optimizer, training.schedule, epochs, layout.steps_per_epoch)
    ema = weight_average(layout.held, regularization.ema_decay)  # each a stand-in that does nothing when off
    stopper = early_stopping(regularization.early_stopping, layout.held)
    divergence = DivergenceWatch(layout.held, runtime)  # a non-finite loss or weight stops the run
    state = TrainingState(layout.saved, optimizer, schedule, ema, stopper)
    progress, sums = resume.start(state, Progress.first(seed), layout.loss_rank)
    source, validation = BatchSource(train_set, runtime), ValidationSplit(val_set, runtime)
    views = fresh_views(source, train_set, training.views, seed, runtime)
    with resume.saving(), open_training_log(log_dir, runtime, epochs, resume.history, layout.steps_per_epoch,
                                            progress.step) as training_log:
        for epoch in progress.epochs_left(epochs):
            model.train()
            objective.train()
            batch_of = views.of_epoch(epoch)  # each image in a fresh view, or as stored when views are off
            permutation, next_order = progress.permutation(len(train_set), source.rows_device)  # (see `batches`)
            for step_rows in batches(permutation, progress.batch, layout.steps_per_epoch, batch_size, source, strategy):
                optimizer.zero_grad(set_to_none=True)
                add_to_sums(sums, strategy.backward(step_rows, batch_of))
                divergence.watch(progress.step + 1, sums.get("loss"), optimizer.param_groups[0]["lr"])
                add_l1_gradient(layout.held, regularization.l1)
                strategy.clip_gradients(regularization.grad_clip)
                training_log.step(progress.step, step_rows.shape[0], optimizer.param_groups[0]["lr"])
                optimizer.step()
                ema.update()
                schedule.after_step()
                progress.batch, progress.step = progress.batch + 1, progress.step + 1
                if resume.due(progress.step) and progress.batch < layout.steps_per_epoch:
                    divergence.check(epoch)  # a diverged state is never saved
                    resume.save(state, progress, sums, training_log.history)
            divergence.check(epoch)
            metrics, sums = {f"train_{name}": value for name, value in strategy.epoch_means(sums).items()}, {}
            with ema.applied():  # the weights kept are validated
                metrics |= strategy.validate(model, validation)
                stop = stopper.after_epoch(metrics)
            schedule.after_epoch(metrics)
            training_log.epoch(epoch, progress.step, metrics)
            progress = Progress(epoch + 1, 0, progress.step, next_order, metrics=metrics, stopped=stop)
            resume.end_of_epoch(state, progress, sums, training_log.history)
            if stop:
                break
        result = {"epochs": progress.epoch, "steps": progress.step, **progress.metrics}
        ema.copy_to_model()
        if stopper.best_epoch >= 0:  # early stopping's best epoch (-1: none, or the metric was never a number)
            layout.held.load_state_dict(stopper.best_state)
            result |= {"best_epoch": stopper.best_epoch + 1, **strategy.validate(model, validation)}
        state_dict, objective_state_dict = strategy.state_dicts()
        objective.teardown()
        training_log.end(result)
    return Trained(model, result, state_dict, objective_state_dict)


def batches(permutation: torch.Tensor, first: int, steps: int, batch_size: int, source: BatchSource,
            strategy: Strategy) -> Iterator[torch.Tensor]:
    """The rows of each step of the epoch's `permutation` (the same on every rank, beside the pixels: on the
    GPU when they are, so a step copies no rows), from step `first` to `steps` (with compile, the last partial
    batch is left out); the rows this process reads of the next step are handed to `source` to gather
    meanwhile."""
    end = steps * batch_size
    for start in range(first * batch_size, end, batch_size):
        if source.prefetching:
            source.ahead(strategy.reads(permutation[start + batch_size : min(start + 2 * batch_size, end)]))
        yield permutation[start : start + batch_size]


def add_to_sums(sums: dict[str, torch.Tensor | float], micro_batches: Iterator[StepTerms]) -> None:
    """Add each micro-batch's loss and terms, weighted by its images, and their count, to the epoch's `sums` (in
    place after the first: one op per term and step)."""
    for count, loss, terms in micro_batches:
        for name, value in {"loss": loss, **terms}.items():
            total = sums.get(name)
            if isinstance(total, torch.Tensor):
                total.add_(value.detach(), alpha=count)
            else:
                sums[name] = value.detach() * count + (total or 0.0)
        sums["count"] = sums.get("count", 0.0) + count


def scale_learning_rate(optimizer: torch.optim.Optimizer, scaling: str, world_size: int) -> None:
    """`distributed.lr_scaling`: the learning rate times the number of processes sharing out each batch
    (`world_size`; 1 for a pipeline's stages) (linear, Goyal et al. 2017) or its square root (sqrt); none
    leaves it as the optimizer section says."""
    factor = {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[scaling]
    for group in optimizer.param_groups:
        group["lr"] *= factor
