"""Batched inference: a model's logits for a whole image set, at once or batch by batch, and its validation metrics."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.data.images import ImageSet, MappedImages

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


def validate(model: nn.Module, val_set: ImageSet, device: torch.device) -> dict[str, float]:
    """Validation loss and accuracy of `model` on the whole split."""
    return val_metrics(predict_logits(model, val_set.images, device), val_set.labels)


@torch.no_grad()
def val_sums(model: nn.Module, val_set: ImageSet, start: int, stop: int, batches: int,
             device: torch.device) -> torch.Tensor:
    """[summed cross-entropy, correct predictions] (float64, on `device`) of `model` in eval mode on rows
    [start, stop) of `val_set`, in `batches` forward passes of nearly equal size (empty ones when there are
    fewer rows): processes that share out a split must run the same number of forwards (FSDP gathers weights)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        for index in range(batches):
            first, last = (start + (stop - start) * part // batches for part in (index, index + 1))
            logits = model(val_set.images[first:last].to(device).float().div_(255.0)).float()
            labels = val_set.labels[first:last].to(device)
            sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(1) == labels).sum()])
    finally:
        model.train(was_training)
    return sums


def val_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Validation loss and accuracy of logits [N, classes] (on the CPU) for their labels."""
    return {
        "val_loss": F.cross_entropy(logits, labels).item(),
        "val_accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }
