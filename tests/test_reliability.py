"""Bad input, divergence, interruption and resume, concurrent writers, unsafe checkpoints."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from animalcls import results

from conftest import make_image_folder, tiny_train_args


def _table(cwd: Path) -> pd.DataFrame:
    return results.load(cwd / "outputs" / "results.csv")


def _assert_clean_failure(code: int, capsys, *phrases: str) -> str:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text
    assert "Traceback" not in text
    for phrase in phrases:
        assert phrase in text, text
    return text


# ---------------------------------------------------------------- bad data


@pytest.mark.parametrize(
    "layout, phrase",
    [
        ("missing", "does not exist"),
        ("empty", "has no class folders"),
        ("files_only", "has no class folders"),
        ("empty_class", "class folder(s) with no images"),
    ],
)
def test_bad_data_roots_fail_with_a_message_and_no_row(tmp_path, cli, capsys, layout, phrase):
    root = tmp_path / "images"
    if layout != "missing":
        root.mkdir()
    if layout == "files_only":
        (root / "a.jpg").write_bytes(b"x")
    if layout == "empty_class":
        make_image_folder(root)
        (root / "zebra").mkdir()
    _assert_clean_failure(cli(tiny_train_args(root), tmp_path), capsys, phrase)
    assert not (tmp_path / "outputs" / "results.csv").exists()


def _add_unreadable_files(root: Path) -> list[str]:
    good = next((root / "class_0").glob("*.jpg")).read_bytes()
    (root / "class_0" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "class_1" / "empty.jpg").write_bytes(b"")
    (root / "class_2" / "notes.jpg").write_text("this is not an image\n")
    return ["truncated.jpg", "empty.jpg", "notes.jpg"]


def test_unreadable_images_are_skipped_named_and_counted(tmp_path, image_folder, cli, capsys):
    names = _add_unreadable_files(image_folder)
    assert cli(tiny_train_args(image_folder), tmp_path) == 0
    err = capsys.readouterr().err
    assert all(name in err for name in names)
    row = _table(tmp_path).iloc[0]
    assert row["status"] == "ok" and row["skipped_files"] == 3
    split = pd.read_csv(Path(row["run_dir"]) / "split.csv")
    assert not split["path"].str.contains("|".join(names)).any()


def test_unreadable_images_fail_in_strict_mode(tmp_path, image_folder, cli, capsys):
    _add_unreadable_files(image_folder)
    code = cli(tiny_train_args(image_folder, "data.strict=true"), tmp_path)
    _assert_clean_failure(code, capsys, "3 unreadable image(s)", "data.strict=false")
    assert not (tmp_path / "outputs" / "results.csv").exists()


def test_unreadable_images_are_skipped_by_the_pil_pipeline_too(tmp_path, image_folder, cli):
    _add_unreadable_files(image_folder)
    assert cli(tiny_train_args(image_folder, "data.pipeline=pil"), tmp_path) == 0
    assert _table(tmp_path).iloc[0]["skipped_files"] == 3


# ---------------------------------------------------------------- checkpoints and predict


@pytest.fixture
def trained(tmp_path, image_folder, cli) -> Path:
    assert cli(tiny_train_args(image_folder), tmp_path) == 0
    return Path(_table(tmp_path).iloc[0]["run_dir"])


def test_bad_checkpoints_are_refused_with_a_message(tmp_path, trained, cli, capsys):
    import torch

    best = trained / "best.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(best.read_bytes()[:200])
    text_file = tmp_path / "notes.pt"
    text_file.write_text("hello")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    checkpoint = torch.load(best, weights_only=True)
    other_arch = tmp_path / "other_arch.pt"
    from animalcls.build import create_model

    torch.save(
        {**checkpoint, "model": create_model("mobilenet_v3_small", 3, pretrained=False).state_dict()}, other_arch
    )
    other_classes = tmp_path / "other_classes.pt"
    meta = {**checkpoint["meta"], "classes": ["a", "b", "c", "d", "e"]}
    torch.save({**checkpoint, "meta": meta}, other_classes)
    cases = [
        (tmp_path / "missing.pt", "does not exist"),
        (truncated, "not a readable checkpoint"),
        (text_file, "not a readable checkpoint"),
        (plain, "not an animalcls checkpoint"),
        (other_arch, "does not fit model=base"),
        (other_classes, "with 5 classes"),
    ]
    for path, phrase in cases:
        for command in (["eval", f"ckpt={path}"], ["predict", f"ckpt={path}", f"images=[{path}]"]):
            _assert_clean_failure(cli(command, tmp_path), capsys, phrase)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, cli, capsys):
    evil = tmp_path / "evil.pt"
    import torch

    torch.save({"model": _Exploit(), "meta": {}}, evil)  # as a tampered checkpoint would be
    _assert_clean_failure(cli(["eval", f"ckpt={evil}"], tmp_path), capsys, "refused to load")
    assert not (tmp_path / "pwned").exists()


def test_predict_rejects_missing_and_non_images(tmp_path, trained, cli, capsys):
    ckpt = trained / "best.pt"
    _assert_clean_failure(cli(["predict", f"ckpt={ckpt}", "images=[nope.jpg]"], tmp_path), capsys, "does not exist")
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    _assert_clean_failure(
        cli(["predict", f"ckpt={ckpt}", f"images=[{fake}]"], tmp_path), capsys, "not a readable image"
    )


def test_decompression_bomb_guard_stays_on():
    from PIL import Image

    import animalcls.data  # noqa: F401  (imports PIL the way the loaders do)

    assert Image.MAX_IMAGE_PIXELS is not None


# ---------------------------------------------------------------- the results table


def test_missing_empty_and_torn_tables(tmp_path, caplog):
    table = tmp_path / "results.csv"
    assert results.load(table).empty
    table.write_text("")
    assert results.load(table).empty
    results.append_row(table, {"run_id": "a", "status": "ok", "test_top1": 50.0})
    results.append_row(table, {"run_id": "b", "status": "ok", "test_top1": 60.0})
    with open(table, "a") as f:  # a crash in the middle of a write
        f.write("c,ok,2026-01-01,base,Fal")
    loaded = results.load(table)
    assert list(loaded["run_id"]) == ["a", "b"]
    assert "torn" in caplog.text
    results.append_row(table, {"run_id": "d", "status": "ok", "test_top1": 70.0})
    assert list(results.load(table)["run_id"]) == ["a", "b", "d"]


def _append_many(path: str, writer: int) -> None:
    for i in range(50):
        results.append_row(
            path, {"run_id": f"w{writer}-{i}", "status": "ok", "test_top1": i, "error": "x" * 3000}
        )  # long rows: a torn write would show


def test_concurrent_writers_lose_and_tear_nothing(tmp_path):
    path = str(tmp_path / "results.csv")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    table = results.load(path)
    assert len(table) == 200
    assert sorted(table["run_id"]) == sorted(f"w{w}-{i}" for w in range(4) for i in range(50))
    assert (table["error"].str.len() == 3000).all()


# ---------------------------------------------------------------- divergence


def test_a_diverging_run_is_recorded_and_a_sweep_goes_on(tmp_path, image_folder, cli):
    code = cli(["train", "-m", *tiny_train_args(image_folder, "epochs=3", "optim=sgd")[1:], "lr=10,0.001"], tmp_path)
    assert code == 1  # one job did not end ok
    table = _table(tmp_path).set_index("lr")
    assert table.loc[10, "status"] == "diverged" and table.loc[10, "epochs_done"] == 1
    assert table.loc[0.001, "status"] == "ok"
    history = pd.read_csv(Path(table.loc[10, "run_dir"]) / "history.csv")
    assert len(history) == 1


# ---------------------------------------------------------------- interruption and resume

RESUME_ARGS = ["epochs=3", "batch_size=4", "model.dropout=0.5", "aug=rotation_112", "aug.resize=48", "aug.crop=48"]


def _final_metrics(cwd: Path) -> dict:
    row = _table(cwd).query("status == 'ok'").iloc[-1]
    history = pd.read_csv(Path(row["run_dir"]) / "history.csv")
    return {
        "test_top1": row["test_top1"],
        "val_top1": row["val_top1"],
        "losses": history["train_loss"].round(6).tolist(),
    }


def _uninterrupted(tmp_path: Path, cli) -> tuple[list[str], dict]:
    """The arguments of a short run and the final metrics of running it straight through."""
    root = make_image_folder(tmp_path / "images", per_class=30)
    straight = tmp_path / "straight"
    straight.mkdir()
    args = tiny_train_args(root, *RESUME_ARGS)
    assert cli(args, straight) == 0
    return args, _final_metrics(straight)


def _wait_for_first_checkpoint(cwd: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and not list(cwd.glob("outputs/runs/*/*/last.pt")):
        time.sleep(0.005)


def _assert_resumed(cwd: Path) -> None:
    """The finishing run continued from a saved epoch: a restart would give the same metrics."""
    run_dir = Path(_table(cwd).query("status == 'ok'").iloc[-1]["run_dir"])
    assert "resuming from" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path, cli):
    args, expected = _uninterrupted(tmp_path, cli)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()

    def terminate_after_first_epoch() -> None:
        _wait_for_first_checkpoint(interrupted)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=terminate_after_first_epoch)
    watcher.start()
    assert cli(args, interrupted) == 130
    watcher.join()
    assert list(_table(interrupted)["status"]) == ["interrupted"]
    assert cli(args, interrupted) == 0
    assert list(_table(interrupted)["status"]) == ["interrupted", "ok"]
    _assert_resumed(interrupted)
    assert _final_metrics(interrupted) == expected


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, cli):
    args, expected = _uninterrupted(tmp_path, cli)
    killed = tmp_path / "killed"
    killed.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "animalcls", *args], cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for_first_checkpoint(killed)
    process.kill()
    process.wait()
    assert not (killed / "outputs" / "results.csv").exists()  # no row: it never ended
    assert cli(args, killed) == 0
    _assert_resumed(killed)
    assert _final_metrics(killed) == expected
