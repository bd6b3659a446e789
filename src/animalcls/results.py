"""The results table: a plain CSV index of the runs' records, appended under a lock.

Storage design. Each run's record is written atomically into its run dir (`record.json`, see
animalcls.record): that is the truth. The table (`outputs/results.csv`) is an index of those
records that people open in pandas; it can always be rebuilt from the run dirs (`rebuild`,
`animalcls results rebuild`). We chose this over SQLite because sweeps on a cluster write over a
shared file system, where SQLite's locking is unreliable, and because a CSV is what users read.

Why nothing is lost, torn, hidden or merged:
- rows are written by `csv.writer` and read by a CSV parser, so a newline, comma or quote in a
  cell stays inside its cell; records are found in the table's bytes (a record ends at a newline
  outside quotes), so a byte that is not UTF-8 cannot shift where a record starts or ends;
- an append holds `<table>.lock`, checks every byte was written (a full disk raises, and the table
  is cut back to its previous length) and fsyncs; a complete last row without a final newline (a
  hand edit, pandas, a spreadsheet) is a good row: the append starts on a new line after it;
- a torn tail (kill -9, power loss) is moved to `<table>.torn` before the next append, so it can
  never swallow a later row;
- a table with other columns (an older or newer animalcls) is rewritten, atomically and under the
  lock, with the union of both headers: old rows keep their values (whatever their status), new
  columns start empty; a malformed row goes to `<table>.torn`, and the log says how many;
- a symlinked table is written through to its target (shared tables are often links);
- the skip check reads only the rows of the run ids it asks for, and an append only the last
  row, so both stay fast at 100k rows (`python scripts/bench_table.py`).
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from animalcls.atomic import write_bytes_atomic
from animalcls.errors import AnimalclsError
from animalcls.record import COLUMNS, RECORD_FILE, TABLE_KEYS, TEXT_COLUMNS, read_record

log = logging.getLogger(__name__)

# The csv module refuses cells over 128 KiB by default, and a row it refuses looks torn: a long
# error cell (a traceback, a hand-pasted note) would send its whole row to .torn.
csv.field_size_limit(2**31 - 1)

LOCK_TIMEOUT_S = 120
BOM = b"\xef\xbb\xbf"  # a spreadsheet's UTF-8 byte-order mark: accepted, never required


class TableError(AnimalclsError):
    """The results table cannot be read or written; the message says what to do."""


def table_path(path: str | os.PathLike[str]) -> Path:
    """The table's real file: a symlinked table is read, locked and written at its target."""
    return Path(os.path.realpath(path))


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _line(header: list[str], row: Mapping[str, Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in header])
    return buf.getvalue().encode("utf-8")


# ---------------------------------------------------------------- records in bytes


@dataclass(frozen=True)
class _Record:
    """One CSV record of a table: its fields and where its bytes start and end."""

    fields: list[str] | None  # None: not parseable as CSV (a NUL byte, a stray carriage return)
    start: int
    end: int  # after its newline, or the end of the data
    closed: bool  # every quote it opened is closed (False: torn inside a quoted cell)


def _fields(chunk: bytes) -> list[str] | None:
    text = chunk.decode("utf-8", errors="replace")
    text = text[:-1] if text.endswith("\n") else text
    try:
        return next(csv.reader([text]), [])
    except csv.Error:
        return None


def _record_from(data: bytes, start: int) -> _Record:
    """The record starting at byte `start` (a line start outside quotes)."""
    end, quotes = start, 0
    while True:
        newline = data.find(b"\n", end)
        stop = len(data) if newline < 0 else newline + 1
        quotes += data.count(b'"', end, stop)
        end = stop
        if quotes % 2 == 0 or newline < 0:
            return _Record(_fields(data[start:end]), start, end, quotes % 2 == 0)


def _records(data: bytes, start: int) -> Iterator[_Record]:
    while start < len(data):
        record = _record_from(data, start)
        yield record
        start = record.end


def _record_start(data: bytes, position: int, floor: int) -> int:
    """The start of the record holding byte `position`: the nearest line start before it with an
    even number of quotes ahead of it (so it is outside any quoted cell)."""
    start = data.rfind(b"\n", floor, position) + 1 or floor
    quotes = data.count(b'"', floor, start)
    while quotes % 2 and start > floor:
        previous = data.rfind(b"\n", floor, start - 1) + 1 or floor
        quotes -= data.count(b'"', previous, start)
        start = previous
    return max(start, floor)


@dataclass(frozen=True)
class _Table:
    """A table's bytes, where its rows begin, and its header."""

    data: bytes
    body: int  # after the byte-order mark, if any
    header: list[str]
    rows_start: int  # after the header record

    @property
    def has_rows(self) -> bool:
        return self.rows_start < len(self.data) and bool(self.data[self.rows_start :].strip())


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


def _open_table(path: Path) -> _Table:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TableError(f"cannot read the results table {path}: {exc.strerror or exc}") from None
    body = len(BOM) if data.startswith(BOM) else 0
    first = _record_from(data, body) if body < len(data) else None
    header = _header(path, None if first is None else first.fields)
    assert first is not None
    return _Table(data, body, header, first.end)


def _is_row(table: _Table, record: _Record) -> bool:
    """A row of the table: complete and as wide as the header (any status: a newer animalcls
    may write one this version does not know)."""
    return record.closed and record.fields is not None and len(record.fields) == len(table.header)


def _blank(record: _Record, data: bytes) -> bool:
    return not data[record.start : record.end].strip()


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


def _set_aside(path: Path, chunks: list[bytes], what: str) -> None:
    """Append `chunks` (raw records, each ending in a newline) to `<table>.torn`, and say so."""
    if not chunks:
        return
    torn = Path(str(path) + ".torn")
    with open(torn, "ab") as file:
        for chunk in chunks:
            file.write(chunk if chunk.endswith(b"\n") else chunk + b"\n")
        file.flush()
        os.fsync(file.fileno())
    log.warning(
        "%s: moved %d %s to %s (a finished run's record.json still has it; `animalcls results rebuild` restores it)",
        path,
        len(chunks),
        what,
        torn,
    )


def _cut(path: Path, size: int) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)
        file.flush()
        os.fsync(file.fileno())


def _last_record(table: _Table) -> _Record | None:
    data = table.data
    scan_end = len(data) - 1 if data.endswith(b"\n") else len(data)
    if scan_end <= table.rows_start:
        return None
    start = _record_start(data, scan_end, table.rows_start)
    return _record_from(data, start)


def _union_rewrite(path: Path, table: _Table) -> list[str]:
    """Rewrite the table with the union of its header and today's columns (atomically). Every
    row keeps its bytes; a malformed one goes to `<table>.torn`, counted in the log."""
    union = table.header + [c for c in COLUMNS if c not in table.header]
    padding = b"," * (len(union) - len(table.header))
    body, malformed = [_line(union, dict(zip(union, union)))], []
    for record in _records(table.data, table.rows_start):
        chunk = table.data[record.start : record.end]
        if _is_row(table, record):
            body.append(chunk.rstrip(b"\n") + padding + b"\n")
        elif not _blank(record, table.data):
            malformed.append(chunk)
    _set_aside(path, malformed, "malformed row(s) (not as wide as the header, or torn)")
    write_bytes_atomic(path, b"".join(body))
    log.info("%s: added the columns %s (older rows leave them empty)", path, ", ".join(union[len(table.header) :]))
    return union


def _prepare_for_append(path: Path) -> tuple[list[str], bytes, _Table | None]:
    """(the header to write the next row with, bytes to write before it, the table as it was).
    Sets aside a torn tail, ends a complete last row that lacks its newline, and widens an older
    header."""
    if not path.exists() or path.stat().st_size == 0:
        _append_bytes(path, _line(COLUMNS, dict(zip(COLUMNS, COLUMNS))))
        return list(COLUMNS), b"", None
    table = _open_table(path)
    last = _last_record(table)
    if last is not None and not _is_row(table, last):
        _set_aside(path, [table.data[last.start :]], "torn last row")
        _cut(path, last.start)
        table = _open_table(path)
    if any(c not in table.header for c in COLUMNS):
        return _union_rewrite(path, table), b"", table
    return table.header, b"" if table.data.endswith(b"\n") else b"\n", table


def _holds(table: _Table, row: Mapping[str, Any]) -> bool:
    """Does the table hold this run dir's row of this status already (a retried append, or a
    rebuild that indexed the record between the record and the append)?"""
    key = _run_key(row)
    if key is None:
        return False
    return any(_run_key(dict(zip(table.header, fields))) == key for fields in _matching(table, {str(row["run_id"])}))


def append_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one row under the lock; raises TableError (nothing written) when it cannot. A run
    dir's row of a status the table holds already is not appended twice."""
    path = table_path(path)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown results columns: {sorted(unknown)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lock(path):
            header, before, table = _prepare_for_append(path)
            if table is not None and _holds(table, row):
                log.info("%s holds this run's %s row already", path, row.get("status"))
                return
            _append_bytes(path, before + _line(header, row))
    except OSError as exc:
        raise TableError(
            f"could not write the results table {path}: {exc.strerror or exc}. Free space or "
            f"make it writable (or pass results=ANOTHER.csv), then run `animalcls results "
            f"rebuild results={path}` to index the run dirs' records."
        ) from None


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail before any training when the table cannot be written (a read-only folder or file)."""
    path = table_path(path)
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
    """Its first record only: the skip check that follows reads no more than it needs either."""
    if path.stat().st_size == 0:
        return  # the first append writes the header
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
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


def _as_table(frames: list[Any]) -> Any:
    """Frames of one or several tables as one, with at least today's columns; text columns are
    strings ("" when empty)."""
    import pandas as pd

    extra = [c for f in frames for c in f.columns if c not in COLUMNS]
    columns = list(dict.fromkeys([*COLUMNS, *extra]))
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True).reindex(columns=columns)
    for column in TEXT_COLUMNS:
        values = table[column].astype(object)
        table[column] = values.where(values.notna(), "").map(str)
    return table


def _rows(path: Path, warn: bool) -> tuple[list[str], list[list[str]]]:
    table = _open_table(path)
    kept = []
    for number, record in enumerate(_records(table.data, table.rows_start), start=2):
        if _is_row(table, record):
            assert record.fields is not None
            kept.append(record.fields)
        elif warn and not _blank(record, table.data):
            log.warning("%s: record %d is torn or malformed and was ignored", path, number)
    return table.header, kept


def load(path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], warn: bool = True) -> Any:
    """One table (or several, merged) as a DataFrame with at least today's columns.

    Torn or malformed records are skipped with a warning; rows of any status and columns unknown
    to this version are kept; text columns are strings ("" when empty)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    frames = []
    for p in map(Path, paths):
        if not p.exists() or p.stat().st_size == 0:
            if warn:
                log.warning("results table %s is missing or empty", p)
            continue
        frames.append(_frame(*_rows(p, warn)))
    return _as_table(frames)


def _plausible_cell(data: bytes, position: int, length: int) -> bool:
    """Is the match at `position` a whole cell (not part of a longer value)?"""
    before = data[position - 1 : position] if position else b"\n"
    after = data[position + length : position + length + 1] or b"\n"
    return before in (b"\n", b",", b'"') and after in (b"\n", b",", b'"', b"\r")


def _matching(table: _Table, ids: set[str]) -> list[list[str]]:
    """The rows of the given run ids, oldest first: only the records where an id occurs are
    parsed, so this costs about the same at 100k rows as at 10."""
    column = table.header.index("run_id")
    starts: set[int] = set()
    for run_id in ids:
        needle = run_id.encode("utf-8")
        position = table.data.find(needle, table.rows_start)
        while position >= 0:
            if _plausible_cell(table.data, position, len(needle)):
                starts.add(_record_start(table.data, position, table.rows_start))
            position = table.data.find(needle, position + 1)
    kept = []
    for start in sorted(starts):
        record = _record_from(table.data, start)
        if _is_row(table, record) and record.fields is not None and record.fields[column] in ids:
            kept.append(record.fields)
    return kept


def rows_of(path: str | os.PathLike[str], run_ids: Iterable[str]) -> Any:
    """The rows of the given run ids, oldest first, typed as `load` types them."""
    path = table_path(path)
    ids = {i for i in run_ids if i}
    if not path.exists() or path.stat().st_size == 0 or not ids:
        return _as_table([])
    table = _open_table(path)
    return _as_table([_frame(table.header, _matching(table, ids))])


def ok_rows(path: str | os.PathLike[str], run_ids: Iterable[str]) -> Any:
    """The rows with status ok of the given run ids, oldest first."""
    rows = rows_of(path, run_ids)
    return rows[rows["status"] == "ok"]


def ok_row_in_table(path: str | os.PathLike[str], run_id: str, legacy_id: str) -> dict[str, Any] | None:
    """The latest ok row of a run as the table stands, writing nothing: by its run id, or by its
    animalcls 0.1 id (record.legacy_run_id) for rows written before record versions."""
    import pandas as pd

    table = rows_of(path, [run_id, legacy_id])
    legacy = pd.to_numeric(table["record_version"], errors="coerce").isna()
    mine = (table["run_id"] == run_id) & ~legacy
    old = (table["run_id"] == legacy_id) & legacy
    done = table[(mine | old) & (table["status"] == "ok")]
    return dict(done.iloc[-1].to_dict()) if len(done) else None


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


def _belongs(record: Mapping[str, Any], table: Path) -> bool:
    """Was this record appended to `table`? Records from before the table was recorded in them
    belong to the table whose runs folder holds them."""
    written, relative = record.get("results_table"), record.get("results_table_relative")
    if not written:
        return True
    places = [Path(str(written))]
    if relative:
        places.append(Path(str(record["run_dir"])) / str(relative))  # a copied or moved project
    return any(table_path(p) == table for p in places)


def _run_key(row: Mapping[str, Any]) -> tuple[str, tuple[str, ...], str, str] | None:
    """One attempt's row, wherever the project now lives: run id, the run dir's last two path
    parts (its unique name under the runs folder), status and timestamp (a `force=true` re-run in
    a fixed run dir is another attempt with its own row). None for a row without a run dir."""
    run_dir = str(row.get("run_dir") or "")
    if not run_dir:
        return None
    return (
        str(row.get("run_id", "")),
        Path(run_dir).parts[-2:],
        str(row.get("status", "")),
        _blank_nan(row.get("timestamp")),
    )


@dataclass(frozen=True)
class Rebuilt:
    records: int  # rows from record.json files
    kept: int  # older rows kept (no record of that run dir and status)
    replaced: int  # rows that a run's record replaced
    duplicates: int  # rows of a run dir and status that a newer row of the same repeated
    foreign: int  # records under the runs folder that belong to another table

    def summary(self, table: Path, roots: str) -> str:
        return (
            f"{table}: {self.records} run(s) from record.json files under {roots}, {self.kept} older row(s) "
            f"kept, {self.replaced} row(s) replaced by their run's record, {self.duplicates} duplicate "
            f"row(s) moved to {table}.torn, {self.foreign} record(s) of other tables left out"
        )


def rebuild(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> Rebuilt:
    """Rewrite the table from its run dirs' records; rows of run dirs without a record (tables
    of animalcls 0.1, or dirs deleted since) are kept as they are. Each run dir appears once per
    status it reached: a record replaces its run dir's row of that status, and of two rows with
    the same run dir and status the newer one is kept."""
    path = table_path(path)
    found = find_records(roots)
    records = [r for r in found if _belongs(r, path)]
    record_keys = {_run_key(r) for r in records}
    with _lock(path):
        old = load(path, warn=False).to_dict("records") if path.exists() and path.stat().st_size else []
        newest: dict[Any, int] = {}
        for index, row in enumerate(old):
            newest[_run_key(row) or ("", (str(index),), "", "")] = index
        kept, duplicates, replaced = [], [], 0
        for index, row in enumerate(old):
            key = _run_key(row)
            if key is not None and key in record_keys:
                replaced += 1
            elif key is not None and newest[key] != index:
                duplicates.append(row)
            else:
                kept.append(row)
        rows = sorted([*kept, *({k: v for k, v in r.items() if k not in TABLE_KEYS} for r in records)], key=_when)
        header = list(dict.fromkeys([*COLUMNS, *(c for r in rows for c in r)]))
        body = io.StringIO()
        writer = csv.writer(body, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([_blank_nan(row.get(c)) for c in header] for row in rows)
        try:
            duplicate = "duplicate row(s) (a newer row has the same run dir and status)"
            _set_aside(path, [_line(header, {c: _blank_nan(r.get(c)) for c in header}) for r in duplicates], duplicate)
            write_bytes_atomic(path, body.getvalue().encode("utf-8"))
        except OSError as exc:
            raise TableError(f"could not write {path}: {exc.strerror or exc}") from None
    return Rebuilt(len(records), len(kept), replaced, len(duplicates), len(found) - len(records))


def rebuild_if_missing(path: str | os.PathLike[str]) -> Rebuilt | None:
    """A deleted table is rebuilt from the records under its folder before a run decides what is
    done (only when the file is missing: reading every record on each start would not scale)."""
    table = table_path(path)
    if table.exists() or not table.parent.is_dir():
        return None
    if not any(_belongs(r, table) for r in find_records([table.parent])):
        return None
    rebuilt = rebuild(table, [table.parent])
    log.warning(
        "the results table %s was missing: rebuilt it from %d run record(s) under %s",
        table,
        rebuilt.records,
        table.parent,
    )
    return rebuilt


def _when(row: Mapping[str, Any]) -> str:
    return str(row.get("timestamp") or "")


def _blank_nan(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)
