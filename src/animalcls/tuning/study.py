"""The study of `animalcls tune` and where it is kept: the RDB storage (SQLite by default), the study
created or continued under its identity, the per-trial seeded sampler and the pruner, and the trials
left running by a killed process (marked failed and queued again); what counts toward n_trials."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from animalcls.errors import AnimalclsError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("animalcls.commands.tune")  # the name its log lines have always had

HEARTBEAT_S, GRACE_S = 30, 120  # a trial whose process stopped beating for GRACE_S is stale


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
            with quiet_experimental():
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
def opening(url: str) -> Iterator[None]:
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


@contextmanager
def quiet_experimental() -> Iterator[None]:
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
