"""The results table: one row per run, appended atomically under a file lock, read back tolerantly.

A row is written with a single O_APPEND write while holding `<table>.lock`, so parallel jobs never
interleave. A crash can still leave a torn last line (power loss, kill -9 mid-write on some
filesystems): `load` reports and ignores it, and `append_row` starts the next row on a fresh line.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from filelock import FileLock

log = logging.getLogger(__name__)

COLUMNS = [
    "run_id", "status", "timestamp",
    "model", "pretrained", "optimizer", "lr", "batch_size", "epochs", "loss", "aug",
    "batch_norm", "dropout", "seed", "data", "precision",
    "val_top1", "val_top3", "val_top5", "test_top1", "test_top3", "test_top5",
    "gmacs_fvcore", "gflops", "params", "train_seconds", "images_per_s", "epochs_done",
    "skipped_files", "device", "versions", "git_commit", "run_dir", "paper_config", "tags", "error",
]
STATUSES = ("ok", "diverged", "failed", "interrupted")


def _format_line(row: Mapping[str, Any]) -> str:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown results columns: {sorted(unknown)}")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        ["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    return buf.getvalue()


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=120)


def append_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one row (creating the table with its header if needed); never tears earlier rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = _format_line(row)
    with _lock(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            prefix = ""
            if size == 0:
                prefix = ",".join(COLUMNS) + "\n"
            else:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":   # a torn last line: keep it on its own line
                    prefix = "\n"
            os.write(fd, (prefix + line).encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _intact_lines(path: Path) -> tuple[str, list[str]]:
    """The header and every data line with the header's field count; the others are reported."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    header, kept = lines[0], []
    names = next(csv.reader([header]))
    width, status = len(names), names.index("status") if "status" in names else None
    for number, line in enumerate(lines[1:], start=2):
        fields = next(csv.reader([line]), [])
        if len(fields) == width and (status is None or fields[status] in STATUSES):
            kept.append(line if line.endswith("\n") else line + "\n")
        elif line.strip():
            log.warning("%s:%d: ignored a torn or malformed line (%s...)", path, number, line.strip()[:60])
    return header, kept


def load(path: str | os.PathLike | Iterable[str | os.PathLike], warn: bool = True):
    """Read one table (or several, merged) as a DataFrame; torn or malformed lines are skipped."""
    import pandas as pd

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    frames = []
    for p in map(Path, paths):
        if not p.exists() or p.stat().st_size == 0:
            if warn:
                log.warning("results table %s is missing or empty", p)
            continue
        header, lines = _intact_lines(p)
        frames.append(pd.read_csv(io.StringIO(header + "".join(lines)),
                                  dtype={"run_id": str, "tags": str, "paper_config": str}))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)


def ok_rows(path: str | os.PathLike, run_id: str):
    """The rows with status ok of one run id, oldest first."""
    table = load(path, warn=False)
    if not len(table):
        return table
    return table[(table["run_id"] == run_id) & (table["status"] == "ok")]


def has_ok_row(path: str | os.PathLike, run_id: str) -> bool:
    return len(ok_rows(path, run_id)) > 0
