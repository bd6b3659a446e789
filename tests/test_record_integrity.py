"""The record under attack: no run lost, hidden, merged or misattributed, whatever happens.

One test (or a few) per numbered item of the attack on animalcls 0.1; items 6, 11 (data layer),
8, 12 (report) and 13 (predict) have theirs in test_data.py, test_report.py and test_commands.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from animalcls import results, resume
from animalcls.atomic import torch_save_atomic
from animalcls.errors import AnimalclsError
from animalcls.record import COLUMNS

from conftest import make_image_folder, mounted_tmpfs, remount, tiny_train_args


def _table(cwd: Path) -> pd.DataFrame:
    return results.load(cwd / "outputs" / "results.csv")


def _clean_failure(code: int, capsys, *phrases: str) -> str:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text
    assert "Traceback" not in text, text
    for phrase in phrases:
        assert phrase in text, text
    return text


def _row(**values) -> dict:
    return {"run_id": "r", "status": "ok", **values}


# ---------------------------------------------------------------- 1. a newline in any cell


def test_a_newline_comma_or_quote_in_a_tag_keeps_one_row_and_skips_the_rerun(tmp_path, image_folder, cli):
    tag = 'two\nlines, "quoted" = x'
    args = tiny_train_args(image_folder, f"tags=['{tag}']")
    assert cli(args, tmp_path) == 0
    assert cli(args, tmp_path) == 0  # skipped: the row is found
    table = _table(tmp_path)
    assert len(table) == 1 and table["tags"].iloc[0] == tag


def test_a_multiline_error_does_not_break_the_table(tmp_path):
    table = tmp_path / "results.csv"
    results.append_row(table, _row(run_id="a", status="failed", error="size mismatch\n\tfor fc1.weight"))
    results.append_row(table, _row(run_id="b"))
    loaded = results.load(table)
    assert list(loaded["run_id"]) == ["a", "b"] and loaded["error"].iloc[0] == "size mismatch\n\tfor fc1.weight"
    assert results.has_ok_row(table, "b")


def test_a_torn_tail_with_an_open_quote_cannot_swallow_the_next_row(tmp_path):
    table = tmp_path / "results.csv"
    results.append_row(table, _row(run_id="a"))
    with open(table, "a") as file:
        file.write('b,ok,2026,"unterminated\nstill')  # kill -9 in the middle of a quoted cell
    results.append_row(table, _row(run_id="c"))
    assert list(results.load(table)["run_id"]) == ["a", "c"]
    assert "unterminated" in (tmp_path / "results.csv.torn").read_text()


# ---------------------------------------------------------------- 2. disk full


def _fill(mount: Path, leave: int) -> None:
    """Fill the file system but `leave` bytes (about: tmpfs counts whole pages)."""
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    (mount / "ballast").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_disk_never_tears_the_table_and_says_so(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", "size=64k") as mount:
        table = mount / "results.csv"
        results.append_row(table, _row(run_id="a"))
        before = table.read_bytes()
        _fill(mount, leave=0)
        with pytest.raises(AnimalclsError, match="results rebuild"):
            results.append_row(table, _row(run_id="b", error="x" * 20_000))
        assert table.read_bytes() == before
        assert not [p for p in mount.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_leaves_no_torn_checkpoint_or_temp_file(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", "size=64k") as mount:
        with pytest.raises(OSError):
            torch_save_atomic({"w": torch.zeros(100_000)}, mount / "last.pt")
        assert list(mount.iterdir()) == []


@pytest.mark.slow
def test_a_run_whose_row_cannot_be_written_says_where_its_record_is(tmp_path, image_folder, cli, capsys):
    with mounted_tmpfs(tmp_path / "mnt", "size=64k") as mount:
        table = mount / "results.csv"
        assert cli(tiny_train_args(image_folder, f"results={table}"), tmp_path) == 0
        _fill(mount, leave=0)
        # a row larger than the page the table's last line has left
        code = cli(tiny_train_args(image_folder, f"results={table}", "seed=1", f"tags=[{'x' * 20_000}]"), tmp_path)
        text = _clean_failure(code, capsys, "record.json", "results rebuild")
        assert len(results.load(table)) == 1
        (mount / "ballast").unlink()
        assert cli(["results", "rebuild", f"results={table}", f"runs={tmp_path / 'outputs'}"], tmp_path) == 0
        rebuilt = results.load(table)
        assert sorted(rebuilt["seed"]) == [0, 1] and (rebuilt["status"] == "ok").all(), text


# ---------------------------------------------------------------- 3. runs started together


def test_runs_started_in_the_same_second_get_their_own_run_dirs(tmp_path, image_folder, cli):
    args = tiny_train_args(image_folder, "force=true")
    for _ in range(3):
        assert cli(args, tmp_path) == 0
    assert _table(tmp_path)["run_dir"].nunique() == 3


def test_a_run_dir_and_a_run_id_have_one_owner(tmp_path):
    first, second = (resume.Claim(str(tmp_path / "results.csv"), "abc", tmp_path / "run") for _ in range(2))
    first.take_run_dir()
    assert first.take_run_id()
    with pytest.raises(AnimalclsError, match="in use by another run"):
        second.take_run_dir()
    assert not second.take_run_id()
    first.release()
    assert second.take_run_id()
    second.release()


@pytest.mark.slow
def test_a_fixed_run_dir_takes_the_same_run_again_but_never_another(tmp_path, image_folder, cli, capsys):
    fixed = ["hydra.run.dir=fixed"]
    assert cli(tiny_train_args(image_folder, *fixed), tmp_path) == 0
    assert cli(tiny_train_args(image_folder, *fixed, "force=true"), tmp_path) == 0  # the same run, again
    assert len(list((tmp_path / "fixed").glob("record.*.json"))) == 1 and (tmp_path / "fixed" / "record.json").exists()
    _clean_failure(cli(tiny_train_args(image_folder, *fixed, "seed=5"), tmp_path), capsys, "already holds another run")
    assert len(_table(tmp_path)) == 2


@pytest.mark.slow
def test_two_identical_runs_started_together_train_once(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=20)
    args = [sys.executable, "-m", "animalcls", *tiny_train_args(root, "epochs=2")]
    processes = [
        subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[1] for p in processes]
    # the second one either found the first holding the run (exit 2, naming its pid: a holder that
    # is stopped or hung must not make it skip silently) or started after it and found its ok row
    assert sorted(p.returncode for p in processes) in ([0, 0], [0, 2]), outputs
    table = _table(tmp_path)
    assert list(table["status"]) == ["ok"], outputs
    assert any("is held by process" in o or "already has an ok row" in o for o in outputs)


# ---------------------------------------------------------------- 4. and 7. resume


def _fake_unfinished(cwd: Path, run_dir: Path, run_id: str, text: str | bytes | None = None) -> Path:
    """A resume pointer, as an interrupted run leaves it (or garbled, with `text`)."""
    pointer = cwd / "outputs" / "unfinished" / run_id
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        text = json.dumps({"run_dir": str(run_dir.resolve()), "run_id": run_id})
    pointer.write_bytes(text if isinstance(text, bytes) else text.encode())
    return pointer


def _finished_run(tmp_path: Path, cli, root: Path, *extra: str) -> tuple[list[str], pd.Series]:
    args = tiny_train_args(root, "epochs=2", *extra)
    assert cli(args, tmp_path) == 0
    return args, _table(tmp_path).iloc[-1]


def _log_of_last_run(cwd: Path) -> str:
    return (Path(_table(cwd).iloc[-1]["run_dir"]) / "train.log").read_text()


def test_resume_after_the_data_changed_starts_over_and_says_why(tmp_path, cli):
    root = make_image_folder(tmp_path / "images")
    args, row = _finished_run(tmp_path, cli, root)
    # as an interruption after epoch 2 leaves it; then images are added to the data root
    resume.write_pointer(
        str(tmp_path / "outputs" / "results.csv"),
        resume.Pointer(Path(row["run_dir"]), row["run_id"], _lineage(args), row["data_id"]),
    )
    make_image_folder(root, per_class=14, seed=3)
    assert cli(args, tmp_path) == 0
    log = _log_of_last_run(tmp_path)
    assert "on other data" in log and "resuming from" not in log
    history = pd.read_csv(Path(_table(tmp_path).iloc[-1]["run_dir"]) / "history.csv")
    assert list(history["epoch"]) == [1, 2]


def _lineage(args: list[str]) -> str:
    from animalcls.build import choose_precision
    from animalcls.config import compose
    from animalcls.data import data_identity, scan
    from animalcls.record import Resolved, lineage_id

    cfg = compose(args[1:])
    return lineage_id(
        cfg, Resolved(choose_precision("auto", torch.device("cpu"), "base"), data_identity(scan(cfg.data.root)))
    )


def test_a_checkpoint_of_another_split_is_not_resumed(tmp_path, cli, image_folder):
    args, row = _finished_run(tmp_path, cli, image_folder)
    last = Path(row["run_dir"]) / "last.pt"
    state = torch.load(last, weights_only=True)
    state["meta"]["split_digest"] = "0" * 16  # made on another split
    torch.save(state, last)
    _fake_unfinished(tmp_path, Path(row["run_dir"]), row["run_id"])
    assert cli(args + ["force=true"], tmp_path) == 0
    assert "starting over" in _log_of_last_run(tmp_path)


@pytest.mark.slow
def test_a_truncated_last_pt_is_reported_and_the_run_starts_over(tmp_path, cli, image_folder):
    args, row = _finished_run(tmp_path, cli, image_folder)
    last = Path(row["run_dir"]) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    _fake_unfinished(tmp_path, Path(row["run_dir"]), row["run_id"])
    assert cli(args + ["force=true"], tmp_path) == 0
    log = _log_of_last_run(tmp_path)
    assert "cannot resume from" in log and "not a readable checkpoint" in log
    assert list(_table(tmp_path)["status"]) == ["ok", "ok"]


@pytest.mark.slow
@pytest.mark.parametrize("garbage", ["", b"\xff\xfe\x00garbage", "relative/dir", "[1, 2]"])
def test_a_garbled_pointer_is_ignored_not_followed(tmp_path, cli, image_folder, garbage):
    args, row = _finished_run(tmp_path, cli, image_folder)
    shutil.copy(Path(row["run_dir"]) / "last.pt", tmp_path / "last.pt")  # someone else's, in cwd
    _fake_unfinished(tmp_path, Path(row["run_dir"]), row["run_id"], garbage)
    assert cli(args + ["force=true"], tmp_path) == 0
    log = _log_of_last_run(tmp_path)
    assert "ignoring the resume pointer" in log and "resuming from" not in log


# ---------------------------------------------------------------- 5. a header from another version


def test_an_older_header_is_widened_and_a_newer_one_kept(tmp_path, image_folder, cli):
    table = tmp_path / "outputs" / "results.csv"
    table.parent.mkdir()
    older = [c for c in COLUMNS[:36] if c != "error"]
    newer = [*COLUMNS, "future_column"]
    for header, extra in ((older, {}), (newer, {"future_column": "kept"})):
        pd.DataFrame([{**{c: "" for c in header}, "run_id": "old", "status": "ok", **extra}]).to_csv(table, index=False)
        args = tiny_train_args(image_folder)
        assert cli(args, tmp_path) == 0
        assert cli(args, tmp_path) == 0  # the new row is found: skipped
        loaded = results.load(table)
        assert list(loaded["run_id"])[0] == "old" and len(loaded) == 2
        if extra:
            assert loaded["future_column"].iloc[0] == "kept"
        table.unlink()


# ---------------------------------------------------------------- 6. a damaged cache, from the CLI


def test_a_damaged_cache_is_rebuilt_and_the_run_goes_on(tmp_path, image_folder, cli, capsys):
    args = tiny_train_args(image_folder)
    assert cli(args, tmp_path) == 0
    cache = next((tmp_path / "cache").glob("*[0-9a-f].npy"))
    cache.write_bytes(cache.read_bytes()[:500])
    assert cli(args + ["force=true"], tmp_path) == 0
    assert cache.name in capsys.readouterr().err


# ---------------------------------------------------------------- 9. the row tells the truth


@pytest.mark.parametrize(
    "override, phrase",
    [
        (["model.pretrained=false", "model.weights=w.pth"], "model.weights=w.pth with model.pretrained=false"),
        (["model.pretrained=true", "model.weights=/nonexistent.pth"], "has no ImageNet weights"),
    ],
)
def test_contradictory_pretraining_is_refused(tmp_path, image_folder, cli, capsys, override, phrase):
    model = [] if "model.pretrained=true" in override else ["model=mobilenet_v3_small"]
    _clean_failure(cli(tiny_train_args(image_folder, *model, *override), tmp_path), capsys, phrase)
    assert not (tmp_path / "outputs" / "results.csv").exists()


# ---------------------------------------------------------------- 10. rough edges


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("device=foo", "device='foo' is not a device"),
        ("seed=-1", "seed=-1 is out of range: seed takes a whole number in [0, 4294967295]"),
        (f"seed={2**63 + 5}", "seed"),
        ("eval_batch_size=-1", "eval_batch_size=-1 is out of range"),
        ("optim.momentum=-1", "optim.momentum=-1 is out of range: optim.momentum takes a finite float in [0, 1)"),
        ("optim.weight_decay=-1", "optim.weight_decay=-1 is out of range"),
        ("aug.mean=[0.5,0.5]", "aug.mean=[0.5,0.5]: aug.mean takes one value in [0, 1] per RGB channel"),
        ("aug.std=[0,0,0]", "aug.std=[0,0,0] is out of range: aug.std takes a list of finite floats each in (0, 1]"),
    ],
)
def test_nonsense_values_are_one_message_and_exit_2(tmp_path, image_folder, cli, capsys, override, phrase):
    code = cli(tiny_train_args(image_folder, override), tmp_path)
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and phrase in captured.err, captured.err
    assert not (tmp_path / "outputs" / "results.csv").exists()


@pytest.mark.parametrize("content, phrase", [("\n", "no header"), ("a,b\n1,2\n", "no run_id")])
def test_a_results_file_that_is_not_a_table_is_refused_before_training(
    tmp_path, image_folder, cli, capsys, content, phrase
):
    table = tmp_path / "outputs" / "results.csv"
    table.parent.mkdir()
    table.write_text(content)
    _clean_failure(cli(tiny_train_args(image_folder), tmp_path), capsys, phrase)
    assert table.read_text() == content and not list(tmp_path.glob("outputs/runs/*/*/last.pt"))


def test_a_read_only_results_dir_is_refused_before_training(tmp_path, image_folder, cli, capsys):
    with mounted_tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        code = cli(tiny_train_args(image_folder, f"results={mount / 'results.csv'}"), tmp_path)
        _clean_failure(code, capsys, "not writable", "results=")
    assert not list(tmp_path.glob("outputs/runs/*/*/last.pt"))


@pytest.mark.parametrize("options, phrase", [("size=64k", "no space left"), ("size=1m,ro", "not writable")])
def test_a_run_dir_on_a_full_or_read_only_disk_is_refused_before_hydra_writes_it(
    tmp_path, image_folder, cli, capsys, options, phrase
):
    with mounted_tmpfs(tmp_path / "mnt", options) as mount:
        if "ro" not in options.split(","):
            _fill(mount, leave=0)
        for sweep in ([], ["-m"]):
            key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
            code = cli([*tiny_train_args(image_folder, f"{key}={mount}/runs/x"), *sweep], tmp_path)
            _clean_failure(code, capsys, phrase, f"{key}=")
        assert sorted(p.name for p in mount.iterdir()) == ([] if "ro" in options else ["ballast"])
    assert not (tmp_path / "outputs" / "results.csv").exists()


def test_a_valid_cache_in_a_read_only_dir_is_used(tmp_path, image_folder, cli):
    with mounted_tmpfs(tmp_path / "cachefs", "size=4m") as mount:
        args = tiny_train_args(image_folder, f"data.cache_dir={mount}")
        assert cli(args, tmp_path) == 0
        remount(mount, "ro")
        assert cli(args + ["force=true"], tmp_path) == 0
    assert list(_table(tmp_path)["status"]) == ["ok", "ok"]


def test_a_weights_file_that_runs_code_is_refused_without_a_traceback(tmp_path, image_folder, cli, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    code = cli(
        tiny_train_args(
            image_folder, "model=mobilenet_v3_small", "model.pretrained=true", f"model.weights={tmp_path / 'evil.pth'}"
        ),
        tmp_path,
    )
    _clean_failure(code, capsys, "refused to load model.weights")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_first_decode_is_a_clean_interrupted_run(tmp_path, signum):
    root = make_image_folder(tmp_path / "images", classes=3, per_class=150, size=160)
    args = [sys.executable, "-m", "animalcls", *tiny_train_args(root, "aug.resize=128", "aug.crop=128", "workers=1")]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "decoding" in line:
            process.send_signal(signum)
            break
    lines += process.stderr.readlines()
    process.wait(timeout=120)
    text = "".join(lines)
    assert process.returncode == 130 and "Traceback" not in text and "interrupted" in text, text
    assert list(_table(tmp_path)["status"]) == ["interrupted"]
    assert not list((tmp_path / "cache").glob("*[0-9a-f].npy"))  # a partial cache at most


def test_an_interrupted_row_counts_its_epochs(tmp_path, cli):
    root = make_image_folder(tmp_path / "images", per_class=30)
    args = tiny_train_args(root, "epochs=3", "batch_size=4")

    def terminate_after_first_epoch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob("outputs/runs/*/*/last.pt")):
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=terminate_after_first_epoch)
    watcher.start()
    assert cli(args, tmp_path) == 130
    watcher.join()
    row = _table(tmp_path).iloc[0]
    assert row["status"] == "interrupted" and row["epochs_done"] >= 1


# ---------------------------------------------------------------- the soak


@pytest.mark.slow
def test_soak_concurrent_runs_with_hostile_tags_and_sigkills_lose_and_merge_nothing(tmp_path):
    """scripts/soak.py, small: 3 workers x 4 runs, 2 SIGKILLs (the full 4 x 50 is in the README)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
    done = subprocess.run(
        [sys.executable, str(script), "--workers", "3", "--runs", "4", "--kills", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok twice []; missing []; tag not as given []" in done.stdout
