"""The training loop shared by the teacher, the baseline student, every distilled student and the study.

`fit` trains a model under an Objective (pipelines/engine/objective.py), which turns each batch into the
loss: the loop itself knows nothing of labels, teachers or distillation. An epoch is a seeded permutation
of row indices and a batch is a slice of it: the batch's images are gathered from the (memory-mapped) set
and moved to the device, so there is no per-sample Python work and the dataset need not fit in memory.
How a step's gradient is computed on the processes (each rank its share of the global batch under DDP or
FSDP, the batch flowing through the ranks' layers under a pipeline) is pipelines/engine/parallel.py's; only
the main rank logs and writes. With `resume`, the whole training state is saved as it goes and a rerun
continues from it (pipelines/engine/resume.py).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from collections.abc import Callable
from pathlib import Path

import torch
from dvclive import Live
from torch import nn

from pipelines.config.distributed import DistributedParams
from pipelines.config.training import TrainingParams
from pipelines.core.atomic import atomic_path
from pipelines.data.images import ImageSet
from pipelines.engine.divergence import DivergenceWatch
from pipelines.engine.early_stopping import EarlyStopping
from pipelines.engine.ema import WeightAverage
from pipelines.engine.objective import Batch, Objective
from pipelines.engine.optim import add_l1_gradient, build_optimizer
from pipelines.engine.parallel import parallelize
from pipelines.engine.resume import Progress, Resume, TrainedState
from pipelines.engine.runtime import Runtime
from pipelines.engine.schedules import build_schedule

log = logging.getLogger(__name__)


def fit(
    model: nn.Module,
    train_set: ImageSet,
    val_set: ImageSet,
    objective: Objective,
    training: TrainingParams,
    runtime: Runtime,
    seed: int,
    log_dir: Path | None = None,
    distributed: DistributedParams = DistributedParams(),
    resume: Resume | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Train `model` to minimize `objective` on `train_set`, validating on `val_set` every epoch.

    Returns `model` holding the weights to keep (the EMA of the weights when `ema_decay` is set, restored to
    its best epoch under early stopping) and their final metrics. Logs the learning rate every step, and the
    train loss (with the objective's terms), validation loss and accuracy every epoch, to dvclive in
    `log_dir` (written atomically). `distributed` says how several processes share the work and how many
    micro-batches (`grad_accum_steps`) make one optimizer step; the batch size is the global one either way.
    """
    device = runtime.device
    # Under FSDP or a pipeline on several processes the model (and a live teacher) stays in host memory until
    # `fully_shard` moves each block to the device as it shards it, or the pipeline moves this rank's layers:
    # a model larger than one device is never whole on one.
    if not (runtime.distributed and distributed.strategy in ("fsdp", "pipeline")):
        model.to(device)
    if runtime.speed.channels_last:
        # nn.Module.to takes memory_format (torch's overloads of it leave the keyword out)
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    objective.setup(model, train_set)
    objective.to(device)
    parallel = parallelize(model, objective, runtime, distributed)
    regularization = training.regularization
    epochs = training.train.epochs
    batch_size = len(train_set) if training.train.batch_size == "full" else training.train.batch_size
    steps = parallel.steps_per_epoch(train_set, batch_size)
    optimizer = build_optimizer(parallel.trained, training.optimizer, regularization)
    scale_learning_rate(optimizer, distributed.lr_scaling, parallel.batch_shares)  # before the schedule reads it
    schedule = build_schedule(optimizer, training.schedule, epochs, steps)
    # The EMA and early stopping read the weights this process holds (the model, its shards, its stage's layers).
    ema = WeightAverage(parallel.held, regularization.ema_decay) if regularization.ema_decay is not None else None
    stopper = EarlyStopping(regularization.early_stopping, parallel.held) if regularization.early_stopping else None
    divergence = DivergenceWatch(parallel.held, runtime)  # a non-finite loss or weight stops the run

    batch_of = batch_source(train_set, runtime)
    # Every rank draws the same permutation, then takes its part of each global batch.
    order = torch.Generator().manual_seed(seed)
    progress = Progress(order=order.get_state())
    sums: dict[str, torch.Tensor | float] = {}  # per loss term: sum over the epoch's images, then its count
    # What a resumable run saves and loads with DCP (pipelines/engine/resume.py): the trained modules with
    # their optimizer, the EMA weights and early stopping's best ones; besides them, the progress and each
    # rank's RNG states and sums.
    state = {"trained": TrainedState(parallel.checkpointed, optimizer),
             **({"ema": ema} if ema is not None else {}),
             **({"best": stopper.best_state} if stopper is not None else {})}
    saved = resume.latest() if resume is not None else None
    if saved is not None:
        assert resume is not None  # it found `saved`
        progress, sums = resume.load(saved, state, parallel.loss_rank)
        schedule.scheduler.load_state_dict(progress.schedule)
        if stopper is not None:
            vars(stopper).update(progress.early_stopping)

    def save() -> None:
        assert resume is not None  # saving is for a resumable run
        progress.schedule = schedule.scheduler.state_dict()
        progress.early_stopping = stopper.counters() if stopper else {}
        resume.save(state, progress, sums, live_dir)

    with atomic_path(log_dir) if (log_dir and runtime.is_main) else nullcontext() as live_dir:
        if saved is not None and live_dir is not None:
            assert resume is not None  # it found `saved`
            resume.restore_log(saved, live_dir)
        live = None
        if live_dir:
            live = Live(dir=str(live_dir), resume=saved is not None, save_dvc_exp=False, dvcyaml=None, report=None)
        started, images_seen = time.perf_counter(), 0
        step, metrics = progress.step, progress.metrics
        # (A run that early stopping had ended when it was saved has no epoch left.)
        for epoch in range(progress.epoch, progress.epoch if progress.stopped else epochs):
            model.train()
            objective.train()
            assert progress.order is not None  # every Progress of a run records it
            order.set_state(progress.order)
            permutation = torch.randperm(len(train_set), generator=order)
            for start in range(progress.batch * batch_size, steps * batch_size, batch_size):
                optimizer.zero_grad(set_to_none=True)
                step_rows = permutation[start : start + batch_size]
                images_seen += len(step_rows)
                for count, loss, terms in parallel.backward(step_rows, batch_of):
                    for name, value in {"loss": loss, **terms}.items():
                        sums[name] = sums.get(name, 0.0) + value.detach() * count
                    sums["count"] = sums.get("count", 0.0) + count
                divergence.watch(step + 1, sums.get("loss"), optimizer.param_groups[0]["lr"])
                if regularization.l1:
                    add_l1_gradient(parallel.held, regularization.l1)
                parallel.clip_gradients(regularization.grad_clip)
                if live:
                    live.step = step
                    live.log_metric("lr", optimizer.param_groups[0]["lr"])
                optimizer.step()
                if ema is not None:
                    ema.update()
                schedule.after_step()
                step += 1
                progress.batch, progress.step = progress.batch + 1, step
                if resume is not None and resume.due(step) and progress.batch < steps:
                    divergence.check(epoch)  # a diverged state is never saved
                    save()

            divergence.check(epoch)  # (before the epoch's save too)
            metrics = {f"train_{name}": value for name, value in parallel.epoch_means(sums).items()}
            sums = {}
            with ema.applied() if ema is not None else nullcontext():  # the weights kept are validated
                metrics |= parallel.validate(model, val_set)
                stop = stopper is not None and stopper.update(metrics[stopper.params.metric])
            schedule.after_epoch(metrics)
            if live:
                live.step = step - 1  # epoch metrics sit at the epoch's last optimizer step
                live.log_metric("epoch", epoch + 1)
                for name, metric in metrics.items():
                    live.log_metric(name, metric)
            if runtime.is_main:
                summary = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
                log.info("epoch %d/%d step %d %s", epoch + 1, epochs, step, summary)
            progress = Progress(epoch=epoch + 1, step=step, order=order.get_state(), metrics=metrics, stopped=stop)
            if resume is not None:
                save()
            if stop:
                assert stopper is not None  # only early stopping stops
                log.info("early stopping after epoch %d: best %s %.4f at epoch %d", epoch + 1,
                         stopper.params.metric, stopper.best_value, stopper.best_epoch + 1)
                break

        result = {"epochs": progress.epoch, "steps": step, **metrics}
        if ema is not None:
            ema.copy_to_model()
        if stopper is not None and stopper.best_epoch >= 0:  # -1: the metric was never a number
            parallel.held.load_state_dict(stopper.best_state)
            result |= {"best_epoch": stopper.best_epoch + 1, **parallel.validate(model, val_set)}
        parallel.gather()
        objective.teardown()
        if live:
            live.summary.update(result)
            seconds = time.perf_counter() - started
            live.log_metric("train_seconds", seconds, plot=False)
            live.log_metric("train_images_per_second", images_seen / seconds, plot=False)
            if device.type == "cuda":
                live.log_metric("peak_gpu_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, plot=False)
            live.end()
    return model, result


def batch_source(train_set: ImageSet, runtime: Runtime) -> Callable[[torch.Tensor], Batch]:
    """The function that makes the batch of some rows of `train_set` on the runtime's device. Pixels are
    gathered from the (memory-mapped) set, pinned and copied without blocking, or, when `speed.data_on_device`
    applies and they fit, gathered on the device from a copy made once."""
    device, speed = runtime.device, runtime.speed
    pixels: torch.Tensor | None = None
    if speed.data_on_device and _fits_on_device(train_set, runtime):
        pixels = torch.empty(train_set.images.shape, dtype=torch.uint8, device=device)
        for start in range(0, len(train_set), 4096):  # in chunks: the host never holds a second whole copy
            pixels[start : start + 4096] = train_set.images[start : start + 4096].to(device)
        log.info("the training set's pixels stay on %s (%.2f GiB)", device, pixels.numel() / 2**30)
    mix_labels, mix_weights = train_set.columns.get("mix_label"), train_set.columns.get("mix_weight")
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format

    def batch_of(rows: torch.Tensor) -> Batch:
        if pixels is not None:
            images = pixels[rows.to(device)]
        else:
            gathered = train_set.images[rows]
            images = (gathered.pin_memory() if speed.pin_memory else gathered).to(device, non_blocking=speed.pin_memory)
        return Batch(
            images=images.float().div_(255.0).contiguous(memory_format=memory_format),
            labels=train_set.labels[rows].to(device),
            rows=rows,
            mix_labels=None if mix_labels is None else mix_labels[rows].to(device),
            mix_weights=None if mix_weights is None else mix_weights[rows].to(device),
        )

    return batch_of


def _fits_on_device(train_set: ImageSet, runtime: Runtime) -> bool:
    free, _ = torch.cuda.mem_get_info(runtime.device)
    return math.prod(train_set.images.shape) <= runtime.speed.data_on_device_max_share * free


def scale_learning_rate(optimizer: torch.optim.Optimizer, scaling: str, world_size: int) -> None:
    """`distributed.lr_scaling`: the learning rate times the number of processes sharing out each batch
    (`world_size`; 1 for a pipeline's stages) (linear, Goyal et al. 2017) or its square root (sqrt); none
    leaves it as the optimizer section says."""
    factor = {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[scaling]
    for group in optimizer.param_groups:
        group["lr"] *= factor
