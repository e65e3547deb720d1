"""The feature-based terms' class (fitnet, at, rkd, crd): a term on pairs of student and teacher layers,
the student's captured by forward hooks (pipelines/engine/capture.py), the teacher's stored or run live
(pipelines/kd/teacher.py)."""

from __future__ import annotations

import torch
from torch import nn

from pipelines.data.images import ImageSet
from pipelines.engine.capture import Capture, LiveModel, probe
from pipelines.engine.objective import Batch
from pipelines.engine.rows import RowTable
from pipelines.kd.base import Context, OptionsT, Term

class FeatureTerm(Term[OptionsT]):
    """A term on (student layer, teacher layer) pairs: their outputs (or, with `of_inputs`, what enters
    them). The student's are captured by hooks that `setup` attaches and `teardown` removes; the teacher's
    come from `context.teacher` (stored by the `teacher_features` stage, or the teacher run live). `setup`
    runs two images through both so that `build` can size what the term learns (a connector) to the layers."""

    of_inputs = False

    def __init__(self, pairs: list[tuple[str, str]], context: Context, keys: tuple[str, str]) -> None:
        super().__init__()
        self.pairs, self.teacher, self.keys = pairs, context.teacher, keys
        self.captured: Capture | None = None

    @classmethod
    def teacher_layers(cls, options: OptionsT) -> list[tuple[str, bool]]:
        """The teacher layers a term of these options reads (for the `teacher_features` stage to store): by
        default the one its options name `teacher_layer`."""
        return [(getattr(options, "teacher_layer"), cls.of_inputs)]

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        device = next(model.parameters()).device
        student_key, teacher_key = self.keys
        self.teacher.attach([((teacher, self.of_inputs), teacher_key) for _, teacher in self.pairs], device,
                            len(train_set))
        self.captured = Capture(model, [(student, student_key) for student, _ in self.pairs], self.of_inputs)
        sample = Batch(images=train_set.images[:2].to(device).float().div_(255.0), labels=train_set.labels[:2],
                       rows=torch.arange(2))
        probe(model, sample.images)
        self.build([(student.shape, teacher.shape) for student, teacher in self.features(sample)])

    def build(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        """Create what the term learns, from each pair's (student, teacher) feature shapes."""

    def features(self, batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This batch's (student, teacher) features of each pair: the student's from its forward just run,
        the teacher's stored or from one live forward (shared by every term of the batch)."""
        assert self.captured is not None  # setup attached the hooks
        students = [self.captured.values[student] for student, _ in self.pairs]
        teachers = self.teacher.features(batch, students[0].device)
        return [(student, teachers[(teacher, self.of_inputs)]) for student, (_, teacher) in zip(students, self.pairs)]

    def captures(self) -> list[Capture]:
        """The hooks on the student's layers, and on the live teacher's that this term reads (`ReadsLayers`)."""
        if self.captured is None:
            return []
        teacher = [self.teacher.live[(path, self.of_inputs)] for _, path in self.pairs
                   if (path, self.of_inputs) in self.teacher.live]
        return [self.captured, *teacher]

    def live_models(self) -> list[LiveModel]:
        """The teacher, when it runs live (`ReadsLayers`)."""
        return self.teacher.live_models() if self.teacher.live else []

    def row_tables(self) -> list[RowTable]:
        """The teacher's stored features (`KeepsRows`)."""
        return self.teacher.row_tables()

    def teardown(self) -> None:
        if self.captured is not None:
            self.captured.remove()
        self.captured = None
        self.teacher.detach()
