"""`animalcls tune`: Optuna studies in SQLite whose trials are ordinary runs, on tiny generated data.

In-process through the real CLI, except where a process has to die (SIGTERM, kill -9) or two have
to run at once: those run `python -m animalcls tune` as a user would.
"""

from __future__ import annotations

import inspect
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from animalcls import results
from animalcls.run import run_training

from conftest import TINY, make_image_folder

optuna = pytest.importorskip("optuna", minversion="4")
pytestmark = [
    pytest.mark.skipif(
        "epoch_hook" not in inspect.signature(run_training).parameters,
        reason="run.py's run_training takes no epoch_hook yet",
    ),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

# 36 images, 18/9/9: a trial of 2 epochs takes a second or two
DATA = ["data.cache_dir=cache", "data.split=[0.5,0.25,0.25]", *TINY]
SPACE = """\
lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
optim: {type: categorical, choices: [adam, sgd_momentum]}
"""


@pytest.fixture(autouse=True)
def root_logging_as_it_was():
    """`animalcls train` in-process lets Hydra configure logging: its console handler writes to the
    test's captured stderr, closed after the test. Later tests get the handlers from before."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def space(tmp_path: Path) -> Path:
    (tmp_path / "space.yaml").write_text(SPACE)
    return tmp_path / "space.yaml"


def tune_args(images: Path, *extra: str) -> list[str]:
    return ["tune", f"data.root={images}", *DATA, "study=s", *extra]


def load_study(tmp_path: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'outputs' / 'tune' / f'{name}.db'}")


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def table(tmp_path: Path) -> pd.DataFrame:
    return results.load(tmp_path / "outputs" / "results.csv")


# ---------------------------------------------------------------- a study


def test_every_trial_is_a_run_and_the_best_command_reproduces_it(tmp_path, images, cli, capsys):
    args = tune_args(images, "n_trials=2", "pruner=none", "epochs=1")  # the default space; batch_size fixed by TINY
    assert cli(args, tmp_path) == 0
    out = capsys.readouterr().out
    rows = table(tmp_path)
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE"] * 2 and len(rows) == 2 and (rows["status"] == "ok").all()
    assert set(rows["epochs"]) == {1} and set(rows["batch_size"]) == {8}  # the command line's overrides, every trial
    assert rows["run_id"].nunique() == 2 and rows["tags"].str.contains("tune:s").all()
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == tmp_path / "outputs" / "tune" / "s" and run_dir.name.startswith(
            f"trial-{trial.number}-"
        )
        assert (run_dir / "record.json").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
        assert "epoch 1/1" in (run_dir / "train.log").read_text()
        assert set(trial.params) == {"lr", "optim", "loss", "optim.weight_decay"}
        assert trial.value == pytest.approx(rows.set_index("run_id").loc[trial.user_attrs["run_id"], "val_top1"])
    best = study.best_trial
    assert f"best: trial {best.number}, val top-1 {best.value:.2f}%" in out
    command = next(line for line in out.splitlines() if line.startswith("best command: animalcls train "))

    # the printed command is the best trial's run: train skips it as done
    assert cli(shlex.split(command.removeprefix("best command: animalcls ")), tmp_path) == 0
    assert len(table(tmp_path)) == 2

    # the same command again: the study is complete, nothing runs; a higher n_trials extends it
    assert cli(args, tmp_path) == 0 and len(load_study(tmp_path).trials) == 2
    assert cli([a if a != "n_trials=2" else "n_trials=3" for a in args], tmp_path) == 0
    assert states(load_study(tmp_path)) == ["COMPLETE"] * 3 and len(table(tmp_path)) == 3


def test_a_pruned_trial_stops_early_and_its_row_says_pruned(tmp_path, images, space, cli, monkeypatch):
    reported: list[tuple[int, dict]] = []

    def prune_after_the_first_epoch(self, study, trial):  # the pruner's decision; the rest is real
        reported.append((trial.number, dict(trial.intermediate_values)))
        return trial.number > 0 and trial.last_step == 1

    monkeypatch.setattr(optuna.pruners.MedianPruner, "prune", prune_after_the_first_epoch)
    assert cli(tune_args(images, "n_trials=3", "epochs=3", f"space={space}"), tmp_path) == 0
    study, rows = load_study(tmp_path), table(tmp_path).set_index("run_id")
    assert states(study) == ["COMPLETE", "PRUNED", "PRUNED"]
    assert [n for n, values in reported if n == 0] == [0, 0]  # trial 0 asked after epochs 1 and 2, not 3
    for trial in study.trials:
        row = rows.loc[trial.user_attrs["run_id"]]
        pruned = trial.state.name == "PRUNED"
        assert row["status"] == ("pruned" if pruned else "ok") and row["epochs_done"] == (1 if pruned else 3)
        assert list(trial.intermediate_values) == ([1] if pruned else [1, 2, 3])
        assert pd.isna(row["test_top1"]) == pruned  # a pruned run is not tested
    assert len(list((tmp_path / "outputs" / "unfinished").glob("*"))) == 0  # no resume pointer left


# ---------------------------------------------------------------- repeats: seeds per trial


def test_repeats_run_every_seed_and_the_trial_value_is_their_mean(tmp_path, images, space, cli, capsys):
    args = tune_args(images, "n_trials=2", "repeats=2", "pruner=none", "epochs=1", f"space={space}")
    assert cli(args, tmp_path) == 0
    out = capsys.readouterr().out
    study, rows = load_study(tmp_path), table(tmp_path)
    assert states(study) == ["COMPLETE"] * 2 and len(rows) == 4 and (rows["status"] == "ok").all()
    for trial in study.trials:
        mine = rows[rows["tags"].str.contains(f"trial:{trial.number}")]
        assert sorted(mine["seed"]) == [0, 1] and mine["run_id"].nunique() == 2 and mine["repeat_id"].nunique() == 1
        assert trial.value == pytest.approx(mine["val_top1"].mean())
        attrs = trial.user_attrs
        assert (attrs["seeds"], attrs["n"]) == ([0, 1], 2) and attrs["mean"] == pytest.approx(trial.value)
        assert attrs["std"] == pytest.approx(mine["val_top1"].std(ddof=1))
        assert attrs["run_id"] == mine.set_index("seed").loc[0, "run_id"]  # the first seed's run
    assert rows["repeat_id"].nunique() == 2  # the trials' settings differ

    # the printed command sweeps the best trial's seeds: both are done, so train skips them
    command = next(line for line in out.splitlines() if line.startswith("best command: "))
    assert command.startswith("best command: animalcls train -m ") and command.endswith(" seed=0,1")
    assert cli(shlex.split(command.removeprefix("best command: animalcls ")), tmp_path) == 0
    assert len(table(tmp_path)) == 4


def test_with_repeats_the_pruner_judges_the_first_seed_only(tmp_path, images, space, cli, monkeypatch):
    asked: list[int] = []

    def prune_trial_1(self, study, trial):
        asked.append(trial.number)
        return trial.number == 1

    monkeypatch.setattr(optuna.pruners.MedianPruner, "prune", prune_trial_1)
    assert cli(tune_args(images, "n_trials=2", "repeats=2", "epochs=2", f"space={space}"), tmp_path) == 0
    study, rows = load_study(tmp_path), table(tmp_path)
    assert states(study) == ["COMPLETE", "PRUNED"]
    assert asked == [0, 1]  # once per trial: after the first seed's epoch 1 (not its last, not seed 1's)
    assert list(study.trials[0].intermediate_values) == [1, 2]
    pruned = rows[rows["tags"].str.contains("trial:1")]
    assert list(pruned["seed"]) == [0] and list(pruned["status"]) == ["pruned"]  # seed 1 never ran
    assert sorted(rows[rows["tags"].str.contains("trial:0")]["seed"]) == [0, 1]


def test_repeats_1_is_a_study_as_before(tmp_path, images, space, cli):
    args = tune_args(images, "pruner=none", "epochs=1", f"space={space}")
    assert cli([*args, "n_trials=1"], tmp_path) == 0
    assert cli([*args, "n_trials=2", "repeats=1"], tmp_path) == 0  # the same study: repeats=1 is the default
    study, rows = load_study(tmp_path), table(tmp_path)
    assert states(study) == ["COMPLETE"] * 2 and len(rows) == 2 and set(rows["seed"]) == {0}
    for trial in study.trials:
        assert "seeds" not in trial.user_attrs and "seed" not in Path(trial.user_attrs["run_dir"]).name
        assert trial.value == pytest.approx(rows.set_index("run_id").loc[trial.user_attrs["run_id"], "val_top1"])
    assert cli([*args, "n_trials=3", "repeats=2"], tmp_path) == 2  # another objective: refused


# ---------------------------------------------------------------- stop, crash, share


def start(tmp_path: Path, args: list[str], log: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "animalcls", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / log, "w"),  # noqa: SIM115 (closed with the process)
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(path: Path, text: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text():
        assert process.poll() is None, path.read_text()[-2000:]
        assert time.monotonic() < deadline, path.read_text()[-2000:]
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_study_continues_with_the_same_command(tmp_path, images, space, cli, how):
    args = tune_args(images, "n_trials=1", "pruner=none", "epochs=4", f"space={space}")
    process = start(tmp_path, args, "first.log")
    wait_for(tmp_path / "first.log", "epoch 2/4", process)  # epoch 1's last.pt is written
    process.send_signal(how)
    assert process.wait(60) == (130 if how == signal.SIGTERM else -signal.SIGKILL)
    # SIGTERM: the run records itself, the trial fails and is queued again; kill -9: left running
    assert states(load_study(tmp_path)) == (["FAIL", "WAITING"] if how == signal.SIGTERM else ["RUNNING"])

    assert cli(args, tmp_path) == 0  # the same command
    study = load_study(tmp_path)
    assert states(study) == ["FAIL", "COMPLETE"]  # the stopped trial is not counted; its retry is
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.params == study.trials[0].params
    assert "resuming from" in (Path(retry.user_attrs["run_dir"]) / "train.log").read_text()
    rows = table(tmp_path)
    assert list(rows["status"]) == (["interrupted", "ok"] if how == signal.SIGTERM else ["ok"])
    assert rows["epochs_done"].iloc[-1] == 4 and rows["run_id"].nunique() == 1


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path, images, space):
    args = tune_args(images, "n_trials=4", "pruner=none", "epochs=1", f"space={space}")
    processes = [start(tmp_path, args, f"p{i}.log") for i in range(2)]
    assert [p.wait(180) for p in processes] == [0, 0], (tmp_path / "p0.log").read_text()[-2000:]
    study = load_study(tmp_path)
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 4  # between them, exactly n_trials
    assert len({t.user_attrs["pid"] for t in counted}) == 2  # both did work
    rows = table(tmp_path)
    assert sorted(rows["run_id"]) == sorted(t.user_attrs["run_id"] for t in counted)  # no lost or doubled run
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 4  # different draws in each process


# ---------------------------------------------------------------- bad input: one message, nothing written


@pytest.mark.parametrize(
    "extra,message",
    [
        (["resume_only=true"], "no study 's'"),
        (["storage=nosuchdb://host/db"], "storage=nosuchdb://host/db cannot be opened"),
        (["storage=sqlite:////no/such/folder/s.db"], "folder /no/such/folder does not exist"),
        (["sampler=grid"], "sampler='grid' is not known; choose one of: tpe, random"),
        (["pruner=sometimes"], "pruner='sometimes' is not known"),
        (["n_trials=0"], "n_trials must be a whole number >= 1"),
        (["repeats=0"], "repeats (seeds per trial) must be a whole number >= 1"),
        (["space=nosuch"], "space=nosuch is not a known search space; choose one of: default"),
        (["+hparams_search=optuna"], "the Hydra Optuna sweeper is retired (hparams_search=optuna)"),
        (["lr=-1"], "lr=-1 is out of range"),
    ],
)
def test_bad_input_is_one_message_and_writes_nothing(tmp_path, images, cli, capsys, extra, message):
    before = sorted(tmp_path.rglob("*"))
    assert cli(tune_args(images, *extra), tmp_path) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_space_key_that_is_not_a_config_key_fails(tmp_path, images, cli, capsys):
    (tmp_path / "bad.yaml").write_text("learning_rate: {type: float, low: 0.001, high: 0.1}\n")
    assert cli(tune_args(images, f"space={tmp_path / 'bad.yaml'}"), tmp_path) == 2
    assert "learning_rate is not a config key" in capsys.readouterr().err


def test_a_study_refuses_a_different_command(tmp_path, images, space, cli, capsys):
    assert cli(tune_args(images, "n_trials=1", "epochs=1", f"space={space}"), tmp_path) == 0
    assert cli(tune_args(images, "n_trials=2", "epochs=2", f"space={space}"), tmp_path) == 2
    err = capsys.readouterr().err
    assert "study 's' was made with other settings" in err and "epochs=1" in err and "study=NEWNAME" in err
    assert len(load_study(tmp_path).trials) == 1


def test_train_refuses_the_retired_sweeper(tmp_path, images, cli, capsys):
    assert cli(["train", "+hparams_search=optuna", f"data.root={images}"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "the Hydra Optuna sweeper is retired: use `animalcls tune" in err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # mlflow's SQLAlchemy store
def test_a_study_tracked_in_mlflow_is_one_parent_run_with_its_trials_nested(tmp_path, images, cli):
    from mlflow.tracking import MlflowClient

    from animalcls import tracking

    assert cli(tune_args(images, "n_trials=2", "pruner=none", "epochs=1", "logger=mlflow"), tmp_path) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("animalcls").experiment_id])
    (parent,) = [r for r in found if tracking.SWEEP_TAG in r.data.tags]
    assert parent.data.tags[tracking.SWEEP_TAG] == "tune/s"
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 == len(found) - 1
    assert children[0].data.params.keys() == children[1].data.params.keys()
