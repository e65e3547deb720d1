"""The `study` section: one model trained under many settings (python -m flows.study)."""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError

from pipelines.config.base import Section
from pipelines.config.optim import OptimizerParams
from pipelines.config.schedules import ScheduleParams
from pipelines.config.training import ModelParams, RegularizationParams, TrainingParams, TrainParams


class StudySetting(Section):
    """One named study setting: each section given here replaces that section of the base model's settings;
    `train_images` trains on part of the transfer set (a small training set, as a claim about one states it)."""

    model: ModelParams | None = None
    train: TrainParams | None = None
    optimizer: OptimizerParams | None = None
    schedule: ScheduleParams | None = None
    regularization: RegularizationParams | None = None
    # train on this many images of the transfer set, drawn at random with the seed (null: all of them)
    train_images: int | None = Field(default=None, ge=1)


class StudyGrid(Section):
    """Every combination of a named optimizer, a named schedule and a batch size is one setting."""

    optimizer: dict[str, OptimizerParams] = Field(min_length=1)
    schedule: dict[str, ScheduleParams] = Field(min_length=1)
    batch_size: list[Annotated[int, Field(ge=1)] | Literal["full"]] = Field(min_length=1)


class StudyParams(Section):
    model: Literal["teacher", "student"]  # whose section is the base of every setting
    target_accuracy: float = Field(gt=0.0, le=1.0)  # report the optimizer steps needed to reach it on val
    # and those needed for the training loss to fall below this (convergence where val accuracy stays short)
    target_train_loss: float = Field(gt=0.0)
    # every setting's epochs unless it gives its own train section (null: the model section's), so that the
    # study's budget does not move with the pipeline's
    epochs: int | None = Field(default=None, ge=1)
    grid: StudyGrid
    extra: dict[str, StudySetting] = {}

    def settings(self, base: TrainingParams) -> dict[str, TrainingParams]:
        """Every setting by name, starting from `base`: the grid's combinations, then the extra settings."""
        settings = {}
        if self.epochs is not None:
            base = base.model_copy(update={"train": base.train.model_copy(update={"epochs": self.epochs})})
        for (opt_name, optimizer), (schedule_name, schedule), batch_size in itertools.product(
            self.grid.optimizer.items(), self.grid.schedule.items(), self.grid.batch_size
        ):
            train = base.train.model_copy(update={"batch_size": batch_size})
            name = f"{opt_name}-{schedule_name}-batch_{batch_size}"
            settings[name] = replace_sections(f"study setting {name}", base, optimizer=optimizer, schedule=schedule,
                                              train=train)
        for name, setting in self.extra.items():
            given = {key: value for key, value in setting if isinstance(value, BaseModel)}  # the sections given
            settings[name] = replace_sections(f"study setting {name}", base, **given)
        return settings

    def train_images(self, name: str) -> int | None:
        """How many images of the transfer set setting `name` trains on (None: all of them)."""
        return self.extra[name].train_images if name in self.extra else None


def replace_sections(what: str, base: TrainingParams, **sections: BaseModel) -> TrainingParams:
    """`base` with whole sections replaced, validated again (so cross-section rules still hold)."""
    merged = base.model_dump() | {key: section.model_dump() for key, section in sections.items()}
    try:
        return TrainingParams.model_validate(merged)
    except ValidationError as error:
        problems = "; ".join(item["msg"].removeprefix("Value error, ") for item in error.errors())
        raise ValueError(f"{what}: invalid once merged into its base section: {problems}") from None
