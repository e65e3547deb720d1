"""Distillation loss terms, one module each, and METHODS, the one table of them: each term of a student's
`losses` in params.yaml names an entry, whose Options schema checks the term's other keys and whose class
computes it. A new method is a module defining a Term (pipelines/kd/base.py) plus one line here.

Nothing below this package imports it, so adding or changing a method reruns only the distilled
students (and what reads them), never the teacher or the baseline.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import ValidationError

from pipelines.config import Params, ParamsError
from pipelines.config.base import Section, error_lines
from pipelines.config.distill import LossTerm, StudentParams
from pipelines.core.paths import Paths
from pipelines.kd.at import AT
from pipelines.kd.base import Context, Distillation, Term
from pipelines.kd.ce import CE
from pipelines.kd.crd import CRD
from pipelines.kd.dist import DIST
from pipelines.kd.dkd import DKD
from pipelines.kd.feature_term import FeatureTerm
from pipelines.kd.fitnet import FitNet
from pipelines.kd.kd import KD
from pipelines.kd.rkd import RKD
from pipelines.kd.teacher import Layer, Teacher
from pipelines.kd.view_cache import CachedViews

METHODS: dict[str, type[Term]] = {
    "kd": KD,  # Hinton et al.'s soft targets
    "dkd": DKD,  # decoupled KD: target and non-target class terms weighted apart
    "dist": DIST,  # relations (Pearson correlations) of the teacher's predictions
    "fitnet": FitNet,  # a teacher layer's output as a hint for a student layer's, through a connector
    "at": AT,  # attention maps of layer pairs
    "rkd": RKD,  # distances and angles between the batch's penultimate embeddings
    "crd": CRD,  # contrastive: each image's embedding against memory banks of the others
    "ce": CE,  # cross-entropy with the labels
}


def check_students(params: Params) -> None:
    """Every student's terms and their options; ParamsError naming each bad key and the file read
    (params.source), as params validation does."""
    problems = []
    for name, student in params.distill.items():
        for index, term in enumerate(student.losses):
            prefix = f"distill.{name}.losses.{index}"
            try:
                term_options(term)
            except ValidationError as error:
                problems += error_lines(error, term.options, prefix=prefix)
            except ValueError as error:
                problems.append(f"  {prefix}.method: {error}")
    if problems:
        raise ParamsError("\n".join([f"{params.source}: invalid parameters", *problems]))


def term_options(term: LossTerm) -> Section:
    """The term's validated options (ValidationError), or ValueError for an unknown method."""
    if term.method not in METHODS:
        raise ValueError(f"unknown method {term.method!r}; valid: {', '.join(METHODS)}")
    return METHODS[term.method].Options.model_validate(term.options)


def build_objective(student_name: str, params: Params, paths: Paths) -> Distillation:
    """The objective that trains distilled student `student_name` of `params` (whose terms `check_students` has
    checked)."""
    student, training = params.distill[student_name], params.student_training(student_name)
    label_smoothing = training.regularization.label_smoothing
    cached_views = (CachedViews(paths.teacher_views(student_name), params.seed, training.views, training.train.epochs)
                    if student.teacher == "cached" else None)
    teacher = Teacher(paths.model("teacher"), paths.teacher_features(student_name), student.teacher != "stored",
                      cached_views)
    context, terms = Context(paths, label_smoothing, teacher), []
    seen: dict[str, int] = {}
    for index, term in enumerate(student.losses):
        seen[term.method] = seen.get(term.method, 0) + 1
        name = term.method if seen[term.method] == 1 else f"{term.method}_{seen[term.method]}"
        key = f"distill.{student_name}.losses.{index}"
        terms.append((name, term.weight, METHODS[term.method].create(term_options(term), replace(context, key=key))))
    return Distillation(terms)


def teacher_layers(student: StudentParams) -> list[Layer]:
    """The teacher layers (path, whether what enters it) that the student's feature-based terms read."""
    layers: list[Layer] = []
    for term in student.losses:
        method = METHODS[term.method]
        if issubclass(method, FeatureTerm):
            layers += [layer for layer in method.teacher_layers(term_options(term)) if layer not in layers]
    return layers
