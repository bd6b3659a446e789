"""`animalcls results rebuild`: rewrite the results table from the run dirs' records.

The table is an index; each run's `record.json` is the truth. Rebuild after a crash, a full disk,
a hand edit or a copy of the project: every run dir under `runs=` (default: the table's folder)
whose record was appended to this table gets one row per status it reached (records of other
tables that share the folder are left out), rows of older runs without a record are kept, and a
duplicate row (same run dir and status as a newer one) moves to `<table>.torn`. It prints how many
rows went where.
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
    rebuilt = results.rebuild(table, [runs])
    print(rebuilt.summary(results.table_path(table), str(runs)))
    return 0
