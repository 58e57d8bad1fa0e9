"""Input scaling and batched augmentation, on whatever device the batch lives on.

The cache already holds images at the training size, so nothing here decodes or resizes; the
augmentation acts on whole batches (on the GPU when there is one), not image by image in workers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def scale_input(images: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 or float images (B, 3, H, W) in 0..255 -> the float input the model sees.

    ``minmax255`` reproduces the official VM-UNet(V2) pipeline: per-image min-max over all
    channels to [0, 255] (their mean/std constants cancel out). ``unit`` divides by 255.
    """
    images = images.float()
    if mode == "unit":
        return images / 255.0
    if mode != "minmax255":
        raise ValueError(f"unknown input_scaling {mode!r}; expected 'minmax255' or 'unit'")
    flat = images.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (images - low) / (high - low).clamp_min(1e-8) * 255.0


def _rotation_grids(angles_degrees: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    radians = angles_degrees * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    return F.affine_grid(theta, list(shape), align_corners=False)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    hflip: float = 0.5,
    vflip: float = 0.5,
    rotate: float = 0.5,
    fixed_angle: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and rotation applied identically to images (B,C,H,W) and masks (B,1,H,W).

    Random numbers come from ``generator`` (on the CPU) so a run is reproducible whatever the
    device. Rotation uses nearest sampling and zero fill, as torchvision's default rotate does in
    the official pipeline; ``fixed_angle`` reproduces its one-angle-per-run quirk. The official
    pipeline scales each image (``scale_input``) before it rotates it, so the fill is the scaled
    minimum: pass images that are already scaled.
    """
    batch = images.shape[0]
    draws = torch.rand(batch, 4, generator=generator)
    device = images.device
    flip_h = (draws[:, 0] < hflip).to(device).view(-1, 1, 1, 1)
    flip_v = (draws[:, 1] < vflip).to(device).view(-1, 1, 1, 1)
    images = torch.where(flip_h, images.flip(-1), images)
    masks = torch.where(flip_h, masks.flip(-1), masks)
    images = torch.where(flip_v, images.flip(-2), images)
    masks = torch.where(flip_v, masks.flip(-2), masks)
    rotating = draws[:, 2] < rotate
    if rotating.any():
        angles = torch.full((batch,), float(fixed_angle)) if fixed_angle is not None else draws[:, 3] * 360.0
        angles = torch.where(rotating, angles, torch.zeros_like(angles)).to(device=device, dtype=images.dtype)
        grid = _rotation_grids(angles, images.shape)
        images = F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images, masks
