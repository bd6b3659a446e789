"""The results table: a plain CSV index of the runs' records, appended under a lock.

Storage design. Each run's record is written atomically into its run dir (`record.json`, see
animalcls.record): that is the truth. The table (`outputs/results.csv`) is an index of those
records that people open in pandas; it can always be rebuilt from the run dirs (`rebuild`,
`animalcls results rebuild`). We chose this over SQLite because sweeps on a cluster write over a
shared file system, where SQLite's locking is unreliable, and because a CSV is what users read.

Why nothing is lost, torn, hidden or merged:
- rows are written by `csv.writer` and read by a CSV parser, so a newline, comma or quote in a
  cell stays inside its cell;
- an append holds `<table>.lock`, checks every byte was written (a full disk raises, and the table
  is cut back to its previous length) and fsyncs;
- a torn tail (kill -9, power loss) is moved to `<table>.torn` before the next append, so it can
  never swallow a later row;
- a table with other columns (an older or newer animalcls) is rewritten, atomically and under the
  lock, with the union of both headers: old rows keep their values, new columns start empty.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from animalcls.atomic import write_text_atomic
from animalcls.errors import AnimalclsError
from animalcls.record import COLUMNS, RECORD_FILE, STATUSES, TEXT_COLUMNS, read_record

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 120


class TableError(AnimalclsError):
    """The results table cannot be read or written; the message says what to do."""


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _line(header: list[str], row: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in header])
    return buf.getvalue()


# ---------------------------------------------------------------- parsing


class _Records:
    """The CSV records of a table's text with the character offset where each one ends."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __iter__(self) -> Iterator[tuple[list[str], int]]:
        # split on \n alone: str.splitlines also breaks at \u2028 and friends, which csv.writer
        # does not quote, so a tag holding one would look torn
        lines = self.text.split("\n")
        lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        offsets, total = [], 0
        for line in lines:
            total += len(line)
            offsets.append(total)
        reader = csv.reader(iter(lines))
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error:  # e.g. a NUL byte: the rest of that line is noise
                continue
            yield fields, offsets[reader.line_num - 1]


def _header(path: Path, fields: list[str] | None) -> list[str]:
    """The table's header, or TableError when its first record is not one."""
    if fields is None or not any(f.strip() for f in fields):
        raise TableError(
            f"{path} has no header line; it is not an animalcls results table. "
            f"Move it aside or pass results=ANOTHER.csv."
        )
    if "run_id" not in fields or "status" not in fields:
        raise TableError(
            f"{path} is not an animalcls results table (its first line has no run_id and "
            f"status columns). Move it aside or pass results=ANOTHER.csv."
        )
    return fields


def _parse(path: Path, text: str) -> tuple[list[str], list[list[str]], int, list[int]]:
    """(header, intact records, end offset of the last intact record, line numbers of bad ones)."""
    records = iter(_Records(text))
    first = next(records, None)
    header = _header(path, None if first is None else first[0])
    width, status = len(header), header.index("status")
    kept, bad, end = [], [], 0 if first is None else first[1]
    for number, (fields, offset) in enumerate(records, start=2):
        if len(fields) == width and fields[status] in STATUSES:
            kept.append(fields)
            end = offset
        elif any(f.strip() for f in fields):
            bad.append(number)
    return header, kept, end, bad


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


# ---------------------------------------------------------------- writing


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out; a short write that makes no progress is a full disk."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _append_bytes(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # no partial row stays behind
            raise
    finally:
        os.close(fd)


def _set_aside_torn_tail(path: Path, text: str, end: int) -> None:
    """Move what follows the last intact record to `<table>.torn`, so it cannot merge with the
    next row (an unclosed quote in a torn line would swallow it)."""
    tail = text[end:]
    if not tail.strip():
        return
    with open(str(path) + ".torn", "a", encoding="utf-8") as torn:
        torn.write(tail if tail.endswith("\n") else tail + "\n")
    log.warning(
        "%s: moved a torn last row to %s.torn (the run's record.json still has it; "
        "`animalcls results rebuild` restores it)",
        path,
        path,
    )
    with open(path, "r+b") as file:
        file.truncate(len(text[:end].encode("utf-8")))
        file.flush()
        os.fsync(file.fileno())


def _union_rewrite(path: Path, header: list[str], kept: list[list[str]]) -> list[str]:
    """Rewrite the table with the union of its header and today's columns (atomically)."""
    union = header + [c for c in COLUMNS if c not in header]
    body = io.StringIO()
    writer = csv.writer(body, lineterminator="\n")
    writer.writerow(union)
    for fields in kept:
        writer.writerow(fields + [""] * (len(union) - len(header)))
    write_text_atomic(path, body.getvalue())
    log.info("%s: added the columns %s (older rows leave them empty)", path, ", ".join(union[len(header) :]))
    return union


def _prepare_for_append(path: Path) -> list[str]:
    """The header to write the next row with; repairs a torn tail and widens an older header."""
    if not path.exists() or path.stat().st_size == 0:
        _append_bytes(path, _line(COLUMNS, dict(zip(COLUMNS, COLUMNS))).encode())
        return list(COLUMNS)
    text = _read_text(path)
    header, kept, end, _ = _parse(path, text)
    if len(text) > end:
        _set_aside_torn_tail(path, text, end)
    if any(c not in header for c in COLUMNS):
        header = _union_rewrite(path, header, kept)
    return header


def append_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one row under the lock; raises TableError (nothing written) when it cannot."""
    path = Path(path)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown results columns: {sorted(unknown)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lock(path):
            header = _prepare_for_append(path)
            _append_bytes(path, _line(header, row).encode("utf-8"))
    except OSError as exc:
        raise TableError(
            f"could not write the results table {path}: {exc.strerror or exc}. Free space or "
            f"make it writable (or pass results=ANOTHER.csv), then run `animalcls results "
            f"rebuild results={path}` to index the run dirs' records."
        ) from None


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail before any training when the table cannot be written (a read-only folder or file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.{os.getpid()}.probe"
        probe.write_bytes(b"")
        probe.unlink()
        if path.exists():
            with open(path, "ab"):
                pass
            _check_header(path)  # a file that is not a table fails here, before training
    except OSError as exc:
        raise TableError(
            f"the results table {path} is not writable ({exc.strerror or exc}); pass results=A/WRITABLE/PATH.csv."
        ) from None


def _check_header(path: Path) -> None:
    """Its first record only: the whole table is parsed once, by the skip check that follows."""
    if path.stat().st_size == 0:
        return  # the first append writes the header
    with open(path, encoding="utf-8", errors="replace", newline="") as file:
        _header(path, next(csv.reader(file), None))


# ---------------------------------------------------------------- reading


def _frame(header: list[str], kept: list[list[str]]) -> Any:
    import pandas as pd

    body = io.StringIO()
    writer = csv.writer(body, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(kept)
    body.seek(0)
    text_types = {c: str for c in TEXT_COLUMNS if c in header}
    return pd.read_csv(
        body, dtype=text_types, keep_default_na=False, na_values={c: [""] for c in header if c not in TEXT_COLUMNS}
    )


def load(path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], warn: bool = True) -> Any:
    """One table (or several, merged) as a DataFrame with at least today's columns.

    Torn or malformed records are skipped with a warning; columns unknown to this version are
    kept; text columns are strings ("" when empty)."""
    import pandas as pd

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    frames = []
    for p in map(Path, paths):
        if not p.exists() or p.stat().st_size == 0:
            if warn:
                log.warning("results table %s is missing or empty", p)
            continue
        try:
            header, kept, _, bad = _parse(p, _read_text(p))
        except OSError as exc:
            raise TableError(f"cannot read the results table {p}: {exc.strerror or exc}") from None
        for number in bad:
            log.warning("%s: record %d is torn or malformed and was ignored", p, number)
        frames.append(_frame(header, kept))
    extra = [c for f in frames for c in f.columns if c not in COLUMNS]
    columns = list(dict.fromkeys([*COLUMNS, *extra]))
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True).reindex(columns=columns)
    for column in TEXT_COLUMNS:
        values = table[column].astype(object)
        table[column] = values.where(values.notna(), "").map(str)
    return table


def ok_rows(path: str | os.PathLike[str], run_ids: Iterable[str]) -> Any:
    """The rows with status ok of the given run ids, oldest first."""
    table = load(path, warn=False)
    return table[table["run_id"].isin(list(run_ids)) & (table["status"] == "ok")]


def has_ok_row(path: str | os.PathLike[str], run_id: str) -> bool:
    return len(ok_rows(path, [run_id])) > 0


# ---------------------------------------------------------------- rebuild


def find_records(roots: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Every readable record.json under the roots (unreadable ones are reported and skipped)."""
    records = []
    for root in map(Path, roots):
        for file in sorted(root.rglob(RECORD_FILE)):
            record = read_record(file)
            if record is None:
                log.warning("skipping unreadable run record %s", file)
                continue
            record["run_dir"] = str(file.parent)
            records.append(record)
    return records


def rebuild(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> tuple[int, int]:
    """Rewrite the table from the run dirs' records; rows of run dirs without a record (tables of
    animalcls 0.1, or dirs deleted since) are kept as they are. Returns (records, kept rows)."""
    path = Path(path)
    records = find_records(roots)
    by_dir = {str(Path(r["run_dir"]).resolve()): r for r in records}
    with _lock(path):
        old = load(path, warn=False) if path.exists() else None
        kept = (
            []
            if old is None
            else [
                row
                for row in old.to_dict("records")
                if str(Path(str(row.get("run_dir") or "")).resolve()) not in by_dir or not row.get("run_dir")
            ]
        )
        rows = sorted([*kept, *by_dir.values()], key=lambda r: str(r.get("timestamp") or ""))
        header = list(dict.fromkeys([*COLUMNS, *(c for r in rows for c in r)]))
        body = io.StringIO()
        writer = csv.writer(body, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([_blank_nan(row.get(c)) for c in header])
        try:
            write_text_atomic(path, body.getvalue())
        except OSError as exc:
            raise TableError(f"could not write {path}: {exc.strerror or exc}") from None
    return len(by_dir), len(kept)


def _blank_nan(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)
