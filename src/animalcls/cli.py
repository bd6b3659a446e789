"""The `animalcls` command: routes a subcommand to its module, nothing else.

`train` is a Hydra app (so -m sweeps, launchers, --cfg and tab completion work as Hydra users
expect); the other subcommands compose the same configs without creating a run dir.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

from animalcls import sweep

USAGE = """usage: animalcls <command> [key=value ...]   (animalcls --version: the installed version)

commands:
  train     train and test one configuration; -m sweeps (Hydra overrides, e.g. model=resnet18 lr=0.01)
  eval      re-measure a checkpoint on its test split:      animalcls eval ckpt=PATH [device=cpu] [data.root=DIR]
            [data.cache_dir=DIR] [eval_batch_size=N] [workers=N]  (the rest comes from the checkpoint)
  predict   top-5 classes of images and folders:            animalcls predict ckpt=PATH images=[a.jpg,folder/]
            [out=PATH.csv] [format=topk|submission] [tta=true] [ckpt=[a.pt,b.pt]] [device=cpu] [eval_batch_size=N]
  tune      Optuna search with pruning, in SQLite:          animalcls tune n_trials=20 [study=NAME] [data=demo epochs=3]
            [pruner=median|hyperband|none] [sampler=tpe|random] [space=default] [storage=URL] [timeout=S]
  plan      what a sweep would do, before it runs:         animalcls plan <train's overrides, e.g. lr=0.1,0.01>
            (each job's run id and status: would train, done (skipped), running elsewhere; writes nothing)
  export    ONNX and TorchScript, checked against PyTorch:  animalcls export ckpt=PATH [out=DIR] [opset=17]
            [probabilities=true]  (classes, input size, mean/std in the files' metadata)
  profile   params, GMACs (fvcore), GFLOPs, CPU latency:     animalcls profile model=resnet50
  bench     images/s of the engine vs the compute limit:     animalcls bench model=base data.root=...
  report    paper tables and figures from the results table: animalcls report [results=PATH|results=[a.csv,b.csv]]
            [out=DIR] [runs=[id,...]]
  compare   is b better than a, over the same seeds:     animalcls compare a.optim=sgd b.optim=adamw [model=base]
            [results=PATH] [vary=[KEY,...]] [confidence=0.95] [format=text|json]  (paired t-interval per metric)
  results   the results table: animalcls results rebuild [results=PATH] [runs=DIR]
            (rebuild it from the run dirs' record.json); animalcls results track logger=mlflow
            [results=PATH] (send every run of the table to the tracker, once)
  cache     the decode caches: animalcls cache list|clean [data.cache_dir=DIR] [all=true]
            (clean: old-format, partial and leftover files; all=true: complete caches too)

Every command takes Hydra's override grammar (key=value, lists as [a,b], quotes for spaces).
`animalcls train --help` lists the config groups and options; `animalcls train --cfg job` prints the
resolved config; `animalcls <command> --help` describes a command. Exit status: 0 ok, 1 a run failed
or diverged, 2 bad input, 130 interrupted (run it again to resume).
"""

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
_exit_code = 0


def _fail(code: int) -> None:
    global _exit_code
    _exit_code = max(_exit_code, code)


def _train_app() -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from animalcls.config import register_schema

    register_schema()

    @hydra.main(version_base="1.3", config_path="pkg://animalcls.conf", config_name="config")
    def train(cfg: DictConfig) -> float:
        """Returns the val top-1 (what Optuna maximises): NaN for a failed run (Optuna marks
        the trial failed and goes on), the recorded value for a run skipped as done."""
        from animalcls.errors import AnimalclsError
        from animalcls.run import run_training

        log = logging.getLogger("animalcls")
        try:
            _require_multirun_for_sweeps()
            row = run_training(cfg, Path(HydraConfig.get().runtime.output_dir))
        except AnimalclsError as exc:
            if os.environ.get("ANIMALCLS_DEBUG"):
                raise
            log.error("error: %s", exc)
            _job_failed(EXIT_BAD_INPUT)
            _remove_if_empty(Path(HydraConfig.get().runtime.output_dir))
            return float("nan")
        except Exception:  # recorded as a failed row; a sweep goes on with the next job
            log.exception("the run failed")
            _job_failed(EXIT_FAILED)
            _remove_if_empty(Path(HydraConfig.get().runtime.output_dir))
            return float("nan")
        if row["status"] == "interrupted":  # Ctrl-C / SIGTERM ends the whole sweep, cleanly
            _job_failed(EXIT_INTERRUPTED)
            sys.exit(EXIT_INTERRUPTED)
        if row["status"] != "ok":
            _job_failed(EXIT_FAILED)
        value = row.get("val_top1")
        return float("nan") if value is None else float(value)

    from animalcls.errors import AnimalclsError

    try:
        _check_before_hydra(sys.argv[1:])
    except AnimalclsError as exc:
        print(f"animalcls train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from animalcls.distributed import with_rank_overrides

    sys.argv = with_rank_overrides(sys.argv)  # torchrun ranks > 0 write no run dir or log
    if _is_multirun(sys.argv[1:]):
        sys.argv.append(sweep.status_callback_override())
    sweep.forget_sweep()
    train()
    _fail(sweep.exit_code_of_this_sweep())  # a multirun: count the jobs that ran in other processes too
    return _exit_code


def _check_before_hydra(args: list[str]) -> None:
    """Reject bad input before Hydra makes a run dir: names, keys and types of the overrides
    always; a single run's whole config (ranges, keys against each other) too. A sweep's jobs
    are each validated in their run (its combinations are Hydra's to expand); `--cfg`, `--help`
    and another config (`-cn`, `-cp`, `-cd`) are left to Hydra."""
    from hydra._internal.utils import get_args_parser

    from animalcls.config import check_group_choices, check_overrides, compose, validate

    _refuse_retired_sweeper(args)
    check_group_choices(args)
    parsed, _ = get_args_parser().parse_known_args(args)
    if not (parsed.cfg or parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion):
        _refuse_an_unwritable_output_dir(list(parsed.overrides), multirun=_is_multirun(args))
    if parsed.config_name or parsed.config_path or parsed.config_dir:
        return
    overrides = list(parsed.overrides)
    check_overrides(overrides)
    if _is_multirun(args) or parsed.cfg or parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion:
        return
    _refuse_experiment_without_multirun(overrides)
    # Hydra's own settings do not change the job's config, and some resolve only inside a Hydra run
    validate(compose([o for o in overrides if not o.lstrip("+~").startswith("hydra")]))


# Hydra's .hydra/*.yaml and the log take a few KB; below this a run could not even start
MIN_FREE_BYTES = 1 << 20


def _refuse_an_unwritable_output_dir(overrides: list[str], multirun: bool) -> None:
    """Hydra makes the run dir and writes .hydra/*.yaml before any animalcls code runs, and reports
    a failed write as a traceback: a read-only or (all but) full disk is refused here instead."""
    import shutil

    from animalcls.atomic import human_size
    from animalcls.errors import AnimalclsError

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = next((o.partition("=")[2] for o in overrides if o.lstrip("+").partition("=")[0] == key), "outputs")
    folder = Path(given.split("${", 1)[0] or ".").absolute()  # the part Hydra does not resolve later
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    way_out = f"give the runs a folder on another disk ({key}=/other/disk/...)"
    if not os.access(folder, os.W_OK):
        raise AnimalclsError(f"the run dir cannot be made: {folder} is not writable; {way_out}.")
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise AnimalclsError(
            f"no space left on the disk for the run dir: {folder} has {human_size(free)} free; "
            f"free some space, or {way_out}."
        )


def _refuse_experiment_without_multirun(overrides: list[str]) -> None:
    from animalcls.errors import AnimalclsError

    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key.startswith("experiment") and value:
            raise AnimalclsError(_experiment_needs_multirun(value))


def _experiment_needs_multirun(experiment: str) -> str:
    return (
        f"+experiment={experiment} is a sweep over a paper table's rows: add -m, "
        f"e.g. `animalcls train -m +experiment={experiment}`."
    )


def _remove_if_empty(run_dir: Path) -> None:
    """A run that stopped before it wrote anything of its own leaves only Hydra's .hydra and its log
    (whose lines were on stderr too): nothing worth a run dir, so remove it, and the date dir and
    runs dir above it where they are left empty. Removes only these files, never a dir with
    anything else in it."""
    try:
        entries = list(run_dir.iterdir())
        hydra_files = list((run_dir / ".hydra").iterdir()) if (run_dir / ".hydra").is_dir() else []
        if not all(e.name == ".hydra" or (e.is_file() and e.suffix == ".log") for e in entries):
            return
        if not all(f.is_file() and f.suffix == ".yaml" for f in hydra_files):
            return
        for path in [*hydra_files, *(e for e in entries if e.is_file())]:
            path.unlink()
        for folder in (run_dir / ".hydra", run_dir, run_dir.parent, run_dir.parent.parent):
            if folder.exists():
                folder.rmdir()  # fails (and stops here) where something else is left
    except OSError:
        return


def _is_multirun(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.replace(" ", "").lower() == "hydra.mode=multirun" for a in args)


def _job_failed(code: int) -> None:
    """A job's nonzero exit status: this process's; in a multirun also a note in the sweep dir."""
    _fail(code)
    sweep.note_job_exit(code)


def _refuse_retired_sweeper(args: list[str]) -> None:
    """`+hparams_search=optuna` ran Hydra's Optuna sweeper, which pins Optuna 2.10 (its SQLite
    storage fails with today's SQLAlchemy); `animalcls tune` replaces it."""
    from animalcls.errors import AnimalclsError

    for arg in args:
        if arg.lstrip("+~").partition("=")[0] == "hparams_search":
            raise AnimalclsError(
                "the Hydra Optuna sweeper is retired: use `animalcls tune ...` instead, e.g. "
                "`animalcls tune n_trials=20 data=demo epochs=3` (see `animalcls tune --help`)."
            )


def _require_multirun_for_sweeps() -> None:
    """A paper experiment only defines a sweep; without -m Hydra would run the default config once."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from animalcls.errors import AnimalclsError

    hydra_cfg = HydraConfig.get()
    experiments = [v for k, v in hydra_cfg.runtime.choices.items() if k.startswith("experiment") and v]
    if hydra_cfg.mode == RunMode.RUN and experiments:
        raise AnimalclsError(_experiment_needs_multirun(experiments[0]))


# each animalcls.commands.<name>.main
COMMANDS = ("eval", "predict", "tune", "plan", "export", "profile", "bench", "report", "compare", "results", "cache")


def _run_command(command: str, args: list[str]) -> int:
    # imported when routed to: a command pays only for the libraries it uses
    module = importlib.import_module(f"animalcls.commands.{command}")
    if any(arg in ("-h", "--help") for arg in args):
        print(module.__doc__)
        return 0
    return module.main(args) or 0


def main(argv: list[str] | None = None) -> None:
    global _exit_code
    _exit_code = 0
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if argv else EXIT_BAD_INPUT)
    if argv[0] in ("-V", "--version", "version"):
        print(f"animalcls {_version()}")
        sys.exit(0)
    command, args = argv[0], argv[1:]
    if command == "train":
        sys.argv = [f"{Path(sys.argv[0]).name} train", *args]
        sys.exit(_train_app())
    if command not in COMMANDS:
        print(f"animalcls: unknown command {command!r}.\n\n{USAGE}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(_routed(command, args))


def _version() -> str:
    """The installed distribution's version (the package's own where it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("animalcls")
    except PackageNotFoundError:
        from animalcls import __version__

        return __version__


def _routed(command: str, args: list[str]) -> int:
    """The command's exit status; its user-fixable errors as one line on stderr, never a traceback."""
    from animalcls.errors import AnimalclsError, Interrupted

    try:
        return _run_command(command, args)
    except AnimalclsError as exc:
        if os.environ.get("ANIMALCLS_DEBUG"):
            raise
        print(f"animalcls {command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Interrupted):
        print(f"animalcls {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
