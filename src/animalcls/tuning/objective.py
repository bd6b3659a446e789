"""The trials of `animalcls tune` as ordinary training runs (animalcls.run): the objective that runs
one trial (each of its seeds a run with its own run dir, train.log and results row, the first seed
reporting each epoch to the pruner), and the optimize loop that runs trials until the study has
n_trials, a stop is asked for or too many fail."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from animalcls import tracking
from animalcls.atomic import write_text_atomic
from animalcls.config import compose, validate
from animalcls.errors import AnimalclsError, Interrupted, Pruned, RunBusy
from animalcls.run import StopRequest, run_training, stop_on_signals
from animalcls.tuning.space import override_value, suggest
from animalcls.tuning.study import (
    counted,
    fail_dead_trials,
    process_token,
    quiet_experimental,
    retry_trial,
    shown,
    taken,
)
from animalcls.tuning.summary import best_command, summary

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("animalcls.commands.tune")  # the name its log lines have always had

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


class TrialFailed(Exception):
    """A trial's run failed (recorded as failed): the trial is FAIL and the study goes on."""


class Surplus(TrialFailed):
    """Other processes already hold n_trials trials: this one is not run."""


@contextmanager
def train_log(run_dir: Path) -> Iterator[None]:
    """The run's log lines, also in <run dir>/train.log (as `animalcls train` leaves one)."""
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    handler.setLevel(logging.INFO)
    root, ours = logging.getLogger(), logging.getLogger("animalcls")
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:  # the file gets the epoch lines whatever the console shows
        ours.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)
        handler.close()


class Objective:
    def __init__(
        self,
        base: list[str],
        space: dict[str, optuna.distributions.BaseDistribution],
        n_trials: int,
        study_dir: Path,
        stop: threading.Event,
        repeats: int = 1,
    ) -> None:
        self.base, self.space, self.n_trials, self.study_dir, self.stop = base, space, n_trials, study_dir, stop
        self.repeats = repeats
        self.interrupted = False
        self.quiet: set[int] = set()  # trials stopped on purpose: no "Trial N failed" traceback from Optuna

    def __call__(self, trial: optuna.Trial) -> float:
        self._take_turn(trial)
        pid = os.getpid()
        for key, attr in (("host", socket.gethostname()), ("pid", pid), ("pid_token", process_token(pid))):
            trial.set_user_attr(key, attr)
        params = {name: suggest(trial, name, dist) for name, dist in self.space.items()}
        overrides = [f"{k}={override_value(v)}" for k, v in params.items()]
        cfg = compose([*self.base, *overrides])
        validate(cfg)
        cfg.tags = [*cfg.tags, f"tune:{trial.study.study_name}", f"trial:{trial.number}"]
        seeds = repeat_seeds(int(cfg.seed), self.repeats)
        trial.set_user_attr("command", best_command(self.base, params, seeds))
        retry = trial.user_attrs.get("retry_of")
        log.info(
            "trial %d%s: %s", trial.number, f" (trial {retry} again)" if retry is not None else "", " ".join(overrides)
        )
        if self.repeats == 1:
            return self._seed_run(trial, cfg, overrides, first=True)
        # the first seed alone reports to the pruner (see `repeats` in the module docstring): a
        # later seed runs only once the first has finished unpruned
        values = [self._seed_run(trial, with_seed(cfg, s), overrides, first=i == 0) for i, s in enumerate(seeds)]
        for key, value in repeat_attrs(seeds, values).items():
            trial.set_user_attr(key, value)
        log.info("trial %d: mean val top-1 %.2f%% over seeds %s", trial.number, sum(values) / len(values), seeds)
        return sum(values) / len(values)

    def _take_turn(self, trial: optuna.Trial) -> None:
        """Raise when this trial is not to run: a stop was asked for, or other processes hold n_trials."""
        if self.stop.is_set():
            self.quiet.add(trial.number)
            raise Interrupted()
        if taken(trial.study, below=trial.number) >= self.n_trials:
            self.quiet.add(trial.number)
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"the study already has {self.n_trials} trials (other processes): not run")

    def _seed_run(self, trial: optuna.Trial, cfg: DictConfig, overrides: list[str], first: bool) -> float:
        """One run of the trial (one seed): its validation top-1, or the exception that ends the trial."""
        import optuna

        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        seed_part = f"seed{cfg.seed}-" if self.repeats > 1 else ""
        run_dir = (self.study_dir / f"trial-{trial.number}-{seed_part}{stamp}").resolve()
        (run_dir / ".hydra").mkdir(parents=True)
        write_text_atomic(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        seed = [f"seed={cfg.seed}"] if self.repeats > 1 else []
        write_text_atomic(run_dir / ".hydra" / "overrides.yaml", yaml.safe_dump([*self.base, *overrides, *seed]))
        if first:
            trial.set_user_attr("run_dir", str(run_dir))
        row = self._run(trial, cfg, run_dir, report=first)
        status = str(row.get("status", ""))
        if first:
            trial.set_user_attr("run_id", str(row.get("run_id", "")))
        trial.set_user_attr("status", status)
        value = _number(row.get("val_top1"))
        if status == "interrupted":  # FAIL (not counted) and queued again: its run resumes from last.pt
            self.interrupted = True
            self.quiet.add(trial.number)
            retry_trial(trial.study, trial.study.get_trials(deepcopy=False)[trial.number])
            raise Interrupted()
        if status == "pruned":
            log.info("trial %d: pruned after epoch %s", trial.number, row.get("epochs_done"))
            raise optuna.TrialPruned(f"pruned after epoch {row.get('epochs_done')}")
        if value is None:
            raise TrialFailed(f"the run ended {status} without a validation top-1")
        if row.get("skipped") and first:  # done before (same run id): the trial is that run
            trial.set_user_attr("run_dir", str(row.get("run_dir", run_dir)))
        done = "already done: its recorded" if row.get("skipped") else status + ","
        which = f" (seed {cfg.seed})" if self.repeats > 1 else ""
        log.info(
            "trial %d%s: %s val top-1 %.2f%%, run dir %s", trial.number, which, done, value, row.get("run_dir", run_dir)
        )
        return value

    def _run(self, trial: optuna.Trial, cfg: DictConfig, run_dir: Path, report: bool = True) -> dict[str, Any]:
        def epoch_hook(epoch: int, row: dict[str, Any]) -> None:
            value = _number(row.get("val_top1"))
            if value is None:
                return
            trial.report(value, epoch)
            if epoch < cfg.epochs and trial.should_prune():  # after the last epoch nothing is saved
                raise Pruned(f"pruned after epoch {epoch}: val top-1 {value:.2f}%")

        with train_log(run_dir), tracking.in_sweep(self.study_dir):  # MLflow: trials nested in the study's run
            try:
                return run_training(cfg, run_dir, epoch_hook=epoch_hook if report else None)
            except RunBusy as exc:  # another process trains this configuration: this trial fails, the study goes on
                raise TrialFailed(str(exc)) from None
            except (AnimalclsError, Interrupted, KeyboardInterrupt):
                raise
            except Exception as exc:  # recorded as a failed row by run_training; the study goes on
                log.error("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
                raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc


def repeat_seeds(first: int, repeats: int) -> list[int]:
    """The seeds of a trial: the config's seed and the next repeats - 1 (each also draws its own
    split: the data split follows `seed`, as it does for `animalcls train seed=...`)."""
    return [first + i for i in range(repeats)]


def with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    copy = deepcopy(cfg)
    copy.seed = seed
    return copy


def repeat_attrs(seeds: list[int], values: list[float]) -> dict[str, Any]:
    """A trial's per-seed values as user attrs: n, mean and sample std (ddof=1, as the report)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"seeds": seeds, "val_top1_per_seed": values, "n": len(values), "mean": mean, "std": std}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def optimize(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    url: str,
    base: list[str],
    space: dict[str, Any],
    options: dict[str, Any],
    study_dir: Path,
) -> int:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    n_trials = options["n_trials"]
    max_failures = max(3, n_trials)
    fail_dead_trials(study, storage)
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)  # other hosts' trials, past the heartbeat's grace period
    stop = StopRequest()  # Ctrl-C / SIGTERM between runs: no new trial starts
    failures: list[int] = []
    started = time.perf_counter()

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            failures.append(trial.number)
        # enough trials finished or running (other processes): none more from this one
        if stop.is_set() or taken(study) >= n_trials or len(failures) >= max_failures:
            study.stop()

    objective = Objective(base, space, n_trials, study_dir, stop, options["repeats"])
    already = counted(study)
    if already >= n_trials:
        log.info("study %s already has %d finished trials (n_trials=%d)", study.study_name, already, n_trials)
    else:
        log.info("study %s (%s): %d of %d trials finished", study.study_name, shown(url), already, n_trials)
        counting = MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        try:
            with stop_on_signals(stop), quiet_experimental(), _quiet_failures(objective.quiet):
                study.optimize(
                    objective,
                    timeout=options["timeout"],
                    catch=(TrialFailed,),
                    callbacks=[counting, after_trial],
                    gc_after_trial=True,
                )
        except (Interrupted, KeyboardInterrupt):
            stop.set()
    summary(study, url, base, n_trials, time.perf_counter() - started)
    if stop.is_set() or objective.interrupted:
        print(f"interrupted: run the same command again to continue the study ({counted(study)} of {n_trials} done)")
        return EXIT_INTERRUPTED
    if len(failures) >= max_failures and counted(study) < n_trials:
        print(f"stopped after {len(failures)} failed trials in this process: see the errors above")
        return EXIT_FAILED
    return 0


@contextmanager
def _quiet_failures(numbers: set[int]) -> Iterator[None]:
    """Drop Optuna's "Trial N failed ..." warnings (with a traceback) for trials stopped on purpose."""
    pattern = re.compile(r"^Trial (\d+) failed")

    def keep(record: logging.LogRecord) -> bool:
        found = pattern.match(record.getMessage())
        return not (found and int(found.group(1)) in numbers)

    handlers = logging.getLogger("optuna").handlers
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)
