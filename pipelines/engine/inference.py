"""Batched inference: a model's logits for a whole image set, at once or batch by batch, and the validation split
scored during training."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.data.images import ImageSet, MappedImages
from pipelines.engine.rows import RowTable
from pipelines.engine.runtime import Runtime

# Images per forward pass when no batch size is given: memory only, inference has no batch statistics.
INFERENCE_BATCH_SIZE = 1024


@torch.no_grad()
def iter_logits(
    model: nn.Module, images: torch.Tensor | MappedImages, device: torch.device, batch_size: int = INFERENCE_BATCH_SIZE
) -> Iterator[torch.Tensor]:
    """Logits [batch, classes] on the CPU for consecutive batches of uint8 images [N, C, H, W], in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            yield model(images[start : start + batch_size].to(device).float().div_(255.0)).float().cpu()
    finally:
        model.train(was_training)


def predict_logits(
    model: nn.Module, images: torch.Tensor | MappedImages, device: torch.device, batch_size: int = INFERENCE_BATCH_SIZE
) -> torch.Tensor:
    """Logits [N, classes] on the CPU for uint8 images [N, C, H, W], in eval mode."""
    return torch.cat(list(iter_logits(model, images, device, batch_size)))


class ValidationSplit:
    """The validation split as training scores it every epoch: its pixels and labels read once (and kept on the GPU
    where the speed settings let them and they fit), scored in forward passes of one fixed size, the last one
    padded with repeated rows that are masked out (torch.compile sees one shape), under autocast and
    channels_last, the loss and the hits summed on the device and read back once."""

    def __init__(self, val_set: ImageSet, runtime: Runtime) -> None:
        self.val_set, self.runtime = val_set, runtime
        self.images = RowTable(val_set.images, "the validation split's pixels")
        self.labels = RowTable(val_set.labels, "its labels")
        for table in (self.images, self.labels):
            table.keep_on(runtime)
        self.memory_format = torch.channels_last if runtime.speed.channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.val_set)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Validation loss and accuracy of `model` on the whole split, on this process."""
        sums = self.sums(model, 0, len(self), math.ceil(len(self) / INFERENCE_BATCH_SIZE))
        loss, correct = (sums / len(self)).tolist()
        return {"val_loss": loss, "val_accuracy": correct}

    @torch.no_grad()
    def sums(self, model: nn.Module, start: int, stop: int, batches: int) -> torch.Tensor:
        """[summed cross-entropy, correct predictions] (float64, on the device) of `model` in eval mode on rows
        [start, stop), in `batches` forward passes of equal size (all padding when there are fewer rows than
        passes): processes that share out a split must run the same number of forwards (FSDP gathers weights)."""
        device, was_training = self.runtime.device, model.training
        size = max(1, math.ceil((stop - start) / batches))
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        model.eval()
        try:
            for index in range(batches):
                positions = torch.arange(start + index * size, start + (index + 1) * size, device=self.images.device)
                rows = positions.clamp(max=max(stop - 1, 0))
                images = self.images.rows(rows, device).float().div_(255.0).contiguous(memory_format=self.memory_format)
                with self.runtime.autocast():
                    logits = model(images).float()
                labels, kept = self.labels.rows(rows, device), (positions < stop).to(device)
                loss = torch.where(kept, F.cross_entropy(logits, labels, reduction="none"), 0.0).sum()
                sums += torch.stack([loss.double(), ((logits.argmax(1) == labels) & kept).sum().double()])
        finally:
            model.train(was_training)
        return sums


def val_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Validation loss and accuracy of logits [N, classes] (on the CPU) for their labels."""
    return {
        "val_loss": F.cross_entropy(logits, labels).item(),
        "val_accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }
