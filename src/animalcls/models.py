"""The models: the paper's base CNN, and torchvision models with a new head (registered in registry.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from animalcls.errors import AnimalclsError

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

log = logging.getLogger(__name__)


class BaseCNN(nn.Module):
    """The paper's base model (Section 1.4): 4 conv + ReLU + 2x2 max-pool, then one linear layer.

    At 112 px the feature map is 128 x 5 x 5 = 3,200, as in the paper. `batch_norm` adds the
    paper's "3 extra batch-norm layers"; the paper does not say where, so we put them after conv1,
    conv2 and conv3 (before each ReLU). `dropout` > 0 adds one Dropout before fc1. The output is
    log_softmax, as in the paper (cross entropy on log-probabilities gives the same loss).
    """

    def __init__(self, num_classes: int, batch_norm: bool = False, dropout: float = 0.0, input_size: int = 112) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5)
        self.conv2 = nn.Conv2d(64, 128, 3)
        self.conv3 = nn.Conv2d(128, 128, 3)
        self.conv4 = nn.Conv2d(128, 128, 3)
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.bn1, self.bn2, self.bn3 = norm(64), norm(128), norm(128)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc1 = nn.Linear(128 * self.feature_side(input_size) ** 2, num_classes)

    @staticmethod
    def feature_side(size: int) -> int:
        for kernel in (5, 3, 3, 3):
            size = (size - kernel + 1) // 2
        if size < 1:
            raise AnimalclsError("the base CNN needs inputs of at least 46 px (aug.crop)")
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)
        x = self.dropout(torch.flatten(x, 1))
        return F.log_softmax(self.fc1(x), dim=1)


def _submodule_parent(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *parents, last = dotted.split(".")
    owner = model
    for part in parents:
        # a numbered part indexes a container (torchvision's heads sit in Sequentials)
        owner = cast(nn.Sequential, owner)[int(part)] if part.isdigit() else getattr(owner, part)
    return owner, last


def replace_head(model: nn.Module, head: str, num_classes: int) -> nn.Module:
    """Swap the Linear layer at the dotted path `head` (e.g. `fc`, `classifier.3`) for a new one."""
    owner, last = _submodule_parent(model, head)
    old = cast(nn.Sequential, owner)[int(last)] if last.isdigit() else getattr(owner, last)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{head} of {type(model).__name__} is {type(old).__name__}, not a Linear head")
    new = nn.Linear(old.in_features, num_classes)
    if last.isdigit():
        cast(nn.Sequential, owner)[int(last)] = new
    else:
        setattr(owner, last, new)
    return model


def _imagenet_weights(name: str) -> WeightsEnum:
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def _read_weights_file(path: Path, name: str) -> dict[str, torch.Tensor]:
    import pickle

    try:
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    except pickle.UnpicklingError as exc:
        raise AnimalclsError(
            f"refused to load model.weights={path}: it holds Python objects that could "
            f"run code when loaded; give a plain state dict of {name} "
            f"({str(exc).strip().splitlines()[0][:120]})."
        ) from None
    except Exception as exc:  # truncated, not a torch file
        raise AnimalclsError(
            f"model.weights={path} is not a readable state dict of {name} "
            f"({type(exc).__name__}: {str(exc).strip()[:120]})."
        ) from None


def load_pretrained(model: nn.Module, name: str, weights_file: str | None) -> None:
    """ImageNet weights from a local file, or torchvision's weights API (the torch hub cache)."""
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise AnimalclsError(
                f"model.weights={weights_file}: no such file. Give the path of a "
                f"torchvision ImageNet state dict for {name}."
            )
        state = _read_weights_file(path, name)
    else:
        weights = _imagenet_weights(name)
        filename = Path(weights.url).name
        target = Path(torch.hub.get_dir()) / "checkpoints" / filename
        try:
            state = weights.get_state_dict(progress=False, check_hash=False)
        except Exception as exc:  # offline: URLError, socket errors, HTTP errors
            raise AnimalclsError(
                f"could not get the ImageNet weights for {name} ({type(exc).__name__}: {exc}). "
                f"This machine may be offline: download {weights.url} elsewhere and place it at "
                f"{target}, or pass model.weights=/path/to/{filename}, or train from scratch with "
                f"model.pretrained=false."
            ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise AnimalclsError(f"the weights do not fit {name}: {str(exc).splitlines()[0]}") from None


def torchvision_with_head(name: str, head: str, num_classes: int, pretrained: bool, weights: str | None) -> nn.Module:
    """torchvision's `name`, with ImageNet weights when asked, and a new `num_classes` head."""
    from torchvision.models import get_model

    model = get_model(name, weights=None)
    if pretrained:
        load_pretrained(model, name, weights)
    return replace_head(model, head, num_classes)
