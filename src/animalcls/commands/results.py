"""`animalcls results rebuild|track`: the results table from the run dirs, or the run dirs to a tracker.

`rebuild` rewrites the table from the run dirs' records. The table is an index; each run's
`record.json` is the truth. Rebuild after a crash, a full disk, a hand edit or a copy of the
project: every run dir under `runs=` (default: the table's folder) whose record was appended to
this table gets one row per status it reached (records of other tables that share the folder are
left out), rows of older runs without a record are kept, and a duplicate row (same run dir and
status as a newer one) moves to `<table>.torn`. It prints how many rows went where.

`track logger=mlflow|tensorboard` sends every run of the table (each run dir's latest row, with its
config, history, metrics and small files) to the tracker, as if it had been tracked while it
trained; a run the tracker holds already (sent before, or tracked live) is not sent again. MLflow:
`logger.tracking_uri=` and `logger.experiment=` as for train; the jobs of a sweep (a Hydra multirun
dir, a tune study) are nested under one run per sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from animalcls import results
from animalcls.errors import AnimalclsError

USAGE = (
    "animalcls results rebuild [results=outputs/results.csv] [runs=DIR]\n"
    "       animalcls results track logger=mlflow|tensorboard [results=outputs/results.csv] "
    "[logger.tracking_uri=URI] [logger.experiment=NAME]"
)
KEYS = {
    "rebuild": ("results", "runs"),
    "track": ("results", "logger", "logger.name", "logger.tracking_uri", "logger.experiment"),
}


def _options(args: list[str], verb: str) -> dict[str, str]:
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS[verb]:
            raise AnimalclsError(f"unexpected argument {arg!r}; usage: {USAGE}")
        options[key] = value.strip().strip("'\"")
    return options


def main(args: list[str]) -> int:
    if not args or args[0] not in KEYS:
        raise AnimalclsError(f"say what to do with the results table; usage: {USAGE}")
    options = _options(args[1:], args[0])
    table = Path(options.get("results", "outputs/results.csv"))
    if args[0] == "track":
        return track(table, options)
    runs = Path(options.get("runs", str(table.parent)))
    if not runs.is_dir():
        raise AnimalclsError(f"runs={runs} is not a folder; give the folder that holds the run dirs.")
    rebuilt = results.rebuild(table, [runs])
    print(rebuilt.summary(results.table_path(table), str(runs)))
    return 0


def track(table: Path, options: dict[str, str]) -> int:
    from animalcls import tracking  # deferred: the tracker's imports are slow

    name = options.get("logger", options.get("logger.name", ""))
    if not name or name == "none":
        raise AnimalclsError(f"name the tracker to send the runs to, e.g. logger=mlflow; usage: {USAGE}")
    tracking.check_name(name)
    where = tracking.Target(
        name,
        options.get("logger.tracking_uri", ""),
        options.get("logger.experiment", "") or "animalcls",
        table.parent,  # as train names it: the local MLflow store and run dir names are relative to it
    )
    path = results.table_path(table)
    if not path.is_file():
        raise AnimalclsError(f"no results table at {path}; give results=PATH.")
    latest: dict[str, dict[str, Any]] = {}  # run dir -> its latest row (the table is in time order)
    for row in results.load(path).to_dict("records"):
        if str(row.get("run_dir", "") or ""):
            latest[str(row["run_dir"])] = row
    sent = there = gone = 0
    for run_dir_name, row in latest.items():
        run_dir = Path(run_dir_name)
        if not run_dir.is_dir():
            gone += 1
            continue
        if tracking.send_run(where, run_dir, row, tracking.sweep_of(run_dir)):
            sent += 1
        else:
            there += 1
    print(
        f"logger={name}: {sent} run(s) sent, {there} there already"
        + (f", {gone} run dir(s) missing" if gone else "")
        + f" (of {len(latest)} in {path})"
    )
    return 0
