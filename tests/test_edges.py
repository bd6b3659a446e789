"""Rough edges of issue 19 (item 9 and "Rough edges"): each test fails on the code before its fix.

1. predict out= never overwrites an input; 2. a full disk names the path and the space left and
keeps the last good checkpoint; 3. SIGTERM before the first epoch names no missing last.pt;
4. ckpt= takes a run dir; 5. a stopped lock holder is named, not silently skipped; 6. orphan temp
files and unusable resume pointers are tidied; 7. the report never averages a non-finite row.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_commands import make_checkpoint
from test_report import BASE, row

from animalcls import atomic, checkpoint, report, results, resume
from animalcls.errors import AnimalclsError, DiskFull

from conftest import tiny_train_args


def _table(cwd: Path) -> pd.DataFrame:
    return results.load(cwd / "outputs" / "results.csv")


def _error_text(capsys) -> str:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    return text


# ---------------------------------------------------------------- 1. predict out= is never an input


@pytest.mark.parametrize("which", ["ckpt", "image", "image_via_link", "results"])
def test_predict_refuses_an_out_that_is_one_of_its_inputs(tmp_path, image_folder, cli, capsys, which):
    ckpt = make_checkpoint(tmp_path / "run", image_folder)
    image = sorted(image_folder.rglob("*.jpg"))[0]
    table = tmp_path / "outputs" / "results.csv"
    table.parent.mkdir()
    table.write_text("run_id,status\n")
    if which == "image_via_link":
        (tmp_path / "link.csv").symlink_to(image)
    out = {"ckpt": ckpt, "image": image, "image_via_link": tmp_path / "link.csv", "results": table}[which]
    before = {p: p.read_bytes() for p in (ckpt, image, table)}
    code = cli(["predict", f"ckpt={ckpt}", f"images=[{image_folder}]", f"out={out}"], tmp_path)
    text = _error_text(capsys)
    assert code == 2 and "an input of this command" in text, text
    assert [line for line in text.splitlines() if "error:" in line] == [text.strip().splitlines()[-1]]
    assert all(p.read_bytes() == data for p, data in before.items())


# ---------------------------------------------------------------- 2. a full disk


def test_a_full_disk_keeps_the_old_file_removes_the_temp_and_says_where_and_how_much(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the last good one")

    def fill(file) -> None:
        file.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DiskFull) as caught:
        atomic.write_atomic(target, fill)
    assert isinstance(caught.value, AnimalclsError) and isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value) and "free in" in str(caught.value)
    assert target.read_bytes() == b"the last good one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_quota_and_torchs_own_full_disk_error_are_disk_full_too(tmp_path):
    def over_quota(file) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(DiskFull, match="quota"):
        atomic.write_atomic(tmp_path / "a", over_quota)
    assert atomic.full_disk_errno(RuntimeError("[enforce fail] No space left on device")) == errno.ENOSPC
    assert atomic.full_disk_errno(OSError(errno.EACCES, "denied")) is None


def test_a_full_disk_at_the_second_last_pt_records_a_failed_row_naming_it_and_keeps_epoch_1(
    tmp_path, image_folder, cli, capsys, monkeypatch
):
    saved: list[Path] = []
    real = checkpoint.torch_save_atomic

    def save(obj, path: Path) -> None:
        if Path(path).name == "last.pt" and saved.count(Path(path)) == 1:  # the second last.pt: the disk is full

            def fill(file) -> None:
                file.write(b"x" * 100)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            atomic.write_atomic(Path(path), fill)
        saved.append(Path(path))
        real(obj, path)

    monkeypatch.setattr(checkpoint, "torch_save_atomic", save)
    code = cli(tiny_train_args(image_folder, "epochs=2"), tmp_path)
    text = _error_text(capsys)
    assert code == 2, text
    assert "no space left on the disk while writing" in text and "last.pt" in text and "free in" in text, text
    assert "it resumes from" in text, text
    row = _table(tmp_path).iloc[-1]
    assert row["status"] == "failed" and row["error"].startswith("DiskFull: no space left"), row["error"]
    run_dir = Path(row["run_dir"])
    assert checkpoint.read(run_dir / "last.pt")["epoch"] == 1  # the last good checkpoint
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
    assert (tmp_path / "outputs" / "unfinished" / row["run_id"]).is_file()  # a re-run resumes


# ---------------------------------------------------------------- 3. SIGTERM while decoding


def test_sigterm_while_decoding_says_it_stopped_before_the_first_epoch(tmp_path, image_folder, cli, monkeypatch):
    from animalcls import run

    real = run.prepare_data

    def terminated_while_decoding(cfg, data, should_stop):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler sets the stop; decoding polls it
        return real(cfg, data, should_stop=should_stop)

    monkeypatch.setattr(run, "prepare_data", terminated_while_decoding)
    assert cli(tiny_train_args(image_folder), tmp_path) == 130
    row = _table(tmp_path).iloc[-1]
    assert row["status"] == "interrupted"
    log = (Path(row["run_dir"]) / "train.log").read_text()
    assert "before the first epoch" in log and "starts this run from the beginning" in log, log
    assert "last.pt" not in log, log


# ---------------------------------------------------------------- 4. ckpt=<run dir>


def test_locate_takes_a_run_dir_best_then_last_and_says_what_a_folder_holds(tmp_path, image_folder):
    best = make_checkpoint(tmp_path / "run", image_folder)
    assert checkpoint.locate(tmp_path / "run") == best
    best.rename(tmp_path / "run" / "last.pt")
    assert checkpoint.locate(str(tmp_path / "run")) == tmp_path / "run" / "last.pt"
    (tmp_path / "run" / "last.pt").unlink()
    with pytest.raises(AnimalclsError, match=r"without best.pt or last.pt \(it holds split.csv\)"):
        checkpoint.locate(tmp_path / "run")
    assert checkpoint.locate(best) == best  # a file (even a missing one) is read as given


def test_eval_predict_and_export_take_a_run_dir(tmp_path, image_folder, cli, capsys):
    from animalcls.commands import export

    run_dir = tmp_path / "run"
    best = make_checkpoint(run_dir, image_folder)
    assert cli(["eval", f"ckpt={run_dir}", "device=cpu"], tmp_path) == 0
    assert f"checkpoint {best}" in capsys.readouterr().out
    image = sorted(image_folder.rglob("*.jpg"))[0]
    assert cli(["predict", f"ckpt={run_dir}", f"images=[{image}]", "device=cpu"], tmp_path) == 0
    assert str(image) in capsys.readouterr().out
    ckpt, out, _, _ = export._checked({"ckpt": str(run_dir)})
    assert (ckpt, out) == (str(best), run_dir)


def test_a_folder_without_checkpoints_is_described_not_called_missing(tmp_path, cli, capsys):
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "split.csv").write_text("path\n")
    assert cli(["eval", f"ckpt={tmp_path / 'empty_run'}"], tmp_path) == 2
    text = _error_text(capsys)
    assert "does not exist" not in text and "it holds split.csv" in text, text


# ---------------------------------------------------------------- 5. a stopped lock holder


HOLDER = """
import os, signal, sys
from pathlib import Path
from animalcls import resume
claim = resume.Claim(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
assert claim.take_run_id()
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def _wait_stopped(pid: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline and not resume._is_stopped(pid):
        time.sleep(0.02)
    assert resume._is_stopped(pid)


def test_a_run_held_by_a_stopped_process_exits_2_naming_it(tmp_path, image_folder, cli, capsys):
    args = tiny_train_args(image_folder)
    assert cli(args, tmp_path) == 0
    run_id = _table(tmp_path).iloc[-1]["run_id"]
    table = str(tmp_path / "outputs" / "results.csv")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, table, run_id, str(tmp_path / "elsewhere")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        _wait_stopped(holder.pid)
        started = time.time()
        code = cli(args, tmp_path)
        text = _error_text(capsys)
        assert code == 2, text
        assert time.time() - started < 60
        assert f"held by process {holder.pid} on {os.uname().nodename}" in text, text
        assert f"kill -CONT {holder.pid}" in text and f"kill {holder.pid}" in text, text
        assert "skipping" not in text
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert list(_table(tmp_path)["status"]) == ["ok"]


def test_the_owner_note_is_written_with_the_lock_and_removed_on_release(tmp_path):
    claim = resume.Claim(str(tmp_path / "results.csv"), "abc", tmp_path / "run")
    assert claim.holder() is None
    assert claim.take_run_id()
    holder = claim.holder()
    assert holder is not None and holder["pid"] == os.getpid() and holder["host"] == os.uname().nodename
    assert json.loads(claim.owner_file.read_text())["started"]
    claim.release()
    assert not claim.owner_file.exists() and claim.holder() is None
    assert "has not noted its pid" in resume.busy_message("abc", None)


# ---------------------------------------------------------------- 6. leftovers of killed runs


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_tidy_removes_dead_writers_temp_files_and_unusable_pointers(tmp_path):
    run_dir, other = tmp_path / "run", tmp_path / "other"
    run_dir.mkdir()
    other.mkdir()
    dead = _dead_pid()
    orphan = run_dir / f".last.pt.{dead}.0123abcd.tmp"
    orphan_there = other / f".best.pt.{dead}.89abcdef.tmp"
    live = run_dir / f".last.pt.{os.getpid()}.0123abcd.tmp"
    unrelated = run_dir / "notes.tmp"
    for path in (orphan, orphan_there, live, unrelated):
        path.write_bytes(b"x")
    pointer = tmp_path / "unfinished" / "rid"
    pointer.parent.mkdir()
    pointer.write_text(json.dumps({"run_dir": str(other), "run_id": "rid"}))  # other has no last.pt
    removed = resume.tidy(run_dir, pointer)
    assert set(removed) == {orphan, orphan_there, pointer}
    assert live.exists() and unrelated.exists() and not orphan.exists() and not orphan_there.exists()

    (other / "last.pt").write_bytes(b"x")
    pointer.write_text(json.dumps({"run_dir": str(other), "run_id": "rid"}))
    assert resume.tidy(run_dir, pointer) == [] and pointer.exists()  # usable: kept
    pointer.write_text("{garbled")
    assert resume.tidy(run_dir, pointer) == [pointer] and not pointer.exists()


def test_a_run_tidies_its_run_dir_on_start(tmp_path, image_folder, cli):
    orphan = tmp_path / "fixed" / f".last.pt.{_dead_pid()}.0123abcd.tmp"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half a checkpoint")
    assert cli(tiny_train_args(image_folder, "hydra.run.dir=fixed"), tmp_path) == 0
    assert not orphan.exists()
    assert "left behind by a run that was killed" in (tmp_path / "fixed" / "train.log").read_text()


# ---------------------------------------------------------------- 7. the report and non-finite rows


def test_report_counts_nan_and_infinite_rows_apart_and_never_averages_them():
    frame = pd.DataFrame(
        [
            row("a", BASE, 0, top1=30.0),
            row("b", BASE, 1, top1=34.0),
            row("n", BASE, 2, top1=float("nan")),  # an ok row whose accuracy is NaN
            row("i", BASE, 3, status="diverged", top1=float("-inf")),
            row("j", BASE, 4, status="diverged", top1=1.0),
        ]
    )
    group = report.aggregate(report.prepare(frame)).set_index("paper_config").loc[BASE]
    assert (group["n"], group["n_runs"], group["n_ok"], group["n_diverged"]) == (2, 5, 2, 3)
    assert group["test_top1_mean"] == pytest.approx(32.0) and math.isfinite(group["val_top1_mean"])
    assert group["seeds"] == "0,1"
