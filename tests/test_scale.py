"""Beyond one process: DDP training under torchrun (gloo, CPU), parallel sweeps with the joblib
launcher, and an Optuna search, each on a tiny generated data set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from animalcls import results
from animalcls.data import TensorBatches
from animalcls.distributed import Context, hydra_overrides_for_rank, with_rank_overrides

from conftest import make_image_folder, run_cli, tiny_train_args

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")


def make_noise_folder(root: Path, classes: int, per_class: int) -> Path:
    """Images of pure noise: a trained model is right only by chance, with close scores, so equal
    accuracies are evidence of equal predictions rather than of an easy task."""
    from PIL import Image

    rng = np.random.default_rng(7)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"img_{i:03d}.png")
    return root


# ---------------------------------------------------------------- sharding (no processes)


@pytest.mark.parametrize("n,batch_size,world", [(17, 8, 2), (18, 8, 2), (23, 6, 3), (5, 4, 4)])
def test_shards_cover_every_image_once_and_take_equal_steps(n, batch_size, world):
    labels = torch.arange(n)
    images = torch.zeros((n, 3, 2, 2), dtype=torch.uint8)
    for shuffle in (False, True):
        seen, steps = [], set()
        for rank in range(world):
            ctx = Context(torch.device("cpu"), rank=rank, world_size=world)
            shard = TensorBatches(
                images,
                labels,
                batch_size // world,
                torch.device("cpu"),
                shuffle=shuffle,
                seed=3,
                rank=rank,
                world_size=world,
            )
            shard.set_epoch(2)
            if not shuffle:  # evaluation: every image exactly once, no padding
                seen += [int(y) for _, ys in shard for y in ys]
            train = ctx.even_steps(shard, n, batch_size // world)
            train.set_epoch(2)
            steps.add(len(list(train)))
            assert len(train) == len(list(train))
        if not shuffle:
            assert sorted(seen) == list(range(n))
        assert len(steps) == 1  # every rank makes the same number of optimizer steps


def test_only_nonzero_ranks_get_quiet_hydra_overrides_where_argparse_takes_them(monkeypatch):
    from hydra._internal.utils import get_args_parser

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert with_rank_overrides(["animalcls train", "-m", "lr=1,2"]) == ["animalcls train", "-m", "lr=1,2"]
    monkeypatch.setenv("RANK", "1")
    extra = hydra_overrides_for_rank()
    assert "hydra.output_subdir=null" in extra and any("hydra.run.dir=" in o for o in extra)
    for args in (["-m", "lr=1,2", "seed=1"], ["lr=1", "--cfg", "job"], ["--cfg", "job"], ["-m"], []):
        argv = with_rank_overrides(["animalcls train", *args])
        parsed = get_args_parser().parse_args(argv[1:])  # exits on a refused command line
        assert parsed.overrides[: len([a for a in args if "=" in a])] == [a for a in args if "=" in a]
        assert sum("hydra.output_subdir=null" == o for o in parsed.overrides) == 1


# ---------------------------------------------------------------- torchrun, 2 processes


@pytest.mark.slow
def test_ddp_two_processes_one_row_and_test_top1_equals_single_process_eval(tmp_path, capsys):
    # 32 images, split 17/6/9: the train set's last global batch of 8 holds 1 image (uneven steps),
    # the 9 test images split 5/4 over the ranks, eval batches of 2 give the ranks unequal counts.
    make_noise_folder(tmp_path / "images", classes=4, per_class=8)
    args = tiny_train_args(tmp_path / "images", "data.split=[0.5,0.2,0.3]", "eval_batch_size=2", "amp=off", "lr=0.0003")
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*torchrun, "-m", "animalcls", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("INFO data-parallel: rank") == 1  # rank 1 logs warnings only

    table = results.load(tmp_path / "outputs" / "results.csv")
    assert len(table) == 1, table
    row = table.iloc[0]
    assert row["status"] == "ok" and row["device"] == "cpu x2 (ddp)" and row["batch_size"] == 8
    run_dirs = [p for p in (tmp_path / "outputs" / "runs").glob("*/*") if p.is_dir()]
    assert [p.resolve() for p in run_dirs] == [Path(row["run_dir"]).resolve()]  # rank 1 made none
    run_dir = run_dirs[0]
    assert {"split.csv", "history.csv", "last.pt", "best.pt", "predictions.csv", "metrics.json", "train.log"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "images", "outputs"]

    # predictions.csv gathered from both ranks, back in split order: every label is its file's folder
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert len(predictions) == 9
    assert (predictions["path"].map(lambda p: Path(p).parent.name) == predictions["label"]).all()
    accuracy = 100.0 * (predictions["label"] == predictions["predicted"]).mean()
    assert round(accuracy, 2) == pytest.approx(row["test_top1"])
    assert row["test_top1"] < 100  # noise: the equalities below are not those of a trivial task

    capsys.readouterr()
    assert run_cli(["eval", f"ckpt={run_dir / 'best.pt'}", "device=cpu"], tmp_path) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("test_"))
    for k in (1, 3):
        assert float(printed[f"test_top{k}"]) == pytest.approx(row[f"test_top{k}"], abs=1e-9)
    test_loss = json.loads((run_dir / "metrics.json").read_text())["test_loss"]
    assert float(printed["test_loss"]) == pytest.approx(test_loss, abs=1e-4)  # same logits, not just argmax


# ---------------------------------------------------------------- joblib: parallel sweep


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_in_parallel_into_one_table(tmp_path):
    make_image_folder(tmp_path / "images")
    _, *overrides = tiny_train_args(tmp_path / "images")
    code = run_cli(
        ["train", "-m", *overrides, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "lr=0.001,0.002"],
        tmp_path,
    )
    assert code == 0
    table_file = tmp_path / "outputs" / "results.csv"
    lines = table_file.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("run_id,")  # a header and two whole rows
    table = results.load(table_file)
    assert sorted(table["lr"]) == [0.001, 0.002] and (table["status"] == "ok").all()
    assert table["run_id"].nunique() == 2
    assert len(list((tmp_path / "cache").glob("*[0-9a-f].npy"))) == 1  # decoded once, shared
