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


def val_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Validation loss and accuracy of logits [N, classes] (on the CPU) for their labels."""
    return {
        "val_loss": F.cross_entropy(logits, labels).item(),
        "val_accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }
