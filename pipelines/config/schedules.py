"""The `schedule` section: SCHEDULES is the one table of learning-rate schedules. Each entry is the schema
of one schedule's options, names its torch.optim.lr_scheduler class and says which arguments that class
gets; the factory (pipelines/engine/schedules.py), the error messages and docs/optimization.md derive
from it. Every length (step_size, milestones, period, warmup) counts in the schedule's `interval`:
epochs, or optimizer steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.config.base import Section
from pipelines.config.tables import by_name, tagged_union


class Schedule(Section):
    """What every schedule states: its name, when it steps, and an optional linear warmup before it."""

    torch_class: ClassVar[str]  # the torch.optim.lr_scheduler class
    name: str
    interval: Literal["epoch", "step"] = "epoch"
    warmup: int = Field(default=0, ge=0)  # intervals of linear warmup before the schedule starts
    warmup_start_factor: float = Field(default=0.1, gt=0.0, le=1.0)  # warmup starts at this fraction of lr

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        """The class's keyword arguments for a schedule over `length` intervals of an optimizer at `lr`."""
        raise NotImplementedError


TIMING_KEYS = ("interval", "warmup", "warmup_start_factor")


class ConstantSchedule(Schedule):
    torch_class = "ConstantLR"
    name: Literal["constant"]

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        return {"factor": 1.0, "total_iters": 0}


class StepSchedule(Schedule):
    torch_class = "StepLR"
    name: Literal["step"]
    step_size: int = Field(ge=1)
    gamma: float = Field(gt=0.0, le=1.0)

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class MultiStepSchedule(Schedule):
    torch_class = "MultiStepLR"
    name: Literal["multistep"]
    milestones: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    gamma: float = Field(gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _increasing(self) -> MultiStepSchedule:
        _check_increasing(self.milestones)
        return self

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        return {"milestones": self.milestones, "gamma": self.gamma}


class ExponentialSchedule(Schedule):
    torch_class = "ExponentialLR"
    name: Literal["exponential"]
    gamma: float = Field(gt=0.0, le=1.0)

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        return {"gamma": self.gamma}


class CosineSchedule(Schedule):
    torch_class = "CosineAnnealingLR"
    name: Literal["cosine"]
    min_lr: float = Field(default=0.0, ge=0.0)
    period: int | None = Field(default=None, ge=1)  # intervals from lr down to min_lr; default: the rest of training

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        return {"T_max": self.period or length, "eta_min": self.min_lr}


class CosineRestartsSchedule(Schedule):
    torch_class = "CosineAnnealingWarmRestarts"
    name: Literal["cosine_restarts"]
    period: int = Field(ge=1)  # length of the first cycle
    period_mult: int = Field(default=1, ge=1)  # each cycle is this many times longer than the one before
    min_lr: float = Field(default=0.0, ge=0.0)

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        return {"T_0": self.period, "T_mult": self.period_mult, "eta_min": self.min_lr}


class OneCycleSchedule(Schedule):
    torch_class = "OneCycleLR"
    name: Literal["onecycle"]
    max_lr: float | None = Field(default=None, gt=0.0)  # default: the optimizer's lr
    pct_start: float = Field(default=0.3, gt=0.0, lt=1.0)
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: float = Field(default=25.0, gt=0.0)
    final_div_factor: float = Field(default=1e4, gt=0.0)
    cycle_momentum: bool = False

    @model_validator(mode="after")
    def _no_warmup(self) -> OneCycleSchedule:
        if self.warmup:
            raise ValueError("onecycle has its own warmup (pct_start): use warmup: 0")
        return self

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        return {
            "max_lr": self.max_lr or lr, "total_steps": length, "pct_start": self.pct_start,
            "anneal_strategy": self.anneal_strategy, "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor, "cycle_momentum": self.cycle_momentum,
        }


class PlateauSchedule(Schedule):
    torch_class = "ReduceLROnPlateau"
    name: Literal["plateau"]
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    factor: float = Field(default=0.1, gt=0.0, lt=1.0)
    patience: int = Field(default=10, ge=0)
    threshold: float = Field(default=1e-4, ge=0.0)
    min_lr: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _per_epoch(self) -> PlateauSchedule:
        if self.interval != "epoch" or self.warmup:
            raise ValueError("plateau steps once per epoch on its metric: use interval: epoch and warmup: 0")
        return self

    def torch_kwargs(self, length: int, lr: float) -> dict[str, Any]:
        return {
            "mode": "min" if self.metric == "val_loss" else "max", "factor": self.factor,
            "patience": self.patience, "threshold": self.threshold, "min_lr": self.min_lr,
        }


# The schedules a sequence may chain: each runs for a span, and the next starts where it ended.
SEQUENCE_PARTS: dict[str, type[Schedule]] = by_name(
    ConstantSchedule, StepSchedule, MultiStepSchedule, ExponentialSchedule, CosineSchedule, CosineRestartsSchedule
)
if TYPE_CHECKING:  # to a type checker a part is a Schedule; pydantic picks its class by `name`
    SequencePart = Schedule
else:
    SequencePart = tagged_union(SEQUENCE_PARTS)


class SequenceSchedule(Schedule):
    """Schedules one after another: schedules[i + 1] takes over at milestones[i] (torch's SequentialLR)."""

    torch_class = "SequentialLR"
    name: Literal["sequence"]
    schedules: list[SequencePart] = Field(min_length=2)
    milestones: list[Annotated[int, Field(ge=1)]]

    @model_validator(mode="after")
    def _parts_fit(self) -> SequenceSchedule:
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(f"{len(self.schedules)} schedules need {len(self.schedules) - 1} milestones")
        _check_increasing(self.milestones)
        for index, part in enumerate(self.schedules):
            timing = [key for key in TIMING_KEYS if getattr(part, key) != Schedule.model_fields[key].default]
            if timing:
                raise ValueError(f"schedules[{index}]: {', '.join(timing)} belong to the sequence itself")
        return self


SCHEDULES: dict[str, type[Schedule]] = SEQUENCE_PARTS | by_name(OneCycleSchedule, PlateauSchedule, SequenceSchedule)
ScheduleParams = tagged_union(SCHEDULES)


def _check_increasing(milestones: list[int]) -> None:
    if milestones != sorted(set(milestones)):
        raise ValueError(f"milestones must be strictly increasing, got {milestones}")
