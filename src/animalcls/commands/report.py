"""`animalcls report [results=PATH|results=[a.csv,b.csv]] [out=DIR] [runs=[id,...]]`

The paper's tables and figures from one or more results tables, written under `out`
(default outputs/report). Values follow Hydra's override grammar, as for every other subcommand:
lists in brackets, quotes for spaces and for ids that look like numbers (`runs=["1234e5"]`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from animalcls.commands import parse_overrides
from animalcls.errors import AnimalclsError
from animalcls.report import run_report

KEYS = {"results": "PATH or [a.csv,b.csv]", "out": "DIR", "runs": "[id,...]"}
DEFAULT_RESULTS, DEFAULT_OUT = "outputs/results.csv", "outputs/report"


def main(args: list[str]) -> int:
    options = _options(args)
    tables = _strings(options.get("results", DEFAULT_RESULTS), "results")
    out = _strings(options.get("out", DEFAULT_OUT), "out")
    if len(out) != 1:
        raise AnimalclsError(f"out= takes one folder, got {out}.")
    runs = _strings(options["runs"], "runs") if "runs" in options else None
    index = write_report(tables, Path(out[0]), runs)
    print(f"report written: {index}")
    return 0


def _options(args: list[str]) -> dict[str, Any]:
    options = {}
    for override in parse_overrides(args, "report"):
        key = override.key_or_group
        if key not in KEYS:
            raise AnimalclsError(
                f"report does not take {key}=; it takes " + ", ".join(f"{k}={v}" for k, v in KEYS.items()) + "."
            )
        options[key] = override.value()
    return options


def _strings(value: Any, key: str) -> list[str]:
    """A value or a list of them, as strings. Hydra reads `1234e5` as a float, which would not
    name the file or run typed, so anything but text and whole numbers must be quoted."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (str, int)) or isinstance(v, bool) or v == "":
            raise AnimalclsError(
                f"{key}={value!r}: each value must be a path or an id; quote one that "
                f'Hydra would read as a number or a constant, e.g. {key}=["1234e5"].'
            )
    if not values:
        raise AnimalclsError(f"{key}=[] is empty; leave {key} out for its default.")
    return [str(v) for v in values]


def write_report(tables: list[str], out: Path, runs: list[str] | None) -> Path:
    """run_report, after checking that `out` can be written: a bad folder is one message, not a
    traceback halfway through the report."""
    _check_writable(out)
    try:
        return run_report(tables, str(out), runs)
    except OSError as exc:
        if exc.filename is None or not _is_under(Path(exc.filename), out):
            raise
        raise AnimalclsError(_cannot_write(out, exc)) from None


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # mkdir succeeds on an existing read-only folder
            pass
    except OSError as exc:
        raise AnimalclsError(_cannot_write(out, exc)) from None


def _cannot_write(out: Path, exc: OSError) -> str:
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # mkdir's "File exists" / "Not a directory" would not say which file
        why = f"{blocking} is a file, not a folder"
    else:
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != out else ""
        why = f"{exc.strerror or exc}{where}"
    return f"cannot write the report to {out}: {why}; choose another out=DIR."


def _is_under(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents
