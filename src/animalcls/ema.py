"""An exponential moving average of the model's weights (as timm's ModelEmaV2), used for
validation, testing and best.pt when on; buffers (BN statistics) are copied, not averaged."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0

    def current_decay(self) -> float:
        """With warm-up, early averages forget fast: min(decay, (1 + n) / (10 + n))."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step after each optimizer step: ema += (1 - decay) * (weights - ema)."""
        self.updates += 1
        averaged: list[torch.Tensor] = list(self.module.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - self.current_decay())  # one kernel per dtype, not per tensor
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
