"""init_from= (issue 22): a new run that starts from another run's weights, with an id of its own
that names the source by run id and weights digest, never by path."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from animalcls import checkpoint, warmstart
from animalcls.build import build_model
from animalcls.config import compose
from animalcls.demo import make_image_folder
from animalcls.record import Resolved, run_id

from conftest import run_cli, tiny_train_args


def _table(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / "outputs" / "results.csv", dtype=str, keep_default_na=False)


def _history(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "history.csv")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One finished 1-epoch run (the from-scratch run of the same config, too)."""
    work = tmp_path_factory.mktemp("init_from")
    images = make_image_folder(work / "images")
    assert run_cli(tiny_train_args(images), work) == 0
    row = _table(work).iloc[-1].to_dict()
    return {"work": work, "images": images, "run_dir": Path(row["run_dir"]), "row": row}


def test_a_run_starts_from_the_source_and_names_it_by_id_and_weights_not_path(source: dict[str, Any]) -> None:
    work, images, run_dir = source["work"], source["images"], source["run_dir"]
    args = tiny_train_args(images, "epochs=2")
    assert run_cli([*args, f"init_from={run_dir}"], work) == 0
    table = _table(work)
    row = table.iloc[-1]
    assert row["status"] == "ok" and row["epochs_done"] == "2"
    identity, path = row["init_from"].split(" ", 1)
    assert identity.startswith(source["row"]["run_id"] + ":") and path == str((run_dir / "best.pt").resolve())
    assert source["row"]["init_from"] == ""  # a run from scratch names none
    # it starts where the source ended: its first epoch's loss is below the from-scratch first epoch's
    assert _history(row["run_dir"])["train_loss"][0] < _history(run_dir)["train_loss"][0]
    # its id: the same config without init_from is another run; with the source's identity, this one
    plain = compose(args[1:])
    resolved = Resolved(row["precision"], row["data_id"])
    assert run_id(plain, resolved) != row["run_id"]
    with_source = compose([*args[1:], f"init_from={run_dir}"])
    assert run_id(with_source, Resolved(row["precision"], row["data_id"], identity)) == row["run_id"]
    assert checkpoint.read(Path(row["run_dir"]) / "last.pt")["meta"]["init_from"] == identity

    # the source copied elsewhere (a moved project) is the same source: the run is done already
    moved = work / "elsewhere" / "source-run"
    shutil.copytree(run_dir, moved)
    assert run_cli([*args, f"init_from={moved}"], work) == 0
    assert len(_table(work)) == len(table)  # skipped as done: the same run id


def test_the_loaded_weights_are_the_sources(source: dict[str, Any]) -> None:
    cfg = compose(tiny_train_args(source["images"], f"init_from={source['run_dir']}")[1:])
    classes = ["class_0", "class_1", "class_2"]
    loaded = warmstart.read_source(cfg, classes)
    model = build_model(cfg, 3)
    assert warmstart.load_into(model, loaded, cfg, classes) == []
    saved = checkpoint.read(source["run_dir"] / "best.pt")["model"]
    assert all(torch.equal(tensor, saved[key]) for key, tensor in model.state_dict().items())


def test_other_classes_load_all_but_the_head_and_log_the_keys_left_out(source: dict[str, Any]) -> None:
    work = source["work"]
    renamed = work / "renamed"
    shutil.copytree(source["images"], renamed)
    (renamed / "class_2").rename(renamed / "class_z")  # the same count, another class: another head
    args = tiny_train_args(renamed, f"init_from={source['run_dir']}", "results=outputs/renamed.csv")
    cfg = compose(args[1:])
    classes = ["class_0", "class_1", "class_z"]
    model = build_model(cfg, 3)
    saved = checkpoint.read(source["run_dir"] / "best.pt")["model"]
    skipped = warmstart.load_into(model, warmstart.read_source(cfg, classes), cfg, classes)
    assert skipped == ["fc1.weight", "fc1.bias"]  # the base CNN's head
    state = model.state_dict()
    assert torch.equal(state["conv1.weight"], saved["conv1.weight"])
    assert not torch.equal(state["fc1.weight"], saved["fc1.weight"])

    assert run_cli(args, work) == 0
    row = pd.read_csv(work / "outputs" / "renamed.csv", dtype=str, keep_default_na=False).iloc[-1]
    assert row["status"] == "ok" and row["init_from"].startswith(source["row"]["run_id"] + ":")
    log = (Path(row["run_dir"]) / "train.log").read_text()
    assert "the head starts fresh" in log and "skipped keys: fc1.weight, fc1.bias" in log


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.batch_norm=true"], "model.batch_norm=False there, True here"),
        (["model=mobilenet_v3_small", "model.pretrained=false"], "model.name=base there, mobilenet_v3_small here"),
    ],
)
def test_another_architecture_is_refused_naming_what_differs(
    source: dict[str, Any], capsys: pytest.CaptureFixture[str], overrides: list[str], message: str
) -> None:
    args = tiny_train_args(source["images"], f"init_from={source['run_dir']}", *overrides)
    assert run_cli(args, source["work"]) == 2
    err = capsys.readouterr().err
    assert "is another architecture" in err and message in err and "Traceback" not in err


def test_init_from_with_pretrained_weights_is_refused(
    tmp_path: Path, image_folder: Path, cli: Callable[[list[str], Path], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(tiny_train_args(image_folder, "model=resnet18", f"init_from={tmp_path}"), tmp_path) == 2
    err = capsys.readouterr().err
    assert "with model.pretrained=true" in err and "model.pretrained=false" in err


def test_a_missing_or_unreadable_source_is_one_line(
    tmp_path: Path, image_folder: Path, cli: Callable[[list[str], Path], int], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk.pt").write_bytes(b"")  # truncated to nothing
    (tmp_path / "empty_run").mkdir()
    cases = {
        "missing.pt": "does not exist",
        "junk.pt": "is not a readable checkpoint",
        "empty_run": "without best.pt or last.pt",
    }
    for name, message in cases.items():
        assert cli(tiny_train_args(image_folder, f"init_from={tmp_path / name}"), tmp_path) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and f"init_from={tmp_path / name}: " in errors[0] and message in errors[0], err
        assert "Traceback" not in err
    assert not (tmp_path / "outputs" / "results.csv").exists()  # nothing was run
