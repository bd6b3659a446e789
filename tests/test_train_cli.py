"""The real `animalcls` CLI end to end on tiny generated data, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from animalcls import results

from conftest import make_image_folder, tiny_train_args


def _table(cwd: Path) -> pd.DataFrame:
    return results.load(cwd / "outputs" / "results.csv")


def test_train_writes_run_dir_and_one_results_row(tmp_path, image_folder, cli, capsys):
    assert cli(tiny_train_args(image_folder, "epochs=2"), tmp_path) == 0
    table = _table(tmp_path)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["status"] == "ok" and row["epochs_done"] == 2 and row["model"] == "base"
    assert row["gflops"] > 0 and row["gmacs_fvcore"] > 0 and row["params"] > 0
    assert row["cpu_model"] and "; torch " in row["cpu_features"] and row["gpu"] == ""  # the machine
    run_dir = Path(row["run_dir"])
    for name in (
        "history.csv",
        "metrics.json",
        "last.pt",
        "best.pt",
        "predictions.csv",
        "split.csv",
        ".hydra/config.yaml",
        "train.log",
    ):
        assert (run_dir / name).exists(), name
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "val_top1", "val_top3", "val_top5", "lr", "seconds", "images_per_s"} <= set(history)
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert list(predictions.columns) == ["path", "label", "predicted", "top5", "probability"]
    split = pd.read_csv(run_dir / "split.csv")
    assert len(predictions) == (split["split"] == "test").sum()
    accuracy = 100 * (predictions["label"] == predictions["predicted"]).mean()
    assert accuracy == pytest.approx(row["test_top1"], abs=0.01)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes"] == ["class_0", "class_1", "class_2"]
    log = (run_dir / "train.log").read_text()
    assert "epoch 2/2" in log and "ETA" in log and "img/s" in log
    assert str(run_dir) in capsys.readouterr().err


def test_split_is_the_same_across_models_and_settings(tmp_path, image_folder, cli):
    assert cli(tiny_train_args(image_folder), tmp_path) == 0
    assert cli(tiny_train_args(image_folder, "lr=0.01", "model.batch_norm=true", "model.dropout=0.5"), tmp_path) == 0
    dirs = _table(tmp_path)["run_dir"]
    a, b = (pd.read_csv(Path(d) / "split.csv") for d in dirs)
    assert a.equals(b)


def test_multirun_sweep_appends_one_row_per_job(tmp_path, image_folder, cli):
    assert cli(["train", "-m", *tiny_train_args(image_folder)[1:], "lr=0.001,0.0001"], tmp_path) == 0
    table = _table(tmp_path)
    assert sorted(table["lr"]) == [0.0001, 0.001]
    assert (table["status"] == "ok").all()


def test_a_done_run_is_skipped_unless_forced(tmp_path, image_folder, cli):
    args = tiny_train_args(image_folder)
    assert cli(args, tmp_path) == 0
    assert cli(args, tmp_path) == 0
    assert len(_table(tmp_path)) == 1
    assert cli(args + ["force=true"], tmp_path) == 0
    assert len(_table(tmp_path)) == 2


@pytest.mark.slow
def test_demo_data_is_deterministic_and_learnable(tmp_path, cli):
    from animalcls.demo import ensure_demo_data

    first = ensure_demo_data(tmp_path / "a")
    second = ensure_demo_data(tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*.jpg"))
    assert len(files) == 360
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files[::37])
    code = cli(
        [
            "train",
            "data=demo",
            f"data.root={tmp_path / 'a'}",
            "data.cache_dir=cache",
            "epochs=3",
            "aug.resize=56",
            "aug.crop=56",
            "workers=0",
        ],
        tmp_path,
    )
    assert code == 0
    row = _table(tmp_path).iloc[0]
    assert row["test_top1"] > 2 * 100 / 6, "the base CNN should beat chance (16.7%) clearly"


def test_eval_and_predict_use_the_checkpoint(tmp_path, image_folder, cli, capsys):
    assert cli(tiny_train_args(image_folder, "epochs=2"), tmp_path) == 0
    row = _table(tmp_path).iloc[0]
    ckpt = Path(row["run_dir"]) / "best.pt"
    capsys.readouterr()
    assert cli(["eval", f"ckpt={ckpt}"], tmp_path) == 0
    out = capsys.readouterr().out
    measured = float(next(l for l in out.splitlines() if l.startswith("test_top1")).split()[1])
    assert measured == pytest.approx(row["test_top1"], abs=0.01)
    image = next((image_folder / "class_1").iterdir())
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{image}]"], tmp_path) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.strip().startswith(("1.", "2.", "3."))]
    assert len(lines) == 3 and "class_" in lines[0] and "%" in lines[0]


def test_profile_prints_labelled_costs(tmp_path, cli, capsys):
    assert cli(["profile", "model=base"], tmp_path) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "0.7110" in lines["GFLOPs"] and "0.3555" in lines["GMACs (fvcore)"]
    assert "857,239" in lines["params"] and "ms" in lines["CPU latency"]


def test_profile_torchvision_model_matches_paper(tmp_path, cli, capsys):
    assert cli(["profile", "model=mobilenet_v3_large"], tmp_path) == 0
    gflops = float(next(l for l in capsys.readouterr().out.splitlines() if l.startswith("GFLOPs")).split()[1])
    assert abs(gflops - 0.43) / 0.43 < 0.015


def test_grayscale_and_small_images_are_accepted(tmp_path, cli):
    from PIL import Image

    root = make_image_folder(tmp_path / "images", size=20)  # smaller than the 48 px crop
    Image.new("L", (30, 50), 128).save(root / "class_0" / "gray.jpg")
    assert cli(tiny_train_args(root), tmp_path) == 0
    assert _table(tmp_path).iloc[0]["skipped_files"] == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=0", "lr=0 is out of range: lr takes a finite float in (0, 10]"),
        ("batch_size=0", "batch_size=0 is out of range: batch_size takes a whole number in [1, 65536]"),
        ("epochs=0", "epochs=0 is out of range"),
        ("data.split=[0.5,0.2,0.2]", "add up to 1"),
        ("optim.momentum=0.9", "optim=adam does not take optim.momentum=0.9"),  # not silently dropped
    ],
)
def test_nonsensical_values_fail_before_any_work(tmp_path, image_folder, cli, capsys, override, message):
    assert cli(tiny_train_args(image_folder, override), tmp_path) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()  # no run dir either: checked before Hydra makes one


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=resnet99", "model=resnet99 is not a known model; choose one of: base, mobilenet_v2"),
        ("optim=lion", "choose one of: adam, adamw, rmsprop, sgd, sgd_momentum, sgd_nesterov"),
        ("loss=hinge", "choose one of: cross_entropy, multi_margin"),
        ("aug=big", "choose one of: default_112, imagenet_224, rotation_112"),
        ("data=cifar", "choose one of: animals, demo"),
        ("lr=fast", "lr=fast: lr takes a finite float in (0, 10] (e.g. lr=0.001)"),
        ("model.depth=3", "model.depth=3: model has no key depth; did you mean model.dropout?"),
    ],
)
def test_unknown_names_and_wrong_types_fail_with_the_options(tmp_path, image_folder, cli, capsys, override, message):
    code = cli(tiny_train_args(image_folder, override), tmp_path)
    assert code == 2
    captured = capsys.readouterr()
    assert message in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "outputs").exists()  # nothing written


def test_an_unknown_option_inside_a_sweep_fails_before_any_job(tmp_path, image_folder, cli, capsys):
    assert cli(["train", "-m", *tiny_train_args(image_folder)[1:], "model=base,resnet99"], tmp_path) == 2
    assert "model=resnet99 is not a known model" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
