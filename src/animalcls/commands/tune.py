"""`animalcls tune [study=NAME] [n_trials=20] [timeout=SECONDS] [sampler=tpe|random]
[pruner=median|hyperband|none] [space=default|PATH.yaml] [storage=URL] [sampler_seed=0]
[repeats=1] [resume_only=false] [key=value ...]`

A hyper-parameter search with Optuna. Every trial is an ordinary training run (a run dir under
outputs/tune/<study>/, its train.log, one row in the results table); a pruned trial's row has
status `pruned`. The other key=value overrides (e.g. `data=demo epochs=3`) apply to every trial.

  study         the study's name (default <model>-<data>, e.g. base-demo)
  n_trials      finished trials (complete + pruned) the study should have, counted over every
                process and every session (default 20): run the same command again to continue a
                study stopped by Ctrl-C, SIGTERM or a crash, and raise it to extend a study
  timeout       seconds after which no new trial starts (default: none)
  sampler       tpe (default; seeded, so a search repeats) or random
  pruner        median (default), hyperband or none: stop a trial whose validation top-1 after an
                epoch is poor next to earlier trials at that epoch
  space         a search space: conf/tune/<space>.yaml (default) or a YAML file; keys fixed on the
                command line are not searched
  storage       any Optuna RDB URL (default sqlite:///outputs/tune/<study>.db)
  sampler_seed  the sampler's seed (default 0)
  repeats       seeds per trial (default 1). A trial trains seed, seed+1, ..., seed+repeats-1
                (`seed` is the config's, default 0; each seed also draws its own split, as with
                `animalcls train seed=N`), each an ordinary run and results row with one
                repeat_id (a re-run skips the done ones); the trial's value is their mean
                validation top-1, and its user attrs hold seeds, val_top1_per_seed, n, mean and
                std. Pruning judges the first seed's curve alone: only it reports per epoch, and
                the later seeds run only if it finishes unpruned. A study keeps its repeats.
  resume_only   true: continue an existing study only; a missing one is an error

Several `animalcls tune` processes on one study (same storage and command) share the work and
stop together at n_trials. A trial left running by a killed process is marked failed when a
process starts on that study (at once on the same host, after the heartbeat's grace period
elsewhere) and is tried again, resuming its run from last.pt; failed trials do not count.
At the end the best trial's `animalcls train ...` command line is printed.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from animalcls import tracking
from animalcls.atomic import write_text_atomic
from animalcls.commands import given_keys, parse_overrides, split_options
from animalcls.config import GROUPS, compose, group_options, validate
from animalcls.errors import AnimalclsError, Interrupted, Pruned, RunBusy
from animalcls.run import StopRequest, run_training, stop_on_signals

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

OPTIONS: dict[str, str] = {
    "study": "NAME",
    "n_trials": "N",
    "timeout": "SECONDS",
    "sampler": "tpe|random",
    "pruner": "median|hyperband|none",
    "space": "NAME|PATH.yaml",
    "storage": "URL",
    "sampler_seed": "N",
    "repeats": "K",
    "resume_only": "true|false",
}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
DEFAULTS: dict[str, Any] = {
    "n_trials": 20,
    "timeout": None,
    "sampler": "tpe",
    "pruner": "median",
    "space": "default",
    "storage": "",
    "sampler_seed": 0,
    "repeats": 1,
    "resume_only": False,
}
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HEARTBEAT_S, GRACE_S = 30, 120  # a trial whose process stopped beating for GRACE_S is stale
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


class TrialFailed(Exception):
    """A trial's run failed (recorded as failed): the trial is FAIL and the study goes on."""


class Surplus(TrialFailed):
    """Other processes already hold n_trials trials: this one is not run."""


# ---------------------------------------------------------------- options


def split_args(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """tune's own options, and the config overrides that apply to every trial (as typed)."""
    options, rest = split_options(args, "tune", OPTIONS)
    if "hparams_search" in given_keys(rest, "tune"):
        raise AnimalclsError(
            "the Hydra Optuna sweeper is retired (hparams_search=optuna): this command is its "
            "replacement; drop hparams_search and give the search's keys (see `animalcls tune --help`)."
        )
    return options, rest


def checked_options(given: dict[str, Any]) -> dict[str, Any]:
    options = {**DEFAULTS, **given}
    n, timeout, seed = options["n_trials"], options["timeout"], options["sampler_seed"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise AnimalclsError(f"n_trials must be a whole number >= 1 (got {n!r}); e.g. n_trials=20")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise AnimalclsError(f"timeout is in seconds and > 0 (got {timeout!r}); e.g. timeout=3600")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise AnimalclsError(f"sampler_seed must be a whole number >= 0 (got {seed!r})")
    repeats = options["repeats"]
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise AnimalclsError(f"repeats (seeds per trial) must be a whole number >= 1 (got {repeats!r}); e.g. repeats=3")
    if not isinstance(options["resume_only"], bool):
        raise AnimalclsError(f"resume_only is true or false (got {options['resume_only']!r})")
    for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if options[key] not in allowed:
            raise AnimalclsError(f"{key}={options[key]!r} is not known; choose one of: {', '.join(allowed)}.")
    for key in ("space", "storage"):
        if not isinstance(options[key], str):
            raise AnimalclsError(f"{key}= takes text (got {options[key]!r}); quote it if Hydra reads it as a number.")
    if "study" in options:
        options["study"] = str(options["study"])
        if not STUDY_NAME.match(options["study"]):
            raise AnimalclsError(
                f"study={options['study']!r}: a study name is letters, digits, '.', '_' and '-' (it names files)."
            )
    return options


# ---------------------------------------------------------------- the search space


def space_file(space: str) -> Path:
    if space.endswith((".yaml", ".yml")) or os.sep in space:
        path = Path(space)
        if not path.is_file():
            raise AnimalclsError(f"space={space}: no such file.")
        return path
    names = group_options("tune")
    if space not in names:
        raise AnimalclsError(
            f"space={space} is not a known search space; choose one of: {', '.join(names)} or give a YAML file."
        )
    from importlib.resources import as_file, files

    with as_file(files("animalcls.conf") / "tune" / f"{space}.yaml") as path:
        return Path(path)


def load_space(space: str, cfg: DictConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The search space as Optuna distributions, checked against the config: every key exists,
    group keys choose that group's options."""

    path = space_file(space)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AnimalclsError(f"space={space}: cannot read {path} ({exc}).") from None
    if not isinstance(spec, dict) or not spec:
        raise AnimalclsError(f"space={space}: {path} must map config keys to distributions.")
    space_dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, entry in spec.items():
        where = f"space={space}, {key}"
        if key not in GROUPS and OmegaConf.select(cfg, str(key), default=_ABSENT) is _ABSENT:
            raise AnimalclsError(f"{where}: {key} is not a config key (`animalcls train --cfg job` lists them).")
        space_dists[str(key)] = _distribution(where, entry)
        if key in GROUPS:
            choices = getattr(space_dists[key], "choices", None)
            unknown = [c for c in choices or () if c not in group_options(key)]
            if choices is None or unknown:
                raise AnimalclsError(
                    f"{where}: a config group takes categorical choices among its options "
                    f"({', '.join(group_options(key))}); got {unknown or entry}."
                )
    return space_dists


_ABSENT = object()


def _distribution(where: str, entry: Any) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(entry, dict) or entry.get("type") not in ("float", "int", "categorical"):
        raise AnimalclsError(f"{where}: give {{type: float|int|categorical, ...}} (got {entry!r}).")
    try:
        if entry["type"] == "categorical":
            choices = entry["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("choices must be a non-empty list")
            return CategoricalDistribution(choices)
        kind = FloatDistribution if entry["type"] == "float" else IntDistribution
        extra = {k: entry[k] for k in ("log", "step") if k in entry}
        unknown = set(entry) - {"type", "low", "high", "log", "step"}
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        return kind(entry["low"], entry["high"], **extra)
    except (KeyError, TypeError, ValueError) as exc:
        raise AnimalclsError(f"{where}: {exc} (got {entry!r}).") from None


def override_value(value: Any) -> str:
    """A sampled value as a Hydra override value that parses back to it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return "null"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w\-./]*", text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def train_command(base: Sequence[str], params: Mapping[str, Any]) -> str:
    trial = [f"{k}={override_value(v)}" for k, v in params.items()]
    return " ".join(["animalcls", "train", *(shlex.quote(a) for a in [*base, *trial])])


# ---------------------------------------------------------------- storage and study


def shown(url: str) -> str:
    """A storage URL as printed: its password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: printed as given, in the error that says so
        return url


def default_storage(tune_dir: Path, study: str) -> str:
    return f"sqlite:///{(tune_dir / f'{study}.db').resolve()}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite URL (None for other databases and in-memory sqlite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?")[0]
    return Path(path) if path and path != ":memory:" else None


def open_storage(url: str, study: str, resume_only: bool) -> optuna.storages.RDBStorage:
    import optuna

    db = sqlite_file(url)
    if resume_only and db is not None and not db.is_file():
        raise AnimalclsError(f"no study {study!r}: {db} does not exist (drop resume_only=true to start it).")
    if db is not None and not db.parent.is_dir():
        raise AnimalclsError(f"storage={url}: folder {db.parent} does not exist.")
    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with _quiet_experimental():
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=retry_trial,
                )
        except Exception as exc:
            if "already exists" in str(exc) and attempt < 4:  # another process is creating the tables
                time.sleep(0.2 + random.random())
                continue
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise AnimalclsError(
                f"storage={shown(url)} cannot be opened ({detail}); give an RDB URL such as "
                f"sqlite:///outputs/tune/{study}.db or postgresql://user:password@host/db."
            ) from None
    raise AssertionError("not reached")


@contextmanager
def _opening(url: str) -> Iterator[None]:
    """Processes that start together on one SQLite study take turns creating its tables and the
    study (SQLite raises more than one kind of error when two do it at once); other RDBs
    serialise that themselves."""
    db = sqlite_file(url)
    if db is None or not db.parent.is_dir():
        yield
        return
    from filelock import FileLock

    with FileLock(str(db) + ".lock", timeout=120):
        yield


def open_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    options: dict[str, Any],
    identity: dict[str, Any],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """The study, created or continued; a study made by another command is refused."""
    import optuna

    existing = [s.study_name for s in storage.get_all_studies()]
    if options["resume_only"] and name not in existing:
        known = f"studies there: {', '.join(existing)}" if existing else "it holds no study"
        raise AnimalclsError(f"no study {name!r} in {shown(storage.url)} ({known}); drop resume_only=true to start it.")
    study = optuna.create_study(
        storage=storage, study_name=name, sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise AnimalclsError(f"study {name!r} minimises; it was not made by animalcls tune. Choose another study=.")
    made_by = study.user_attrs.get("animalcls")
    if made_by is None:
        study.set_user_attr("animalcls", identity)
    elif made_by != identity:
        raise AnimalclsError(
            f"study {name!r} was made with other settings ({_differences(made_by, identity)}): continue it with "
            f"the command that started it, or start a new study with study=NEWNAME."
        )
    return study


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            parts.append(f"{key} was {old.get(key)!r}, now {new.get(key)!r}")
    return "; ".join(parts)


def make_sampler(kind: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """A sampler seeded per trial (seed, trial number): a search repeats with its seed, and processes
    sharing a study draw different trials (one sampler seeded once per process would draw the same
    ones in each). Optuna's samplers keep no state but their RNG; the history comes from the study."""
    import optuna

    def build(trial_seed: int) -> optuna.samplers.BaseSampler:
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=trial_seed)
        # TPE models the space after its random start-up trials: a quarter of the study, 4 to 10
        return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=max(4, min(10, n_trials // 4)))

    class PerTrialSeed(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._current = build(seed)

        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            self._current = build((seed * 1_000_003 + trial.number) % 2**32)
            self._current.before_trial(study, trial)

        def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Any:
            return self._current.infer_relative_search_space(study, trial)

        def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: Any) -> Any:
            return self._current.sample_relative(study, trial, search_space)

        def sample_independent(
            self, study: optuna.Study, trial: optuna.trial.FrozenTrial, name: str, distribution: Any
        ) -> Any:
            return self._current.sample_independent(study, trial, name, distribution)

        def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
            self._current.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self._current.reseed_rng()

    return PerTrialSeed()


def make_pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    if kind == "median":  # after 3 finished trials, from the first epoch on
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- stale and interrupted trials


def process_token(pid: int) -> str:
    """The process's start time (Linux), so that a reused pid is not taken for a live trial."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_alive(pid: int, token: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not token or process_token(pid) in ("", token)


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a stopped trial's parameters again, once: its run resumes from its last.pt."""
    if not trial.params or any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    log.info("trial %d stopped unfinished: queued again (its run resumes where it stopped)", trial.number)


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """RUNNING trials whose process on this host is gone (killed, crashed) are FAIL, and queued again.
    Trials of other hosts are failed by Optuna's heartbeat after its grace period."""
    import optuna

    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or process_alive(int(attrs.get("pid", -1)), str(attrs.get("pid_token", ""))):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except RuntimeError:  # UpdateFinishedTrialError: another process got there first
            continue
        log.warning("trial %d was left running by process %s, which is gone: marked failed", trial.number, attrs["pid"])
        retry_trial(study, trial)


def counted(study: optuna.Study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def taken(study: optuna.Study, below: int | None = None) -> int:
    """Trials that count or are running (numbered below `below`)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    trials = study.get_trials(deepcopy=False, states=states)
    return len([t for t in trials if below is None or t.number < below])


# ---------------------------------------------------------------- one trial


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


def best_command(base: Sequence[str], params: Mapping[str, Any], seeds: list[int]) -> str:
    """The trial's `animalcls train` command: one run, or with several seeds a sweep over them."""
    if len(seeds) == 1:
        return train_command(base, params)
    others = [a for a in base if a.split("=", 1)[0].lstrip("+~") != "seed"]
    one = train_command(others, params).removeprefix("animalcls train ")
    return f"animalcls train -m {one} seed={','.join(map(str, seeds))}"


def suggest(trial: optuna.Trial, name: str, dist: optuna.distributions.BaseDistribution) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    assert isinstance(dist, IntDistribution)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------- the command


def main(args: list[str]) -> int:
    given, base = split_args(args)
    options = checked_options(given)
    cfg = compose(base)
    validate(cfg)
    try:
        import optuna
    except ImportError as exc:
        raise AnimalclsError(f'tune needs optuna ({exc}): pip install -e ".[tune]"') from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line of our own per trial instead
    fixed = {o.key_or_group for o in parse_overrides(base, "tune")}
    full = load_space(options["space"], cfg)
    for key in sorted(fixed & set(full)):
        log.info("%s is fixed on the command line: not searched", key)
    space = {k: v for k, v in full.items() if k not in fixed}
    if not space:
        raise AnimalclsError(f"nothing to search: every key of space={options['space']} is fixed on the command line.")
    _check_space_values(base, space)
    name = options.get("study") or f"{cfg.model.name}-{cfg.data.name}"
    tune_dir = Path(cfg.results).parent / "tune"
    url = options["storage"] or default_storage(tune_dir, name)
    if not options["storage"] and not options["resume_only"]:
        tune_dir.mkdir(parents=True, exist_ok=True)
    identity = {"overrides": sorted(base), "space": options["space"], "searched": sorted(space)}
    if options["repeats"] > 1:  # only then: studies made before repeats existed keep their identity
        identity["repeats"] = options["repeats"]
    sampler = make_sampler(options["sampler"], options["sampler_seed"], options["n_trials"])
    pruner = make_pruner(options["pruner"], int(cfg.epochs))
    with _opening(url):
        storage = open_storage(url, name, options["resume_only"])
        study = open_study(storage, name, options, identity, sampler, pruner)
    return optimize(study, storage, url, base, space, options, tune_dir / name)


def _check_space_values(base: list[str], space: Mapping[str, Any]) -> None:
    """Compose once with each key's first (low) value, so that a bad space fails before any trial."""
    first = {k: d.choices[0] if hasattr(d, "choices") else d.low for k, d in space.items()}
    try:
        validate(compose([*base, *(f"{k}={override_value(v)}" for k, v in first.items())]))
    except AnimalclsError as exc:
        raise AnimalclsError(f"the search space does not fit the config: {exc}") from None


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
    with _quiet_experimental():
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
            with stop_on_signals(stop), _quiet_experimental(), _quiet_failures(objective.quiet):
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


@contextmanager
def _quiet_experimental() -> Iterator[None]:
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


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
