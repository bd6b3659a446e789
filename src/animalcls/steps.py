"""One training step and what the loop and the factories share about it: the step's settings,
the recipe around it, the protocols of batches and captured steps, and `after_step`, what follows
every optimizer step whether it ran eagerly or as a CUDA graph.

It sits below both `animalcls.build` (which fills a Recipe) and `animalcls.engine` (which runs it),
so that neither has to import the other (tests/test_layers.py keeps it so).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

Augment = Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> normalised model input
Reduce = Callable[[torch.Tensor], torch.Tensor]  # a meter's raw sums -> their sum over processes


class Batches(Protocol):
    """What the engine evaluates on: a sized iterable of (uint8 images, labels) batches
    (data.TensorBatches, data.PILBatches and their wrappers)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class EpochBatches(Batches, Protocol):
    """What the engine trains on: Batches whose order is reseeded per epoch."""

    def set_epoch(self, epoch: int) -> None: ...


class GraphedSteps(Protocol):
    """Steps captured as CUDA graphs (animalcls.graphs.StepGraphs); each returns None where the
    engine runs its own, eager step."""

    def train(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        augment: Augment,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: StepSettings,
        scaler: torch.amp.GradScaler | None,
        recipe: Recipe,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None: ...

    def evaluate(
        self, model: nn.Module, images: torch.Tensor, augment: Augment, settings: StepSettings, tta: bool
    ) -> torch.Tensor | None: ...


@dataclass
class StepSettings:
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16
    stop: threading.Event = field(default_factory=threading.Event)
    progress: bool = True  # a tqdm bar when stderr is a terminal
    log_every: int = 0  # a log line every N training batches (loss, img/s, lr, ETA of the epoch); 0 = off

    def autocast(self) -> AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


@dataclass
class Recipe:
    """What a modern recipe adds around each training step; all off by default, which is the
    paper's step exactly."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped after every optimizer step
    ema: Any = None  # animalcls.ema.ModelEma: updated after every optimizer step
    mixer: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    clip_grad_norm: float = 0.0  # 0 = off
    train_mode: Callable[[nn.Module], None] | None = None  # model.train(), or keep a frozen BN in eval
    on_epoch_start: Callable[[int], None] | None = None  # e.g. unfreeze the backbone
    patience: int = 0  # early stopping: epochs without a better val top-1 (0 = off)
    min_delta: float = 0.0  # percentage points that count as better
    tta: bool = False  # evaluate on the image and its mirror image
    graphs: GraphedSteps | None = None  # CUDA graphs of the steps (animalcls.graphs); None = eager


def train_step(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under autocast, backward, optimizer step; returns the logits and the loss.
    `targets` are class indices, or soft targets (rows summing to one) under mixup."""
    with settings.autocast():
        logits = model(inputs)
        loss = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
    return logits, loss


def recipe_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None,
    recipe: Recipe,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training step with the recipe's mixing, clipping, schedule and EMA. Returns the logits,
    the loss and the labels its top-1 is counted against (under mixup: each image's dominant one)."""
    targets = labels
    if recipe.mixer is not None:
        images, targets = recipe.mixer(images, labels)
        labels = targets.argmax(dim=1)
    logits, loss = train_step(model, images, targets, criterion, optimizer, settings, scaler, recipe.clip_grad_norm)
    after_step(recipe, model)
    return logits, loss, labels


def after_step(recipe: Recipe, model: nn.Module) -> None:
    """What follows every optimizer step: the per-step lr schedule, then the EMA update.

    The one place for it: the eager step (`recipe_step`) and a CUDA graph's replay
    (`animalcls.graphs`) both call it, so a change here reaches both paths."""
    if recipe.scheduler is not None:
        recipe.scheduler.step()
    if recipe.ema is not None:
        recipe.ema.update(model)
