"""Experiment trackers, read back with each tool's own reader (TensorBoard's EventAccumulator,
MLflow's client on a real local store in tmp_path), not a mock.

The trackers are driven directly with history and results rows shaped like run.py's; the
end-to-end tests through `animalcls train` run once run.py creates the tracker (`wired`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from animalcls import run, tracking
from animalcls.errors import AnimalclsError

from conftest import tiny_train_args

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

wired = "make_tracker" in Path(run.__file__).read_text()
needs_wiring = pytest.mark.skipif(not wired, reason="run.py does not create a tracker yet (tracking.make_tracker)")

SETTINGS = {"model": "base", "optimizer": "adam", "lr": 0.001, "batch_size": 8, "epochs": 2, "pretrained": False}
HISTORY = [  # history.csv's rows, as fit() makes them
    dict(
        epoch=1, train_loss=1.2, train_top1=40.0, val_loss=1.0, val_top1=50.0, val_top3=90.0, val_top5=100.0, lr=0.001
    ),
    dict(
        epoch=2, train_loss=0.6, train_top1=80.0, val_loss=0.5, val_top1=75.0, val_top3=100.0, val_top5=100.0, lr=5e-4
    ),
]
for _row in HISTORY:
    _row.update(seconds=2.0, images_per_s=125.0)


def results_row(status: str = "ok") -> dict:
    return {
        **SETTINGS,
        "run_id": "abc123",
        "repeat_id": "r1",
        "status": status,
        "loss": "cross_entropy",
        "data": "images",
        "precision": "fp32",
        "val_top1": 75.0,
        "val_top3": 100.0,
        "val_top5": 100.0,
        "test_top1": 66.67,
        "test_top3": 100.0,
        "test_top5": 100.0,
        "gflops": 0.71,
        "params": 123456,
        "train_seconds": 3.9,
        "images_per_s": 125.0,
        "epochs_done": 2,
        "error": "",
        "tags": "",
    }


def fill_run_dir(run_dir: Path) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("lr: 0.001\n")
    (run_dir / "history.csv").write_text("epoch,val_top1\n1,50.0\n2,75.0\n")
    (run_dir / "record.json").write_text('{"run_id": "abc123"}')
    (run_dir / "train.log").write_text("epoch 1\nepoch 2\n")
    (run_dir / "best.pt").write_bytes(b"\0" * 64)


def drive(tracker, run_dir: Path, status: str = "ok") -> None:
    try:
        for row in HISTORY:
            tracker.log_epoch(row["epoch"], row)
        tracker.finish(results_row(status), run_dir)
    finally:
        tracker.close()


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_tracker_writes_epoch_scalars_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = tmp_path / "run"
    fill_run_dir(run_dir)
    drive(tracking.TensorBoardTracker(run_dir, SETTINGS), run_dir)

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/top1", "val/top3", "val/top5", "lr", "images_per_s"} <= scalars
    assert [(s.step, s.value) for s in events.Scalars("val/top1")] == [(1, 50.0), (2, 75.0)]
    assert [s.value for s in events.Scalars("lr")] == pytest.approx([0.001, 0.0005])
    assert events.Scalars("hparam/test_top1")[0].value == pytest.approx(66.67)
    assert events.Scalars("hparam/val_top1")[0].value == pytest.approx(75.0)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["model"].string_value == "base" and hparams["run_id"].string_value == "abc123"
    assert hparams["lr"].number_value == pytest.approx(0.001) and hparams["status"].string_value == "ok"


# ---------------------------------------------------------------- MLflow


def mlflow_client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")


def test_mlflow_tracker_logs_params_metrics_tags_and_small_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # logger.tracking_uri="" is a store under ./outputs
    run_dir = tmp_path / "run"
    fill_run_dir(run_dir)
    tracker = tracking.MLflowTracker(run_dir, SETTINGS, experiment="animalcls-test")
    drive(tracker, run_dir)

    client = mlflow_client(tmp_path)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "animalcls-test"
    params = run.data.params
    assert params["model"] == "base" and params["lr"] == "0.001" and params["run_id"] == "abc123"
    assert params["precision"] == "fp32" and "test_top1" not in params
    assert run.data.tags["run_id"] == "abc123" and run.data.tags["status"] == "ok"
    history = client.get_metric_history(tracker.run_id, "val_top1")
    assert sorted((m.step, m.value) for m in history) == [(1, 50.0), (2, 75.0)]
    assert run.data.metrics["final_test_top1"] == pytest.approx(66.67)
    assert run.data.metrics["final_val_top1"] == pytest.approx(75.0)
    top = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"history.csv", "record.json", "train.log", ".hydra"} <= top and "best.pt" not in top
    assert [a.path for a in client.list_artifacts(tracker.run_id, ".hydra")] == [".hydra/config.yaml"]


def test_mlflow_tracker_marks_an_interrupted_run_killed_and_a_crashed_one_failed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    fill_run_dir(run_dir)
    interrupted = tracking.MLflowTracker(run_dir, SETTINGS)
    drive(interrupted, run_dir, status="interrupted")
    crashed = tracking.MLflowTracker(run_dir, SETTINGS)
    crashed.log_epoch(1, HISTORY[0])
    crashed.close()  # no finish: the run raised
    client = mlflow_client(tmp_path)
    assert client.get_run(interrupted.run_id).info.status == "KILLED"
    assert client.get_run(interrupted.run_id).data.tags["status"] == "interrupted"
    assert client.get_run(crashed.run_id).info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(crashed.run_id, "val_top1")] == [50.0]


def test_a_tracker_that_fails_mid_run_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    fill_run_dir(run_dir)
    tracker = tracking.MLflowTracker(run_dir, SETTINGS)

    def server_gone(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(tracker.client, "log_batch", server_gone)
    drive(tracker, run_dir)  # no exception
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "logger=mlflow" in r.getMessage()]
    assert len(warnings) == 1 and "tracking server went away" in warnings[0].getMessage()


# ---------------------------------------------------------------- choosing a tracker


def config(name: str, **logger) -> DictConfig:
    from animalcls.config import compose

    cfg = OmegaConf.create(OmegaConf.to_container(compose(["data.root=images"])))  # open: any logger name
    cfg.logger = {"name": name, "tracking_uri": "", "experiment": "animalcls", **logger}
    return cfg


def test_make_tracker_picks_by_logger_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(tracking.make_tracker(config("none"), tmp_path / "a"), tracking.NoTracker)
    tb = tracking.make_tracker(config("tensorboard"), tmp_path / "b")
    tb.close()
    assert isinstance(tb, tracking.TensorBoardTracker) and (tmp_path / "b" / "tensorboard").is_dir()
    cfg = compose_without_logger()
    assert isinstance(tracking.make_tracker(cfg, tmp_path / "c"), tracking.NoTracker)


def compose_without_logger():
    from animalcls.config import compose

    cfg = OmegaConf.create(OmegaConf.to_container(compose(["data.root=images"])))
    cfg.pop("logger", None)
    return cfg


def test_an_unknown_tracker_lists_the_known_ones(tmp_path):
    with pytest.raises(AnimalclsError, match="logger='wandb' is not a known tracker; choose one of: none, tensorboard"):
        tracking.make_tracker(config("wandb"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name,modules", [("tensorboard", ["torch.utils.tensorboard"]), ("mlflow", ["mlflow"])])
def test_a_missing_package_says_what_to_install(tmp_path, monkeypatch, name, modules):
    monkeypatch.chdir(tmp_path)
    for module in [m for m in list(sys.modules) if any(m == x or m.startswith(x + ".") for x in modules)]:
        monkeypatch.delitem(sys.modules, module)
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError
    with pytest.raises(AnimalclsError, match=r'pip install -e "\.\[track\]"'):
        tracking.make_tracker(config(name), tmp_path / "run")


def test_a_store_that_cannot_be_opened_is_one_message(tmp_path):
    cfg = config("mlflow", tracking_uri="nosuchscheme://nowhere")
    with pytest.raises(AnimalclsError, match="could not open the tracking store nosuchscheme://nowhere"):
        tracking.make_tracker(cfg, tmp_path / "run")


# ---------------------------------------------------------------- through `animalcls train`


@needs_wiring
def test_train_with_tensorboard_and_mlflow(tmp_path, image_folder, cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from animalcls import results

    assert cli(tiny_train_args(image_folder, "epochs=2", "logger=tensorboard"), tmp_path) == 0
    assert cli(tiny_train_args(image_folder, "epochs=2", "seed=1", "logger=mlflow"), tmp_path) == 0
    table = results.load(tmp_path / "outputs" / "results.csv")
    tb_row, mlflow_row = table.iloc[0], table.iloc[1]
    events = EventAccumulator(str(Path(tb_row["run_dir"]) / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("val/top1")] == [1, 2]
    assert events.Scalars("hparam/test_top1")[0].value == pytest.approx(tb_row["test_top1"])

    client = mlflow_client(tmp_path)
    (found,) = client.search_runs(
        [client.get_experiment_by_name("animalcls").experiment_id], f"tags.run_id = '{mlflow_row['run_id']}'"
    )
    assert found.info.status == "FINISHED" and found.data.tags["status"] == "ok"
    assert found.data.metrics["final_test_top1"] == pytest.approx(mlflow_row["test_top1"])
    assert len(client.get_metric_history(found.info.run_id, "val_top1")) == 2
    assert "record.json" in {a.path for a in client.list_artifacts(found.info.run_id)}


@needs_wiring
@pytest.mark.parametrize("override", ["logger=wandb", "logger.name=wandb"])
def test_train_with_an_unknown_tracker_fails_before_training(tmp_path, image_folder, cli, capsys, override):
    assert cli(tiny_train_args(image_folder, override), tmp_path) == 2
    err = capsys.readouterr().err
    assert "wandb" in err and "tensorboard" in err and "mlflow" in err and "Traceback" not in err
    assert not (tmp_path / "outputs" / "results.csv").exists()


# ---------------------------------------------------------------- log_every


def test_log_every_writes_a_line_per_batch_into_train_log(tmp_path, image_folder, cli):
    from animalcls import results

    assert cli(tiny_train_args(image_folder, "log_every=1"), tmp_path) == 0
    run_dir = Path(results.load(tmp_path / "outputs" / "results.csv").iloc[-1]["run_dir"])
    lines = (run_dir / "train.log").read_text().splitlines()
    batch_lines = [line for line in lines if "batch " in line and "epoch ETA" in line]
    assert len(batch_lines) >= 2, lines
    assert "epoch 1/1  batch 1/" in batch_lines[0] and "img/s" in batch_lines[0] and "lr 0.001" in batch_lines[0]
    last = batch_lines[-1].split("batch ")[1].split()[0]
    assert last.split("/")[0] == last.split("/")[1]  # the epoch's last batch is logged too


# ---------------------------------------------------------------- runs done before, and sweeps


def mlflow_runs(tmp_path: Path) -> list:
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("animalcls")
    return [] if experiment is None else client.search_runs([experiment.experiment_id], max_results=1000)


def test_a_done_run_with_a_logger_is_sent_not_trained_and_only_once(tmp_path, image_folder, cli):
    from animalcls import results

    assert cli(tiny_train_args(image_folder), tmp_path) == 0
    table = tmp_path / "outputs" / "results.csv"
    (row,) = results.load(table).to_dict("records")
    for _ in range(2):  # the second time the tracker has it already
        assert cli(tiny_train_args(image_folder, "logger=mlflow"), tmp_path) == 0
        assert len(results.load(table)) == 1  # skipped as done: no new row, nothing trained
        (found,) = mlflow_runs(tmp_path)
    assert found.data.tags["run_id"] == row["run_id"] and found.data.tags["status"] == "ok"
    assert found.data.tags[tracking.RUN_DIR_TAG] == Path(row["run_dir"]).relative_to(tmp_path / "outputs").as_posix()
    assert found.info.status == "FINISHED" and found.info.run_name == Path(row["run_dir"]).name
    params = found.data.params
    assert params["model"] == "base" and params["model.name"] == "base" and params["aug.crop"] == "48"
    assert found.data.metrics["final_test_top1"] == pytest.approx(row["test_top1"])
    assert "final_test_loss" in found.data.metrics  # from metrics.json
    history = mlflow_client(tmp_path).get_metric_history(found.info.run_id, "val_top1")
    assert [m.step for m in history] == [1]
    assert "record.json" in {a.path for a in mlflow_client(tmp_path).list_artifacts(found.info.run_id)}


def test_results_track_sends_every_run_of_the_table_once(tmp_path, image_folder, cli, capsys):
    from animalcls import results

    for seed in (0, 1):
        assert cli(tiny_train_args(image_folder, f"seed={seed}"), tmp_path) == 0
    rows = results.load(tmp_path / "outputs" / "results.csv").to_dict("records")
    assert cli(["results", "track", "logger=mlflow"], tmp_path) == 0
    assert "2 run(s) sent, 0 there already" in capsys.readouterr().out
    assert cli(["results", "track", "logger=mlflow"], tmp_path) == 0
    assert "0 run(s) sent, 2 there already" in capsys.readouterr().out
    found = mlflow_runs(tmp_path)
    assert sorted(r.data.tags["run_id"] for r in found) == sorted(r["run_id"] for r in rows)
    assert len({frozenset(r.data.params) for r in found}) == 1  # the same keys for every run

    def event_files() -> list[list[Path]]:
        return [sorted((Path(row["run_dir"]) / "tensorboard").glob("events.out.tfevents.*")) for row in rows]

    assert cli(["results", "track", "logger=tensorboard"], tmp_path) == 0
    sent = event_files()
    assert all(sent) and "2 run(s) sent" in capsys.readouterr().out
    assert cli(["results", "track", "logger=tensorboard"], tmp_path) == 0  # a marker says it was sent
    assert "0 run(s) sent, 2 there already" in capsys.readouterr().out and event_files() == sent


def test_a_sweep_is_one_parent_run_with_its_jobs_nested(tmp_path, image_folder, cli):
    assert cli(["train", "-m", *tiny_train_args(image_folder)[1:], "seed=0,1", "logger=mlflow"], tmp_path) == 0
    found = mlflow_runs(tmp_path)
    parents = [r for r in found if tracking.SWEEP_TAG in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2 and len(found) == 3
    assert parents[0].data.tags[tracking.SWEEP_TAG].startswith("multirun/")
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert children[0].data.params.keys() == children[1].data.params.keys()
    assert {"lr", "seed", "model.name", "optim.momentum", "logger.name"} <= children[0].data.params.keys()
    # sending the table afterwards finds both jobs there already
    assert cli(["results", "track", "logger=mlflow"], tmp_path) == 0
    assert len(mlflow_runs(tmp_path)) == 3


def test_results_track_needs_a_tracker_and_a_table(tmp_path, cli, capsys):
    assert cli(["results", "track"], tmp_path) == 2
    assert "logger=mlflow" in capsys.readouterr().err
    assert cli(["results", "track", "logger=mlflow"], tmp_path) == 2
    assert "no results table" in capsys.readouterr().err
