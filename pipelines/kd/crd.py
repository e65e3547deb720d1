"""`crd`: contrastive representation distillation (Tian et al., 2020) on the penultimate embeddings (what
enters the classifier). Learned projection heads map the student's and the teacher's embeddings to
`feature_dim`, L2-normalized; two memory banks keep one normalized embedding of every training image (the
student's and the teacher's, updated with momentum as images come by). For each image, its own row of the
other model's bank is the positive and `negatives` rows drawn at random are the negatives; the term is the
NCE loss of both directions (teacher embedding against the student bank, and the reverse), the scores
exp(similarity / temperature) normalized by a constant fixed at the first batch, as in the paper.

The heads and the banks belong to the objective: they train (heads) and change (banks) with the student,
and are saved in models/<student>.heads.pt. Where each process computes the loss of its share of every
batch (ddp, fsdp), every one updates its banks with the embeddings of the whole global batch, gathered over
the processes the strategy names (`SharesBatches`, pipelines/engine/batch_sharing.py): the banks stay the
same on every rank without being sent from one to the others. Under pipeline parallelism the last stage alone
computes the loss and sees every row of each micro-batch: there is nothing to gather.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.distributed import ProcessGroup

from pipelines.config.base import Probability, Section
from pipelines.data.images import ImageSet
from pipelines.engine.objective import Batch
from pipelines.kd.base import Context
from pipelines.kd.feature_term import FeatureTerm


class CRDOptions(Section):
    student_layer: str = "classifier"  # the embedding is what enters this layer of the student
    teacher_layer: str = "classifier"  # ... and of the teacher
    feature_dim: int = Field(default=128, ge=1)  # size of the projected embeddings
    negatives: int = Field(default=4096, ge=1)  # negatives per image (at most the training images less one)
    temperature: float = Field(default=0.07, gt=0.0)  # of the similarity scores
    momentum: Probability = 0.5  # of the memory banks' updates


class CRD(FeatureTerm[CRDOptions]):
    Options = CRDOptions
    of_inputs = True
    student_bank: torch.Tensor  # buffers registered by `build`
    teacher_bank: torch.Tensor
    normalizers: torch.Tensor

    def __init__(self, pairs: list[tuple[str, str]], context: Context, keys: tuple[str, str],
                 options: CRDOptions) -> None:
        super().__init__(pairs, context, keys)
        self.options = options
        self.group: ProcessGroup | None = None  # the processes sharing each batch, set by the strategy

    @classmethod
    def create(cls, options: CRDOptions, context: Context) -> CRD:
        return cls([(options.student_layer, options.teacher_layer)], context,
                   (f"{context.key}.student_layer", f"{context.key}.teacher_layer"), options)

    def setup(self, model: nn.Module, train_set: ImageSet) -> None:
        self.images = len(train_set)
        self.negatives = min(self.options.negatives, self.images - 1)
        super().setup(model, train_set)

    def share_batches_over(self, group: ProcessGroup | None) -> None:
        """The processes over which each batch's rows and embeddings are gathered to update the banks
        (`SharesBatches`); None: none, this process sees every row."""
        self.group = group

    def buffers_in_step(self) -> list[str]:
        """The banks (`SharesBatches`): every process updates them from the same gathered batch. Not the
        normalizers: each process fixes its own from its share of the first batch."""
        return ["student_bank", "teacher_bank"]

    def build(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        [(student, teacher)] = shapes
        dim = self.options.feature_dim
        self.student_head = nn.Linear(math.prod(student[1:]), dim)
        self.teacher_head = nn.Linear(math.prod(teacher[1:]), dim)
        bound = 1.0 / math.sqrt(dim / 3)  # the paper's initialization of the banks, then normalized
        for name in ("student_bank", "teacher_bank"):
            self.register_buffer(name, F.normalize(torch.rand(self.images, dim).mul_(2 * bound).sub_(bound), dim=1))
        self.register_buffer("normalizers", torch.zeros(2))  # Z of each direction, fixed at the first batch

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        [(student, teacher)] = self.features(batch)
        with torch.autocast(logits.device.type, enabled=False):  # exp(similarity / 0.07) needs float32
            return self._loss(student, teacher, batch)

    def _loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch) -> torch.Tensor:
        student = F.normalize(self.student_head(student.flatten(1).float()), dim=1)
        teacher = F.normalize(self.teacher_head(teacher.flatten(1).float()), dim=1)
        rows = batch.rows.to(student.device)
        # Row 0 of each image's candidates is itself (the positive), the rest drawn at random.
        candidates = torch.randint(0, self.images, (len(rows), self.negatives + 1), device=student.device)
        candidates[:, 0] = rows
        scores_t = self._scores(self.student_bank, candidates, teacher, 0)  # the teacher against student memories
        scores_s = self._scores(self.teacher_bank, candidates, student, 1)  # the student against teacher memories
        loss = nce_loss(scores_t, self.images) + nce_loss(scores_s, self.images)
        self._update_banks(rows, student.detach(), teacher.detach())
        return loss

    def _scores(self, bank: torch.Tensor, candidates: torch.Tensor, embeddings: torch.Tensor,
                which: int) -> torch.Tensor:
        scores = torch.exp(candidate_similarity(bank.detach(), candidates, embeddings) / self.options.temperature)
        # fixed at the first batch, without reading the buffer back to the host (no sync in a step)
        first = (scores.mean() * self.images).detach()
        self.normalizers[which] = torch.where(self.normalizers[which] == 0, first, self.normalizers[which])
        return scores / self.normalizers[which].clone()  # a copy: the graph keeps it while the buffer changes

    @torch.no_grad()
    def _update_banks(self, rows: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if self.group is not None:  # the whole global batch, on every process sharing it
            rows, student, teacher = (all_gather(tensor, self.group) for tensor in (rows, student, teacher))
        momentum = self.options.momentum
        for bank, embeddings in ((self.student_bank, student), (self.teacher_bank, teacher)):
            bank[rows] = F.normalize(bank[rows] * momentum + embeddings * (1 - momentum), dim=1)


def candidate_similarity(bank: torch.Tensor, candidates: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """The similarity of each embedding with the bank rows its candidates name (batch x candidates). While the
    bank holds at most 32 times the candidates (CIFAR's 50,000 images against the default 4096 negatives), one
    product with the whole bank, then the candidates' columns: gathering the batch x candidates x dim rows
    first copies 270 MB per direction and step for a batch of 128. On one CPU core, forward and backward of
    one direction took 0.53 s gathered against 0.06 s for a bank of 21,000 rows, level at 300,000. Beyond
    (ImageNet-sized banks), the gather."""
    if len(bank) <= 32 * candidates.shape[1]:
        return (embeddings @ bank.clone().T).gather(1, candidates)  # a copy: backward needs the bank as it was
    return torch.bmm(bank[candidates], embeddings.unsqueeze(2)).squeeze(2)


def nce_loss(scores: torch.Tensor, images: int, eps: float = 1e-7) -> torch.Tensor:
    """NCE with uniform noise over `images`: column 0 the positive's score, the rest the negatives'."""
    negatives = scores.shape[1] - 1
    noise = negatives / images  # K * P_noise
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps)).sum(dim=1)
    return -(positive + negative).mean()


def all_gather(tensor: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """`tensor` of every process of `group`, concatenated in rank order; their batch shares may differ in
    length by one row."""
    size = torch.tensor([len(tensor)], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    longest = int(max(sizes).item())
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([part[: int(count.item())] for part, count in zip(gathered, sizes)])
