"""The whole params.yaml: its schema, and reading, overriding and validating it.

Every stage validates the whole file before it reads or writes anything. A bad file raises ParamsError
whose message names each offending key path and what is allowed; stage entry points turn it into exit
code 2. (A distillation method's own options are checked by pipelines.kd, see pipelines/config/distill.py.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from pipelines.config.base import ParamsError, Section, error_lines
from pipelines.config.data import AugmentParams, DataParams
from pipelines.config.distributed import DistributedParams
from pipelines.config.distill import RESERVED_NAMES, KDStudyParams, Students, TeacherFeaturesParams, TeacherViewsParams
from pipelines.config.loader import load_yaml
from pipelines.config.resume import ResumeParams
from pipelines.config.speed import SpeedParams
from pipelines.config.storage import PublishParams, StorageParams
from pipelines.config.study import StudyParams, replace_sections
from pipelines.config.training import TrainingParams

PARAMS_FILE = Path("params.yaml")

# Sections of an older params.yaml under their old name: what each is called now. Named as such, rather than
# as an unknown key, so that an old file says how to bring it up to date.
RENAMED_SECTIONS = {
    "checkpoint": "this section is now called resume (and its key resume is now mode)",
}


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
    resume: ResumeParams = ResumeParams()
    speed: SpeedParams = SpeedParams()
    data: DataParams
    augment: AugmentParams
    teacher: TrainingParams
    student: TrainingParams
    distill: Students
    teacher_features: TeacherFeaturesParams = TeacherFeaturesParams()
    teacher_views: TeacherViewsParams = TeacherViewsParams()
    evaluate: EvaluateParams
    storage: StorageParams = StorageParams()
    publish: PublishParams = PublishParams()
    study: StudyParams
    kd_study: KDStudyParams

    _source: str = PrivateAttr(str(PARAMS_FILE))  # the file read (validate_params), named by later checks' errors

    @property
    def source(self) -> str:
        """The file these params were read from, as a ParamsError about them names it."""
        return self._source

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
        """Every setting of the study by name: the grid's combinations, then the extra settings. They train on the
        transfer set as stored: the study compares optimizers, schedules and batch sizes, not augmentations, so the
        model section's fresh views are left out."""
        return self.study.settings(getattr(self, self.study.model).model_copy(update={"views": None}))

    @model_validator(mode="after")
    def _derived_settings_valid(self) -> Params:
        for name in self.distill:
            views = self.student_training(name).views
            reads_teacher = any(term.method != "ce" for term in self.distill[name].losses)
            fresh = views is not None and views.enabled
            if fresh and reads_teacher and self.distill[name].teacher == "stored":
                raise ValueError(f"distill.{name}.teacher: stored, but the student trains on fresh views (views): "
                                 f"the stored outputs are the teacher's on the fixed transfer images, not on those "
                                 f"views; set teacher: live, or cached")
            if not fresh and self.distill[name].teacher == "cached":
                raise ValueError(f"distill.{name}.teacher: cached keeps the teacher's outputs on each epoch's fresh "
                                 f"views, and the student has none (views); set views, or teacher: stored")
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
        raw = with_overrides(raw, overrides)
    return validate_params(raw, source=str(path))


def read_raw_params(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`, or ParamsError if the file cannot be read, is not YAML, gives a key
    twice (pipelines/config/loader.py) or is not a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ParamsError(f"{path}: cannot be read: {error.strerror}") from None
    raw = load_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (seed, data, ...), got {type(raw).__name__}")
    return raw


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with each dotted key (`teacher.train.epochs`) set to its value."""
    result = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        set_dotted(result, dotted, value)
    return result


def set_dotted(document: dict[str, Any], dotted: str, value: Any, section: Callable[[], Any] = dict) -> None:
    """Set key path `dotted` of `document` to `value`: each key a mapping's, or a list item's position
    (distill.student_kd.losses.0.weight). A missing section on the way, or one left `null`
    (teacher.distributed: null), becomes `section()`; a path through a plain value is a ParamsError."""
    *parents, leaf = dotted.split(".")
    node: Any = document
    for depth, key in enumerate(parents):
        if isinstance(node, list):
            child = node[list_index(node, key, dotted)]
        else:
            if node.get(key) is None:
                node[key] = section()
            child = node[key]
        if not isinstance(child, (dict, list)):
            raise ParamsError(f"override {dotted}: {'.'.join(parents[: depth + 1])} is a value, not a section")
        node = child
    node[list_index(node, leaf, dotted) if isinstance(node, list) else leaf] = value


def get_dotted(document: dict[str, Any], dotted: str) -> Any:
    """The value at key path `dotted` of `document` (each key a mapping's, or a list item's position), or None
    where the path leads nowhere: a missing key, a position past the list's end, a plain value on the way."""
    node: Any = document
    for key in dotted.split("."):
        if isinstance(node, list) and key.isascii() and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return None
    return node


def list_index(items: list[Any], key: str, dotted: str) -> int:
    """The position `key` names in `items`, or ParamsError for override `dotted`."""
    if not (key.isascii() and key.isdigit()) or int(key) >= len(items):
        raise ParamsError(f"override {dotted}: {key!r} is not the index of one of the list's {len(items)} items")
    return int(key)


def validate_params(raw: dict[str, Any], source: str = str(PARAMS_FILE)) -> Params:
    """Validate a params mapping read from `source`; ParamsError lists `key.path: problem (got value)` per
    error under a first line naming `source`, and a section under its old name (RENAMED_SECTIONS) with what it
    is called now. The Params remember `source` for later checks' messages."""
    renamed = [f"  {key}: {now}: rename it in {source}" for key, now in RENAMED_SECTIONS.items() if key in raw]
    try:
        params = Params.model_validate({key: value for key, value in raw.items() if key not in RENAMED_SECTIONS})
    except ValidationError as error:
        raise ParamsError("\n".join([f"{source}: invalid parameters", *renamed, *error_lines(error, raw)])) from None
    if renamed:
        raise ParamsError("\n".join([f"{source}: invalid parameters", *renamed]))
    params._source = source
    return params
