"""The `distill` section: the distilled students, by name. Each is its own DVC stage (`distill@<name>`),
model file (models/<name>.pt) and training log, and a row of the report.

A student's loss is a list of weighted terms (`losses`), summed; each names its method and gives that
method's options. The methods and their options are defined by pipelines.kd (one module each), which
checks them. Any section of the `student` settings (model, train, optimizer, schedule, regularization,
distributed) may be replaced for one student, so students can differ in size as well as in method."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from pipelines.config.base import Section
from pipelines.config.data import TransformParams
from pipelines.config.distributed import ModelDistributedParams
from pipelines.config.optim import OptimizerParams
from pipelines.config.schedules import ScheduleParams
from pipelines.config.training import SECTIONS, ModelParams, RegularizationParams, TrainParams

# Model names the pipeline itself uses; a student cannot take one.
RESERVED_NAMES = ("teacher", "student_baseline")
NAME = re.compile(r"[A-Za-z0-9_-]+")  # a student's or a study dataset's name names a DVC stage, a file, a folder
NAME_CHARACTERS = "use only letters, digits, '_' and '-'"


def _student_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"a student's name names its DVC stage and its model file: {NAME_CHARACTERS}")
    if name in RESERVED_NAMES:
        raise ValueError(f"the pipeline's own models are named {' and '.join(RESERVED_NAMES)}: name the student "
                         f"otherwise")
    return name


def _dataset_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"a dataset's name names its runs' folders: {NAME_CHARACTERS}")
    return name


# Checked as a key: an error names the key path down to the name itself (distill.a/b: ...).
StudentName = Annotated[str, AfterValidator(_student_name)]
DatasetName = Annotated[str, AfterValidator(_dataset_name)]


class LossTerm(Section):
    """One weighted term of a student's loss. Keys besides these are the method's options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str
    weight: float = Field(default=1.0, ge=0.0)

    @property
    def options(self) -> dict[str, Any]:
        """The method's own options, as written in params.yaml."""
        return dict(self.model_extra or {})


class StudentParams(Section):
    """One distilled student: its loss terms, and the `student` sections it replaces."""

    losses: list[LossTerm] = Field(min_length=1)
    # the teacher's outputs the terms read: stored (the teacher_logits and teacher_features stages' outputs
    # on the fixed transfer set), live (the teacher run on each batch, on the view the student sees) or cached
    # (its logits on each epoch's views, stored once by the teacher_views stage; features are read live)
    teacher: Literal["stored", "live", "cached"] = "stored"
    model: ModelParams | None = None
    train: TrainParams | None = None
    optimizer: OptimizerParams | None = None
    schedule: ScheduleParams | None = None
    regularization: RegularizationParams | None = None
    distributed: ModelDistributedParams | None = None
    views: TransformParams | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_method_is_now_a_list_of_terms(cls, data: Any) -> Any:
        if isinstance(data, dict) and "method" in data:
            raise ValueError(
                "a student's loss is now a list of weighted terms: instead of `method: hinton, temperature: T, "
                "alpha: a` write `losses: [{method: kd, weight: a, temperature: T}, {method: ce, weight: 1 - a}]`"
            )
        return data

    @property
    def overrides(self) -> dict[str, Section]:
        """The `student` sections this student replaces."""
        return {key: value for key in SECTIONS if (value := getattr(self, key)) is not None}


class TeacherFeaturesParams(Section):
    """The `teacher_features` section: when the teacher's features that feature-based terms read are stored."""

    # store them (once, DVC-tracked) up to this size; beyond, run the teacher live
    max_cache_gb: float = Field(default=2.0, ge=0.0)


class TeacherViewsParams(Section):
    """The `teacher_views` section: the cache of the teacher's logits on each epoch's fresh views, for a student
    with `teacher: cached` (stage teacher_views@<student>)."""

    max_cache_gb: float = Field(default=1.0, gt=0.0)  # refused before anything is written when it would be larger
    top_k: int | None = Field(default=None, ge=1)  # the largest logits kept per view (null: every class's)


class StudyDataset(Section):
    """A dataset of the methods study, made from the built-in 8x8 digits (pipelines/data/generated.py)."""

    noise: float = Field(default=0.0, ge=0.0, le=1.0)  # std of Gaussian pixel noise, on [0, 1]
    # null: the 8x8 digits as they are; else warped copies of this side
    size: int | None = Field(default=None, ge=12, le=64)
    images: int = Field(default=6000, ge=200)  # warped images generated (85% train, 15% test)
    clutter: int = Field(default=0, ge=0, le=8)  # fragments of other digits pasted into each warped image

    @model_validator(mode="after")
    def _warp_options_need_a_size(self) -> StudyDataset:
        if self.size is None and ("images" in self.model_fields_set or self.clutter):
            raise ValueError("clutter and images apply to warped digits: set size too")
        return self


class StudyWay(Section):
    """How the study's students of one way meet the teacher (`kd_study.ways`)."""

    teacher: Literal["stored", "live"] = "stored"  # as a student's `teacher`
    views: TransformParams | None = None  # as a student's `views`; its labels-only control trains on them too
    labels: bool = True  # false: function matching, each label term (ce) becomes kd at T = 1, no label read


class KDStudyParams(Section):
    """The `kd_study` section: the methods study (flows/kd_methods.py). The teacher and the student of the
    pipeline, trained on each dataset with each seed; then a student under each named loss, each way and each
    budget, and per way and budget the labels-only control those students are measured against."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    datasets: dict[DatasetName, StudyDataset] = Field(default_factory=lambda: {"digits": StudyDataset()}, min_length=1)
    budgets: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [15, 45], min_length=1)  # epochs
    ways: dict[DatasetName, StudyWay] = Field(default_factory=lambda: {"fixed": StudyWay()}, min_length=1)
    # name -> a student's loss terms, as in `distill`; or a whole student ({losses: [...], model: {...}}) to
    # change its settings too (its epochs are the budget's)
    losses: dict[StudentName, list[LossTerm] | StudentParams] = Field(min_length=1)


def _at_least_one(students: dict[str, StudentParams]) -> dict[str, StudentParams]:
    if not students:
        raise ValueError("no student: name at least one, e.g. student_kd: {losses: [{method: kd, weight: 0.9}, "
                         "{method: ce, weight: 0.1}]}")
    return students


# The `distill` section: each distilled student by its name.
Students = Annotated[dict[StudentName, StudentParams], AfterValidator(_at_least_one)]
