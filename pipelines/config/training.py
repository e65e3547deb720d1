"""How one model is built and trained: the `teacher` and `student` sections (model, train, optimizer,
schedule, regularization). ARCHITECTURES is the one table of model architectures: the schema and the error
messages derive from it, and pipelines.models.BUILDERS gives the class that builds each of its kinds."""

from __future__ import annotations

import importlib.util
from typing import Annotated, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Section
from pipelines.config.data import TransformParams
from pipelines.config.distributed import ModelDistributedParams
from pipelines.config.optim import OptimizerParams
from pipelines.config.schedules import ScheduleParams


class Architecture(NamedTuple):
    form: str  # how `model.arch` spells it


ARCHITECTURES: dict[str, Architecture] = {
    "cnn": Architecture("cnn"),  # plain conv blocks
    "resnet": Architecture("resnet"),  # residual stages of basic blocks
    "timm": Architecture("timm:<model-name>"),  # any timm model (optional package)
    "mlp": Architecture("mlp"),  # plain fully connected layers, no residual connections
}
# How an mlp's hidden linear layers start (pipelines.models.mlp.INITIALIZERS): torch's own default, He et al.
# (2015) normal with the ReLU gain, or orthogonal (Saxe et al., 2014) with the ReLU gain.
Initialization = Literal["default", "kaiming", "orthogonal"]
# What follows each of an mlp's hidden linear layers before its ReLU (pipelines.models.mlp.NORMALIZATIONS).
Normalization = Literal["none", "batch", "layer"]
# Each cnn block (resnet stage) doubles the channels: 2**5 times the width is as far as they go.
MAX_CONV_DEPTH = 6


class ModelParams(Section):
    arch: str = "cnn"  # a form of ARCHITECTURES
    width: int = Field(ge=1)  # cnn, resnet and mlp (its hidden units), like depth
    depth: int = Field(ge=1)  # cnn: blocks, resnet: stages (each at most MAX_CONV_DEPTH); mlp: hidden layers
    dropout: float = Field(ge=0.0, lt=1.0)
    blocks_per_stage: int = Field(default=2, ge=1)  # resnet: basic blocks in each stage
    init: Initialization = "default"  # mlp only
    norm: Normalization = "none"  # mlp only

    @model_validator(mode="after")
    def _options_of_the_arch(self) -> ModelParams:
        if self.arch != "mlp" and self.depth > MAX_CONV_DEPTH:
            raise ValueError(f"depth {self.depth}: at most {MAX_CONV_DEPTH} for {self.arch} "
                             "(each block doubles the channels); only mlp goes deeper")
        if self.arch != "mlp" and (self.init, self.norm) != ("default", "none"):
            raise ValueError(f"init and norm are options of arch mlp, not {self.arch}: leave them out")
        return self

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        kind, colon, name = arch.partition(":")
        if kind in ARCHITECTURES and bool(colon) == (":" in ARCHITECTURES[kind].form) and (name or not colon):
            if kind == "timm":
                _check_timm_model(name)
            return arch
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(entry.form for entry in ARCHITECTURES.values())}")


def _check_timm_model(name: str) -> None:
    """Checked here, before any stage runs, rather than when training reaches the model."""
    if importlib.util.find_spec("timm") is None:
        raise ValueError(f"timm:{name} needs timm, which is not installed: pip install 'timm>=1.0' "
                         "(it needs torchvision)")
    import timm

    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; timm.list_models() lists them")


class TrainParams(Section):
    epochs: int = Field(ge=1)
    # An integer (mini-batch gradient descent) or "full" (batch gradient descent over the whole transfer set).
    batch_size: Annotated[int, Field(ge=1)] | Literal["full"]


class GradClipParams(Section):
    by: Literal["norm", "value"]  # clip the global L2 norm of all gradients, or each gradient element
    max: float = Field(gt=0.0)


class EarlyStoppingParams(Section):
    metric: Literal["val_loss", "val_accuracy"]
    patience: int = Field(ge=1)  # epochs without improvement before training stops
    min_delta: float = Field(default=0.0, ge=0.0)  # smaller changes do not count as improvement


class RegularizationParams(Section):
    weight_decay: float = Field(ge=0.0)
    # coupled: L2 added to the gradient (SGD-style); decoupled: weights shrink by lr * weight_decay each
    # step outside the gradient (AdamW-style).
    weight_decay_mode: Literal["coupled", "decoupled"]
    decay_bias_and_norm: bool = False  # also decay biases and normalization parameters
    l1: float = Field(default=0.0, ge=0.0)  # coefficient of an L1 penalty on the weights (not biases, not norms)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    grad_clip: GradClipParams | None = None
    ema_decay: float | None = Field(default=None, gt=0.0, lt=1.0)  # keep (and evaluate) an EMA of the weights
    early_stopping: EarlyStoppingParams | None = None


class TrainingParams(Section):
    """How one model is built and trained: the `teacher` and `student` sections."""

    model: ModelParams
    train: TrainParams
    optimizer: OptimizerParams
    schedule: ScheduleParams
    regularization: RegularizationParams
    distributed: ModelDistributedParams | None = None  # this model's changes to the `distributed` section
    # fresh augmented views of every image in every step, on the device (pipelines/engine/views.py); null: the
    # images as stored
    views: TransformParams | None = None

    @model_validator(mode="after")
    def _adamw_decays_decoupled(self) -> TrainingParams:
        coupled = self.regularization.weight_decay_mode == "coupled" and self.regularization.weight_decay > 0
        if self.optimizer.name == "adamw" and coupled:
            raise ValueError("adamw decays weights decoupled: use weight_decay_mode: decoupled, or adam for coupled L2")
        return self


# The sections of TrainingParams, each of which a distilled student may replace.
SECTIONS = tuple(TrainingParams.model_fields)
