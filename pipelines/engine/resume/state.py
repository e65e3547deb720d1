"""What a resumable save holds of a run (besides each rank's RNG states and its share of the epoch's loss
sums): the trained modules and their optimizer, the EMA of the weights, early stopping's best weights and
counters, the learning-rate schedule, and the `Progress` (epoch, step, the data order). `TrainingState` hands
them to DCP as `Stateful` objects and plain values, and puts the loaded ones back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from pipelines.engine.early_stopping import EarlyStopping, NoEarlyStopping
from pipelines.engine.ema import NoAverage, WeightAverage
from pipelines.engine.schedules import LRSchedule


@dataclass
class Progress:
    """Where a run stands, besides its weights and optimizer: what a resumed run continues from."""

    epoch: int = 0  # the epoch in progress (the next one after an epoch end)
    batch: int = 0  # optimizer steps already taken in that epoch
    step: int = 0  # optimizer steps taken in all
    # the data order's generator state at the start of epoch `epoch`
    order: torch.Tensor = field(default_factory=lambda: torch.Generator().get_state())
    schedule: dict[str, Any] = field(default_factory=dict)  # the torch scheduler's state_dict
    early_stopping: dict[str, Any] = field(default_factory=dict)  # EarlyStopping's counters
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's metrics
    stopped: bool = False  # early stopping ended the run at this epoch end

    @classmethod
    def first(cls, seed: int) -> Progress:
        """A run's start: its data order drawn from `seed`."""
        return cls(order=torch.Generator().manual_seed(seed).get_state())

    def permutation(self, rows: int, device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch `epoch`'s order of `rows` rows, drawn from `order` (on the CPU) and put on `device`, and the
        generator's state after it: the next epoch's `order`."""
        generator = torch.Generator()
        generator.set_state(self.order)
        return torch.randperm(rows, generator=generator).to(device), generator.get_state()

    def epochs_left(self, epochs: int) -> range:
        """The epochs still to train of `epochs` (none once early stopping has ended the run)."""
        return range(self.epoch, self.epoch if self.stopped else epochs)


class TrainedState:
    """The trained modules and their optimizer as DCP's `Stateful`: get_state_dict / set_state_dict give
    each rank its own shards (FSDP) or layers (a pipeline stage) under the whole model's names, the
    optimizer's state flattened to one entry per parameter, so that another split of the model finds its own.
    DCP is imported by the first save or load (pipelines/engine/resume/saves.py says why)."""

    def __init__(self, trained: nn.Module, optimizer: Optimizer) -> None:
        self.trained, self.optimizer = trained, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model, optimizer = get_state_dict(self.trained, self.optimizer,
                                          options=StateDictOptions(flatten_optimizer_state_dict=True))
        return {"model": model, "optimizer": optimizer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(self.trained, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=StateDictOptions(flatten_optimizer_state_dict=True))


class TrainingState:
    """Everything of a run that a save holds and a resumed run loads back (see the module's doc). `saved` is
    the strategy's `Layout.saved`: what this process holds of the model and the objective."""

    def __init__(self, saved: nn.Module, optimizer: Optimizer, schedule: LRSchedule,
                 ema: WeightAverage | NoAverage, stopper: EarlyStopping | NoEarlyStopping) -> None:
        self.schedule, self.stopper = schedule, stopper
        self.stateful: dict[str, Any] = {"trained": TrainedState(saved, optimizer), **ema.saved(), **stopper.saved()}

    def to_save(self, progress: Progress) -> dict[str, Any]:
        """What DCP saves: the stateful parts, and `progress` with the schedule's and early stopping's state."""
        progress.schedule = self.schedule.scheduler.state_dict()
        progress.early_stopping = self.stopper.counters()
        return {**self.stateful, "progress": progress}

    def to_load(self) -> dict[str, Any]:
        """What DCP loads into, in place (the progress is replaced by the saved one)."""
        return {**self.stateful, "progress": Progress()}

    def restore(self, progress: Progress) -> None:
        """Put back what the loaded `progress` holds of the schedule and of early stopping."""
        self.schedule.scheduler.load_state_dict(progress.schedule)
        self.stopper.load_counters(progress.early_stopping)
