"""What `animalcls tune` prints and records of its trials: a trial's `animalcls train` command line
(with several seeds, a sweep over them) and the study's summary with the best trial's command."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from animalcls.tuning.space import override_value
from animalcls.tuning.study import shown

if TYPE_CHECKING:
    import optuna


def train_command(base: Sequence[str], params: Mapping[str, Any]) -> str:
    trial = [f"{k}={override_value(v)}" for k, v in params.items()]
    return " ".join(["animalcls", "train", *(shlex.quote(a) for a in [*base, *trial])])


def best_command(base: Sequence[str], params: Mapping[str, Any], seeds: list[int]) -> str:
    """The trial's `animalcls train` command: one run, or with several seeds a sweep over them."""
    if len(seeds) == 1:
        return train_command(base, params)
    others = [a for a in base if a.split("=", 1)[0].lstrip("+~") != "seed"]
    one = train_command(others, params).removeprefix("animalcls train ")
    return f"animalcls train -m {one} seed={','.join(map(str, seeds))}"


def summary(study: optuna.Study, url: str, base: list[str], n_trials: int, seconds: float) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    n = {s: len([t for t in trials if t.state == s]) for s in TrialState}
    print(
        f"study {study.study_name}: {n[TrialState.COMPLETE] + n[TrialState.PRUNED]} of {n_trials} trials finished "
        f"({n[TrialState.COMPLETE]} complete, {n[TrialState.PRUNED]} pruned), {n[TrialState.FAIL]} failed, "
        f"{n[TrialState.RUNNING]} running in other processes; {seconds:.0f} s in this process"
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        print("no complete trial yet")
        return
    best = study.best_trial
    settings = ", ".join(f"{k}={override_value(v)}" for k, v in best.params.items())
    seeds = best.user_attrs.get("seeds") or [0]
    over = f" (mean of seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    print(f"best: trial {best.number}, val top-1 {best.value:.2f}%{over} ({settings})")
    print(f"run dir: {best.user_attrs.get('run_dir', '?')}" + (" (its first seed)" if over else ""))
    print(f"best command: {best_command(base, best.params, seeds)}")
    print(f"storage: {shown(url)}   (browse it: optuna-dashboard {shown(url)})")
