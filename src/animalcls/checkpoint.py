"""The checkpoint format: write atomically, read safely, validate, migrate, load its weights.

It knows nothing of how models are built: `animalcls.build.model_from_checkpoint` rebuilds one.

A checkpoint is a dict saved with torch.save and read with `weights_only=True` (code in a pickle is
never run):
    format        2 (format 1, animalcls 0.1, had no `format` key; `migrate` upgrades it)
    model         the model's state dict
    meta          {config: the resolved config, classes: [...], run_id, data_id, split_digest}
    epoch         the epoch it was saved after
and, in `last.pt` only (what resume needs): optimizer, history, best_val_top1, rng_cpu, rng_cuda.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from animalcls.atomic import torch_save_atomic
from animalcls.config import Config
from animalcls.errors import AnimalclsError

FORMAT = 2


def write(path: Path, checkpoint: dict[str, Any]) -> None:
    torch_save_atomic({**checkpoint, "format": FORMAT}, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


RUN_DIR_CHECKPOINTS = ("best.pt", "last.pt")  # what a run dir keeps, preferred first


def locate(path: str | Path) -> Path:
    """The checkpoint `ckpt=` names: a file as given, or a run dir's best.pt, else its last.pt
    (eval, predict and export all take either). AnimalclsError says what is there instead."""
    if not str(path):
        raise AnimalclsError("give the checkpoint to use: ckpt=outputs/runs/<date>/<run>/best.pt (or the run dir)")
    given = Path(path)
    if not given.is_dir():
        return given  # a missing file is reported by `read`, with the rest of its checks
    found = next((given / name for name in RUN_DIR_CHECKPOINTS if (given / name).is_file()), None)
    if found is not None:
        return found
    inside = sorted(p.name + ("/" if p.is_dir() else "") for p in given.iterdir() if not p.name.startswith("."))
    listing = ", ".join(inside[:8]) + (", ..." if len(inside) > 8 else "") if inside else "nothing"
    raise AnimalclsError(
        f"{path} is a folder without best.pt or last.pt (it holds {listing}); give a run dir of a run "
        f"that finished an epoch, or a checkpoint file: ckpt=<run dir>/best.pt"
    )


def read(path: str | Path) -> dict[str, Any]:
    """An animalcls checkpoint, validated and migrated; AnimalclsError says what is wrong."""
    if not str(path):
        raise AnimalclsError("give the checkpoint to use: ckpt=outputs/runs/<date>/<run>/best.pt")
    file = Path(path)
    if not file.is_file():
        raise AnimalclsError(f"checkpoint {path} does not exist; runs keep best.pt and last.pt in their run dir.")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
            detail = next((line for line in str(exc).splitlines() if "Unsupported" in line), _first_line(exc))
            raise AnimalclsError(
                f"refused to load {path}: it holds Python objects that could run code "
                f"when loaded, which checkpoints never need ({detail.strip()[:160]})."
            ) from None
        raise AnimalclsError(
            f"{path} is not a readable checkpoint (truncated or another format: "
            f"{type(exc).__name__}: {_first_line(exc)})."
        ) from None
    return migrate(validate(checkpoint, path))


def validate(checkpoint: Any, path: str | Path) -> dict[str, Any]:
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "meta" not in checkpoint:
        raise AnimalclsError(
            f"{path} is not an animalcls checkpoint (no model and meta entries); "
            f"use the best.pt or last.pt of an animalcls run dir."
        )
    meta = checkpoint["meta"]
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or not meta.get("classes"):
        raise AnimalclsError(f"{path} is an animalcls checkpoint without its config and classes; it cannot be rebuilt.")
    if checkpoint.get("format", 1) > FORMAT:
        raise AnimalclsError(
            f"{path} was written by a newer animalcls (format {checkpoint['format']}); upgrade animalcls to read it."
        )
    return checkpoint


def migrate(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: the same entries; its meta lacks data_id and split_digest (resume then
    refuses it, as it cannot prove the data is the same)."""
    if checkpoint.get("format", 1) == 1:
        checkpoint = {**checkpoint, "format": FORMAT}
        checkpoint["meta"] = {"data_id": "", "split_digest": "", **checkpoint["meta"]}
    return checkpoint


def config_of(checkpoint: dict[str, Any]) -> DictConfig:
    """The checkpoint's resolved config on today's schema: keys added since it was written (a
    recipe's, say) take their defaults, which are what that older run did."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), checkpoint["meta"]["config"])
    assert isinstance(cfg, DictConfig)
    return cfg


def load_weights(model: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path) -> torch.nn.Module:
    """`model` with the checkpoint's weights; AnimalclsError when they do not fit it. Building the
    model is the factories' job (animalcls.build.model_from_checkpoint): the format knows none."""
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        name, classes = config_of(checkpoint).model.name, len(checkpoint["meta"]["classes"])
        raise AnimalclsError(f"{path} does not fit model={name} with {classes} classes: {_first_line(exc)}") from None
    return model
