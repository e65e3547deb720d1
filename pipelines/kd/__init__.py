"""Distillation methods, one module each, and METHODS, the one table of them: a student's `method` in
params.yaml names an entry, whose Options schema checks the student's other keys and whose objective
trains it. A new method is a module defining a Method (pipelines/kd/base.py) plus one line here.

Nothing below this package imports it, so adding or changing a method reruns only the distilled
students (and what reads them), never the teacher or the baseline.
"""

from __future__ import annotations

from pydantic import ValidationError

from pipelines.config import Params, ParamsError
from pipelines.config.base import Section, error_lines
from pipelines.config.distill import StudentParams
from pipelines.core.paths import Paths
from pipelines.kd.base import Method
from pipelines.kd.hinton import Hinton

METHODS: dict[str, type[Method]] = {
    "hinton": Hinton,
}


def check_students(params: Params, source: str = "params.yaml") -> None:
    """Every student's method and its options; ParamsError naming each bad key, as params validation does."""
    problems = []
    for name, student in params.distill.items():
        try:
            method_options(student)
        except ValidationError as error:
            problems += error_lines(error, student.options, prefix=f"distill.{name}")
        except ValueError as error:
            problems.append(f"  distill.{name}.method: {error}")
    if problems:
        raise ParamsError("\n".join([f"{source}: invalid parameters", *problems]))


def method_options(student: StudentParams) -> Section:
    """The student's validated options (ValidationError), or ValueError for an unknown method."""
    if student.method not in METHODS:
        raise ValueError(f"unknown method {student.method!r}; valid: {', '.join(METHODS)}")
    return METHODS[student.method].Options.model_validate(student.options)


def build_objective(student: StudentParams, label_smoothing: float, paths: Paths) -> Method:
    """The objective that trains `student` (whose options `check_students` has checked)."""
    return METHODS[student.method].create(method_options(student), label_smoothing, paths)
