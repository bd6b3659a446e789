"""The run's record: the results schema in one place, the settings a run records, and its ids.

- `COLUMNS` is the results table's header (new columns are only ever appended, so an older table
  keeps working: see `animalcls.results`).
- `measured_settings` is every key of the config except the few named in `NOT_MEASURED` (speed,
  bookkeeping, labels), from *resolved* values: the precision actually chosen, the data set's
  identity (its file list), a weights file by name and size, never how a value was typed.
- `run_id` hashes those settings (a sweep skips a run id that has an ok row); `repeat_id` hashes
  them without the seed, so runs with one repeat_id differ by seed alone and may be averaged.
- Rows written before this scheme (record_version empty) carry `legacy_run_id`'s id.

Beyond record version 2's settings (`CORE`), a key enters the hash only when it differs from its
schema default, so adding a key to the schema keeps every existing id.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from animalcls.atomic import write_text_atomic
from animalcls.config import leaves, schema_leaves

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
    # the run whose weights this one started from (init_from): "<run id>:<weights digest> <checkpoint>"
    "init_from",
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
    "init_from",
)


@dataclass(frozen=True)
class Resolved:
    """What a config leaves to the machine and the data, decided before training."""

    precision: str  # fp32 | bf16 | fp16, as chosen for this device and model
    data_id: str  # animalcls.data.data_identity of the scanned data set
    # init_from's checkpoint as "<its run id>:<digest of its weights>" (animalcls.warmstart), never
    # its path, so a moved project keeps its ids; "" without init_from
    init_from: str = ""


def weights_identity(weights: str | None) -> str:
    """A local weights file by name and size (its path string changes with where it lives)."""
    if not weights:
        return ""
    path = Path(weights).expanduser()
    size = path.stat().st_size if path.is_file() else -1
    return f"{path.name}:{size}"


# The keys that cannot change what a run measures (a key names itself and every key under it).
# Every other key of the config is in the run id: a key added to the schema is measured unless
# it is named here.
NOT_MEASURED = (
    "device",  # where it runs: what that changes (the precision) is measured as `amp`
    "workers",  # loader processes: speed (with data.pipeline=pil they also deal out the random
    # flips differently: noise of the kind a seed gives, not a setting to compare)
    "channels_last",  # memory layout: speed and the last bits of the numbers only
    "compile",  # torch.compile: speed and the last bits only
    "cuda_graphs",  # the same steps replayed as CUDA graphs: speed only
    "log_every",  # how often train.log gets a line within an epoch: what is logged, not what is trained
    "eval_batch_size",  # evaluation in eval mode (no batch statistics): speed and the last bits only
    "resume",  # whether an interrupted run of this very id continues: the id is what it looks up
    "force",  # re-run a finished id: the same measurement again
    "results",  # where the row goes
    "tags",  # labels for the report
    "paper_config",  # a label: the settings it sets are measured one by one
    "recipe",  # a label: the settings it sets are measured one by one
    "ckpt",  # eval / predict only
    "images",  # predict only
    "bench",  # `animalcls bench` only
    "logger",  # where metrics are also sent
    "aug.name",  # a label: the transform is its values (resize, crop, hflip, ...), all measured
    "data.name",  # a label (and which generated set to write at root): the data are data.root's
    "data.cache_dir",  # where the decode-once cache lives; its key checks the files it holds
    "data.strict",  # fail on an unreadable image instead of skipping it: a run that finishes
    # either way trained on the same readable images of the same data set
)

# Record version 2's settings, each hashed whatever its value (as from the start), and its place
# in the hashed dict. Every other measured key enters the hash under "recipe" only when it differs
# from its default, so ids written so far stay byte-identical.
CORE: dict[str, tuple[str, ...]] = {
    **{f"model.{k}": ("model", k) for k in ("name", "pretrained", "weights", "batch_norm", "dropout")},
    **{f"optim.{k}": ("optim", k) for k in ("name", "momentum", "weight_decay")},
    "loss.name": ("loss",),
    **{f"aug.{k}": ("aug", k) for k in ("resize", "crop", "hflip", "rotation", "mean", "std")},
    **{k: (k,) for k in ("lr", "batch_size", "epochs", "seed", "test_on")},
    "amp": ("precision",),
    "data.pipeline": ("pipeline",),
    "data.split": ("split",),
    "data.root": ("data",),
}


def is_measured(key: str) -> bool:
    """Whether a dotted config key ("optim.momentum") is part of the run id."""
    return not any(key == name or key.startswith(f"{name}.") for name in NOT_MEASURED)


def measured_values(cfg: DictConfig, resolved: Resolved) -> dict[str, Any]:
    """Every measured key of the config, by dotted key, with the value the run uses: the precision
    chosen (not `amp=auto`), the data set's identity (not the root's spelling), a weights file by
    name and size (and none unless pretrained), init_from's source run and weights (not its path)."""
    values = {key: value for key, value in leaves(cfg).items() if is_measured(key)}
    weights = values.get("model.weights") if values.get("model.pretrained") else None
    values.update(
        {"amp": resolved.precision, "data.root": resolved.data_id, "model.weights": weights_identity(weights)}
    )
    if values.get("init_from"):  # at its default ("") it stays out of the hash, as every key does
        if not resolved.init_from:
            raise ValueError(f"init_from={values['init_from']} is not resolved (animalcls.warmstart.read_source)")
        values["init_from"] = resolved.init_from
    return values


def measured_settings(cfg: DictConfig, resolved: Resolved) -> dict[str, Any]:
    """Everything that changes what this run measures, as plain resolved values."""
    values = measured_values(cfg, resolved)
    settings: dict[str, Any] = {"version": RECORD_VERSION}
    for key, (*groups, name) in CORE.items():
        node = settings
        for group in groups:  # record version 2's layout: model, optim and aug nested
            node = node.setdefault(group, {})
        node[name] = values[key]
    # only what differs from the defaults (the paper's recipe), so every paper run keeps its id
    if extras := _off_default(values):
        settings["recipe"] = extras
    return settings


def _off_default(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values beyond the core that differ from the schema's, in schema order (a key the schema
    lacks has no default to be at, so it is listed, last)."""
    defaults = schema_leaves()
    order = {key: i for i, key in enumerate(defaults)}
    extras = [(k, v) for k, v in values.items() if k not in CORE and (k not in defaults or v != defaults[k])]
    return dict(sorted(extras, key=lambda item: order.get(item[0], len(order))))


# Measured, but shown in a column of their own rather than in recipe_settings (init_from is a path
# as typed there; its column names the source run).
OWN_COLUMN = ("init_from",)


def recipe_settings(cfg: DictConfig) -> dict[str, Any]:
    """The measured settings of this run beyond record version 2's core that differ from the
    paper's, flattened ("sched.name": "cosine"; empty for a paper run)."""
    values = {key: value for key, value in leaves(cfg).items() if is_measured(key) and key not in OWN_COLUMN}
    return _off_default(values)


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
