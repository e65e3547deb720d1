"""What a distillation method is: an Objective (pipelines/engine/objective.py) with a schema of its own
options (the keys of its student in params.yaml besides `method` and the sections it overrides) and a
way to build itself from them and from the pipeline's artifacts (stored teacher logits, the teacher)."""

from __future__ import annotations

from typing import ClassVar

from pipelines.config.base import Section
from pipelines.core.paths import Paths
from pipelines.engine.objective import Objective


class Method(Objective):
    Options: ClassVar[type[Section]]  # the schema of the method's options

    @classmethod
    def create(cls, options: Section, label_smoothing: float, paths: Paths) -> Method:
        """The objective for validated `options`; `label_smoothing` is the student's, for any hard-label term."""
        raise NotImplementedError
