"""Batched inference: a model's logits for a whole image tensor."""

from __future__ import annotations

import torch
from torch import nn

# Images per forward pass when no batch size is given: memory only, inference has no batch statistics.
INFERENCE_BATCH_SIZE = 1024


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = INFERENCE_BATCH_SIZE
) -> torch.Tensor:
    """Logits [N, classes] on the CPU for uint8 images [N, C, H, W], in eval mode."""
    was_training = model.training
    model.eval()
    outputs = [
        model(images[start : start + batch_size].to(device).float().div_(255.0)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(outputs)
