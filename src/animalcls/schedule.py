"""Learning-rate schedules: the lr factor of every optimizer step, as a pure function of the step.

`constant` is the paper's (no schedule). `cosine`, `step` and `onecycle` follow the formulas of
torch's CosineAnnealingLR, StepLR and OneCycleLR (cosine annealing); each but onecycle, whose
first phase is its warm-up, may start with a linear warm-up of `warmup_epochs` epochs or
`warmup_steps` steps. The factor multiplies every parameter group's base lr, so a head's lr
multiplier is kept. The schedule steps once per optimizer step (`build.build_scheduler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Formula = Callable[[int, int, int, Any], float]  # (step, total steps, steps per epoch, sched) -> factor


def warmup_steps(sched: Any, steps_per_epoch: int) -> int:
    return max(int(sched.warmup_steps), round(float(sched.warmup_epochs) * steps_per_epoch))


def _cosine(progress: float, low: float) -> float:
    """From 1 at progress 0 down to `low` at progress 1."""
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def constant(step: int, total: int, steps_per_epoch: int, sched: Any) -> float:
    return 1.0


def cosine(step: int, total: int, steps_per_epoch: int, sched: Any) -> float:
    warm = warmup_steps(sched, steps_per_epoch)
    return _cosine((step - warm) / max(1, total - warm), float(sched.min_lr_ratio))


def step_decay(step: int, total: int, steps_per_epoch: int, sched: Any) -> float:
    return float(sched.gamma) ** (step // (int(sched.step_epochs) * steps_per_epoch))


def onecycle(step: int, total: int, steps_per_epoch: int, sched: Any) -> float:
    start = 1.0 / float(sched.div_factor)
    end = start / float(sched.final_div_factor)
    peak = max(1, int(float(sched.pct_start) * total))
    if step < peak:
        return start + (1.0 - start) * (1.0 - _cosine(step / peak, 0.0))  # start -> 1
    return _cosine((step - peak) / max(1, total - peak), end)  # 1 -> end


def lr_factor(formula: Formula, step: int, total: int, steps_per_epoch: int, sched: Any) -> float:
    """The lr of optimizer step `step` (0-based) of `total` as a fraction of the configured lr:
    the warm-up, then `formula` (the registered schedule's)."""
    if sched.name != "onecycle":
        warm = warmup_steps(sched, steps_per_epoch)
        if step < warm:
            return (step + 1) / warm
    return float(formula(step, total, steps_per_epoch, sched))
