"""`animalcls results rebuild`: rewrite the results table from the run dirs' records.

The table is an index; each run's `record.json` is the truth. Rebuild after a crash, a full disk
or a hand edit: every run dir under `runs=` (default: the table's folder) with a record gets
exactly one row, and rows of older runs without a record are kept.
"""

from __future__ import annotations

from pathlib import Path

from animalcls import results
from animalcls.errors import AnimalclsError

USAGE = "animalcls results rebuild [results=outputs/results.csv] [runs=DIR]"


def _options(args: list[str]) -> dict[str, str]:
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("results", "runs"):
            raise AnimalclsError(f"unexpected argument {arg!r}; usage: {USAGE}")
        options[key] = value.strip().strip("'\"")
    return options


def main(args: list[str]) -> int:
    if not args or args[0] != "rebuild":
        raise AnimalclsError(f"say what to do with the results table; usage: {USAGE}")
    options = _options(args[1:])
    table = Path(options.get("results", "outputs/results.csv"))
    runs = Path(options.get("runs", str(table.parent)))
    if not runs.is_dir():
        raise AnimalclsError(f"runs={runs} is not a folder; give the folder that holds the run dirs.")
    records, kept = results.rebuild(table, [runs])
    print(f"{table}: {records} run(s) from record.json files under {runs}, {kept} older row(s) kept")
    return 0
