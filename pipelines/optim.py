"""Optimizer and learning-rate schedule factories: a params name maps to a torch class in one table each."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LRScheduler, StepLR

from pipelines.config import OptimizerParams, ScheduleParams

# params `optimizer.name` -> torch.optim class; the remaining keys of that section are its keyword arguments.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}

# params `schedule.name` -> builder(optimizer, schedule params, epochs); every schedule steps once per epoch.
SCHEDULES: dict[str, Callable[[Optimizer, ScheduleParams, int], LRScheduler]] = {
    "constant": lambda optimizer, params, epochs: ConstantLR(optimizer, factor=1.0, total_iters=0),
    "step": lambda optimizer, params, epochs: StepLR(optimizer, step_size=params.step_size, gamma=params.gamma),
    "cosine": lambda optimizer, params, epochs: CosineAnnealingLR(optimizer, T_max=epochs, eta_min=params.min_lr),
}


def build_optimizer(model: nn.Module, params: OptimizerParams) -> Optimizer:
    options = params.model_dump(exclude={"name"})
    return OPTIMIZERS[params.name](model.parameters(), **options)


def build_schedule(optimizer: Optimizer, params: ScheduleParams, epochs: int) -> LRScheduler:
    return SCHEDULES[params.name](optimizer, params, epochs)
