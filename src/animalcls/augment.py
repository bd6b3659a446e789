"""Batched augmentation and normalisation on the device, after the decode-once cache.

Each sample of each batch draws its own flip and rotation from the device's RNG, so every epoch
sees fresh augmentation although the pixels were decoded once. Input uint8 NCHW, output float.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class DeviceAugment:
    def __init__(self, aug, train: bool, channels_last: bool = False) -> None:
        self.hflip = float(aug.hflip) if train else 0.0
        self.rotation = float(aug.rotation) if train else 0.0
        self.mean = torch.tensor(list(aug.mean)).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(list(aug.std)).view(1, 3, 1, 1) * 255.0
        self.channels_last = channels_last
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # copied to the device once: a per-batch host-to-device copy would synchronise CUDA
        if device not in self._stats:
            self._stats[device] = (self.mean.to(device), self.std.to(device))
        return self._stats[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # Few passes over the batch, as each is a kernel launch on CUDA and a thread-pool round on
        # the CPU: flip the uint8 pixels (a quarter of the bytes), convert to float in the
        # model's memory format in one copy, then normalise in place.
        if self.hflip > 0:
            images = flip_random(images, self.hflip)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.to(torch.float32, memory_format=layout, copy=True)
        if self.rotation > 0:
            x = rotate_random(x, self.rotation).contiguous(memory_format=layout)
        mean, std = self._mean_std(x.device)
        return x.sub_(mean).div_(std)  # ToTensor's /255 folded into mean and std


def flip_random(x: torch.Tensor, p: float) -> torch.Tensor:
    """Mirror each sample left-right with probability p."""
    mask = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def rotate_random(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate each sample by its own angle in [-degrees, degrees]; corners filled with 0 (black),
    like torchvision's RandomRotation."""
    n = x.shape[0]
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
