"""The hand-tuned plain PyTorch loop that benchmarks/gpu_check.py holds the engine against: what a careful
practitioner writes for one GPU when the training data fits on it, with no framework:

- the training set's pixels and labels (and the stored teacher logits) copied to the device at the start of
  a run, each epoch's order drawn there and each step's rows gathered there: no host-to-device copy in a step;
- static shapes: an epoch's last partial batch is dropped (a DataLoader's drop_last), validation runs in
  batches of one size;
- bf16 autocast, channels_last and torch.compile (of the loss, with the model and a live teacher in it) as the
  switches say; cuDNN's autotuner and TF32 always on; torch.optim's fused kernel on CUDA;
- the loss and the validation counts summed on the device: nothing in a run waits on the device, whose caller
  synchronizes once before and once after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.config.training import TrainingParams
from pipelines.data.images import ImageSet

# The loss from the student's logits, the labels and the teacher's logits (None when there is no teacher).
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
VAL_BATCH = 1024  # validation images per forward pass


@dataclass(frozen=True)
class Switches:
    """The speed switches of one setting."""

    bf16: bool
    channels_last: bool
    compile: bool
    compile_mode: str = "default"
    backend: str = "inductor"  # the CPU smoke run traces with dynamo's "eager" backend: the plumbing, quickly


def distillation_loss(kd_weight: float, temperature: float, ce_weight: float) -> Criterion:
    """kd_weight * T^2 * KL(teacher_T || student_T) + ce_weight * cross-entropy: Hinton et al.'s loss."""

    def loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        assert teacher is not None
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                        log_target=True, reduction="batchmean")
        return kd_weight * temperature**2 * soft + ce_weight * F.cross_entropy(logits, labels)

    return loss


def cross_entropy(label_smoothing: float) -> Criterion:
    """Cross-entropy with the labels: the teacher's loss."""

    def loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)

    return loss


@contextmanager
def tuned_backends() -> Iterator[None]:
    """cuDNN's autotuner and TF32 matmuls and convolutions for the block, then the process's settings as they
    were (the engine, measured beside this loop, sets its own)."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class TunedLoop:
    """`model` trained under `criterion` on `train_set` (with `stored` teacher logits per row, or a `teacher` run
    live on each batch), validated on `val_set` every epoch, as `training` says (its optimizer, a cosine
    schedule per epoch, its batch size), with `switches` on `device`. The compiled functions are made once, so a
    run after the first compiles nothing new."""

    def __init__(self, model: nn.Module, train_set: ImageSet, val_set: ImageSet, criterion: Criterion,
                 training: TrainingParams, switches: Switches, device: torch.device,
                 stored: torch.Tensor | None = None, teacher: nn.Module | None = None) -> None:
        if training.schedule.name != "cosine" or training.schedule.interval != "epoch" or training.schedule.warmup:
            raise ValueError("the tuned loop runs the shipped schedules only: cosine per epoch, no warmup")
        if training.regularization.weight_decay_mode != "coupled" or training.regularization.decay_bias_and_norm:
            raise ValueError("the tuned loop runs the shipped regularization only: coupled decay of the weights")
        self.train_set, self.val_set, self.criterion, self.stored = train_set, val_set, criterion, stored
        self.training, self.switches, self.device = training, switches, device
        self.memory_format = torch.channels_last if switches.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format)
        self.teacher = None if teacher is None else teacher.to(device, memory_format=self.memory_format).eval()
        self.loss, self.evaluate = self._loss, self.model
        if switches.compile:
            options = {"mode": switches.compile_mode} if switches.backend == "inductor" else {}  # (inductor's modes)
            self.loss = torch.compile(self._loss, backend=switches.backend, **options)
            self.evaluate = torch.compile(self.model, backend=switches.backend, **options)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        logits = self.model(images)
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(images)
        return self.criterion(logits, labels, teacher)

    def run(self, epochs: int) -> tuple[int, torch.Tensor]:
        """Train `epochs` epochs, validating after each; the training images seen and, on the device, the sums
        of the training losses and of the correct validation predictions (read them after synchronizing)."""
        device, batch = self.device, self.training.train.batch_size
        assert isinstance(batch, int)
        pixels, labels = self.train_set.images, self.train_set.labels
        assert isinstance(pixels, torch.Tensor) and isinstance(self.val_set.images, torch.Tensor)
        pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        val_pixels = self.val_set.images.to(device, non_blocking=True)
        val_labels = self.val_set.labels.to(device, non_blocking=True)
        stored = None if self.stored is None else self.stored.to(device, non_blocking=True)
        optimizer = self._optimizer()
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs,
                                                              eta_min=getattr(self.training.schedule, "min_lr", 0.0))
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        steps = len(labels) // batch
        for _ in range(epochs):
            self.model.train()
            order = torch.randperm(len(labels), device=device)
            for step in range(steps):
                rows = order[step * batch : (step + 1) * batch]
                images = self._images(pixels.index_select(0, rows))
                teacher = None if stored is None else stored.index_select(0, rows)
                if self.switches.compile and device.type == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()  # (a no-op unless the mode uses CUDA graphs)
                with torch.autocast(device.type, torch.bfloat16, enabled=self.switches.bf16):
                    loss = self.loss(images, labels.index_select(0, rows), teacher)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum.add_(loss.detach())
            schedule.step()
            correct.add_(self._correct(val_pixels, val_labels))
        return epochs * steps * batch, torch.stack([loss_sum, correct.float()])

    def _images(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels as the model takes them: floats in [0, 1], in the setting's memory format."""
        return pixels.float().div_(255.0).contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def _correct(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The correct predictions on the validation set, in eval mode, in batches of one size (a last
        partial one is left out), as a tensor on the device."""
        self.model.eval()
        size = min(VAL_BATCH, len(labels))
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, len(labels) - size + 1, size):
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.switches.bf16):
                logits = self.evaluate(self._images(pixels[start : start + size]))
            correct += (logits.argmax(1) == labels[start : start + size]).sum()
        return correct

    def _optimizer(self) -> torch.optim.Optimizer:
        """torch.optim's class of the optimizer section, weights decayed and biases and norms not, fused on CUDA."""
        decay = [parameter for parameter in self.model.parameters() if parameter.ndim > 1]
        others = [parameter for parameter in self.model.parameters() if parameter.ndim <= 1]
        weight_decay = self.training.regularization.weight_decay
        options = self.training.optimizer.model_dump(exclude={"name"})
        if self.device.type == "cuda":
            options["fused"] = True
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
        optimizer: torch.optim.Optimizer = getattr(torch.optim, self.training.optimizer.torch_class)(groups, **options)
        return optimizer
