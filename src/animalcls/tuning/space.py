"""The search space of `animalcls tune`: conf/tune/<space>.yaml or a YAML file as Optuna
distributions checked against the config, a trial's draw from it, and a drawn value as a Hydra override."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from animalcls.config import GROUPS, group_options
from animalcls.errors import AnimalclsError

if TYPE_CHECKING:
    import optuna


def space_file(space: str) -> Path:
    if space.endswith((".yaml", ".yml")) or os.sep in space:
        path = Path(space)
        if not path.is_file():
            raise AnimalclsError(f"space={space}: no such file.")
        return path
    names = group_options("tune")
    if space not in names:
        raise AnimalclsError(
            f"space={space} is not a known search space; choose one of: {', '.join(names)} or give a YAML file."
        )
    from importlib.resources import as_file, files

    with as_file(files("animalcls.conf") / "tune" / f"{space}.yaml") as path:
        return Path(path)


def load_space(space: str, cfg: DictConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The search space as Optuna distributions, checked against the config: every key exists,
    group keys choose that group's options."""

    path = space_file(space)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AnimalclsError(f"space={space}: cannot read {path} ({exc}).") from None
    if not isinstance(spec, dict) or not spec:
        raise AnimalclsError(f"space={space}: {path} must map config keys to distributions.")
    space_dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, entry in spec.items():
        where = f"space={space}, {key}"
        if key not in GROUPS and OmegaConf.select(cfg, str(key), default=_ABSENT) is _ABSENT:
            raise AnimalclsError(f"{where}: {key} is not a config key (`animalcls train --cfg job` lists them).")
        space_dists[str(key)] = _distribution(where, entry)
        if key in GROUPS:
            choices = getattr(space_dists[key], "choices", None)
            unknown = [c for c in choices or () if c not in group_options(key)]
            if choices is None or unknown:
                raise AnimalclsError(
                    f"{where}: a config group takes categorical choices among its options "
                    f"({', '.join(group_options(key))}); got {unknown or entry}."
                )
    return space_dists


_ABSENT = object()


def _distribution(where: str, entry: Any) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(entry, dict) or entry.get("type") not in ("float", "int", "categorical"):
        raise AnimalclsError(f"{where}: give {{type: float|int|categorical, ...}} (got {entry!r}).")
    try:
        if entry["type"] == "categorical":
            choices = entry["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("choices must be a non-empty list")
            return CategoricalDistribution(choices)
        kind = FloatDistribution if entry["type"] == "float" else IntDistribution
        extra = {k: entry[k] for k in ("log", "step") if k in entry}
        unknown = set(entry) - {"type", "low", "high", "log", "step"}
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        return kind(entry["low"], entry["high"], **extra)
    except (KeyError, TypeError, ValueError) as exc:
        raise AnimalclsError(f"{where}: {exc} (got {entry!r}).") from None


def suggest(trial: optuna.Trial, name: str, dist: optuna.distributions.BaseDistribution) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    assert isinstance(dist, IntDistribution)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)


def override_value(value: Any) -> str:
    """A sampled value as a Hydra override value that parses back to it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return "null"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w\-./]*", text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
