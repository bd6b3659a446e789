"""Mixup and CutMix per batch on the device, with soft targets (timm's Mixup in batch mode).

A batch is mixed with probability `prob`: CutMix (with probability `switch_prob` when both are
on) pastes a box of the batch in reverse order into each image, Mixup blends the two images; the
targets are the same blend of the one-hot labels, smoothed by `label_smoothing`. The draws come
from torch's CPU generator, so a seeded or resumed run mixes the same way, and nothing waits for
the device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from animalcls.config import mixing_enabled


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot labels with `smoothing` spread evenly over all classes (rows sum to one)."""
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + smoothing / num_classes


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the image around a uniform centre, clipped to the image:
    (top, bottom, left, right)."""
    cut = (1.0 - lam) ** 0.5
    h, w = int(height * cut), int(width * cut)
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    return max(cy - h // 2, 0), min(cy + h // 2, height), max(cx - w // 2, 0), min(cx + w // 2, width)


class Mixer:
    def __init__(self, mix: Any, num_classes: int, label_smoothing: float = 0.0) -> None:
        self.mixup, self.cutmix = float(mix.mixup_alpha), float(mix.cutmix_alpha)
        self.prob, self.switch = float(mix.prob), float(mix.switch_prob)
        self.num_classes, self.smoothing = num_classes, float(label_smoothing)
        self.enabled = mixing_enabled(mix)  # off: the criterion smooths instead (build_criterion)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed images and their soft targets."""
        targets = soft_targets(labels, self.num_classes, self.smoothing)
        if float(torch.rand(())) >= self.prob:
            return images, targets
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or float(torch.rand(())) < self.switch)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        reverse = images.flip(0)
        if use_cutmix:
            top, bottom, left, right = cutmix_box(images.shape[2], images.shape[3], lam)
            images = images.clone()
            images[:, :, top:bottom, left:right] = reverse[:, :, top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (images.shape[2] * images.shape[3])
        else:
            images = images * lam + reverse * (1.0 - lam)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)
