"""CUDA graphs for the engine's steps: a training or evaluation step as one graph launch.

At the paper's batch 16 the small models are bound by kernel launches on a fast GPU (the recorded
H200 check, docs/bench/h200-2026-11-28: the engine runs at the limit of eager steps, and bf16
autocast, which adds cast kernels, is slower than fp32). A CUDA graph replays the step's hundreds
of kernels with one launch. `cuda_graphs: off | on | auto` picks it (`auto`: see `AUTO_MAX_BATCH`).

What is captured, on static input buffers (`torch.cuda.graph`, no torch.compile):
  train  augmentation, forward (autocast), loss, backward, gradient clipping and the optimizer
         step. The per-step lr schedule keeps working: the captured Adam/AdamW step reads each
         group's lr from a device tensor that is refilled from the (float) lr before a replay
         when it changed; the optimizer stays float-lr outside, so its state_dict, the history's
         lr and resume are unchanged. SGD's foreach step reads the lr as a host number, so with a
         schedule SGD's step runs eagerly right after the replay (three or four foreach kernels).
         EMA updates run eagerly after the replay (their decay is a host number that changes):
         the schedule's step and the EMA update are `steps.after_step`, the eager step's own.
  eval   augmentation and forward (and the mirrored forward with TTA).
The last, partial batch of an epoch runs eagerly on the same weights and optimizer state, not
padded: padding would change the batch-norm statistics and the mean loss. The first
`WARMUP_STEPS` full training batches run eagerly as real steps (on the capture stream, as the
CUDA graph documentation asks), then the graph is captured on the next one and replayed from then
on; every batch is trained on exactly once either way.

Eager fallbacks, each with one log line: not CUDA (the CPU path is the engine's own, unchanged),
DDP, torch.compile (use its own `mode="reduce-overhead"` instead), fp16 (GradScaler reads the
inf check on the host), a mixer (Mixup/CutMix branch on host-side random numbers), freezing (the
set of trained parameters changes mid-run) and optimizers other than Adam, AdamW and SGD.

On CUDA a graph draws its augmentation from the same generator, but in a different order than
eager steps (a replay advances the generator by the whole graph's offset), so graphs on and off
give different, equally valid random streams: same seed, same run with graphs, not the same
numbers as without (`scripts/gpu_paper.sh` compares the loss curves of two seeds).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from animalcls import steps
from animalcls.steps import Augment, Recipe, StepSettings, recipe_step

log = logging.getLogger(__name__)

# auto = on for CUDA runs with batch_size <= 64. The recorded H200 check (docs/bench/h200-2026-11-28)
# measured both the base CNN (112 px) and MobileNetV3-large (224 px) launch-bound at batch 16
# (engine = limit of eager steps, bf16 slower than fp32); their per-step arithmetic at 32 and 64 is
# still well under the launch time of their few hundred kernels. At batch 128 the base CNN is
# compute-bound (bf16 1.45x fp32), so auto leaves graphs off there. scripts/gpu_paper.sh measures
# batch 16 with and without graphs; revise this bound with what it finds.
AUTO_MAX_BATCH = 64
WARMUP_STEPS = 3  # eager steps before the capture (cuDNN/cuBLAS set-up, optimizer state)


def normalise(setting: Any) -> str:
    """`cuda_graphs` as on | off | auto; YAML's bare on/off arrive as booleans."""
    if isinstance(setting, bool):
        return "on" if setting else "off"
    value = str(setting).strip().lower()
    return {"true": "on", "false": "off"}.get(value, value)


def wanted(setting: Any, device: torch.device, batch_size: int) -> bool:
    """Whether this run asks for graphs: `on`, or `auto` on CUDA at batch_size <= AUTO_MAX_BATCH.
    Off the GPU always False; `on` there says so in one log line."""
    mode = normalise(setting)
    if device.type != "cuda":
        if mode == "on":
            log.warning("cuda_graphs=on, but the device is %s: steps run eagerly", device)
        return False
    return mode == "on" or (mode == "auto" and batch_size <= AUTO_MAX_BATCH)


def _unwrapped_kind(model: nn.Module) -> str:
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return "DDP (graphs across processes need static collectives)"
    if hasattr(model, "_orig_mod"):
        return "torch.compile (use compile's own mode='reduce-overhead')"
    return ""


def why_not_train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None,
    recipe: Recipe,
) -> str:
    """Why this training step cannot be captured ("" when it can)."""
    if settings.device.type != "cuda":
        return f"the device is {settings.device}"
    if kind := _unwrapped_kind(model):
        return kind
    if scaler is not None or settings.precision == "fp16":
        return "fp16 (the GradScaler checks for inf on the host)"
    if recipe.mixer is not None:
        return "mixup/cutmix (host-side random branching per batch)"
    if recipe.train_mode is not None or recipe.on_epoch_start is not None:
        return "finetune.freeze_epochs (the trained parameters change mid-run)"
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.SGD):
        return f"optimizer {type(optimizer).__name__} (graphs know Adam, AdamW and SGD)"
    if any(p.grad is not None and p.grad.is_sparse for g in optimizer.param_groups for p in g["params"]):
        return "sparse gradients"
    return ""


def _autocast(precision: str) -> Any:
    # the autocast weight cache must be off inside a capture (a cast cached outside the graph
    # would be read, never recomputed, by every replay)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype, enabled=precision != "fp32", cache_enabled=False)


@contextmanager
def _capturable(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Adam/AdamW with its step counter on the device (capturable=True) while the graph object
    steps it; the flag goes back afterwards, so a checkpoint's optimizer state loads on any device."""
    groups = [g for g in optimizer.param_groups if "capturable" in g and isinstance(optimizer, torch.optim.Adam)]
    before = [g["capturable"] for g in groups]
    # torch warns once that capturable=True steps run uncaptured: here that is the plan (warm-up, last batch)
    optimizer._warned_capturable_if_run_uncaptured = True
    for group in groups:
        group["capturable"] = True
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor) and step.device != p.device:  # e.g. resumed from a checkpoint
                optimizer.state[p]["step"] = step.to(p.device, torch.float32)
    try:
        yield
    finally:
        for group, value in zip(groups, before):
            group["capturable"] = value


class _TrainGraph:
    """One captured training step for one (model, augment, criterion, optimizer)."""

    def __init__(
        self,
        model: nn.Module,
        augment: Augment,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: StepSettings,
        recipe: Recipe,
        batch_size: int,
    ) -> None:
        self.model, self.augment, self.criterion, self.optimizer = model, augment, criterion, optimizer
        self.settings, self.batch_size = settings, batch_size
        self.clip = float(recipe.clip_grad_norm)
        # SGD's foreach step takes the lr as a host number: with a schedule it runs after the replay
        self.optimizer_in_graph = not (recipe.scheduler is not None and not isinstance(optimizer, torch.optim.Adam))
        self.tensor_lr = recipe.scheduler is not None and self.optimizer_in_graph
        self.stream = torch.cuda.Stream(settings.device)  # type: ignore[no-untyped-call]  # torch leaves Stream.__new__ unannotated
        self.warm = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.shape: tuple[int, ...] | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.grads: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.lrs: list[torch.Tensor] = []
        self.lr_values: list[float] = []

    def matches(self, model: nn.Module, augment: Augment, criterion: nn.Module, optimizer: Any) -> bool:
        return (self.model, self.augment, self.criterion, self.optimizer) == (model, augment, criterion, optimizer)

    def step(
        self, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        full = images.shape[0] == self.batch_size and (self.shape is None or tuple(images.shape) == self.shape)
        if not full:
            return self._eager(images, labels, recipe)
        if self.graph is None:
            if self.warm < WARMUP_STEPS:
                self.warm += 1
                return self._eager(images, labels, recipe, side_stream=True)
            self._capture(images, labels)
        assert self.graph is not None
        self.static["images"].copy_(images)
        self.static["labels"].copy_(labels)
        self._refill_lrs()
        self.graph.replay()
        if not self.optimizer_in_graph:
            self.optimizer.step()
        # the eager step's own after_step, looked up on its module (one definition, which a test spies on)
        steps.after_step(recipe, self.model)
        # copies: the metric meter keeps a batch's tensors until it folds them, and the next
        # replay overwrites the static outputs
        return self.static["logits"].clone(), self.static["loss"].clone(), labels

    def _eager(
        self, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, side_stream: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A real eager step (warm-up or a partial batch) on the same weights and optimizer state."""
        current = torch.cuda.current_stream(self.settings.device)
        with _capturable(self.optimizer):
            if side_stream:
                self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream) if side_stream else nullcontext():
                out = recipe_step(
                    self.model,
                    self.augment(images),
                    labels,
                    self.criterion,
                    self.optimizer,
                    self.settings,
                    None,
                    recipe,
                )
            if side_stream:
                current.wait_stream(self.stream)
        for param, grad in self.grads:  # the graph's optimizer step reads these, not the eager step's
            param.grad = grad
        return out

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.shape = tuple(images.shape)
        self.static["images"], self.static["labels"] = images.clone(), labels.clone()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the grads in the graph's pool
        groups = self.optimizer.param_groups
        if self.tensor_lr:
            self.lr_values = [float(g["lr"]) for g in groups]
            self.lrs = [torch.tensor(v, dtype=torch.float32, device=self.settings.device) for v in self.lr_values]
        floats = [g["lr"] for g in groups]
        graph = torch.cuda.CUDAGraph()
        try:
            if self.tensor_lr:
                for group, lr in zip(groups, self.lrs):
                    group["lr"] = lr
            with _capturable(self.optimizer):
                self.stream.wait_stream(torch.cuda.current_stream(self.settings.device))
                with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                    inputs = self.augment(self.static["images"])
                    with _autocast(self.settings.precision):
                        logits = self.model(inputs)
                        loss = self.criterion(logits.float(), self.static["labels"])
                    loss.backward()
                    if self.clip > 0:
                        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
                    if self.optimizer_in_graph:
                        self.optimizer.step()
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value
        self.graph = graph
        self.static["logits"], self.static["loss"] = logits, loss
        self.grads = [(p, p.grad) for g in groups for p in g["params"] if p.grad is not None]
        log.info(
            "cuda graphs: training step captured at batch %d (%s, optimizer step %s)",
            self.batch_size,
            self.settings.precision,
            "in the graph" if self.optimizer_in_graph else "eager after the replay",
        )

    def _refill_lrs(self) -> None:
        if not self.tensor_lr:
            return
        for i, group in enumerate(self.optimizer.param_groups):
            value = float(group["lr"])
            if value != self.lr_values[i]:
                self.lrs[i].fill_(value)
                self.lr_values[i] = value


class _EvalGraph:
    """One captured evaluation forward for one (model, augment, tta, input shape)."""

    def __init__(self, model: nn.Module, augment: Augment, precision: str, tta: bool, images: torch.Tensor) -> None:
        self.model, self.augment = model, augment  # held: the key is their ids
        self.shape = tuple(images.shape)  # other shapes (the last, partial batch) run eagerly
        self.static = images.clone()
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(images.device)  # type: ignore[no-untyped-call]  # torch leaves Stream.__new__ unannotated
        stream.wait_stream(torch.cuda.current_stream(images.device))

        def forward() -> torch.Tensor:
            inputs = augment(self.static)
            with _autocast(precision):
                logits: torch.Tensor = model(inputs).float()
                if tta:
                    logits = (logits + model(inputs.flip(3)).float()) / 2
            return logits

        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: no state changes in eval mode
                forward()
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            self.logits = forward()
        torch.cuda.current_stream(images.device).wait_stream(stream)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.static.copy_(images)
        self.graph.replay()
        return self.logits.clone()


class StepGraphs:
    """The engine's graphed steps for one run (Recipe.graphs): `train` and `evaluate` return None
    where a step must run eagerly, and the engine then runs its own step."""

    MAX_EVAL_GRAPHS = 4  # (model or EMA model) x (eval batch shape) of a run

    def __init__(self, batch_size: int, setting: str = "auto") -> None:
        self.batch_size, self.setting = batch_size, normalise(setting)
        self.reason = ""  # why the training step runs eagerly ("" while it can be captured)
        self._train: _TrainGraph | None = None
        self._eval: dict[tuple[Any, ...], _EvalGraph] = {}

    def _fall_back(self, reason: str) -> None:
        self.reason = reason
        say = log.warning if self.setting == "on" else log.info
        say("cuda_graphs=%s: %s; training steps run eagerly", self.setting, reason)

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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(logits, loss, labels counted) of a training step on this batch, or None: step eagerly."""
        if self.reason:
            return None
        if self._train is None or not self._train.matches(model, augment, criterion, optimizer):
            reason = why_not_train(model, optimizer, settings, scaler, recipe)
            if reason:
                self._fall_back(reason)
                return None
            self._train = _TrainGraph(model, augment, criterion, optimizer, settings, recipe, self.batch_size)
        return self._train.step(images, labels, recipe)

    def evaluate(
        self, model: nn.Module, images: torch.Tensor, augment: Augment, settings: StepSettings, tta: bool
    ) -> torch.Tensor | None:
        """The logits of an evaluation step on this batch, or None: step eagerly (another device,
        a DDP or compiled module, or a batch of another shape than the first one: the last)."""
        if settings.device.type != "cuda" or _unwrapped_kind(model):
            return None
        key = (id(model), id(augment), settings.precision, tta)
        graph = self._eval.get(key)
        if graph is None:
            if len(self._eval) >= self.MAX_EVAL_GRAPHS:
                return None
            graph = self._eval[key] = _EvalGraph(model, augment, settings.precision, tta, images)
            log.info("cuda graphs: evaluation step captured at batch %d", images.shape[0])
        if tuple(images.shape) != graph.shape:
            return None
        return graph(images)
