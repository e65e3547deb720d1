"""The learning-rate schedule of a training run: the torch.optim.lr_scheduler class that
pipelines.config.schedules.SCHEDULES names for `schedule.name`, with its optional linear warmup, stepped
after every optimizer step or every epoch as the schedule's `interval` says."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as schedulers

from pipelines.config.schedules import Schedule, SequenceSchedule


def _build(optimizer: Optimizer, params: Schedule, length: int) -> schedulers.LRScheduler:
    """The torch scheduler of one schedule (a sequence: its parts chained) over `length` intervals."""
    if params.name == "sequence":
        assert isinstance(params, SequenceSchedule)  # the schema that name selects
        return _sequence(optimizer, params.schedules, params.milestones, length)
    lr = optimizer.param_groups[0]["lr"]
    return getattr(schedulers, params.torch_class)(optimizer, **params.torch_kwargs(length, lr))


@dataclass
class LRSchedule:
    """A torch scheduler and when to step it: after every optimizer step, or after every epoch."""

    scheduler: schedulers.LRScheduler
    interval: str
    metric: str | None = None  # plateau: the validation metric it watches

    def after_step(self) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        if self.metric is not None:
            assert isinstance(self.scheduler, schedulers.ReduceLROnPlateau)  # the one schedule with a metric
            self.scheduler.step(metrics[self.metric])
        elif self.interval == "epoch":
            self.scheduler.step()


def build_schedule(optimizer: Optimizer, params: Schedule, epochs: int, steps_per_epoch: int) -> LRSchedule:
    """The schedule of params over the whole run, with its linear warmup prefix if any."""
    length = epochs if params.interval == "epoch" else epochs * steps_per_epoch
    if params.warmup:
        warmup = schedulers.LinearLR(optimizer, start_factor=params.warmup_start_factor, total_iters=params.warmup)
        rest = max(length - params.warmup, 1)
        if params.name == "sequence":
            assert isinstance(params, SequenceSchedule)  # the schema that name selects
            # A SequentialLR cannot restart another one at a milestone: the warmup becomes the first part,
            # and the sequence's milestones (counted from the end of the warmup) shift by its length.
            parts = _sequence_parts(optimizer, params.schedules, params.milestones, rest)
            milestones = [params.warmup + milestone for milestone in [0, *params.milestones]]
            scheduler: schedulers.LRScheduler = schedulers.SequentialLR(optimizer, [warmup, *parts],
                                                                        milestones=milestones)
        else:
            main = _build(optimizer, params, rest)
            scheduler = schedulers.SequentialLR(optimizer, [warmup, main], milestones=[params.warmup])
    else:
        scheduler = _build(optimizer, params, length)
    return LRSchedule(scheduler, params.interval, getattr(params, "metric", None))


def _sequence(
    optimizer: Optimizer, parts: list[Schedule], milestones: list[int], length: int
) -> schedulers.SequentialLR:
    """SequentialLR over the parts; each part's default length is the span until the next milestone."""
    built = _sequence_parts(optimizer, parts, milestones, length)
    return schedulers.SequentialLR(optimizer, built, milestones=milestones)


def _sequence_parts(
    optimizer: Optimizer, parts: list[Schedule], milestones: list[int], length: int
) -> list[schedulers.LRScheduler]:
    """The parts of a sequence, each over its span, each starting at the learning rate where the part
    before it ended ("cosine, then a small decay" continues from the cosine's end; torch's SequentialLR
    alone would restart every part from the optimizer's lr)."""
    bounds = [0, *milestones, max(length, milestones[-1] + 1)]
    base_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    start_lr = base_lr
    built = []
    for index, part in enumerate(parts):
        span = bounds[index + 1] - bounds[index]
        scheduler = _build(optimizer, part, span)
        scheduler.base_lrs = [lr * start_lr / base_lr for lr in scheduler.base_lrs]
        built.append(scheduler)
        start_lr = _lr_after(part, span, start_lr)
    return built


def _lr_after(part: Schedule, span: int, lr: float) -> float:
    """The learning rate a schedule part reaches after `span` intervals from `lr`, on a throwaway optimizer."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = _build(probe, part, span)
    for _ in range(span):
        probe.step()
        scheduler.step()
    return probe.param_groups[0]["lr"]


def steps_per_epoch(examples: int, batch_size: int, world_size: int, whole_batches: bool = False) -> int:
    """Optimizer steps in one epoch: one per global batch, the last one dropped if a rank would get no row, or,
    with `whole_batches` (a compiled model's static shapes), if it is not a whole batch."""
    if whole_batches:
        return examples // batch_size
    return len(range(0, examples - world_size + 1, batch_size))


