"""Batched, seeded image augmentation: one random affine warp (with an optional random resized crop and a
random crop of the padded image), color jitter, noise and cutout per image, then optionally mixup or cutmix
with another image, all as tensor ops on the whole batch, on the batch's device.

Every random draw comes from a `Draws` (pipelines/data/draws.py): the caller's torch.Generator for the
`augment` stage's fixed transfer set (`augment_batch`, `mix_batch`), or a hash keyed by seed, epoch and image
for a training step's fresh views (`view_batch`, `mix_pairs`, pipelines/engine/views.py). Either way the same
seed gives the same images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipelines.config.data import ColorJitterParams, MixParams, RandomResizedCropParams, TransformParams
from pipelines.data.draws import Draws, GeneratorDraws


def augment_batch(images: torch.Tensor, params: TransformParams, generator: torch.Generator) -> torch.Tensor:
    """Augment float images [B, C, H, W] in [0, 1] with draws from `generator`; returns a new tensor of the
    same shape, clamped to [0, 1]."""
    return view_batch(images, params, GeneratorDraws(generator, len(images), images.device))


def view_batch(images: torch.Tensor, params: TransformParams, draws: Draws) -> torch.Tensor:
    """Augment float images [B, C, H, W] in [0, 1] with `draws`; returns a new tensor of the same shape on the
    same device, clamped to [0, 1]."""
    batch, _, height, width = images.shape
    device = images.device

    # Rotation, scale, translation and flip as one affine matrix per image. affine_grid maps each
    # output pixel to an input location in [-1, 1] coordinates, so the matrix is the inverse warp.
    angle = draws.uniform(-1.0, 1.0) * math.radians(params.rotation_degrees)
    inverse_scale = 1.0 / draws.uniform(*params.scale)
    shift_x = draws.uniform(-1.0, 1.0) * 2.0 * params.translate
    shift_y = draws.uniform(-1.0, 1.0) * 2.0 * params.translate
    flip = torch.ones(batch, device=device)
    if params.horizontal_flip:
        flip = torch.where(draws.uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift_x], dim=1), torch.stack([sin * flip, cos, shift_y], dim=1)], dim=1
    )
    if params.random_resized_crop is not None:
        theta = random_crop(params.random_resized_crop, draws) @ _homogeneous(theta)
    if params.pad_crop:
        theta = pad_crop(params.pad_crop, height, width, draws) @ _homogeneous(theta)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    out = color_jitter(out, params.color_jitter, draws)
    if params.noise_std:
        out = out + params.noise_std * draws.normal(tuple(out.shape))
    else:
        draws.discard_normal(tuple(out.shape))

    # Cutout: erase one square (clipped at the border) in a random subset of the images. Its draws are made
    # even when it is off, so that turning it on leaves every other draw as it was.
    erase = draws.uniform(0.0, 1.0) < params.cutout_probability
    top = draws.integers(height).view(batch, 1, 1) - params.cutout_size // 2
    left = draws.integers(width).view(batch, 1, 1) - params.cutout_size // 2
    if params.cutout_probability:
        rows = torch.arange(height, device=device).view(1, height, 1)
        cols = torch.arange(width, device=device).view(1, 1, width)
        square = ((rows >= top) & (rows < top + params.cutout_size)
                  & (cols >= left) & (cols < left + params.cutout_size))
        out = out.masked_fill((square & erase.view(batch, 1, 1)).unsqueeze(1), 0.0)

    return out.clamp_(0.0, 1.0)


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, params: MixParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup or cutmix of float images [B, C, H, W], each with the next image of the batch (the last with the
    first), as timm does, with draws from `generator`. Returns (images, mix_labels, mix_weights): each image's
    second label and the share of its own label, 1 where it was left alone (`mix_labels` then repeats its
    label)."""
    draws = GeneratorDraws(generator, len(images), images.device)
    draws.start_mix()
    partner = torch.roll(torch.arange(len(images), device=images.device), -1)
    return mix_pairs(images, labels, images[partner], labels[partner], params, draws)


def mix_pairs(images: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, partner_labels: torch.Tensor,
              params: MixParams, draws: Draws) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup or cutmix of each image with its partner (`partners`, the same shape): the images, each one's
    second label and the share of its own label (see `mix_batch`)."""
    batch, _, height, width = images.shape
    device = images.device
    mixed = draws.uniform(0.0, 1.0) < params.probability
    use_cutmix = draws.uniform(0.0, 1.0) < params.switch_probability
    if params.mixup_alpha == 0.0 or params.cutmix_alpha == 0.0:
        use_cutmix = torch.full((batch,), params.cutmix_alpha > 0.0, device=device)
    alpha = torch.where(use_cutmix, params.cutmix_alpha, params.mixup_alpha)
    share = torch.where(mixed, draws.beta(alpha.clamp(min=1e-6)), 1.0)

    # Cutmix: a box of (1 - share) of the area at a random center, clipped at the border; the share
    # becomes the area actually kept.
    side = torch.sqrt(1.0 - share)
    center_y = draws.uniform(0.0, 1.0) * height
    center_x = draws.uniform(0.0, 1.0) * width
    top, bottom = _span(center_y, side * height, height)
    left, right = _span(center_x, side * width, width)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    box = ((rows >= top.view(-1, 1, 1)) & (rows < bottom.view(-1, 1, 1))
           & (cols >= left.view(-1, 1, 1)) & (cols < right.view(-1, 1, 1)))
    box &= (use_cutmix & mixed).view(-1, 1, 1)
    box_share = 1.0 - box.float().mean(dim=(1, 2))

    blended = share.view(-1, 1, 1, 1) * images + (1.0 - share.view(-1, 1, 1, 1)) * partners
    pasted = torch.where(box.unsqueeze(1), partners, images)
    out = torch.where(use_cutmix.view(-1, 1, 1, 1), pasted, blended)
    weights = torch.where(use_cutmix, box_share, share)
    mix_labels = torch.where(weights < 1.0, partner_labels, labels)
    return out, mix_labels, weights


def random_crop(params: RandomResizedCropParams, draws: Draws) -> torch.Tensor:
    """[B, 2, 3] maps from a full output image to a random crop of the input (a share of its area, an
    aspect ratio, anywhere it fits): sampling through it resizes the crop to the whole image."""
    area = draws.uniform(*params.scale)
    ratio = torch.exp(draws.uniform(math.log(params.ratio[0]), math.log(params.ratio[1])))
    crop_width = torch.sqrt(area * ratio).clamp(max=1.0)  # as fractions of the image's width and height
    crop_height = torch.sqrt(area / ratio).clamp(max=1.0)
    center_x = draws.uniform(-1.0, 1.0) * (1.0 - crop_width)
    center_y = draws.uniform(-1.0, 1.0) * (1.0 - crop_height)
    zero = torch.zeros(draws.batch, device=draws.device)
    return torch.stack(
        [torch.stack([crop_width, zero, center_x], dim=1), torch.stack([zero, crop_height, center_y], dim=1)], dim=1
    )


def pad_crop(padding: int, height: int, width: int, draws: Draws) -> torch.Tensor:
    """[B, 2, 3] shifts by a whole number of pixels in [-padding, padding] each way, zeros coming in: a random
    crop of the image padded by `padding` pixels (the CIFAR standard)."""
    shift_x = (draws.integers(2 * padding + 1) - padding).float() * 2.0 / width
    shift_y = (draws.integers(2 * padding + 1) - padding).float() * 2.0 / height
    one, zero = torch.ones(draws.batch, device=draws.device), torch.zeros(draws.batch, device=draws.device)
    return torch.stack([torch.stack([one, zero, shift_x], dim=1), torch.stack([zero, one, shift_y], dim=1)], dim=1)


def color_jitter(images: torch.Tensor, params: ColorJitterParams, draws: Draws) -> torch.Tensor:
    """Brightness scales the pixels, contrast their spread around the image's mean gray, saturation the
    colors' spread around each pixel's gray (RGB only); one factor per image each, drawn only when enabled."""
    batch, channels = images.shape[:2]
    if params.saturation and channels != 3:
        raise ValueError(f"augment.color_jitter.saturation needs 3-channel (RGB) images; these have {channels}")

    def factor(strength: float) -> torch.Tensor:
        return draws.uniform(1.0 - strength, 1.0 + strength).view(batch, 1, 1, 1)

    if params.brightness:
        images = images * factor(params.brightness)
    if params.contrast:
        mean_gray = _gray(images).mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean_gray) * factor(params.contrast) + mean_gray
    if params.saturation:
        gray = _gray(images)
        images = (images - gray) * factor(params.saturation) + gray
    return images


def _gray(images: torch.Tensor) -> torch.Tensor:
    """Luma [B, 1, H, W] (ITU-R 601 weights) of RGB images; a 1-channel image is its own gray."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _span(center: torch.Tensor, length: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel range [start, end) of `length` around `center`, clipped to [0, limit]."""
    return (center - length / 2).round().clamp(0, limit), (center + length / 2).round().clamp(0, limit)


def _homogeneous(theta: torch.Tensor) -> torch.Tensor:
    """[B, 2, 3] affine matrices as [B, 3, 3], so that they compose by matrix product."""
    last_row = torch.tensor([0.0, 0.0, 1.0], device=theta.device).expand(theta.shape[0], 1, 3)
    return torch.cat([theta, last_row], dim=1)
