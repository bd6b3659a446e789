"""The record, round 2: no row merged, dropped or mislabelled by the table's own storage.

One test (or a few) per item of the second attack on the results table: a table without a final
newline, a non-UTF-8 byte, rows of unknown status, a symlinked table, a rebuild that takes only
its own table's runs (also in a copied project), kills around appends and rebuilds, a byte-order
mark, and a deleted table.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from animalcls import results
from animalcls.record import COLUMNS, RECORD_FILE, TABLE_KEYS, write_record

from conftest import tiny_train_args


def _row(run_id: str, status: str = "ok", **values) -> dict:
    return {"run_id": run_id, "status": status, **values}


def _ids(table: Path) -> list[str]:
    return list(results.load(table)["run_id"])


def _header_line(columns: list[str] = COLUMNS) -> bytes:
    return (",".join(columns) + "\n").encode()


def _raw_row(run_id: str, status: str = "ok", tags: str = "", columns: list[str] = COLUMNS) -> bytes:
    cells = {c: "" for c in columns} | {"run_id": run_id, "status": status, "tags": tags}
    return ",".join(cells[c] for c in columns).encode("utf-8", errors="surrogateescape")


# ---------------------------------------------------------------- 1. no final newline


def test_a_complete_last_row_without_a_newline_is_a_good_row(tmp_path):
    table = tmp_path / "results.csv"
    table.write_bytes(_header_line() + _raw_row("a"))  # as a hand edit or a spreadsheet leaves it
    results.append_row(table, _row("b"))
    assert _ids(table) == ["a", "b"]
    assert not (tmp_path / "results.csv.torn").exists()


def test_a_table_written_by_pandas_takes_appends(tmp_path):
    table = tmp_path / "results.csv"
    frame = pd.DataFrame([_row("a", test_top1=50.0)]).reindex(columns=COLUMNS)
    table.write_text(frame.to_csv(index=False).rstrip("\n"))  # as pandas writes it with lineterminator=""
    results.append_row(table, _row("b"))
    loaded = results.load(table)
    assert list(loaded["run_id"]) == ["a", "b"] and loaded["test_top1"].iloc[0] == 50.0


def test_a_row_with_a_cell_over_128_kib_is_a_good_row(tmp_path):
    """csv's default field limit would call such a row torn and move it aside on the next append."""
    table = tmp_path / "results.csv"
    results.append_row(table, _row("a", "failed", error="e" * 200_000))
    results.append_row(table, _row("b"))
    assert _ids(table) == ["a", "b"]
    assert not (tmp_path / "results.csv.torn").exists()


def test_a_header_without_a_newline_takes_its_first_row(tmp_path):
    table = tmp_path / "results.csv"
    table.write_bytes(_header_line().rstrip(b"\n"))
    results.append_row(table, _row("a"))
    assert _ids(table) == ["a"]


# ---------------------------------------------------------------- 2. bytes, not decoded text


def test_a_non_utf8_byte_does_not_shift_the_cut_of_a_torn_tail(tmp_path):
    table = tmp_path / "results.csv"
    torn = b'b,ok,2026,"unterminated\nstill'
    table.write_bytes(_header_line() + _raw_row("a", tags="caf\udce9 \udcff\udcfe") + b"\n" + torn)
    results.append_row(table, _row("c"))
    assert _ids(table) == ["a", "c"]
    assert (tmp_path / "results.csv.torn").read_bytes() == torn + b"\n"
    assert b"caf\xe9 \xff\xfe" in table.read_bytes()  # the row's own bytes are kept as they were


# ---------------------------------------------------------------- 3. every row kept, or counted


def test_rows_of_an_unknown_status_stay_and_malformed_ones_are_counted(tmp_path, caplog):
    table = tmp_path / "results.csv"
    older = [c for c in COLUMNS if c not in ("recipe", "recipe_settings", "stopped_early")]
    malformed = _raw_row("m", columns=older) + b",one,too,many"
    table.write_bytes(
        _header_line(older)
        + b"\n".join([_raw_row("a", columns=older), malformed, _raw_row("a", "requeued", columns=older)])
        + b"\n"
    )
    with caplog.at_level(logging.INFO, logger="animalcls.results"):
        results.append_row(table, _row("b"))
    loaded = results.load(table)
    assert list(zip(loaded["run_id"], loaded["status"])) == [("a", "ok"), ("a", "requeued"), ("b", "ok")]
    assert malformed in (tmp_path / "results.csv.torn").read_bytes()
    assert "moved 1 malformed row(s)" in caplog.text


def test_a_last_row_of_an_unknown_status_is_not_torn(tmp_path):
    table = tmp_path / "results.csv"
    results.append_row(table, _row("a"))
    results.append_row(table, _row("a", "requeued"))  # a status a newer animalcls may write
    results.append_row(table, _row("b"))
    assert _ids(table) == ["a", "a", "b"]
    assert not (tmp_path / "results.csv.torn").exists()


# ---------------------------------------------------------------- 4. a symlinked table


def test_a_symlinked_table_stays_a_link_and_its_target_takes_the_rows(tmp_path):
    target = tmp_path / "shared" / "table.csv"
    target.parent.mkdir()
    older = [c for c in COLUMNS if c != "stopped_early"]
    target.write_bytes(_header_line(older) + _raw_row("a", columns=older) + b"\n")
    link = tmp_path / "results.csv"
    link.symlink_to(target)
    results.append_row(link, _row("b"))  # widens the header: an atomic rewrite, through the link
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _ids(target) == ["a", "b"]
    results.rebuild(link, [tmp_path / "nothing-here"])
    assert link.is_symlink() and _ids(target) == ["a", "b"]


# ---------------------------------------------------------------- 5. and 6. rebuild


def _fake_run(runs: Path, name: str, run_id: str, table: Path, status: str = "ok", **values) -> dict:
    run_dir = runs / "2026-12-04" / name
    run_dir.mkdir(parents=True)
    row = _row(run_id, status, run_dir=str(run_dir), timestamp=f"2026-12-04T{name}", **values)
    write_record(run_dir, row, table)
    return row


def test_rebuild_takes_only_the_runs_of_its_own_table(tmp_path):
    outputs = tmp_path / "outputs"
    mine, other = outputs / "results.csv", outputs / "other.csv"
    _fake_run(outputs / "runs", "10-00-00-1_base", "a", mine)
    _fake_run(outputs / "runs", "10-00-00-2_base", "b", other)
    rebuilt = results.rebuild(mine, [outputs])
    assert _ids(mine) == ["a"] and rebuilt.foreign == 1


def test_a_record_from_before_the_table_was_named_in_it_belongs_by_location(tmp_path):
    outputs = tmp_path / "outputs"
    row = _fake_run(outputs / "runs", "10-00-00-1_base", "a", outputs / "results.csv")
    record = Path(row["run_dir"]) / RECORD_FILE
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k not in TABLE_KEYS}))
    results.append_row(outputs / "results.csv", row)
    results.rebuild(outputs / "results.csv", [outputs])
    assert _ids(outputs / "results.csv") == ["a"]


def test_rebuild_in_a_copied_project_matches_rows_by_run_id_not_by_path(tmp_path):
    first = tmp_path / "first" / "outputs"
    rows = [_fake_run(first / "runs", f"10-00-00-{i}_base", f"r{i}", first / "results.csv") for i in range(3)]
    for row in rows:
        results.append_row(first / "results.csv", row)
    shutil.copytree(tmp_path / "first", tmp_path / "copy")
    copy = tmp_path / "copy" / "outputs"
    rebuilt = results.rebuild(copy / "results.csv", [copy])
    loaded = results.load(copy / "results.csv")
    assert sorted(loaded["run_id"]) == ["r0", "r1", "r2"] and rebuilt.replaced == 3
    assert all(d.startswith(str(copy)) for d in loaded["run_dir"])  # the rows name the copy's run dirs


def test_an_append_after_a_rebuild_that_indexed_the_record_adds_no_second_row(tmp_path):
    outputs = tmp_path / "outputs"
    row = _fake_run(outputs / "runs", "10-00-00-1_base", "a", outputs / "results.csv")
    results.rebuild(outputs / "results.csv", [outputs])  # between the record and its append
    results.append_row(outputs / "results.csv", row)
    assert _ids(outputs / "results.csv") == ["a"]


def test_a_forced_rerun_is_a_new_run_dir_and_keeps_its_own_row(tmp_path):
    outputs = tmp_path / "outputs"
    for name in ("10-00-00-1_base", "11-00-00-1_base"):
        results.append_row(outputs / "results.csv", _fake_run(outputs / "runs", name, "a", outputs / "results.csv"))
    results.rebuild(outputs / "results.csv", [outputs])
    assert _ids(outputs / "results.csv") == ["a", "a"]


def _torn_append(table: Path, row: dict) -> None:
    """What SIGKILL in the middle of an append leaves: part of the row, no newline."""
    line = results._line(COLUMNS, row)
    with open(table, "ab") as file:
        file.write(line[: len(line) // 2])


@pytest.mark.parametrize("order", list(itertools.permutations(["torn", "append", "rebuild", "rebuild2"])))
def test_kills_around_appends_and_rebuilds_leave_each_run_dir_once_per_status(tmp_path, order):
    """Whatever the order of a torn append (kill -9), a finished append and rebuilds: each run
    dir appears once per status it reached, and a run has exactly one row of its final status."""
    outputs = tmp_path / "outputs"
    table = outputs / "results.csv"
    interrupted = _fake_run(outputs / "runs", "09-00-00-1_base", "a", table, "interrupted")
    results.append_row(table, interrupted)
    row = _fake_run(outputs / "runs", "10-00-00-1_base", "a", table, error="x" * 3000)
    steps = {
        "torn": lambda: _torn_append(table, row),
        "append": lambda: results.append_row(table, row),
        "rebuild": lambda: results.rebuild(table, [outputs]),
        "rebuild2": lambda: results.rebuild(table, [outputs]),
    }
    for step in order:
        steps[step]()
    results.append_row(table, _row("z", run_dir=str(outputs / "elsewhere")))  # sets aside any torn tail
    loaded = results.load(table)
    assert sorted(zip(loaded["run_id"], loaded["status"])) == [("a", "interrupted"), ("a", "ok"), ("z", "ok")]


# ---------------------------------------------------------------- a byte-order mark


def test_a_table_with_a_byte_order_mark_is_accepted(tmp_path):
    table = tmp_path / "results.csv"
    table.write_bytes(results.BOM + _header_line() + _raw_row("a") + b"\n")
    results.check_writable(table)
    results.append_row(table, _row("b"))
    assert _ids(table) == ["a", "b"] and results.has_ok_row(table, "a")


# ---------------------------------------------------------------- the skip check reads only its rows


def test_the_skip_check_finds_a_run_id_wherever_it_is(tmp_path):
    table = tmp_path / "results.csv"
    rng = random.Random(0)
    for i in range(40):
        tag = "".join(rng.choice(['"', "\n", ",", "a", "é", "r1"]) for _ in range(12))
        results.append_row(table, _row(f"r{i}", rng.choice(["ok", "failed"]), tags=tag, error=f"r{i}"))
    everything = results.load(table)
    for i in range(40):
        expected = everything[everything["run_id"] == f"r{i}"]
        found = results.rows_of(table, [f"r{i}"])
        assert list(found["status"]) == list(expected["status"]) and list(found["tags"]) == list(expected["tags"])
    assert results.rows_of(table, ["r"]).empty and results.rows_of(table, ["nope"]).empty


# ---------------------------------------------------------------- a deleted table


def test_a_deleted_table_is_rebuilt_from_the_records_before_deciding(tmp_path, image_folder, cli, capsys):
    args = tiny_train_args(image_folder)
    assert cli(args, tmp_path) == 0
    table = tmp_path / "outputs" / "results.csv"
    table.unlink()
    assert cli(args, tmp_path) == 0
    text = capsys.readouterr().err
    assert "was missing: rebuilt it from 1 run record(s)" in text and "skipping" in text
    assert len(list((tmp_path / "outputs").rglob(RECORD_FILE))) == 1
    assert list(results.load(table)["status"]) == ["ok"]
