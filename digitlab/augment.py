"""Data augmentation for training: one random affine warp per image, optionally with elastic distortion.

All randomness comes from the generator passed in, which training seeds from (seed, epoch, step), so
an augmented run is as reproducible, and as resumable, as a plain one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, generator: torch.Generator, elastic: float = 0.0) -> torch.Tensor:
    """Random small rotations (+-10 deg), scaling (0.9-1.1) and shifts (+-2 px) of float images
    x (N, 1, H, W) in [0, 1], one affine warp per image; with elastic > 0, also a smooth random
    displacement field (Simard et al. 2003: uniform noise blurred by a Gaussian of sigma 4 px, scaled
    by `elastic` px), folded into the same warp. Returns a new tensor of x's shape, values in [0, 1]
    (bilinear resampling, zeros outside). Never flips: digits are not symmetric."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 14)  # normalised coords: 14 px = 1.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    if elastic:
        grid = grid + _elastic_field(n, x.shape[-2:], generator, elastic).to(x.device)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def _elastic_field(n: int, size: torch.Size, generator: torch.Generator, elastic: float) -> torch.Tensor:
    """(N, H, W, 2) smooth displacements in normalised grid coordinates, of about `elastic` pixels."""
    h, w = size
    field = torch.rand(n, 2, h, w, generator=generator) * 2 - 1
    sigma = 4.0
    r = torch.arange(-8, 9, dtype=torch.float32)  # +-2 sigma: the tail adds nothing visible
    k = torch.exp(-r**2 / (2 * sigma**2))
    k /= k.sum()
    # Separable blur, each of the two displacement channels on its own (groups=2).
    field = F.conv2d(field, k.view(1, 1, 1, -1).expand(2, 1, 1, -1), padding=(0, 8), groups=2)
    field = F.conv2d(field, k.view(1, 1, -1, 1).expand(2, 1, -1, 1), padding=(8, 0), groups=2)
    # Pixels to normalised coordinates (the image spans 2.0), channels last as the grid wants them.
    return (field * elastic * 2 / torch.tensor([w, h]).view(1, 2, 1, 1)).permute(0, 2, 3, 1)
