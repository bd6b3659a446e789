"""The subcommands eval, predict and report through the real CLI, in-process, on data made here.

Most tests use a checkpoint written here (an untrained base CNN in the checkpoint format, next to
its split.csv), so they need no training run; one trains a tiny run to hold eval against the
run's own results row.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pandas as pd
import pytest

from animalcls import results

from conftest import TINY, make_image_folder, tiny_train_args

SRC = Path(__file__).resolve().parents[1] / "src" / "animalcls"


def make_checkpoint(run_dir: Path, root: Path) -> Path:
    """best.pt of an untrained base CNN for `root`'s classes, and a split.csv whose every third
    image is a test image."""
    import torch
    from omegaconf import OmegaConf

    from animalcls.build import build_model, seed_everything
    from animalcls.config import compose
    from animalcls.data import scan

    cfg = compose([f"data.root={root}", "data.cache_dir=cache", *TINY])
    data = scan(root)
    seed_everything(0)
    model = build_model(cfg, len(data.classes))
    run_dir.mkdir(parents=True)
    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "classes": data.classes, "run_id": "x"}
    torch.save({"format": 2, "model": model.state_dict(), "meta": meta, "epoch": 1}, run_dir / "best.pt")
    pd.DataFrame(
        {
            "path": data.paths,
            "label": [data.classes[i] for i in data.labels],
            "label_idx": data.labels,
            "split": ["test" if i % 3 == 0 else "train" for i in range(len(data.paths))],
        }
    ).to_csv(run_dir / "split.csv", index=False)
    return run_dir / "best.pt"


@pytest.fixture
def ckpt(tmp_path: Path, image_folder: Path) -> Path:
    return make_checkpoint(tmp_path / "run", image_folder)


def _printed_paths(out: str) -> list[str]:
    """predict prints each image's path flush left, then its top classes indented."""
    return [line for line in out.splitlines() if line and not line[0].isspace()]


# ---------------------------------------------------------------- eval


def test_eval_gives_the_runs_test_top1(tmp_path, image_folder, cli, capsys):
    assert cli(tiny_train_args(image_folder, "epochs=2"), tmp_path) == 0
    row = results.load(tmp_path / "outputs" / "results.csv").iloc[0]
    capsys.readouterr()
    best = Path(row["run_dir"]) / "best.pt"
    assert cli(["eval", f"ckpt={best}", "device=cpu", "eval_batch_size=4"], tmp_path) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("test_"))
    assert float(printed["test_top1"]) == pytest.approx(row["test_top1"], abs=0.01)


def test_eval_measures_a_checkpoint_where_its_data_lives_now(tmp_path, image_folder, ckpt, cli, capsys):
    moved = tmp_path / "moved"
    shutil.move(str(image_folder), moved)
    assert cli(["eval", f"ckpt={ckpt}", "device=cpu"], tmp_path) == 2
    assert "data.root=" in capsys.readouterr().err
    assert (
        cli(
            [
                "eval",
                f"ckpt={ckpt}",
                "device=cpu",
                f"data.root={moved}",
                "data.cache_dir=cache2",
                "eval_batch_size=5",
                "workers=1",
            ],
            tmp_path,
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "12 test images" in out and 0 <= float(out.split("test_top1")[1].split()[0]) <= 100
    assert (tmp_path / "cache2").is_dir()


def test_eval_refuses_what_would_change_the_trained_model(tmp_path, ckpt, cli, capsys):
    for override in ("lr=0.1", "model=resnet18"):
        assert cli(["eval", f"ckpt={ckpt}", override], tmp_path) == 2
        err = capsys.readouterr().err
        assert f"does not take {override.split('=')[0]}" in err
        assert "eval accepts ckpt=, device=, workers=, eval_batch_size=, data.root=, data.cache_dir=" in err
        assert "Traceback" not in err


def test_eval_with_an_unknown_key_fails(tmp_path, ckpt, cli, capsys):
    assert cli(["eval", f"ckpt={ckpt}", "colour=red"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "colour" in err and "Traceback" not in err


# ---------------------------------------------------------------- predict


@pytest.fixture
def thirty(tmp_path: Path) -> Path:
    """30 images in class folders, plus files predict must not pick up."""
    folder = make_image_folder(tmp_path / "thirty", classes=3, per_class=10)
    (folder / "notes.txt").write_text("not an image")
    hidden = folder / ".hidden"
    hidden.mkdir()
    shutil.copy(folder / "class_0" / "img_000.jpg", hidden / "copy.jpg")
    shutil.copy(folder / "class_0" / "img_000.jpg", folder / "class_0" / ".dotfile.jpg")
    return folder


def test_predict_on_a_folder_prints_every_image(tmp_path, ckpt, thirty, cli, capsys):
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{thirty}]", "device=cpu"], tmp_path) == 0
    out = capsys.readouterr().out
    paths = _printed_paths(out)
    assert len(paths) == 30 and paths == sorted(paths)
    assert not any(".hidden" in p or ".dotfile" in p for p in paths)
    assert out.count("  1. class_") == 30 and "%" in out


def test_predict_decodes_and_classifies_in_batches(tmp_path, ckpt, thirty, cli, capsys, monkeypatch):
    from animalcls import checkpoint

    sizes: list[int] = []
    model_from = checkpoint.model_from

    def spied(*args, **kwargs):
        cfg, classes, model = model_from(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: sizes.append(inputs[0].shape[0]))
        return cfg, classes, model

    monkeypatch.setattr(checkpoint, "model_from", spied)
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{thirty}]", "eval_batch_size=7"], tmp_path) == 0
    assert len(_printed_paths(capsys.readouterr().out)) == 30
    assert sizes == [7, 7, 7, 7, 2]


def test_predict_skips_an_unreadable_image_with_a_warning(tmp_path, ckpt, cli, capsys, caplog):
    folder = make_image_folder(tmp_path / "some", classes=1, per_class=4)
    corrupt = folder / "class_0" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{folder}]"], tmp_path) == 0
    paths = _printed_paths(capsys.readouterr().out)
    assert len(paths) == 4 and str(corrupt) not in paths
    assert any(str(corrupt) in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_predict_on_a_folder_without_images_fails_clearly(tmp_path, ckpt, cli, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{empty}]"], tmp_path) == 2
    err = capsys.readouterr().err
    assert f"folder {empty} has no images" in err and "Traceback" not in err


def test_predict_names_a_missing_path(tmp_path, ckpt, image_folder, cli, capsys):
    image = image_folder / "class_1" / "img_000.jpg"
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{image},nowhere/]"], tmp_path) == 2
    assert "nowhere/ does not exist" in capsys.readouterr().err


def test_predict_takes_one_image_without_brackets(tmp_path, ckpt, image_folder, cli, capsys):
    image = image_folder / "class_1" / "img_000.jpg"
    assert cli(["predict", f"ckpt={ckpt}", f"images={image}", "device=cpu"], tmp_path) == 0
    out = capsys.readouterr().out
    assert _printed_paths(out) == [str(image)] and out.count("%") == 3  # 3 classes: a top-3


def test_predict_refuses_data_settings(tmp_path, ckpt, image_folder, cli, capsys):
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{image_folder}]", "data.root=x"], tmp_path) == 2
    assert "predict accepts ckpt=, images=" in capsys.readouterr().err


# ---------------------------------------------------------------- report


def test_report_with_an_unknown_key_fails(tmp_path, cli, capsys):
    assert cli(["report", "output=somewhere"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "output" in err and "results=" in err and "out=" in err and "runs=" in err


def test_report_out_under_a_file_fails_clearly(tmp_path, cli, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    assert cli(["report", f"out={tmp_path / 'a_file' / 'report'}"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "cannot write the report to" in err and "out=" in err and "Traceback" not in err


def test_report_values_that_hydra_reads_as_numbers_must_be_quoted(tmp_path, cli, capsys):
    assert cli(["report", "runs=[1234e5]", f"out={tmp_path / 'r'}"], tmp_path) == 2
    assert "quote" in capsys.readouterr().err


# ---------------------------------------------------------------- layering


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names


def test_commands_sit_on_the_library_layer_not_on_run_or_cli():
    for path in sorted((SRC / "commands").glob("*.py")):
        imported = _imports(path)
        assert not imported & {"animalcls.run", "animalcls.cli"}, path.name
    below_cli = [p for p in SRC.rglob("*.py") if p.name not in ("cli.py", "__main__.py")]  # __main__ runs cli
    assert not [p.name for p in below_cli if "animalcls.cli" in _imports(p)]
