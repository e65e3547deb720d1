"""The `optimizer` section: OPTIMIZERS is the one table of optimizers. Each entry is the schema of one
torch.optim class's options (torch's defaults) and names that class; the schema, the factory
(pipelines/engine/optim.py), the error messages and docs/optimization.md all derive from it.

Weight decay is not among the options: it lives in `regularization`, coupled or decoupled."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.config.base import Section
from pipelines.config.tables import by_name, tagged_union

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class Optimizer(Section):
    torch_class: ClassVar[str]  # the torch.optim class these options are passed to
    name: str
    lr: float = Field(gt=0.0)


class SGDParams(Optimizer):
    torch_class = "SGD"
    name: Literal["sgd"]
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    dampening: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and (self.momentum == 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov: true needs momentum > 0 and dampening 0")
        return self


class AdagradParams(Optimizer):
    torch_class = "Adagrad"
    name: Literal["adagrad"]
    lr_decay: float = Field(default=0.0, ge=0.0)
    initial_accumulator_value: float = Field(default=0.0, ge=0.0)
    eps: float = Field(default=1e-10, gt=0.0)


class RMSpropParams(Optimizer):
    torch_class = "RMSprop"
    name: Literal["rmsprop"]
    alpha: float = Field(default=0.99, gt=0.0, lt=1.0)
    eps: float = Field(default=1e-8, gt=0.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    centered: bool = False


class _AdamOptions(Optimizer):  # the options Adam and AdamW share; each names itself
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)
    amsgrad: bool = False


class AdamParams(_AdamOptions):
    torch_class = "Adam"
    name: Literal["adam"]


class AdamWParams(_AdamOptions):
    """Adam with decoupled weight decay: the same options."""

    torch_class = "AdamW"
    name: Literal["adamw"]


class NAdamParams(Optimizer):
    torch_class = "NAdam"
    name: Literal["nadam"]
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)
    momentum_decay: float = Field(default=0.004, ge=0.0)


class RAdamParams(Optimizer):
    torch_class = "RAdam"
    name: Literal["radam"]
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)


OPTIMIZERS: dict[str, type[Optimizer]] = by_name(
    SGDParams, AdagradParams, RMSpropParams, AdamParams, AdamWParams, NAdamParams, RAdamParams
)
OptimizerParams = tagged_union(OPTIMIZERS)
