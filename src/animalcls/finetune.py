"""Fine-tuning controls for a pretrained model: which parameters are its new head, parameter groups
(a head lr multiplier; no weight decay on biases and norm parameters), and a frozen backbone for the
first epochs, with its batch-norm layers kept in eval mode so their ImageNet statistics stay."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn


def is_head(name: str, head: str) -> bool:
    """Whether the parameter `name` (from named_parameters) belongs to the module at `head`."""
    return bool(head) and (name == head or name.startswith(head + "."))


def parameter_groups(
    model: nn.Module, head: str, lr: float, weight_decay: float, head_lr_mult: float, decay_norm_bias: bool
) -> list[dict[str, Any]] | Iterator[nn.Parameter]:
    """The optimizer's parameter groups; plain `model.parameters()` (the paper's one group) when
    neither a head multiplier nor a weight decay that skips biases and norms asks for more."""
    split_head = head_lr_mult != 1.0 and bool(head)
    split_decay = weight_decay > 0 and not decay_norm_bias
    if not split_head and not split_decay:
        return model.parameters()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        key = (split_head and is_head(name, head), split_decay and parameter.ndim <= 1)
        groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "lr": lr * (head_lr_mult if in_head else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (in_head, no_decay), params in groups.items()
    ]


class Freezer:
    """Trains only the head for epochs 1..`epochs`, then everything."""

    def __init__(self, model: nn.Module, head: str, epochs: int) -> None:
        self.model, self.head, self.epochs = model, head, epochs
        self.frozen = False

    def on_epoch_start(self, epoch: int) -> None:
        self.frozen = epoch <= self.epochs
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(not self.frozen or is_head(name, self.head))

    def train_mode(self, model: nn.Module) -> None:
        """model.train(), but a frozen backbone's batch norms keep their running statistics."""
        model.train()
        if not self.frozen:
            return
        for name, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_head(name, self.head):
                module.eval()
