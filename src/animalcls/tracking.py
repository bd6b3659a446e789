"""Experiment tracking: a run's epochs and outcome, sent to TensorBoard or MLflow as well.

The run directory and the results table stay the record; a tracker is a view of it for people who
live in TensorBoard or MLflow. `make_tracker(cfg, run_dir)` picks one by `logger.name`
(conf/logger/: none, tensorboard, mlflow), and run.py calls, on the process that records the run:

    tracker = make_tracker(cfg, run_dir)     # after the run dir is claimed, before any training
    tracker.log_epoch(epoch, history_row)    # after each epoch (history.csv's row)
    tracker.finish(row, run_dir)             # at the end, whatever the status (after record.json)
    tracker.close()                          # in a finally

- `TensorBoardTracker`: event files in `<run_dir>/tensorboard/`: per-epoch scalars (train/loss,
  train/top1, val/loss, val/top1, val/top3, val/top5, lr, images_per_s) and, at the end,
  `add_hparams` with the run's settings and its final metrics (hparam/val_top1, hparam/test_top1...).
- `MLflowTracker`: one MLflow run per animalcls run, in `logger.experiment` at `logger.tracking_uri`
  ("" = a local SQLite store beside the results table, outputs/mlflow.db by default, artifacts in
  mlartifacts/ beside it):
  params = every config leaf and the row's settings; per-epoch metrics under history.csv's names with step=epoch; the
  final metrics as `final_<column>` (final_val_top1 is the tested checkpoint's, final_test_top1...);
  tags run_id and status; the run dir's small files (csv, json, log, yaml, txt; never *.pt) as
  artifacts.

Every run logs the same parameter keys: each leaf of its config by dotted key (`run_params`), so
MLflow's and TensorBoard's comparison views keep them all. In MLflow the runs of a sweep (a Hydra
multirun's sweep dir, an `animalcls tune` study) are nested under one parent run per sweep, found
by its `animalcls_sweep` tag or created (jobs that start at once keep the oldest).

A run trained before is sent from its run dir (.hydra/config.yaml, history.csv, record.json,
metrics.json) by `send_run`, once: `animalcls train logger=...` on a done configuration sends it
instead of skipping silently (`send_done`), and `animalcls results track logger=...` sends a whole
table. The tracker run is found again by its tags (run_id, status and `animalcls_run_dir`, the run
dir relative to the table's folder); for TensorBoard, by a marker file in <run_dir>/tensorboard/.

A tracker never costs a run its record: an error while logging is a warning, and the tracker stops
logging for that run. Errors that show before training (unknown tracker, missing package, a store
that cannot be opened) are an `AnimalclsError`. tensorboard and mlflow are imported only by the
tracker that needs them (each takes a second or more to import).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from animalcls.config import leaves
from animalcls.errors import AnimalclsError
from animalcls.record import data_label
from animalcls.registry import TRACKERS

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[track]"'

# The results row's settings columns (what a run was), its outcome columns (what it measured), and
# history.csv's per-epoch columns, in the names the tracker logs them under.
SETTINGS = (
    "run_id",
    "repeat_id",
    "model",
    "pretrained",
    "weights",
    "optimizer",
    "momentum",
    "weight_decay",
    "lr",
    "batch_size",
    "epochs",
    "loss",
    "aug",
    "batch_norm",
    "dropout",
    "seed",
    "data",
    "data_id",
    "split",
    "pipeline",
    "test_on",
    "precision",
    "paper_config",
)
FINAL_METRICS = (
    "val_top1",
    "val_top3",
    "val_top5",
    "test_top1",
    "test_top3",
    "test_top5",
    "gmacs_fvcore",
    "gflops",
    "params",
    "train_seconds",
    "images_per_s",
    "epochs_done",
    "skipped_files",
)
EPOCH_SCALARS = {  # history.csv column -> TensorBoard tag
    "train_loss": "train/loss",
    "train_top1": "train/top1",
    "val_loss": "val/loss",
    "val_top1": "val/top1",
    "val_top3": "val/top3",
    "val_top5": "val/top5",
    "lr": "lr",
    "images_per_s": "images_per_s",
}
SMALL_FILES = (".csv", ".json", ".log", ".yaml", ".yml", ".txt")
MAX_ARTIFACT_BYTES = 20 * 2**20
MLFLOW_STATUS = {"ok": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}  # anything else: FAILED
# Tags that identify a tracker run: the run dir (relative to the results table's folder) beside the
# `run_id` and `status` tags, so that sending a finished run twice finds the first; and the sweep
# (Hydra multirun dir or tune study dir) that a parent run stands for.
RUN_DIR_TAG, SWEEP_TAG = "animalcls_run_dir", "animalcls_sweep"
TB_MARKER = "animalcls-sent.json"  # in <run dir>/tensorboard/: which record the event files hold
MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch


class Tracker(Protocol):
    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None: ...

    def finish(self, row: Mapping[str, Any], run_dir: Path) -> None: ...

    def close(self) -> None: ...


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (an empty cell, NaN, a string)."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _plain(value: Any) -> str | int | float | bool:
    """A value TensorBoard's hparams and MLflow's params take: text, a number or a bool."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "" if value is None else str(value)


def config_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings known before the run starts, under the results row's column names."""
    return {
        "model": cfg.model.name,
        "pretrained": bool(cfg.model.pretrained),
        "optimizer": cfg.optim.name,
        "momentum": float(cfg.optim.momentum),
        "weight_decay": float(cfg.optim.weight_decay),
        "lr": float(cfg.lr),
        "batch_size": int(cfg.batch_size),
        "epochs": int(cfg.epochs),
        "loss": cfg.loss.name,
        "aug": cfg.aug.name,
        "batch_norm": bool(cfg.model.batch_norm),
        "dropout": float(cfg.model.dropout),
        "seed": int(cfg.seed),
        "data": data_label(cfg),
    }


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """What a tracker logs as a run's settings: every leaf of the config by its dotted key (so
    every run of one version has the same keys, and a tracker's comparison views keep them all),
    and the results row's names for the main ones (model, optimizer, data...)."""
    return {**leaves(cfg), **config_settings(cfg)}


def row_settings(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in SETTINGS if k in row}


def final_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    numbers = {k: _number(row.get(k)) for k in FINAL_METRICS}
    return {k: v for k, v in numbers.items() if v is not None}


class NoTracker:
    """logger=none: the run dir and the results table only."""

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        pass

    def finish(self, row: Mapping[str, Any], run_dir: Path) -> None:
        pass

    def close(self) -> None:
        pass


class _Guarded:
    """Logging errors become one warning, after which the tracker stays quiet for the run."""

    name = "tracker"

    def __init__(self) -> None:
        self.broken = False

    def _failed(self, what: str, exc: Exception) -> None:
        self.broken = True
        log.warning("%s: could not %s (%s: %s); the run goes on without it", self.name, what, type(exc).__name__, exc)


class TensorBoardTracker(_Guarded):
    name = "logger=tensorboard"

    def __init__(self, run_dir: Path, settings: Mapping[str, Any]) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise AnimalclsError(
                f"logger=tensorboard needs the tensorboard package ({exc}): {INSTALL_HINT}, or logger=none."
            ) from None
        self.settings = dict(settings)
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        if self.broken:
            return
        try:
            for column, tag in EPOCH_SCALARS.items():
                value = _number(row.get(column))
                if value is not None:
                    self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()
        except Exception as exc:
            self._failed("log an epoch", exc)

    def finish(self, row: Mapping[str, Any], run_dir: Path) -> None:
        if self.broken:
            return
        hparams = {k: _plain(v) for k, v in {**self.settings, **row_settings(row)}.items()}
        hparams["status"] = str(row.get("status", ""))
        metrics = {f"hparam/{k}": v for k, v in final_metrics(row).items()}
        try:
            # run_name ".": the hparams summary lands in the run's own folder, not a timestamped one
            self.writer.add_hparams(hparams, metrics, run_name=".")
            self.writer.flush()
            write_text(self.log_dir / TB_MARKER, json.dumps(_identity(row)))
        except Exception as exc:
            self._failed("log the hparams", exc)

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception as exc:
            self._failed("close the event file", exc)


class MLflowTracker(_Guarded):
    name = "logger=mlflow"

    def __init__(
        self,
        run_dir: Path,
        settings: Mapping[str, Any],
        tracking_uri: str = "",
        experiment: str = "animalcls",
        run_name: str = "",
        store_dir: Path = Path("outputs"),
        sweep: Path | None = None,
        start_time: int | None = None,
    ) -> None:
        super().__init__()
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise AnimalclsError(
                f"logger=mlflow needs the mlflow package ({exc}): {INSTALL_HINT}, or logger=none."
            ) from None
        for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.store.sqlalchemy_store"):
            logging.getLogger(noisy).setLevel(logging.WARNING)  # schema creation lines on a new store
        artifacts = None
        if not tracking_uri:  # a local store: store_dir/mlflow.db, artifacts in store_dir/mlartifacts
            store_dir.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{(store_dir / 'mlflow.db').resolve()}"
            artifacts = (store_dir / "mlartifacts").resolve().as_uri()
        self.tracking_uri, self.settings, self.finished = tracking_uri, dict(settings), False
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = experiment_id = self._experiment(experiment, artifacts)
            tags = {RUN_DIR_TAG: place(Path(run_dir), store_dir)}
            if sweep is not None:  # a job of a sweep: nested under the sweep's run
                tags["mlflow.parentRunId"] = self.parent_run(place(sweep, store_dir))
            run = self.client.create_run(
                experiment_id, start_time=start_time, tags=tags, run_name=run_name or Path(run_dir).name
            )
        except Exception as exc:
            raise AnimalclsError(
                f"logger=mlflow could not open the tracking store {tracking_uri} ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); give "
                f"logger.tracking_uri=sqlite:///path/mlflow.db or http://host:port, or logger=none."
            ) from None
        self.run_id: str = run.info.run_id
        self.parent_id = tags.get("mlflow.parentRunId", "")
        self.logged_params: set[str] = set()
        self._log(params=self.settings)

    def parent_run(self, sweep: str) -> str:
        """The run that stands for a sweep, found by its tag or created: jobs that start at once
        may each create one, and then all keep the oldest (the others delete theirs)."""
        found = find_runs(self.client, self.experiment_id, {SWEEP_TAG: sweep})
        if found:
            return found[0]
        mine = self.client.create_run(self.experiment_id, tags={SWEEP_TAG: sweep}, run_name=sweep).info.run_id
        self.client.set_terminated(mine, "FINISHED")  # a folder of runs: its jobs have the statuses
        oldest = find_runs(self.client, self.experiment_id, {SWEEP_TAG: sweep})[0]
        if oldest != mine:
            self.client.delete_run(mine)
        return oldest

    def _experiment(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=artifacts))
        except Exception:  # created by another process in the meantime
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _log(
        self, metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None, step: int = 0
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        fresh = [Param(k, str(_plain(v))) for k, v in (params or {}).items() if k not in self.logged_params]
        batches = [fresh[i : i + MAX_PARAMS_PER_BATCH] for i in range(0, len(fresh), MAX_PARAMS_PER_BATCH)] or [[]]
        for i, batch in enumerate(batches):
            metric_list = [Metric(k, v, now, step) for k, v in (metrics or {}).items()] if i == 0 else []
            self.client.log_batch(self.run_id, metrics=metric_list, params=batch)
            self.logged_params |= {p.key for p in batch}

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        if self.broken:
            return
        numbers = {k: _number(row.get(k)) for k in (*EPOCH_SCALARS, "seconds")}
        try:
            self._log(metrics={k: v for k, v in numbers.items() if v is not None}, step=epoch)
        except Exception as exc:
            self._failed("log an epoch", exc)

    def finish(self, row: Mapping[str, Any], run_dir: Path) -> None:
        if self.broken:
            return
        status = str(row.get("status", ""))
        try:
            metrics = {f"final_{k}": v for k, v in {**final_metrics(row), **details(Path(run_dir))}.items()}
            self._log(metrics=metrics, params=row_settings(row), step=int(_number(row.get("epochs_done")) or 0))
            for key, value in (("run_id", row.get("run_id", "")), ("status", status)):
                self.client.set_tag(self.run_id, key, str(value))
            for path in small_files(Path(run_dir)):
                parent = path.parent.relative_to(run_dir).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))
            self.finished = True
            if self.parent_id:  # the sweep's run ends when its latest job does
                self.client.set_terminated(self.parent_id, "FINISHED")
        except Exception as exc:
            self._failed("log the run's outcome", exc)

    def close(self) -> None:
        if self.finished:
            return
        try:  # ended without finish (an exception in the run): say so in MLflow too
            self.client.set_terminated(self.run_id, "FAILED")
        except Exception as exc:
            self._failed("end the MLflow run", exc)


def small_files(run_dir: Path) -> list[Path]:
    """The run dir's records and logs (never checkpoints or event files), for artifact stores."""
    found = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if relative.parts[0] == "tensorboard" or not path.is_file() or path.suffix.lower() not in SMALL_FILES:
            continue
        if path.stat().st_size <= MAX_ARTIFACT_BYTES:
            found.append(path)
    return found


def check_name(name: str) -> None:
    if name not in TRACKERS:
        raise AnimalclsError(
            f"logger={name!r} is not a known tracker; choose one of: {', '.join(TRACKERS)} (e.g. `logger=tensorboard`)."
        )


@dataclass(frozen=True)
class Target:
    """Where runs are tracked: `logger.name`, its store and experiment, and the results table's
    folder (the local MLflow store's home, and what run dirs and sweeps are named relative to)."""

    name: str = "none"
    tracking_uri: str = ""
    experiment: str = "animalcls"
    store_dir: Path = Path("outputs")


def target(cfg: DictConfig) -> Target:
    """The tracker `cfg.logger` asks for (none when the config has no logger group)."""
    logger = cfg.get("logger")
    name = "none" if logger is None else str(logger.get("name", "none"))
    check_name(name)
    if logger is None:
        return Target()
    return Target(
        name,
        str(logger.get("tracking_uri", "") or ""),
        str(logger.get("experiment", "animalcls") or "animalcls"),
        Path(str(cfg.get("results", "outputs/results.csv"))).parent,
    )


def open_tracker(
    where: Target,
    run_dir: Path,
    params: Mapping[str, Any],
    sweep: Path | None = None,
    start_time: int | None = None,
) -> Tracker:
    """A tracker for one run; `sweep`: the sweep dir it is a job of (MLflow nests it there)."""
    if where.name == "none":
        return NoTracker()
    if where.name == "tensorboard":
        return TensorBoardTracker(run_dir, params)
    return MLflowTracker(
        run_dir,
        params,
        tracking_uri=where.tracking_uri,
        experiment=where.experiment,
        run_name=Path(run_dir).name,
        store_dir=where.store_dir,
        sweep=sweep,
        start_time=start_time,
    )


def make_tracker(cfg: DictConfig, run_dir: Path) -> Tracker:
    """The tracker `cfg.logger` asks for, for a run about to train in `run_dir`."""
    where = target(cfg)
    return open_tracker(where, run_dir, {} if where.name == "none" else run_params(cfg), current_sweep())


# ---------------------------------------------------------------- sweeps


_sweeps: list[Path] = []  # set by `in_sweep` (animalcls tune): the study dir its trials run in


@contextmanager
def in_sweep(sweep_dir: Path) -> Iterator[None]:
    """Runs started inside are jobs of the sweep `sweep_dir` (a tune study's folder)."""
    _sweeps.append(Path(sweep_dir))
    try:
        yield
    finally:
        _sweeps.pop()


def current_sweep() -> Path | None:
    """The sweep the run now starting belongs to: a tune study (`in_sweep`), or a Hydra multirun's
    sweep dir; None for a single run."""
    if _sweeps:
        return _sweeps[-1]
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(str(hydra_cfg.sweep.dir)) if hydra_cfg.mode == RunMode.MULTIRUN else None


def sweep_of(run_dir: Path) -> Path | None:
    """The sweep a finished run dir was a job of, from the folders: a Hydra multirun's dir holds
    multirun.yaml; a tune study's dir (tune/<study>/) holds trial-* run dirs."""
    parent = Path(run_dir).parent
    if (parent / "multirun.yaml").is_file():
        return parent
    if Path(run_dir).name.startswith("trial-") and parent.parent.name == "tune":
        return parent
    return None


def place(path: Path, store_dir: Path) -> str:
    """A folder's name in the tracker: relative to the results table's folder where it is inside
    (a copied project keeps its names), else absolute."""
    resolved = Path(os.path.abspath(path))
    try:
        return resolved.relative_to(Path(os.path.abspath(store_dir))).as_posix()
    except ValueError:
        return resolved.as_posix()


def find_runs(client: Any, experiment_id: str, tags: Mapping[str, str]) -> list[str]:
    """The ids of the runs with all these tags, oldest first."""
    where = " and ".join(f"tags.{key} = {_quoted(value)}" for key, value in tags.items())
    runs = client.search_runs([experiment_id], where, max_results=1000)
    return [r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))]


def _quoted(value: str) -> str:
    return f"'{value}'" if "'" not in value else f'"{value}"'


# ---------------------------------------------------------------- runs done before


def _identity(row: Mapping[str, Any]) -> dict[str, str]:
    return {"run_id": str(row.get("run_id", "")), "status": str(row.get("status", ""))}


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def details(run_dir: Path) -> dict[str, float]:
    """metrics.json's numbers beyond the row (test loss, best epoch), where the run wrote it."""
    try:
        found = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    numbers = {k: _number(found.get(k)) for k in ("test_loss", "best_epoch")} if isinstance(found, dict) else {}
    return {k: v for k, v in numbers.items() if v is not None}


def read_history(run_dir: Path) -> list[dict[str, str]]:
    try:
        with open(run_dir / "history.csv", newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    except OSError:
        return []


def read_record(run_dir: Path) -> dict[str, Any]:
    try:
        found = json.loads((run_dir / "record.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _start_ms(row: Mapping[str, Any]) -> int | None:
    try:
        return int(datetime.fromisoformat(str(row.get("timestamp", ""))).timestamp() * 1000)
    except ValueError:
        return None


def already_sent(where: Target, run_dir: Path, row: Mapping[str, Any]) -> bool:
    """Whether the tracker holds this run dir's record already (sent, or tracked while it trained)."""
    if where.name == "tensorboard":
        try:
            marker = json.loads((run_dir / "tensorboard" / TB_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return bool(marker == _identity(row))
    if where.name != "mlflow":
        return True
    from mlflow.tracking import MlflowClient

    uri = where.tracking_uri or f"sqlite:///{(where.store_dir / 'mlflow.db').resolve()}"
    if not where.tracking_uri and not (where.store_dir / "mlflow.db").is_file():
        return False
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(where.experiment)
    if experiment is None:
        return False
    tags = {RUN_DIR_TAG: place(run_dir, where.store_dir), **_identity(row)}
    return bool(find_runs(client, str(experiment.experiment_id), tags))


def send_run(where: Target, run_dir: Path, row: Mapping[str, Any] | None = None, sweep: Path | None = None) -> bool:
    """Send a run that trained before (its config, history, record and metrics, from its run
    dir) to the tracker, as if it had been tracked while it trained; `row` is its results row
    (default: its record.json), `sweep` the sweep it is a job of. Nothing is sent twice: returns
    False where the tracker has it already."""
    run_dir = Path(run_dir)
    row = dict(row) if row is not None else read_record(run_dir)
    if where.name == "none" or already_sent(where, run_dir, row):
        return False
    config = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config) if config.is_file() else OmegaConf.create({})
    try:
        params = run_params(cfg) if isinstance(cfg, DictConfig) else {}
    except Exception:  # an older or partial config: its leaves, without the row's names
        params = leaves(cfg) if isinstance(cfg, DictConfig) else {}
    tracker = open_tracker(where, run_dir, params, sweep, _start_ms(row))
    try:
        for epoch_row in read_history(run_dir):
            epoch = _number(epoch_row.get("epoch"))
            if epoch is not None:
                tracker.log_epoch(int(epoch), epoch_row)
        tracker.finish(row, run_dir)
    finally:
        tracker.close()
    return True


def send_done(cfg: DictConfig, row: Mapping[str, Any]) -> None:
    """`animalcls train logger=...` on a run done before: the run is not trained again (the
    logger is no part of its id), so its record goes to the tracker instead, once."""
    where = target(cfg)
    run_dir = Path(str(row.get("run_dir", "") or ""))
    if where.name == "none":
        return
    if not str(row.get("run_dir", "")) or not run_dir.is_dir():
        log.warning("logger=%s: the done run's dir %s is gone; nothing to send", where.name, run_dir)
        return
    try:
        sent = send_run(where, run_dir, row, current_sweep())
    except AnimalclsError:
        raise
    except Exception as exc:
        log.warning("logger=%s: could not send the done run (%s: %s)", where.name, type(exc).__name__, exc)
        return
    if sent:
        log.info(
            "logger=%s: sent the done run %s (%s) without training it again", where.name, row.get("run_id"), run_dir
        )
    else:
        log.info("logger=%s: the done run %s is there already", where.name, row.get("run_id"))
