"""The subcommands other than train: one module each, each with `main(args) -> int`.

They are thin, on `animalcls.build`, `animalcls.checkpoint` and `animalcls.engine`, and take the
same Hydra override grammar as `train`. Shared here: reading which keys were given, and how eval
and predict lay the user's overrides over the settings a checkpoint was trained with.

This module stays light (Hydra's parser, no torch): every subcommand imports it first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from animalcls.config import compose, validate
from animalcls.errors import AnimalclsError

# What may change when a checkpoint is measured again: where and how fast it runs, and where its
# data lives now. Everything else comes from the checkpoint, as it defines what was trained.
RUN_SETTINGS = ("device", "workers", "eval_batch_size", "data.root", "data.cache_dir")


def parse_overrides(args: list[str], command: str) -> list[Override]:
    """The overrides as Hydra reads them (quoting, lists); one plain `key=value` each, no sweeps."""
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except OverrideParseException as exc:
        raise AnimalclsError(f"{exc}".strip()) from None
    for override in overrides:
        if override.is_sweep_override() or override.type == OverrideType.DEL:
            raise AnimalclsError(
                f"{override.input_line!r}: {command} takes one value per key "
                f"(key=value, or key=[a,b] for a list), not a sweep or a deletion."
            )
    return overrides


def split_options(args: list[str], command: str, own: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """A command's own options (keys that are not config keys, or not of the config's type, e.g.
    `ckpt=[a.pt,b.pt]`), as Hydra parses their values, and the other arguments as typed (config
    overrides, for `compose`)."""
    own = set(own)
    options: dict[str, Any] = {}
    rest: list[str] = []
    for arg, override in zip(args, parse_overrides(args, command)):
        if override.key_or_group in own:
            options[override.key_or_group] = override.value()
        else:
            rest.append(arg)
    return options, rest


def given_keys(args: list[str], command: str) -> list[str]:
    return [override.key_or_group for override in parse_overrides(args, command)]


def refuse_other_keys(keys: Iterable[str], accepted: tuple[str, ...], command: str, why: str) -> None:
    refused = [key for key in keys if key not in accepted]
    if refused:
        raise AnimalclsError(
            f"{command} does not take {', '.join(refused)}: {why}. "
            f"{command} accepts {', '.join(k + '=' for k in accepted)}"
        )


def checked_overrides(args: list[str], command: str, accepted: tuple[str, ...]) -> tuple[DictConfig, list[str]]:
    """Compose the config (so unknown keys and bad types fail with Hydra's message), check its
    values, and refuse keys that would change what a checkpoint was trained with."""
    given = compose(args)
    keys = given_keys(args, command)
    refuse_other_keys(keys, accepted, command, "the model and its training settings come from the checkpoint")
    validate(given)
    return given, keys


def overlay(run_cfg: DictConfig, given: DictConfig, keys: Iterable[str]) -> DictConfig:
    """The checkpoint's config with the run settings the user gave on top. `device` is always the
    one given (default auto): where a run trained says nothing about where it is measured now."""
    cfg = OmegaConf.create(OmegaConf.to_container(run_cfg))  # a copy, open to keys an older format lacks
    assert isinstance(cfg, DictConfig)
    for key in RUN_SETTINGS:
        if key in keys or key == "device":
            OmegaConf.update(cfg, key, _plain(OmegaConf.select(given, key)), merge=False)
    return cfg


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
