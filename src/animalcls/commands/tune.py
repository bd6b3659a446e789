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
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from animalcls.commands import given_keys, parse_overrides, split_options
from animalcls.config import compose, validate
from animalcls.errors import AnimalclsError
from animalcls.tuning.objective import optimize
from animalcls.tuning.space import load_space, override_value
from animalcls.tuning.study import default_storage, make_pruner, make_sampler, open_storage, open_study, opening

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
    with opening(url):
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
