"""The schema of params.yaml: every knob is validated here before any stage does work.

A bad file raises ParamsError whose message names each offending key path and what is allowed;
stage entry points turn it into exit code 2 before anything is written.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")
SOURCE_FORMS = (
    "digits", "imagefolder:<dir>", "npz:<file>", "parquet:<file or s3://bucket/key>",
    f"torchvision:<{'|'.join(TORCHVISION_DATASETS)}>",
)


class ParquetColumns(Section):
    image: str = "image"  # encoded PNG/JPEG bytes, Arrow fixed-shape tensors, or pixel lists (uint8) with a shape
    label: str = "label"  # integer or string labels
    shape: str = "shape"  # per-row [C, H, W] of list images (else the file's image_shape metadata)


class NpzKeys(Section):
    x: str = "x"  # images: [N, H, W], [N, H, W, C] or [N, C, H, W] with C 1 or 3; uint8, or floats in [0, 1]
    y: str = "y"  # integer labels [N]


class NormalizeParams(Section):
    """Per-channel input normalization of every model; null computes it from the training split."""

    mean: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = None  # on the [0, 1] pixel scale
    std: list[Annotated[float, Field(gt=0.0)]] | None = None

    @model_validator(mode="after")
    def _together(self) -> NormalizeParams:
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std)):
            raise ValueError("mean and std go together, one value per channel each")
        return self


class DataParams(Section):
    source: str
    split: SplitParams  # for the splits the source does not fix (split folders, an official test set)
    batch_size: int = Field(1024, ge=1)  # images prepare reads, converts and writes at a time: bounds its memory
    download_dir: str = "~/.cache/distill-pipeline"  # where torchvision:<Name> finds or downloads its files
    resize: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None  # [height, width]
    npz_keys: NpzKeys = NpzKeys()
    parquet_columns: ParquetColumns = ParquetColumns()
    normalize: NormalizeParams = NormalizeParams()

    @field_validator("source")
    @classmethod
    def _known_form(cls, source: str) -> str:
        kind, _, location = source.partition(":")
        if source == "digits" or (kind in ("imagefolder", "npz", "parquet") and location):
            return source
        if kind == "torchvision" and location in TORCHVISION_DATASETS:
            return source
        raise ValueError(f"unknown data source {source!r}; valid forms: {', '.join(SOURCE_FORMS)}")


class ColorJitterParams(Section):
    """Each factor is drawn per image, uniform in [1 - x, 1 + x]; 0 leaves that property alone."""

    brightness: float = Field(0.0, ge=0.0, lt=1.0)
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    saturation: float = Field(0.0, ge=0.0, lt=1.0)  # needs 3-channel (RGB) images


class RandomResizedCropParams(Section):
    """Crop a random region (a share `scale` of the area, width/height `ratio`) and resize it to the full image."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _ranges(self) -> RandomResizedCropParams:
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 1, got {list(self.scale)}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be [low, high] with 0 < low <= high, got {list(self.ratio)}")
        return self


class MixParams(Section):
    """Mixup and CutMix on the augmented copies: an image is blended with (mixup) or gets a box pasted from
    (cutmix) another image of its batch, and keeps both labels, weighted by each image's share of the pixels."""

    mixup_alpha: float = Field(0.0, ge=0.0)  # the mixing share is drawn from Beta(alpha, alpha); 0 is off
    cutmix_alpha: float = Field(0.0, ge=0.0)  # the share outside the pasted box, likewise; 0 is off
    probability: Probability = 1.0  # share of the augmented images that are mixed
    switch_probability: Probability = 0.5  # with both on: the chance that an image gets cutmix, else mixup

    @property
    def enabled(self) -> bool:
        return self.probability > 0.0 and (self.mixup_alpha > 0.0 or self.cutmix_alpha > 0.0)


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
    color_jitter: ColorJitterParams = ColorJitterParams()
    random_resized_crop: RandomResizedCropParams | None = None
    mix: MixParams = MixParams()
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


ARCHS = ("cnn", "resnet", "timm:<model-name>")


class ModelParams(Section):
    arch: str = "cnn"  # cnn | resnet | timm:<model-name> (needs the optional timm package)
    width: int = Field(ge=1)  # cnn and resnet only, like depth and blocks_per_stage
    depth: int = Field(ge=1, le=6)
    dropout: float = Field(ge=0.0, lt=1.0)
    blocks_per_stage: int = Field(2, ge=1)  # resnet: basic blocks in each stage

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        kind, _, name = arch.partition(":")
        if arch in ("cnn", "resnet"):
            return arch
        if kind != "timm" or not name:
            raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
        # Checked here, before any stage runs, rather than when training reaches the model.
        if importlib.util.find_spec("timm") is None:
            raise ValueError(f"{arch} needs timm, which is not installed: pip install 'timm>=1.0' (it needs torchvision)")
        import timm

        if not timm.is_model(name):
            raise ValueError(f"timm has no model {name!r}; timm.list_models() lists them")
        return arch


class TrainParams(Section):
    epochs: int = Field(ge=1)
    # An integer (mini-batch gradient descent) or "full" (batch gradient descent over the whole transfer set).
    batch_size: Annotated[int, Field(ge=1)] | Literal["full"]


# Optimizers: `name` picks the torch.optim class (pipelines/optim.py); the other keys are its options,
# with torch's defaults. Weight decay is not among them: it lives in `regularization`, coupled or decoupled.

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class SGDParams(Section):
    name: Literal["sgd"]
    lr: float = Field(gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    dampening: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and (self.momentum == 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov: true needs momentum > 0 and dampening 0")
        return self


class AdagradParams(Section):
    name: Literal["adagrad"]
    lr: float = Field(gt=0.0)
    lr_decay: float = Field(0.0, ge=0.0)
    initial_accumulator_value: float = Field(0.0, ge=0.0)
    eps: float = Field(1e-10, gt=0.0)


class RMSpropParams(Section):
    name: Literal["rmsprop"]
    lr: float = Field(gt=0.0)
    alpha: float = Field(0.99, gt=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    centered: bool = False


class AdamParams(Section):
    """adam and adamw (Adam with decoupled weight decay) share their options."""

    name: Literal["adam", "adamw"]
    lr: float = Field(gt=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    amsgrad: bool = False


class NAdamParams(Section):
    name: Literal["nadam"]
    lr: float = Field(gt=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    momentum_decay: float = Field(0.004, ge=0.0)


class RAdamParams(Section):
    name: Literal["radam"]
    lr: float = Field(gt=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)


OptimizerParams = Annotated[
    Union[SGDParams, AdagradParams, RMSpropParams, AdamParams, NAdamParams, RAdamParams],
    Field(discriminator="name"),
]


# Learning-rate schedules: `name` picks a torch.optim.lr_scheduler class. Every length (step_size,
# milestones, period, warmup) counts in the schedule's `interval`: epochs, or optimizer steps.


class Schedule(Section):
    """What every schedule states: its name, when it steps, and an optional linear warmup before it."""

    name: str
    interval: Literal["epoch", "step"] = "epoch"
    warmup: int = Field(0, ge=0)  # intervals of linear warmup before the schedule starts
    warmup_start_factor: float = Field(0.1, gt=0.0, le=1.0)  # warmup starts at this fraction of lr


TIMING_KEYS = ("interval", "warmup", "warmup_start_factor")


class ConstantSchedule(Schedule):
    name: Literal["constant"]


class StepSchedule(Schedule):
    name: Literal["step"]
    step_size: int = Field(ge=1)
    gamma: float = Field(gt=0.0, le=1.0)


class MultiStepSchedule(Schedule):
    name: Literal["multistep"]
    milestones: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    gamma: float = Field(gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _increasing(self) -> MultiStepSchedule:
        _check_increasing(self.milestones)
        return self


class ExponentialSchedule(Schedule):
    name: Literal["exponential"]
    gamma: float = Field(gt=0.0, le=1.0)


class CosineSchedule(Schedule):
    name: Literal["cosine"]
    min_lr: float = Field(0.0, ge=0.0)
    period: int | None = Field(None, ge=1)  # intervals from lr down to min_lr; default: the rest of training


class CosineRestartsSchedule(Schedule):
    name: Literal["cosine_restarts"]
    period: int = Field(ge=1)  # length of the first cycle
    period_mult: int = Field(1, ge=1)  # each cycle is this many times longer than the one before
    min_lr: float = Field(0.0, ge=0.0)


class OneCycleSchedule(Schedule):
    name: Literal["onecycle"]
    max_lr: float | None = Field(None, gt=0.0)  # default: the optimizer's lr
    pct_start: float = Field(0.3, gt=0.0, lt=1.0)
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: float = Field(25.0, gt=0.0)
    final_div_factor: float = Field(1e4, gt=0.0)
    cycle_momentum: bool = False

    @model_validator(mode="after")
    def _no_warmup(self) -> OneCycleSchedule:
        if self.warmup:
            raise ValueError("onecycle has its own warmup (pct_start): use warmup: 0")
        return self


class PlateauSchedule(Schedule):
    name: Literal["plateau"]
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    patience: int = Field(10, ge=0)
    threshold: float = Field(1e-4, ge=0.0)
    min_lr: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _per_epoch(self) -> PlateauSchedule:
        if self.interval != "epoch" or self.warmup:
            raise ValueError("plateau steps once per epoch on its metric: use interval: epoch and warmup: 0")
        return self


SequencePart = Annotated[
    Union[
        ConstantSchedule, StepSchedule, MultiStepSchedule, ExponentialSchedule,
        CosineSchedule, CosineRestartsSchedule,
    ],
    Field(discriminator="name"),
]


class SequenceSchedule(Schedule):
    """Schedules one after another: schedules[i + 1] takes over at milestones[i] (torch's SequentialLR)."""

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


ScheduleParams = Annotated[
    Union[
        ConstantSchedule, StepSchedule, MultiStepSchedule, ExponentialSchedule, CosineSchedule,
        CosineRestartsSchedule, OneCycleSchedule, PlateauSchedule, SequenceSchedule,
    ],
    Field(discriminator="name"),
]


def _check_increasing(milestones: list[int]) -> None:
    if milestones != sorted(set(milestones)):
        raise ValueError(f"milestones must be strictly increasing, got {milestones}")


# --- regularization ---------------------------------------------------------------------------------


class GradClipParams(Section):
    by: Literal["norm", "value"]  # clip the global L2 norm of all gradients, or each gradient element
    max: float = Field(gt=0.0)


class EarlyStoppingParams(Section):
    metric: Literal["val_loss", "val_accuracy"]
    patience: int = Field(ge=1)  # epochs without improvement before training stops
    min_delta: float = Field(0.0, ge=0.0)  # smaller changes do not count as improvement


class RegularizationParams(Section):
    weight_decay: float = Field(ge=0.0)
    # coupled: L2 added to the gradient (SGD-style); decoupled: weights shrink by lr * weight_decay each
    # step outside the gradient (AdamW-style).
    weight_decay_mode: Literal["coupled", "decoupled"]
    decay_bias_and_norm: bool = False  # also decay biases and normalization parameters
    l1: float = Field(0.0, ge=0.0)  # coefficient of an L1 penalty on the weights (not biases, not norms)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: GradClipParams | None = None
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)  # keep (and evaluate) an EMA of the weights
    early_stopping: EarlyStoppingParams | None = None


class TrainingParams(Section):
    """How one model is built and trained: the `teacher` and `student` sections."""

    model: ModelParams
    train: TrainParams
    optimizer: OptimizerParams
    schedule: ScheduleParams
    regularization: RegularizationParams

    @model_validator(mode="after")
    def _adamw_decays_decoupled(self) -> TrainingParams:
        coupled = self.regularization.weight_decay_mode == "coupled" and self.regularization.weight_decay > 0
        if self.optimizer.name == "adamw" and coupled:
            raise ValueError("adamw decays weights decoupled: use weight_decay_mode: decoupled, or adam for coupled L2")
        return self


class DistillParams(Section):
    method: Literal["hinton"]
    temperature: float = Field(gt=0.0)
    alpha: Probability
    train: TrainParams | None = None
    optimizer: OptimizerParams | None = None
    schedule: ScheduleParams | None = None
    regularization: RegularizationParams | None = None


class EvaluateParams(Section):
    batch_size: int = Field(ge=1)
    calibration_bins: int = Field(ge=1)
    latency_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    latency_repeats: int = Field(ge=1)
    near_zero_threshold: float = Field(gt=0.0)


class StudySetting(Section):
    """One named study setting: each section given here replaces that section of the base model's settings."""

    model: ModelParams | None = None
    train: TrainParams | None = None
    optimizer: OptimizerParams | None = None
    schedule: ScheduleParams | None = None
    regularization: RegularizationParams | None = None


class StudyGrid(Section):
    """Every combination of a named optimizer, a named schedule and a batch size is one setting."""

    optimizer: dict[str, OptimizerParams] = Field(min_length=1)
    schedule: dict[str, ScheduleParams] = Field(min_length=1)
    batch_size: list[Annotated[int, Field(ge=1)] | Literal["full"]] = Field(min_length=1)


class StudyParams(Section):
    model: Literal["teacher", "student"]  # whose section is the base of every setting
    target_accuracy: float = Field(gt=0.0, le=1.0)  # report the optimizer steps needed to reach it on val
    grid: StudyGrid
    extra: dict[str, StudySetting] = {}


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
    study: StudyParams

    def distill_training(self) -> TrainingParams:
        """The distilled student's settings: the student's, with whatever `distill` overrides."""
        overrides = {
            key: getattr(self.distill, key)
            for key in ("train", "optimizer", "schedule", "regularization")
            if getattr(self.distill, key) is not None
        }
        return self.student.model_copy(update=overrides)

    def study_settings(self) -> dict[str, TrainingParams]:
        """Every setting of the study by name: the grid's combinations, then the extra settings."""
        base: TrainingParams = getattr(self, self.study.model)
        grid = self.study.grid
        settings = {}
        for (opt_name, optimizer), (schedule_name, schedule), batch_size in itertools.product(
            grid.optimizer.items(), grid.schedule.items(), grid.batch_size
        ):
            train = base.train.model_copy(update={"batch_size": batch_size})
            name = f"{opt_name}-{schedule_name}-batch_{batch_size}"
            settings[name] = _replace_sections(name, base, optimizer=optimizer, schedule=schedule, train=train)
        for name, setting in self.study.extra.items():
            given = {key: getattr(setting, key) for key in StudySetting.model_fields}
            replaced = {key: section for key, section in given.items() if section is not None}
            settings[name] = _replace_sections(name, base, **replaced)
        return settings

    @model_validator(mode="after")
    def _study_settings_valid(self) -> Params:
        self.study_settings()
        return self


def _replace_sections(name: str, base: TrainingParams, **sections: BaseModel) -> TrainingParams:
    """`base` with whole sections replaced, validated again (so cross-section rules still hold)."""
    merged = base.model_dump() | {key: section.model_dump() for key, section in sections.items()}
    try:
        return TrainingParams.model_validate(merged)
    except ValidationError as error:
        problems = "; ".join(item["msg"].removeprefix("Value error, ") for item in error.errors())
        raise ValueError(f"study setting {name}: invalid once merged into its base section: {problems}") from None


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
        if node is not None and not isinstance(node, (dict, list)):
            continue  # the tag of a plain union (e.g. 'constrained-int' of batch_size): a value has no keys
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]  # an item of a list (e.g. schedules.0), whose own keys may follow
        else:
            node = None
    return ".".join(parts)

