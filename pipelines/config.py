"""The schema of params.yaml: every knob is validated here before any stage does work.

A bad file raises ParamsError whose message names each offending key path and what is allowed;
stage entry points turn it into exit code 2 before anything is written.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml (or an override of it) is invalid; the message is meant for the user as is."""


class Section(BaseModel):
    """A block of params.yaml: immutable, and an unknown key is an error that lists the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in cls.model_fields)
            if unknown:
                allowed = ", ".join(cls.model_fields)
                raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed keys here: {allowed}")
        return data


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


# --- data -----------------------------------------------------------------------------------------


class SplitParams(Section):
    train: Fraction
    val: Fraction
    test: Fraction

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class DataParams(Section):
    source: Literal["digits"]
    split: SplitParams


class AugmentParams(Section):
    copies: int = Field(ge=0)
    include_original: bool
    rotation_degrees: float = Field(ge=0.0, le=180.0)
    translate: float = Field(ge=0.0, le=0.5)
    scale: tuple[float, float]
    noise_std: float = Field(ge=0.0)
    cutout_probability: Probability
    cutout_size: int = Field(ge=1)
    horizontal_flip: bool
    batch_size: int = Field(ge=1)

    @model_validator(mode="after")
    def _scale_range(self) -> AugmentParams:
        low, high = self.scale
        if not 0.0 < low <= high:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {list(self.scale)}")
        if self.copies == 0 and not self.include_original:
            raise ValueError("copies is 0 and include_original is false: the transfer set would be empty")
        return self


# --- models and their training --------------------------------------------------------------------


class ModelParams(Section):
    width: int = Field(ge=1)
    depth: int = Field(ge=1, le=6)
    dropout: float = Field(ge=0.0, lt=1.0)


class TrainParams(Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)


class SGDParams(Section):
    name: Literal["sgd"]
    lr: float = Field(gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov: true needs momentum > 0")
        return self


class AdamParams(Section):
    name: Literal["adam"]
    lr: float = Field(gt=0.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)


OptimizerParams = Annotated[Union[SGDParams, AdamParams], Field(discriminator="name")]


class ConstantSchedule(Section):
    name: Literal["constant"]


class StepSchedule(Section):
    name: Literal["step"]
    step_size: int = Field(ge=1)
    gamma: float = Field(gt=0.0, le=1.0)


class CosineSchedule(Section):
    name: Literal["cosine"]
    min_lr: float = Field(0.0, ge=0.0)


ScheduleParams = Annotated[
    Union[ConstantSchedule, StepSchedule, CosineSchedule], Field(discriminator="name")
]


class TrainingParams(Section):
    """How one model is built and trained: the `teacher` and `student` sections."""

    model: ModelParams
    train: TrainParams
    optimizer: OptimizerParams
    schedule: ScheduleParams


class DistillParams(Section):
    method: Literal["hinton"]
    temperature: float = Field(gt=0.0)
    alpha: Probability
    train: TrainParams | None = None
    optimizer: OptimizerParams | None = None
    schedule: ScheduleParams | None = None


class EvaluateParams(Section):
    batch_size: int = Field(ge=1)
    calibration_bins: int = Field(ge=1)
    latency_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    latency_repeats: int = Field(ge=1)


class Params(Section):
    """The whole params.yaml."""

    seed: int = Field(ge=0)
    device: Literal["auto", "cpu", "cuda"]
    data: DataParams
    augment: AugmentParams
    teacher: TrainingParams
    student: TrainingParams
    distill: DistillParams
    evaluate: EvaluateParams

    def distill_training(self) -> TrainingParams:
        """The distilled student's settings: the student's, with whatever `distill` overrides."""
        overrides = {
            key: getattr(self.distill, key)
            for key in ("train", "optimizer", "schedule")
            if getattr(self.distill, key) is not None
        }
        return self.student.model_copy(update=overrides)


# --- loading --------------------------------------------------------------------------------------


def load_params(path: Path | str = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read, override (dotted keys) and validate a params file; raise ParamsError naming every bad key."""
    path = Path(path)
    raw = read_raw_params(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_params(raw, source=str(path))


def read_raw_params(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`, or ParamsError if the file is missing or not a mapping."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (seed, data, ...), got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with each dotted key (`teacher.train.epochs`) set to its value."""
    result = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = result
        for depth, key in enumerate(parents):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                prefix = ".".join(parents[: depth + 1])
                raise ParamsError(f"override {dotted}: {prefix} is a value, not a section")
            node = child
        node[leaf] = value
    return result


def validate_params(raw: dict[str, Any], source: str = str(PARAMS_FILE)) -> Params:
    """Validate a params mapping; ParamsError lists `key.path: problem (got value)` per error."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        lines = [f"{source}: invalid parameters"]
        for item in error.errors():
            path = _key_path(item["loc"], raw) or "(top level)"
            message = item["msg"].removeprefix("Value error, ")
            got = "" if item["type"] in ("missing", "value_error") else f" (got {item['input']!r})"
            lines.append(f"  {path}: {message}{got}")
        raise ParamsError("\n".join(lines)) from None


def _key_path(loc: tuple[Any, ...], raw: Any) -> str:
    """The dotted key path of a pydantic error location, without the union tags pydantic inserts."""
    parts: list[str] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and node.get("name") == part and part not in node:
            continue  # the tag of a discriminated union (e.g. 'sgd'), not a key of the file
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)

