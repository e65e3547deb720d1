"""Comparing like with like: a distilled student is measured against a labels-only control trained with the
same budget (epochs, batch size) and the same augmentation (views), here the baseline student when it shares
them, and by the share of the teacher-control gap it recovers: (student - control) / (teacher - control)."""

from __future__ import annotations

from pipelines.config import Params
from pipelines.config.data import TransformParams


def budget_differences(params: Params, student: str) -> list[str]:
    """What the distilled `student` trains with that the baseline student does not: its epochs, batch size or
    views, each as `key: the student's against the baseline's`; none when the baseline is its control."""
    mine, baseline = params.student_training(student), params.student
    differences = [f"train.{key}: {getattr(mine.train, key)} against the baseline's {getattr(baseline.train, key)}"
                   for key in ("epochs", "batch_size") if getattr(mine.train, key) != getattr(baseline.train, key)]
    if (mine.views or TransformParams()) != (baseline.views or TransformParams()):
        differences.append("views: the student's fresh views differ from the baseline's")
    return differences


def gap_recovered(student: float, control: float, teacher: float) -> float | None:
    """The share of the teacher's lead over the control that the student recovers; None without a lead."""
    gap = teacher - control
    return (student - control) / gap if gap > 0 else None
