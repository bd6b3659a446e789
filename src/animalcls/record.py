"""The run's record: the results schema in one place, the settings a run records, and its ids.

- `COLUMNS` is the results table's header (new columns are only ever appended, so an older table
  keeps working: see `animalcls.results`).
- `measured_settings` is everything that changes what a run measures, from *resolved* values: the
  precision actually chosen, test_on, the pipeline, the split and the data set's identity (its
  file list), never how a value was typed. Device, workers, eval batch size, channels_last and
  compile only change speed or the last bits of the numbers, so they stay out.
- `run_id` hashes those settings (a sweep skips a run id that has an ok row); `repeat_id` hashes
  them without the seed, so runs with one repeat_id differ by seed alone and may be averaged.
- Rows written before this scheme (record_version empty) carry `legacy_run_id`'s id.

A setting added later enters the hash only when it differs from its default, so adding one keeps
every existing id.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from animalcls.atomic import write_text_atomic
from animalcls.config import Config

RECORD_VERSION = 2
RECORD_FILE = "record.json"  # the run's record in its run dir: the truth the table indexes
# Which table a record was appended to (record.json only, not table columns): as written, and
# relative to the run dir so that a copied or moved project still finds its own table.
TABLE_KEYS = ("results_table", "results_table_relative")

COLUMNS = [
    "run_id",
    "status",
    "timestamp",
    "model",
    "pretrained",
    "optimizer",
    "lr",
    "batch_size",
    "epochs",
    "loss",
    "aug",
    "batch_norm",
    "dropout",
    "seed",
    "data",
    "precision",
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
    "device",
    "versions",
    "git_commit",
    "run_dir",
    "paper_config",
    "tags",
    "error",
    # record_version 2
    "record_version",
    "repeat_id",
    "data_id",
    "split",
    "test_on",
    "pipeline",
    "weights",
    "momentum",
    "weight_decay",
    # beyond the paper (empty in older tables: the paper's recipe)
    "recipe",
    "recipe_settings",
    "stopped_early",
    # the machine, so that two sides of a comparison can be shown to have run on the same kind
    "cpu_model",
    "cpu_features",
    "gpu",
]
STATUSES = ("ok", "diverged", "failed", "interrupted", "pruned")
# Columns read as text whatever they hold (a run id of digits only, a tag of "1.0").
TEXT_COLUMNS = (
    "run_id",
    "repeat_id",
    "data_id",
    "status",
    "tags",
    "paper_config",
    "data",
    "error",
    "run_dir",
    "split",
    "weights",
    "versions",
    "git_commit",
    "device",
    "timestamp",
    "recipe",
    "recipe_settings",
    "stopped_early",
    "cpu_model",
    "cpu_features",
    "gpu",
)


@dataclass(frozen=True)
class Resolved:
    """What a config leaves to the machine and the data, decided before training."""

    precision: str  # fp32 | bf16 | fp16, as chosen for this device and model
    data_id: str  # animalcls.data.data_identity of the scanned data set


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


def weights_identity(weights: str | None) -> str:
    """A local weights file by name and size (its path string changes with where it lives)."""
    if not weights:
        return ""
    path = Path(weights).expanduser()
    size = path.stat().st_size if path.is_file() else -1
    return f"{path.name}:{size}"


def measured_settings(cfg: DictConfig, resolved: Resolved) -> dict[str, Any]:
    """Everything that changes what this run measures, as plain resolved values."""
    aug = cfg.aug
    return {
        "version": RECORD_VERSION,
        "model": {
            "name": cfg.model.name,
            "pretrained": bool(cfg.model.pretrained),
            "weights": weights_identity(cfg.model.weights) if cfg.model.pretrained else "",
            "batch_norm": bool(cfg.model.batch_norm),
            "dropout": float(cfg.model.dropout),
        },
        "optim": {
            "name": cfg.optim.name,
            "momentum": float(cfg.optim.momentum),
            "weight_decay": float(cfg.optim.weight_decay),
        },
        "loss": cfg.loss.name,
        "aug": {
            "resize": int(aug.resize),
            "crop": int(aug.crop),
            "hflip": float(aug.hflip),
            "rotation": float(aug.rotation),
            "mean": _floats(aug.mean),
            "std": _floats(aug.std),
        },
        "lr": float(cfg.lr),
        "batch_size": int(cfg.batch_size),
        "epochs": int(cfg.epochs),
        "seed": int(cfg.seed),
        "precision": resolved.precision,
        "test_on": cfg.test_on,
        "pipeline": cfg.data.pipeline,
        "split": _floats(cfg.data.split),
        "data": resolved.data_id,
        # only what differs from the paper's recipe, so every paper configuration keeps its id
        **({"recipe": extras} if (extras := recipe_settings(cfg)) else {}),
    }


def _recipe_values(cfg: DictConfig) -> dict[str, Any]:
    """Every setting a recipe can change beyond the paper's, flattened ("sched.name": "cosine")."""
    values: dict[str, Any] = {
        "optim.nesterov": bool(cfg.optim.nesterov),
        "optim.decay_norm_bias": bool(cfg.optim.decay_norm_bias),
        "optim.clip_grad_norm": float(cfg.optim.clip_grad_norm),
        "loss.label_smoothing": float(cfg.loss.label_smoothing),
        "aug.cache_size": int(cfg.aug.cache_size),
        "aug.rrc_scale": _floats(cfg.aug.rrc_scale),
        "aug.rrc_ratio": _floats(cfg.aug.rrc_ratio),
        "aug.color_jitter": float(cfg.aug.color_jitter),
        "aug.trivial_augment": bool(cfg.aug.trivial_augment),
        "tta": bool(cfg.tta),
    }
    for group in ("sched", "mix", "ema", "finetune", "early_stop"):
        node = OmegaConf.to_container(cfg[group], resolve=True)
        assert isinstance(node, dict)
        values.update({f"{group}.{key!s}": value for key, value in node.items()})
    return values


@functools.cache
def _paper_recipe_values() -> dict[str, Any]:
    """The schema's defaults: the paper's recipe (conf/recipe/paper.yaml changes none of them)."""
    schema = OmegaConf.structured(Config)
    assert isinstance(schema, DictConfig)
    return _recipe_values(schema)


def recipe_settings(cfg: DictConfig) -> dict[str, Any]:
    """The recipe settings of this run that differ from the paper's (empty for a paper run)."""
    paper = _paper_recipe_values()
    return {key: value for key, value in _recipe_values(cfg).items() if value != paper.get(key)}


def _digest(settings: Mapping[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_id(cfg: DictConfig, resolved: Resolved) -> str:
    return _digest(measured_settings(cfg, resolved))


def repeat_id(cfg: DictConfig, resolved: Resolved) -> str:
    settings = measured_settings(cfg, resolved)
    settings.pop("seed")
    return _digest(settings)


def lineage_id(cfg: DictConfig, resolved: Resolved) -> str:
    """The run id without the data set: an interrupted run of the same configuration on data that
    has changed since shares it, so resume can say why it starts over."""
    settings = measured_settings(cfg, resolved)
    settings.pop("data")
    return _digest(settings)


# The keys each group had in animalcls 0.1: the legacy id hashes exactly these, so keys added since
# (a recipe's) do not change it.
LEGACY_GROUP_KEYS = {
    "model": ("name", "pretrained", "weights", "batch_norm", "dropout"),
    "optim": ("name", "momentum", "weight_decay"),
    "loss": ("name",),
    "aug": ("name", "resize", "crop", "hflip", "rotation", "mean", "std"),
}


def legacy_run_id(cfg: DictConfig) -> str:
    """The run id of animalcls 0.1 (a hash of the config as typed): rows written before
    record_version 2 are matched by it, so an old table still skips what it holds."""
    settings: dict[str, Any] = {}
    for group, keys in LEGACY_GROUP_KEYS.items():
        node = OmegaConf.to_container(cfg[group], resolve=True)
        assert isinstance(node, dict)
        settings[group] = {key: node[key] for key in keys}
    settings.update({k: cfg[k] for k in ("lr", "batch_size", "epochs", "seed", "amp", "channels_last")})
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    settings["data"] = {"name": data["name"], "root": data["root"], "split": data["split"]}
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def data_label(cfg: DictConfig) -> str:
    """The `data` column: the config's data name, or the root's folder name for a custom root."""
    return cfg.data.name if cfg.data.name != "animals" else Path(os.path.normpath(cfg.data.root)).name


def settings_row(cfg: DictConfig, resolved: Resolved) -> dict[str, Any]:
    """The results row's settings columns, flattened from the resolved config."""
    return {
        "run_id": run_id(cfg, resolved),
        "repeat_id": repeat_id(cfg, resolved),
        "record_version": RECORD_VERSION,
        "model": cfg.model.name,
        "pretrained": bool(cfg.model.pretrained),
        "weights": weights_identity(cfg.model.weights) if cfg.model.pretrained else "",
        "optimizer": cfg.optim.name,
        "momentum": cfg.optim.momentum,
        "weight_decay": cfg.optim.weight_decay,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "loss": cfg.loss.name,
        "aug": cfg.aug.name,
        "batch_norm": cfg.model.batch_norm,
        "dropout": cfg.model.dropout,
        "seed": cfg.seed,
        "data": data_label(cfg),
        "data_id": resolved.data_id,
        "split": "/".join(f"{float(f):g}" for f in cfg.data.split),
        "test_on": cfg.test_on,
        "pipeline": cfg.data.pipeline,
        "precision": resolved.precision,
        "paper_config": cfg.paper_config,
        "tags": ";".join(cfg.tags),
        "recipe": cfg.recipe,
        "recipe_settings": ";".join(f"{k}={_plain(v)}" for k, v in recipe_settings(cfg).items()),
    }


def _plain(value: Any) -> str:
    return "[" + ",".join(f"{v:g}" for v in value) + "]" if isinstance(value, list) else str(value)


def write_record(run_dir: Path, row: Mapping[str, Any], table: str | os.PathLike[str] | None = None) -> Path:
    """The run's record, written atomically (temp file, fsync, rename) into its run dir, naming
    the results table it is appended to (so a rebuild takes only its own table's runs)."""
    path = run_dir / RECORD_FILE
    record = dict(row)
    if table is not None:
        target = os.path.realpath(table)
        record.update(results_table=target, results_table_relative=os.path.relpath(target, os.path.realpath(run_dir)))
    write_text_atomic(path, json.dumps(record, indent=2, default=str))
    return path


def read_record(path: Path) -> dict[str, Any] | None:
    """A run's record, or None when it is unreadable (reported by the caller)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and "run_id" in value and "status" in value else None
