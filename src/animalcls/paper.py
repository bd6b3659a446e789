"""The paper's reference numbers (tables 2.1.1 to 2.3.4) as project data, and its 38 configurations.

`paper_results.csv` (shipped next to this module) has one row per table row of the paper; rows
with the same settings are one *paper configuration*, named by its `paper_config` id (a valid
Hydra config name, e.g. `base-adam-lr1e-3-bs16-e10-ce`). The same name is used everywhere: the
CSV column, the Hydra group `conf/paper_config/` (one file per configuration), the config key and
results column `paper_config`, and the report's columns. The Hydra files under
`conf/paper_config/` and `conf/experiment/paper/` are rendered from this data by
`render_config_files` (`python scripts/make_paper_configs.py` writes them), so the CSV is the
single source. Model, optimizer, loss and augmentation facts come from `animalcls.registry`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from animalcls.registry import AUGMENTATIONS, LOSSES, MODELS, OPTIMIZERS

if TYPE_CHECKING:  # pandas is imported on first use, so importing this module stays cheap
    import pandas as pd

PAPER_CSV = Path(__file__).with_name("paper_results.csv")

# The settings that define a configuration (the paper's columns, spelled out).
SETTINGS = (
    "model",
    "pretrained",
    "optimizer",
    "lr",
    "batch_size",
    "epochs",
    "loss",
    "batch_norm",
    "dropout",
    "augmentation",
)

# The paper's own column headings per table (besides "Experiment" and "Accuracy"); the
# report shows these settings, in this order, so each table reads like the paper's.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "2.1.1": ("optimizer",),
    "2.1.2": ("lr",),
    "2.1.3": ("epochs", "lr"),
    "2.1.4": ("batch_size", "lr"),
    "2.1.5": ("lr", "loss"),
    "2.1.6": ("lr", "batch_norm"),
    "2.1.7": ("lr", "dropout", "batch_norm"),
    "2.1.8": ("lr", "augmentation", "dropout", "batch_norm"),
    "2.2.1": ("model", "optimizer"),
    "2.2.2": ("model", "lr", "optimizer"),
    "2.3.1": ("batch_size", "lr"),
    "2.3.2": ("lr", "loss"),
    "2.3.3": ("lr", "loss", "optimizer"),
    "2.3.4": ("epochs", "lr"),
}

# Section headings of the paper, shortened: what each table varies.
TABLE_TITLES: dict[str, str] = {
    "2.1.1": "Base CNN: optimizers",
    "2.1.2": "Base CNN: learning rates",
    "2.1.3": "Base CNN: epochs + learning rates",
    "2.1.4": "Base CNN: batch size + learning rates",
    "2.1.5": "Base CNN: loss function + learning rates",
    "2.1.6": "Base CNN: batch normalization + learning rates",
    "2.1.7": "Base CNN: dropout + batch normalization + learning rates",
    "2.1.8": "Base CNN: rotation augmentation + dropout + batch normalization + learning rates",
    "2.2.1": "Models and optimizers (ImageNet-pretrained ResNet / MobileNet)",
    "2.2.2": "MobileNetV2 / V3-large: learning rates and optimizers",
    "2.3.1": "MobileNetV3-large: batch size + learning rates",
    "2.3.2": "MobileNetV3-large: learning rates + loss functions",
    "2.3.3": "MobileNetV3-large: loss function + optimizer + learning rate",
    "2.3.4": "MobileNetV3-large: epochs + learning rates",
}

# What the paper leaves open, and where this project's choice is made, as (key, question, choice);
# the report adds the values the runs actually used, read from their resolved configs.
OPEN_SETTINGS: tuple[tuple[str, str, str], ...] = (
    (
        "batch_norm",
        "Position of the base CNN's 3 extra batch-norm layers",
        "after conv1, conv2 and conv3, before each ReLU (src/animalcls/models.py, conf/model/base.yaml)",
    ),
    (
        "rotation",
        "Rotation angle of the `rotation_112` augmentation",
        "uniform in +-aug.rotation degrees (conf/aug/rotation_112.yaml)",
    ),
    ("norm", "Mean/std used to normalise the base CNN's input", "ImageNet mean/std (conf/aug/default_112.yaml)"),
    (
        "accuracy",
        "Which accuracy the tables report (the paper says 'top-3 predictions out of 5 guesses')",
        "the report compares top-1 test accuracy with the paper and also shows top-3 / top-5",
    ),
    (
        "batch_size",
        "Batch size of Tables 2.1.1 and 2.1.2 (captions say 10, row 0 is the base default 16)",
        "16, the base default, so row 0 is one configuration across tables",
    ),
    (
        "split",
        "The random split (85/5/10 %)",
        "one seeded split manifest per data set, saved as split.csv in every run dir",
    ),
)


def _sci(x: float) -> str:
    """0.001 -> '1e-3', 0.0005 -> '5e-4', 0.0015 -> '1p5e-3': short, exact, no dots."""
    mantissa, exponent = f"{float(x):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".").replace(".", "p")
    return f"{mantissa}e{int(exponent)}"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def as_bool(value: Any) -> bool:
    """A table cell as a bool: True/'true'/1 -> True; False/''/NaN/None -> False."""
    if _is_missing(value):
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def as_float(value: Any, default: float = 0.0) -> float:
    return default if _is_missing(value) else float(value)


def _short(registry: Any, name: str) -> str:
    """A registered choice's short id; an unregistered name (an old table's) stands for itself."""
    return registry.get(name).short if name in registry else name


def paper_config_of(settings: Mapping[str, Any]) -> str:
    """The paper configuration id of these settings: readable, stable, a valid Hydra config name.

    `settings` holds the keys of SETTINGS (`aug` is accepted for `augmentation`, as in the
    results table). Only what differs from a model's defaults (its registry entry) adds a suffix,
    so the ids stay short.
    """
    model = str(settings["model"])
    spec = MODELS.get(model) if model in MODELS else None
    aug = settings.get("augmentation", settings.get("aug"))
    default = spec.default_aug if spec else None  # an unknown model has no default: always say it
    aug = default if _is_missing(aug) else str(aug)
    parts = [
        model,
        _short(OPTIMIZERS, str(settings["optimizer"])),
        f"lr{_sci(settings['lr'])}",
        f"bs{int(settings['batch_size'])}",
        f"e{int(settings['epochs'])}",
        _short(LOSSES, str(settings["loss"])),
    ]
    pretrained = as_bool(settings.get("pretrained"))
    if pretrained != (spec.has_imagenet_weights if spec else True):  # the paper's default
        parts.append("pretrained" if pretrained else "scratch")
    if spec is not None and spec.base_options:  # batch_norm / dropout exist on the base CNN only
        if as_bool(settings.get("batch_norm")):
            parts.append("bn")
        dropout = as_float(settings.get("dropout"))
        if dropout > 0:
            parts.append(f"drop{dropout:g}".replace(".", "p"))
    if aug is not None and aug != default:
        parts.append(_short(AUGMENTATIONS, aug))
    return "-".join(parts)


def has_base_options(model: Any) -> bool:
    """Whether the model takes model.batch_norm / model.dropout (the paper's base CNN does)."""
    return str(model) in MODELS and MODELS.get(str(model)).base_options


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as dicts. The columns here are named by strings; pandas-stubs types the keys as
    Hashable."""
    return cast(list[dict[str, Any]], frame.to_dict("records"))


@functools.lru_cache(maxsize=1)
def _load_cached() -> pd.DataFrame:
    import pandas as pd

    frame = pd.read_csv(PAPER_CSV, dtype={"table": str, "note": str, "paper_config": str})
    frame["batch_norm"] = frame["batch_norm"].map(as_bool)
    frame["dropout"] = frame["dropout"].fillna(0.0).astype(float)
    frame["pretrained"] = frame["pretrained"].map(as_bool)
    frame["note"] = frame["note"].fillna("").astype(str)
    # recomputed, not trusted: the shipped column is checked against it by the tests
    frame["paper_config"] = [paper_config_of(r) for r in _records(frame[list(SETTINGS)])]
    return frame


def load() -> pd.DataFrame:
    """Every row of the paper's tables, with a `paper_config` column (a fresh copy each call)."""
    return _load_cached().copy()


def tables() -> list[str]:
    """The paper's table ids in order: ['2.1.1', ..., '2.3.4']."""
    return list(dict.fromkeys(_load_cached()["table"]))


def table_rows(table: str) -> pd.DataFrame:
    """The rows of one paper table, in the paper's order."""
    frame = load()
    rows = frame[frame["table"] == table]
    if rows.empty:
        raise KeyError(f"no paper table {table!r}; tables: {', '.join(tables())}")
    return rows.reset_index(drop=True)


def experiment_name(table: str) -> str:
    """'2.1.2' -> 'table_2_1_2' (the file conf/experiment/paper/table_2_1_2.yaml)."""
    return "table_" + table.replace(".", "_")


def configs() -> pd.DataFrame:
    """One row per distinct configuration (first appearance order), with the tables and rows it
    appears in, the paper's accuracy and efficiency, and the paper's notes on it."""
    frame = load()
    frame["where"] = frame["table"] + "/" + frame["row"].astype(str)
    grouped = frame.groupby("paper_config", sort=False)
    out = grouped[[*SETTINGS, "accuracy_pct", "efficiency_g"]].first()
    out["tables"] = grouped["table"].agg(lambda s: list(dict.fromkeys(s)))
    out["rows"] = grouped["where"].agg(list)
    out["notes"] = grouped["note"].agg(lambda s: "; ".join(dict.fromkeys(n for n in s if n)))
    return out.reset_index()


# ---------------------------------------------------------------- Hydra config files

GENERATED = "Generated by scripts/make_paper_configs.py from src/animalcls/paper_results.csv."


def decimal_text(x: float) -> str:
    """0.00001 -> '0.00001' (positional: PyYAML reads '1e-05' as a string; the paper writes it so)."""
    text = f"{float(x):.12f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _quoted(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def render_paper_config(config: Mapping[str, Any]) -> str:
    """conf/paper_config/<id>.yaml: the overrides of one configuration, tagged with its tables."""
    model = config["model"]
    rows = ", ".join(config["rows"])
    lines = [
        "# @package _global_",
        f"# Paper configuration {config['paper_config']}: table/row {rows};",
        f"# paper accuracy {config['accuracy_pct']} %, efficiency {config['efficiency_g']} G.",
    ]
    if config["notes"]:
        lines.append(f"# Paper notes: {config['notes']}")
    lines += [
        f"# {GENERATED}",
        "defaults:",
        f"  - override /model: {model}",
        f"  - override /optim: {config['optimizer']}",
        f"  - override /loss: {config['loss']}",
    ]
    # explicit even where the model config picks the same one: the row is the paper's row
    lines.append(f"  - override /aug: {config['augmentation']}")
    lines += [
        "",
        f"lr: {decimal_text(config['lr'])}",
        f"batch_size: {int(config['batch_size'])}",
        f"epochs: {int(config['epochs'])}",
    ]
    model_keys = []
    if has_base_options(model):
        model_keys = [
            f"  batch_norm: {str(bool(config['batch_norm'])).lower()}",
            f"  dropout: {decimal_text(config['dropout'])}",
        ]
    if bool(config["pretrained"]) != MODELS.get(model).has_imagenet_weights:
        model_keys.append(f"  pretrained: {str(bool(config['pretrained'])).lower()}")
    if model_keys:
        lines += ["model:", *model_keys]
    lines += [f"paper_config: {config['paper_config']}", f"tags: {_quoted(config['tables'])}", ""]
    return "\n".join(lines)


def _render_sweep(title: str, ids: list[str], usage: str) -> str:
    return "\n".join(
        [
            "# @package _global_",
            f"# {title}",
            f"# {len(ids)} distinct configurations. Run: {usage}",
            "# Add seed=0,1,2 for repeats; any other override (e.g. epochs=1 data=demo) applies to every row.",
            f"# {GENERATED}",
            "hydra:",
            "  sweeper:",
            "    params:",
            f"      +paper_config: {','.join(ids)}",
            "",
        ]
    )


def render_table_experiment(table: str) -> str:
    ids = list(dict.fromkeys(table_rows(table)["paper_config"]))
    return _render_sweep(
        f"Table {table} of the paper: {TABLE_TITLES.get(table, '')}",
        ids,
        f"animalcls train -m +experiment=paper/{experiment_name(table)}",
    )


def render_config_files() -> dict[str, str]:
    """Every generated file, as {path relative to conf/: text}."""
    files = {f"paper_config/{c['paper_config']}.yaml": render_paper_config(c) for c in _records(configs())}
    for table in tables():
        files[f"experiment/paper/{experiment_name(table)}.yaml"] = render_table_experiment(table)
    files["experiment/paper/all.yaml"] = _render_sweep(
        "Every table of the paper, each distinct configuration once",
        list(configs()["paper_config"]),
        "animalcls train -m +experiment=paper/all",
    )
    return files
