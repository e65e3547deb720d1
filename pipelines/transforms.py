"""Batched, seeded image augmentation: one random affine warp, noise and cutout per image, all as tensor ops.

Every random draw comes from the caller's torch.Generator, so the same seed gives the same images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipelines.config import AugmentParams


def augment_batch(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Augment float images [B, C, H, W] in [0, 1]; returns a new tensor of the same shape, clamped to [0, 1]."""
    batch, _, height, width = images.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    # Rotation, scale, translation and flip as one affine matrix per image. affine_grid maps each
    # output pixel to an input location in [-1, 1] coordinates, so the matrix is the inverse warp.
    angle = uniform(-1.0, 1.0) * math.radians(params.rotation_degrees)
    inverse_scale = 1.0 / uniform(*params.scale)
    shift_x = uniform(-1.0, 1.0) * 2.0 * params.translate
    shift_y = uniform(-1.0, 1.0) * 2.0 * params.translate
    flip = torch.ones(batch)
    if params.horizontal_flip:
        flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift_x], dim=1), torch.stack([sin * flip, cos, shift_y], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    out = out + params.noise_std * torch.randn(out.shape, generator=generator)

    # Cutout: erase one square (clipped at the border) in a random subset of the images.
    erase = torch.rand(batch, generator=generator) < params.cutout_probability
    top = torch.randint(0, height, (batch, 1, 1), generator=generator) - params.cutout_size // 2
    left = torch.randint(0, width, (batch, 1, 1), generator=generator) - params.cutout_size // 2
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    square = (rows >= top) & (rows < top + params.cutout_size) & (cols >= left) & (cols < left + params.cutout_size)
    out = out.masked_fill((square & erase.view(batch, 1, 1)).unsqueeze(1), 0.0)

    return out.clamp_(0.0, 1.0)
