"""What a distillation loss is: a sum of weighted terms (params.yaml's `distill.<student>.losses`), each a
`Term` computed on the student's logits for a batch (and, for the feature-based ones, what forward hooks
captured), and `Distillation`, the Objective (pipelines/engine/objective.py) that runs the student once per
batch and sums its terms. A term has a schema of its own options and builds itself from them and from the
pipeline's artifacts (the stored teacher logits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar, cast

import torch
from torch import nn
from torch.distributed import ProcessGroup

from pipelines.config.base import Section
from pipelines.core.errors import DataError
from pipelines.core.paths import Paths
from pipelines.data.images import ImageSet
from pipelines.data.logits import open_logits
from pipelines.engine.batch_sharing import SharesBatches
from pipelines.engine.capture import Capture, LiveModel, ReadsLayers
from pipelines.engine.objective import Batch, Objective
from pipelines.engine.rows import RowTable, row_tables_of
from pipelines.kd.teacher import Teacher
from pipelines.kd.view_cache import CachedViews

OptionsT = TypeVar("OptionsT", bound=Section)  # a term's options schema, its `Options`


@dataclass(frozen=True)
class Context:
    """What a term may build itself from besides its options."""

    paths: Paths
    label_smoothing: float  # the student's, for a hard-label term
    teacher: Teacher  # the trained teacher's features, stored or live, for the terms that read its layers
    key: str = ""  # the term's params key (distill.<student>.losses.<i>), for error messages


class Term(nn.Module, Generic[OptionsT]):
    """One loss term: forward(logits, batch) is a scalar, averaged over the batch. Its parameters (a
    connector, a projection head) train with the student."""

    Options: ClassVar[type[Section]]  # the schema of the term's options (its keys besides `method` and `weight`)

    @classmethod
    def create(cls, options: OptionsT, context: Context) -> Term[OptionsT]:
        raise NotImplementedError

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        """Check the training data and attach what the term needs to the model: called before training."""

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def teardown(self) -> None:
        """Remove what `setup` attached to the model (its forward hooks)."""


class StoredLogits:
    """The teacher's logits that the `teacher_logits` stage stored: one row per transfer image."""

    def __init__(self, values: torch.Tensor) -> None:
        self.table = RowTable(values, "the stored teacher logits")  # [transfer images, classes], rows aligned
        # with the training set

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        rows, classes = self.table.values.shape[:2]
        if (rows, classes) != (len(train_set), len(train_set.class_names)):
            raise DataError(f"the stored teacher logits are {rows} rows of {classes} classes, the transfer set "
                            f"{len(train_set)} images of {len(train_set.class_names)}: they were computed for "
                            f"other data; rerun `dvc repro teacher_logits`")

    def logits(self, batch: Batch, device: torch.device) -> torch.Tensor:
        return self.table.rows(batch.rows, device)

    def live_models(self) -> list[LiveModel]:
        return []

    def row_tables(self) -> list[RowTable]:
        return [self.table]


LogitsSource = torch.Tensor | StoredLogits | Teacher | CachedViews  # the stored logits, or where they come from


class TeacherLogits(Term[OptionsT]):
    """A term that reads the teacher's logits of the batch: those the `teacher_logits` stage stored for its
    rows, or the teacher's on its images, run live (`distill.<student>.teacher: live`)."""

    def __init__(self, teacher: LogitsSource) -> None:
        """`teacher`: the stored logits [transfer images, classes], or where the logits come from."""
        super().__init__()
        self.outputs = StoredLogits(teacher) if isinstance(teacher, torch.Tensor) else teacher

    @staticmethod
    def source(context: Context) -> StoredLogits | Teacher | CachedViews:
        """Where the logits come from, as the student's `teacher` setting says: the cache of its logits on the
        views (cached), the teacher run live (live), or the stored logits (stored)."""
        if context.teacher.cached_views is not None:
            return context.teacher.cached_views
        return context.teacher if context.teacher.run_live else StoredLogits(open_logits(context.paths.teacher_logits))

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        self.outputs.setup(model, train_set)

    def teacher(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.outputs.logits(batch, logits.device)

    def captures(self) -> list[Capture]:
        """None: a logit term reads no inner layer (`ReadsLayers`)."""
        return []

    def live_models(self) -> list[LiveModel]:
        """The teacher, when it runs live (`ReadsLayers`)."""
        return self.outputs.live_models()

    def row_tables(self) -> list[RowTable]:
        """The stored logits, or the cache of views (`KeepsRows`)."""
        return row_tables_of(self.outputs)


class Distillation(Objective):
    """loss = sum of weight * term, over the student's terms in their order; each term is logged (before
    weighting) under its method's name (`kd`, `ce`; a method used twice: `kd`, `kd_2`)."""

    def __init__(self, terms: list[tuple[str, float, Term]]) -> None:
        super().__init__()
        self.names = [name for name, _, _ in terms]
        self.weights = [weight for _, weight, _ in terms]
        self.terms = nn.ModuleList(term for _, _, term in terms)

    @property
    def term_list(self) -> list[Term]:
        """The terms, typed: nn.ModuleList's typing knows its items as plain modules."""
        return cast(list[Term], list(self.terms))

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        for term in self.term_list:
            term.setup(model, train_set)

    def captures(self) -> list[Capture]:
        """The hooks of every term that reads inner layers (`ReadsLayers`, for the strategies)."""
        return [capture for term in self.term_list if isinstance(term, ReadsLayers) for capture in term.captures()]

    def live_models(self) -> list[LiveModel]:
        """The live teacher, once however many terms read it (`ReadsLayers`)."""
        found = [model for term in self.term_list if isinstance(term, ReadsLayers) for model in term.live_models()]
        return list({id(model): model for model in found}.values())

    def row_tables(self) -> list[RowTable]:
        """The tables every term reads by the batch's rows, each once (`KeepsRows`, for the strategies)."""
        return row_tables_of(*self.term_list)

    def share_batches_over(self, group: ProcessGroup | None) -> None:
        """Told to each term whose state spans the training set (`SharesBatches`, for the strategies)."""
        for term in self.term_list:
            if isinstance(term, SharesBatches):
                term.share_batches_over(group)

    def buffers_in_step(self) -> list[str]:
        """Those terms' buffers that they keep alike on every process (`SharesBatches`), by name in this module."""
        return [f"terms.{index}.{name}" for index, term in enumerate(self.term_list) if isinstance(term, SharesBatches)
                for name in term.buffers_in_step()]

    def teardown(self) -> None:
        for term in self.term_list:
            term.teardown()

    def forward(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch.images)
        values = [term(logits, batch) for term in self.terms]
        loss = values[0] * self.weights[0]
        for weight, value in zip(self.weights[1:], values[1:]):
            loss = loss + weight * value
        return loss, {name: value.detach() for name, value in zip(self.names, values)}
