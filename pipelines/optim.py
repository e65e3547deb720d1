"""Optimizer and learning-rate schedule factories: a params name maps to a torch class in one table each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim import lr_scheduler as schedulers

from pipelines.config import OptimizerParams, RegularizationParams, Schedule, ScheduleParams

# params `optimizer.name` -> torch.optim class; the other keys of that section are its keyword arguments.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}

# How each optimizer decays weights when `weight_decay_mode: decoupled`: torch's own AdamW rule
# (`weight_decay` of AdamW; a flag on Adam, NAdam, RAdam); SGD, Adagrad and RMSprop have no such option,
# so a step pre-hook applies the same rule, p <- p * (1 - lr * weight_decay), before each step.
DECOUPLED_NATIVELY = {"adamw"}
DECOUPLED_BY_FLAG = {"adam", "nadam", "radam"}


def parameter_groups(model: nn.Module, weight_decay: float, decay_bias_and_norm: bool) -> list[dict[str, Any]]:
    """Two groups: weights that decay, and biases/normalization parameters (1-d tensors) that do not, unless asked."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (decay if parameter.ndim > 1 or decay_bias_and_norm else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, params: OptimizerParams, regularization: RegularizationParams) -> Optimizer:
    """The torch optimizer named in params, with weight decay applied as `regularization` states."""
    groups = parameter_groups(model, regularization.weight_decay, regularization.decay_bias_and_norm)
    options = params.model_dump(exclude={"name"})
    # Each group carries its own weight_decay, which torch applies coupled (added to the gradient),
    # except AdamW's (decoupled); the schema refuses coupled decay for adamw.
    decoupled = regularization.weight_decay_mode == "decoupled"
    if decoupled and params.name in DECOUPLED_BY_FLAG:
        options["decoupled_weight_decay"] = True
    hooked = decoupled and params.name not in DECOUPLED_NATIVELY | DECOUPLED_BY_FLAG
    if hooked:
        for group in groups:
            group["decoupled_weight_decay"] = group.pop("weight_decay")
    optimizer = OPTIMIZERS[params.name](groups, **options)
    if hooked:
        optimizer.register_step_pre_hook(_decay_decoupled)
    return optimizer


@torch.no_grad()
def _decay_decoupled(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """AdamW's decoupled decay for optimizers without it: shrink the weights, leave the gradients alone."""
    for group in optimizer.param_groups:
        factor = 1.0 - group["lr"] * group["decoupled_weight_decay"]
        if factor != 1.0:
            torch._foreach_mul_([p for p in group["params"] if p.grad is not None], factor)


# params `schedule.name` -> builder(optimizer, schedule params, intervals the schedule covers).
SCHEDULES: dict[str, Callable[[Optimizer, Any, int], schedulers.LRScheduler]] = {
    "constant": lambda opt, p, length: schedulers.ConstantLR(opt, factor=1.0, total_iters=0),
    "step": lambda opt, p, length: schedulers.StepLR(opt, step_size=p.step_size, gamma=p.gamma),
    "multistep": lambda opt, p, length: schedulers.MultiStepLR(opt, milestones=p.milestones, gamma=p.gamma),
    "exponential": lambda opt, p, length: schedulers.ExponentialLR(opt, gamma=p.gamma),
    "cosine": lambda opt, p, length: schedulers.CosineAnnealingLR(opt, T_max=p.period or length, eta_min=p.min_lr),
    "cosine_restarts": lambda opt, p, length: schedulers.CosineAnnealingWarmRestarts(
        opt, T_0=p.period, T_mult=p.period_mult, eta_min=p.min_lr
    ),
    "onecycle": lambda opt, p, length: schedulers.OneCycleLR(
        opt, max_lr=p.max_lr or opt.param_groups[0]["lr"], total_steps=length, pct_start=p.pct_start,
        anneal_strategy=p.anneal_strategy, div_factor=p.div_factor, final_div_factor=p.final_div_factor,
        cycle_momentum=p.cycle_momentum,
    ),
    "plateau": lambda opt, p, length: schedulers.ReduceLROnPlateau(
        opt, mode="min" if p.metric == "val_loss" else "max", factor=p.factor, patience=p.patience,
        threshold=p.threshold, min_lr=p.min_lr,
    ),
    "sequence": lambda opt, p, length: _sequence(opt, p.schedules, p.milestones, length),
}


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
            self.scheduler.step(metrics[self.metric])
        elif self.interval == "epoch":
            self.scheduler.step()


def build_schedule(optimizer: Optimizer, params: ScheduleParams, epochs: int, steps_per_epoch: int) -> LRSchedule:
    """The schedule of params over the whole run, with its linear warmup prefix if any."""
    length = epochs if params.interval == "epoch" else epochs * steps_per_epoch
    if params.warmup:
        warmup = schedulers.LinearLR(optimizer, start_factor=params.warmup_start_factor, total_iters=params.warmup)
        rest = max(length - params.warmup, 1)
        if params.name == "sequence":
            # A SequentialLR cannot restart another one at a milestone: the warmup becomes the first part,
            # and the sequence's milestones (counted from the end of the warmup) shift by its length.
            parts = _sequence_parts(optimizer, params.schedules, params.milestones, rest)
            milestones = [params.warmup + milestone for milestone in [0, *params.milestones]]
            scheduler = schedulers.SequentialLR(optimizer, [warmup, *parts], milestones=milestones)
        else:
            main = SCHEDULES[params.name](optimizer, params, rest)
            scheduler = schedulers.SequentialLR(optimizer, [warmup, main], milestones=[params.warmup])
    else:
        scheduler = SCHEDULES[params.name](optimizer, params, length)
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
        scheduler = SCHEDULES[part.name](optimizer, part, span)
        scheduler.base_lrs = [lr * start_lr / base_lr for lr in scheduler.base_lrs]
        built.append(scheduler)
        start_lr = _lr_after(part, span, start_lr)
    return built


def _lr_after(part: Schedule, span: int, lr: float) -> float:
    """The learning rate a schedule part reaches after `span` intervals from `lr`, on a throwaway optimizer."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = SCHEDULES[part.name](probe, part, span)
    for _ in range(span):
        probe.step()
        scheduler.step()
    return probe.param_groups[0]["lr"]


def steps_per_epoch(examples: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps in one epoch: one per global batch, the last one dropped if a rank would get no row."""
    return len(range(0, examples - world_size + 1, batch_size))


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over the weights (tensors with more than one dim: not biases or normalization parameters)."""
    return sum(parameter.abs().sum() for parameter in model.parameters() if parameter.ndim > 1)

