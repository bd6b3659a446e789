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

from conftest import TINY, make_image_folder, run_cli, tiny_train_args

SRC = Path(__file__).resolve().parents[1] / "src" / "animalcls"


def make_checkpoint(run_dir: Path, root: Path, seed: int = 0) -> Path:
    """best.pt of an untrained base CNN (weights drawn with `seed`) for `root`'s classes, and a
    split.csv whose every third image is a test image."""
    import torch
    from omegaconf import OmegaConf

    from animalcls.build import build_model, seed_everything
    from animalcls.config import compose
    from animalcls.data import scan

    cfg = compose([f"data.root={root}", "data.cache_dir=cache", *TINY])
    data = scan(root)
    seed_everything(seed)
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
    from animalcls import build

    sizes: list[int] = []
    model_from = build.model_from_checkpoint

    def spied(*args, **kwargs):
        cfg, classes, model = model_from(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: sizes.append(inputs[0].shape[0]))
        return cfg, classes, model

    monkeypatch.setattr(build, "model_from_checkpoint", spied)
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


def _probabilities(csv_path: Path) -> dict[str, dict[str, float]]:
    """path -> {class: probability} from predict's topk CSV."""
    table = pd.read_csv(csv_path)
    k = (len(table.columns) - 1) // 2
    return {row["path"]: {row[f"class_{r}"]: row[f"prob_{r}"] for r in range(1, k + 1)} for _, row in table.iterrows()}


def test_predict_writes_the_top_classes_as_csv(tmp_path, ckpt, thirty, cli, capsys):
    out = tmp_path / "preds" / "top.csv"
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{thirty}]", f"out={out}", "eval_batch_size=8"], tmp_path) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]  # 3 classes
    assert table["path"].tolist() == _printed_paths(printed)  # the same images, in the same order
    probs = table[["prob_1", "prob_2", "prob_3"]].to_numpy()
    assert (probs[:, :-1] >= probs[:, 1:]).all() and abs(probs.sum(axis=1) - 1).max() < 1e-4
    first = printed.splitlines()[1].split()  # "1. class_x  NN.NN%"
    assert table.loc[0, "class_1"] == first[1] and 100 * table.loc[0, "prob_1"] == pytest.approx(
        float(first[2][:-1]), abs=0.01
    )


def test_predict_writes_a_submission(tmp_path, ckpt, thirty, cli, caplog):
    out = tmp_path / "submission.csv"
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{thirty}]", f"out={out}", "format=submission"], tmp_path) == 0
    table = pd.read_csv(out, dtype=str)
    assert list(table.columns) == ["id", "label"] and len(table) == 30
    assert set(table["id"]) == {f"img_{i:03d}" for i in range(10)}  # file names without extension
    assert any("20 ids repeat" in r.getMessage() for r in caplog.records)  # one name in three folders
    assert set(table["label"]) <= {"class_0", "class_1", "class_2"}


def _expected_probs(ckpt: Path, image: Path, tta: bool):
    """The checkpoint's class probabilities for one image, computed here by hand."""
    import torch

    from animalcls import build, checkpoint
    from animalcls.augment import DeviceAugment
    from animalcls.data import decode_uint8

    cfg, classes, model = build.model_from_checkpoint(checkpoint.read(ckpt), ckpt)
    pixels = decode_uint8(image, cfg.aug.resize, cfg.aug.crop)[None]
    views = [pixels, pixels.flip(3)] if tta else [pixels]
    augment = DeviceAugment(cfg.aug, train=False)
    with torch.inference_mode():
        probs = torch.stack([model(augment(v)).softmax(1)[0] for v in views]).mean(0)
    return dict(zip(classes, probs.tolist()))


def test_predict_tta_averages_an_image_and_its_mirror(tmp_path, ckpt, image_folder, cli):
    image = image_folder / "class_2" / "img_003.jpg"
    for tta in (False, True):
        out = tmp_path / f"tta-{tta}.csv"
        assert (
            cli(["predict", f"ckpt={ckpt}", f"images={image}", f"out={out}", f"tta={str(tta).lower()}"], tmp_path) == 0
        )
        got = _probabilities(out)[str(image)]
        expected = _expected_probs(ckpt, image, tta)
        assert got == pytest.approx(expected, abs=2e-6)
    assert _probabilities(tmp_path / "tta-True.csv") != _probabilities(tmp_path / "tta-False.csv")


def test_predict_ensemble_means_the_checkpoints_probabilities(tmp_path, ckpt, image_folder, cli):
    other = make_checkpoint(tmp_path / "run2", image_folder, seed=1)
    images = f"images=[{image_folder / 'class_0'}]"
    for name, ckpts in (("a", f"ckpt={ckpt}"), ("b", f"ckpt={other}"), ("ab", f"ckpt=[{ckpt},{other}]")):
        assert cli(["predict", ckpts, images, f"out={tmp_path / name}.csv", "eval_batch_size=5"], tmp_path) == 0
    a, b, ab = (_probabilities(tmp_path / f"{n}.csv") for n in ("a", "b", "ab"))
    assert len(ab) == 12 and a != b
    for path, probs in ab.items():
        assert probs == pytest.approx({c: (a[path][c] + b[path][c]) / 2 for c in probs}, abs=2e-6)


def test_predict_ensemble_of_other_classes_fails_clearly(tmp_path, ckpt, cli, capsys):
    two = make_image_folder(tmp_path / "two", classes=2, per_class=6)
    other = make_checkpoint(tmp_path / "run2", two)
    out = tmp_path / "ens.csv"
    assert cli(["predict", f"ckpt=[{ckpt},{other}]", f"images=[{two}]", f"out={out}"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "has 2 classes" in err and "same classes" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["format=submission"], "add out="),
        (["format=kaggle", "out=x.csv"], "format='kaggle' is not known"),
        (["tta=maybe"], "tta is true or false"),
        (["out=a_file/preds.csv"], "a_file is a file, not a folder"),
        (["ckpt=[]"], "give the checkpoint"),
    ],
)
def test_predict_bad_options_fail_before_any_work(tmp_path, ckpt, image_folder, cli, capsys, args, message):
    (tmp_path / "a_file").write_text("not a folder")
    before = sorted(tmp_path.rglob("*"))
    ckpt_arg = [] if any(a.startswith("ckpt=") for a in args) else [f"ckpt={ckpt}"]
    assert cli(["predict", *ckpt_arg, f"images=[{image_folder}]", *args], tmp_path) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


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
        assert "animalcls.cli" not in imported, path.name
        # tune's trials are ordinary training runs: it alone drives animalcls.run
        assert path.name == "tune.py" or "animalcls.run" not in imported, path.name
    below_cli = [p for p in SRC.rglob("*.py") if p.name not in ("cli.py", "__main__.py")]  # __main__ runs cli
    assert not [p.name for p in below_cli if "animalcls.cli" in _imports(p)]


def test_version_and_the_groups_listed_by_train_help(tmp_path, capsys):
    from importlib.metadata import version

    assert run_cli(["--version"], tmp_path) == 0
    assert capsys.readouterr().out.strip() == f"animalcls {version('animalcls')}"
    assert run_cli(["train", "--help"], tmp_path) == 0
    listed = capsys.readouterr().out
    assert "model:" in listed and "optim:" in listed and "hparams_search" not in listed  # retired: tune
