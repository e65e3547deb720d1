"""The whole params.yaml: its schema, and reading, overriding and validating it.

Every stage validates the whole file before it reads or writes anything. A bad file raises ParamsError
whose message names each offending key path and what is allowed; stage entry points turn it into exit
code 2. (A distillation method's own options are checked by pipelines.kd, see pipelines/config/distill.py.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pipelines.config.base import ParamsError, Section, error_lines
from pipelines.config.checkpoint import CheckpointParams
from pipelines.config.data import AugmentParams, DataParams
from pipelines.config.distributed import DistributedParams
from pipelines.config.distill import (RESERVED_NAMES, KDStudyParams, StudentParams, TeacherFeaturesParams,
                                      check_student_names)
from pipelines.config.speed import SpeedParams
from pipelines.config.storage import PublishParams, StorageParams
from pipelines.config.study import StudyParams, replace_sections
from pipelines.config.training import TrainingParams

PARAMS_FILE = Path("params.yaml")


class EvaluateParams(Section):
    batch_size: int = Field(ge=1)
    calibration_bins: int = Field(ge=1)
    latency_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    latency_repeats: int = Field(ge=1)
    near_zero_threshold: float = Field(gt=0.0)


class Params(Section):
    """The whole params.yaml."""

    seed: int = Field(ge=0)
    device: Literal["auto", "cpu", "cuda"]
    distributed: DistributedParams = DistributedParams()
    checkpoint: CheckpointParams = CheckpointParams()
    speed: SpeedParams = SpeedParams()
    data: DataParams
    augment: AugmentParams
    teacher: TrainingParams
    student: TrainingParams
    distill: dict[str, StudentParams]
    teacher_features: TeacherFeaturesParams = TeacherFeaturesParams()
    evaluate: EvaluateParams
    storage: StorageParams = StorageParams()
    publish: PublishParams = PublishParams()
    study: StudyParams
    kd_study: KDStudyParams

    @property
    def model_names(self) -> list[str]:
        """Every model the pipeline trains and evaluates: the teacher, the baseline student, each distilled one."""
        return [*RESERVED_NAMES, *self.distill]

    def student_training(self, name: str) -> TrainingParams:
        """Distilled student `name`'s settings: the `student` section, with the sections it replaces."""
        return replace_sections(f"student {name}", self.student, **self.distill[name].overrides)

    def distributed_for(self, training: TrainingParams) -> DistributedParams:
        """How the model of `training` runs: the `distributed` section with that model's own changes."""
        return self.distributed.with_changes(training.distributed)

    def study_settings(self) -> dict[str, TrainingParams]:
        """Every setting of the study by name: the grid's combinations, then the extra settings."""
        return self.study.settings(getattr(self, self.study.model))

    @model_validator(mode="after")
    def _derived_settings_valid(self) -> Params:
        check_student_names(self.distill)
        for name in self.distill:
            self.student_training(name)
        self.study_settings()
        students = self.model_names[1:]  # the baseline and the distilled students
        if self.publish.enabled and (unknown := sorted(set(self.publish.students) - set(students))):
            raise ValueError(f"publish.students: {', '.join(unknown)} is not a student of this pipeline; "
                             f"valid: {', '.join(students)}")
        return self


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
            if isinstance(node, list):  # an item of a list, by its index (distill.student_kd.losses.0.weight)
                node = node[list_index(node, key, dotted)]
                continue
            if node.get(key) is None:  # a missing section, or one left `null` (teacher.distributed: null)
                node[key] = {}
            child = node[key]
            if not isinstance(child, (dict, list)):
                prefix = ".".join(parents[: depth + 1])
                raise ParamsError(f"override {dotted}: {prefix} is a value, not a section")
            node = child
        node[list_index(node, leaf, dotted) if isinstance(node, list) else leaf] = value
    return result


def list_index(items: list[Any], key: str, dotted: str) -> int:
    """The position `key` names in `items`, or ParamsError for override `dotted`."""
    if not key.isdigit() or int(key) >= len(items):
        raise ParamsError(f"override {dotted}: {key!r} is not the index of one of the list's {len(items)} items")
    return int(key)


def validate_params(raw: dict[str, Any], source: str = str(PARAMS_FILE)) -> Params:
    """Validate a params mapping; ParamsError lists `key.path: problem (got value)` per error."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError("\n".join([f"{source}: invalid parameters", *error_lines(error, raw)])) from None
