"""The one training loop, for every model, on CPU or CUDA: train_one_epoch, evaluate, fit.

The engine knows nothing about configs, paper tables or files beyond its checkpoint callback: it
takes a model, batch iterators of uint8 images, an augmenter and an optimizer. One step, its
settings and its recipe live in `animalcls.steps`, which the factories (`animalcls.build`) share
without importing the loop.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import nn

from animalcls.errors import Interrupted
from animalcls.metrics import TopKMeter
from animalcls.steps import Augment, Batches, EpochBatches, GraphedSteps, Recipe, Reduce, StepSettings, recipe_step

log = logging.getLogger(__name__)


def _bar(batches: Batches, desc: str, enabled: bool) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    from tqdm.auto import tqdm

    bar: Iterable[tuple[torch.Tensor, torch.Tensor]] = tqdm(
        batches,
        total=len(batches),
        desc=desc,
        unit="batch",
        leave=False,
        disable=None if enabled else True,
        dynamic_ncols=True,
    )
    return bar


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    augment: Augment,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
    reduce: Reduce | None = None,
    recipe: Recipe | None = None,
) -> dict[str, Any]:
    """One pass over the training batches. Returns loss, top-1, seconds, images/s, finite.

    With `reduce` (DDP) the loss, top-1 and images/s are those of all processes together, so every
    rank takes the same decision on a diverged run.
    """
    recipe = recipe or Recipe()
    (recipe.train_mode or nn.Module.train)(model)
    meter = TopKMeter((1,))
    start = time.perf_counter()
    total, seen = len(batches), 0
    for step, (images, labels) in enumerate(_bar(batches, desc, settings.progress), 1):
        if settings.stop.is_set():
            raise Interrupted()
        graphed = None
        if recipe.graphs is not None:
            graphed = recipe.graphs.train(
                model, images, labels, augment, criterion, optimizer, settings, scaler, recipe
            )
        if graphed is None:
            graphed = recipe_step(model, augment(images), labels, criterion, optimizer, settings, scaler, recipe)
        logits, loss, counted = graphed
        meter.update(logits, counted, loss)
        seen += int(labels.shape[0])
        if settings.log_every and (step % settings.log_every == 0 or step == total):
            synchronize(settings.device)
            _log_batches(desc, step, total, meter.loss, seen, time.perf_counter() - start, optimizer)
    synchronize(settings.device)
    if reduce is not None:
        meter.load_state(reduce(meter.state()))
    seconds = time.perf_counter() - start
    count = meter.count
    return {
        "train_loss": meter.loss,
        "train_top1": meter.accuracy(1),
        "seconds": seconds,
        "images_per_s": count / max(seconds, 1e-9),
        "finite": math.isfinite(meter.loss),
    }


@overload
def evaluate(
    model: nn.Module,
    batches: Batches,
    augment: Augment,
    criterion: nn.Module,
    settings: StepSettings,
    keep_outputs: Literal[False] = False,
    reduce: Reduce | None = None,
    tta: bool = False,
    graphs: GraphedSteps | None = None,
) -> dict[str, float]: ...


@overload
def evaluate(
    model: nn.Module,
    batches: Batches,
    augment: Augment,
    criterion: nn.Module,
    settings: StepSettings,
    keep_outputs: Literal[True],
    reduce: Reduce | None = None,
    tta: bool = False,
    graphs: GraphedSteps | None = None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]: ...


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Batches,
    augment: Augment,
    criterion: nn.Module,
    settings: StepSettings,
    keep_outputs: bool = False,
    reduce: Reduce | None = None,
    tta: bool = False,
    graphs: GraphedSteps | None = None,
) -> dict[str, float] | tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Loss and top-1/3/5 over the batches; optionally the logits and labels, for predictions.

    `reduce` sums the meter's raw counts across processes (DDP), so every rank reports the metrics
    of the whole set. `tta` averages the outputs for each image and its mirror image. `graphs`
    replays captured evaluation steps where it can (CUDA).
    """
    model.eval()
    meter = TopKMeter()
    outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for images, labels in _bar(batches, "eval", settings.progress):
        graphed = None if graphs is None else graphs.evaluate(model, images, augment, settings, tta)
        if graphed is not None:
            logits = graphed
        else:
            inputs = augment(images)
            with settings.autocast():
                logits = model(inputs).float()
                if tta:
                    logits = (logits + model(inputs.flip(3)).float()) / 2
        meter.update(logits, labels, criterion(logits, labels))
        if keep_outputs:
            outputs.append(logits.cpu())
            targets.append(labels.cpu())
    if reduce is not None:
        meter.load_state(reduce(meter.state()))
    result = {"loss": meter.loss, **{f"top{k}": meter.accuracy(k) for k in meter.ks}}
    if keep_outputs:
        return result, torch.cat(outputs), torch.cat(targets)
    return result


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    status: str  # ok | diverged
    best_epoch: int
    best_val_top1: float
    train_seconds: float
    stopped_early: str = ""  # why training ended before `epochs` (early stopping), else ""


def fit(
    model: nn.Module,
    train_batches: EpochBatches,
    val_batches: Batches,
    train_augment: Augment,
    eval_augment: Augment,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    epochs: int,
    start_epoch: int = 0,
    history: Iterable[dict[str, Any]] = (),
    best_val_top1: float = -1.0,
    on_epoch_end: Callable[[int, list[dict[str, Any]], bool], None] | None = None,
    reduce: Reduce | None = None,
    eval_model: nn.Module | None = None,
    recipe: Recipe | None = None,
) -> FitResult:
    """Train for `epochs` (continuing at `start_epoch`), validating after each epoch.

    `eval_model` validates instead of `model` (DDP: the unwrapped module, so that evaluation on
    uneven shards runs no collective but `reduce`; with EMA: the averaged model).

    `on_epoch_end(epoch, history, is_best)` saves checkpoints and the history; a non-finite
    training loss ends the run early as `diverged`; `recipe.patience` epochs without a better
    val top-1 end it early as `ok` (`stopped_early` says why).
    """
    history = list(history)
    recipe = recipe or Recipe()
    scaler = torch.amp.GradScaler(settings.device.type) if settings.precision == "fp16" else None
    best_epoch = max((h["epoch"] for h in history if h["val_top1"] == best_val_top1), default=0)
    status, stopped_early = "ok", ""
    for epoch in range(start_epoch + 1, epochs + 1):
        if recipe.on_epoch_start is not None:
            recipe.on_epoch_start(epoch)
        train_batches.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            train_batches,
            train_augment,
            criterion,
            optimizer,
            settings,
            scaler,
            desc=f"epoch {epoch}/{epochs}",
            reduce=reduce,
            recipe=recipe,
        )
        val_model = model if eval_model is None else eval_model
        val = evaluate(
            val_model,
            val_batches,
            eval_augment,
            criterion,
            settings,
            reduce=reduce,
            tta=recipe.tta,
            graphs=recipe.graphs,
        )
        row = {
            "epoch": epoch,
            "train_loss": stats["train_loss"],
            "train_top1": stats["train_top1"],
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top3": val["top3"],
            "val_top5": val["top5"],
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": stats["seconds"],
            "images_per_s": stats["images_per_s"],
        }
        history.append(row)
        is_best = stats["finite"] and val["top1"] > best_val_top1 + (recipe.min_delta if best_epoch else 0.0)
        if is_best:
            best_val_top1, best_epoch = val["top1"], epoch
        _log_epoch(row, epochs, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history, is_best)
        if not stats["finite"]:
            log.warning("training loss is %s at epoch %d: the run diverged; stopping early", stats["train_loss"], epoch)
            status = "diverged"
            break
        if recipe.patience and epoch - best_epoch >= recipe.patience and epoch < epochs:
            stopped_early = (
                f"early stopping: no better val top-1 than {best_val_top1:.2f}% (epoch {best_epoch}) "
                f"for {recipe.patience} epochs"
            )
            log.info("%s; stopping after epoch %d of %d", stopped_early, epoch, epochs)
            break
    seconds = sum(h["seconds"] for h in history)
    return FitResult(history, status, best_epoch, best_val_top1, seconds, stopped_early)


def _log_batches(
    desc: str, step: int, total: int, loss: float, images: int, seconds: float, optimizer: torch.optim.Optimizer
) -> None:
    """`log_every`'s line within an epoch (this process's batches): a long epoch on a CPU shows
    in train.log while it runs, not only at its end. The loss is the epoch's running mean."""
    eta = seconds / step * (total - step)
    log.info(
        "%s  batch %d/%d  loss %.4f  %.0f img/s  lr %.3g  epoch ETA %s",
        desc,
        step,
        total,
        loss,
        images / max(seconds, 1e-9),
        float(optimizer.param_groups[0]["lr"]),
        time.strftime("%H:%M:%S", time.gmtime(eta)),
    )


def _log_epoch(row: dict[str, Any], epochs: int, history: list[dict[str, Any]]) -> None:
    mean_seconds = sum(h["seconds"] for h in history) / len(history)
    eta = mean_seconds * (epochs - row["epoch"])
    log.info(
        "epoch %d/%d  train loss %.4f top1 %.2f%%  val loss %.4f top1 %.2f%% top5 %.2f%%  %.0f img/s  %.1fs  ETA %s",
        row["epoch"],
        epochs,
        row["train_loss"],
        row["train_top1"],
        row["val_loss"],
        row["val_top1"],
        row["val_top5"],
        row["images_per_s"],
        row["seconds"],
        time.strftime("%H:%M:%S", time.gmtime(eta)),
    )
    if sys.stderr.isatty():
        sys.stderr.flush()
