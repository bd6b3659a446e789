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
  params = the row's settings; per-epoch metrics under history.csv's names with step=epoch; the
  final metrics as `final_<column>` (final_val_top1 is the tested checkpoint's, final_test_top1...);
  tags run_id and status; the run dir's small files (csv, json, log, yaml, txt; never *.pt) as
  artifacts.

A tracker never costs a run its record: an error while logging is a warning, and the tracker stops
logging for that run. Errors that show before training (unknown tracker, missing package, a store
that cannot be opened) are an `AnimalclsError`. tensorboard and mlflow are imported only by the
tracker that needs them (each takes a second or more to import).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

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
            experiment_id = self._experiment(experiment, artifacts)
            run = self.client.create_run(experiment_id, run_name=run_name or Path(run_dir).name)
        except Exception as exc:
            raise AnimalclsError(
                f"logger=mlflow could not open the tracking store {tracking_uri} ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); give "
                f"logger.tracking_uri=sqlite:///path/mlflow.db or http://host:port, or logger=none."
            ) from None
        self.run_id: str = run.info.run_id
        self.logged_params: set[str] = set()
        self._log(params=self.settings)

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
        fresh = {k: v for k, v in (params or {}).items() if k not in self.logged_params}
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, v, now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(_plain(v))) for k, v in fresh.items()],
        )
        self.logged_params |= set(fresh)

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
            metrics = {f"final_{k}": v for k, v in final_metrics(row).items()}
            self._log(metrics=metrics, params=row_settings(row), step=int(_number(row.get("epochs_done")) or 0))
            for key, value in (("run_id", row.get("run_id", "")), ("status", status)):
                self.client.set_tag(self.run_id, key, str(value))
            for path in small_files(Path(run_dir)):
                parent = path.parent.relative_to(run_dir).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))
            self.finished = True
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


def make_tracker(cfg: DictConfig, run_dir: Path) -> Tracker:
    """The tracker `cfg.logger` asks for (none when the config has no logger group)."""
    logger = cfg.get("logger")
    name = "none" if logger is None else str(logger.get("name", "none"))
    check_name(name)
    if name == "none":
        return NoTracker()
    settings = config_settings(cfg)
    if name == "tensorboard":
        return TensorBoardTracker(run_dir, settings)
    return MLflowTracker(
        run_dir,
        settings,
        tracking_uri=str(logger.get("tracking_uri", "") or ""),
        experiment=str(logger.get("experiment", "animalcls") or "animalcls"),
        run_name=Path(run_dir).name,
        store_dir=Path(str(cfg.get("results", "outputs/results.csv"))).parent,
    )
