"""`init_from=`: start a new run from another run's weights (a checkpoint file or a run dir).

Only the weights are taken (and the EMA's, where the checkpoint has them, EMA is on and the classes
are the same): no optimizer state, no schedule position, no history. The new run is a run of its
own, with its own id: the source enters that id as "<source run id>:<digest of its weights>"
(`Source.identity`), never as its path, so a project moved or copied elsewhere keeps its ids.

- Another architecture (model name or options) than the checkpoint's is refused, naming what differs.
- Other classes (names or order, not only their count: the head's rows are classes) keep every
  tensor but the classifier head's, which starts fresh; the log names the keys left out.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from animalcls import checkpoint
from animalcls.ema import ModelEma
from animalcls.errors import AnimalclsError
from animalcls.registry import MODELS

log = logging.getLogger(__name__)

# the model keys that decide the tensors' names and shapes (pretrained and weights only say where
# the first weights come from, which init_from replaces)
ARCHITECTURE = ("name", "batch_norm", "dropout")


@dataclass(frozen=True)
class Source:
    """init_from's checkpoint, read and checked against this run."""

    path: Path  # the checkpoint file (a run dir's best.pt or last.pt)
    run_id: str  # the run that wrote it ("" for a checkpoint without one)
    digest: str  # of its weights (model, and EMA where kept), see `weights_digest`
    classes: list[str]  # the classes its head was trained on
    crop: int  # its aug.crop (the base CNN's head size depends on it)
    state: dict[str, Any]  # the checkpoint as read

    @property
    def identity(self) -> str:
        """What the run id hashes for init_from (Resolved.init_from)."""
        return f"{self.run_id}:{self.digest}"

    def describe(self) -> str:
        """The results row's init_from column: the source run and its checkpoint."""
        return f"{self.identity} {self.path}"


def weights_digest(tensors: Mapping[str, Any]) -> str:
    """sha1 over every tensor's name, dtype, shape and bytes, in name order (a nested dict, as the
    EMA's state, is walked; a plain number is hashed as its text): 16 hex digits."""
    digest = hashlib.sha1()
    for chunk in _chunks(tensors, ""):
        digest.update(chunk)
    return digest.hexdigest()[:16]


def _chunks(node: Mapping[str, Any], prefix: str) -> Iterator[bytes]:
    for name in sorted(node):
        value, key = node[name], f"{prefix}{name}"
        if isinstance(value, Mapping):
            yield from _chunks(value, f"{key}.")
        elif isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            yield f"{key}|{flat.dtype}|{tuple(value.shape)}|".encode()
            yield flat.view(torch.uint8).numpy().tobytes()
        else:
            yield f"{key}|{value!r}|".encode()


def read_source(cfg: DictConfig, classes: list[str]) -> Source:
    """init_from's checkpoint for this run; AnimalclsError (one line) when it is missing, unreadable
    or of another architecture."""
    given = str(cfg.init_from)
    try:
        path = checkpoint.locate(given)
        state = checkpoint.read(path)
    except AnimalclsError as exc:
        raise AnimalclsError(f"init_from={given}: {exc}") from None
    source_cfg = checkpoint.config_of(state)
    differs = [
        f"model.{key}={source_cfg.model[key]} there, {cfg.model[key]} here"
        for key in ARCHITECTURE
        if source_cfg.model[key] != cfg.model[key]
    ]
    if differs:
        raise AnimalclsError(
            f"init_from={given} is another architecture ({'; '.join(differs)}): its weights do not fit this "
            f"model; set the same model and options, or train this one from scratch."
        )
    # the EMA (last.pt keeps it) is loaded too where EMA is on: part of what the run starts from
    weights = {"model": state["model"], **({"ema": state["ema"]} if isinstance(state.get("ema"), Mapping) else {})}
    return Source(
        path=path.resolve(),
        run_id=str(state["meta"].get("run_id") or ""),
        digest=weights_digest(weights),
        classes=[str(c) for c in state["meta"]["classes"]],
        crop=int(source_cfg.aug.crop),
        state=state,
    )


def _fitting(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], head: str, keep_head: bool
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors to load into `model` and the model keys left as they are (the head's when the
    classes differ). Any other difference is the architecture's: AnimalclsError."""
    own = model.state_dict()
    in_head = [key for key in own if head and key.startswith(f"{head}.")]
    skipped = [] if keep_head else in_head
    chosen = {key: value for key, value in tensors.items() if key in own and key not in skipped}
    missing = [key for key in own if key not in chosen and key not in skipped]
    unexpected = [key for key in tensors if key not in own]
    shapes = [
        f"{key} {tuple(value.shape)} there, {tuple(own[key].shape)} here"
        for key, value in chosen.items()
        if value.shape != own[key].shape
    ]
    if missing or unexpected or shapes:
        found = [*(f"{k} missing" for k in missing), *(f"{k} unexpected" for k in unexpected), *shapes]
        listing = "; ".join(found[:4]) + ("; ..." if len(found) > 4 else "")
        raise AnimalclsError(f"the weights do not fit this model: {listing}")
    return chosen, skipped


def load_into(model: torch.nn.Module, source: Source, cfg: DictConfig, classes: list[str]) -> list[str]:
    """The source's weights into `model` (before training); returns the model keys that start
    fresh (the classifier head's, when the classes differ), which the log names."""
    same_classes = source.classes == list(classes)
    head = MODELS.get(cfg.model.name).head
    try:
        chosen, skipped = _fitting(model, source.state["model"], head, keep_head=same_classes)
    except AnimalclsError as exc:
        crop = f" (aug.crop={source.crop} there, {cfg.aug.crop} here)" if source.crop != cfg.aug.crop else ""
        raise AnimalclsError(f"init_from={cfg.init_from}: {exc}{crop}") from None
    model.load_state_dict(chosen, strict=False)
    log.info("init_from: the weights of run %s (%s)", source.run_id or "?", source.path)
    if skipped:
        log.warning(
            "init_from: the classes differ (%s there, %s here): the head starts fresh, every other tensor "
            "is loaded; skipped keys: %s",
            ",".join(source.classes),
            ",".join(classes),
            ", ".join(skipped),
        )
    return skipped


def load_ema(ema: ModelEma, source: Source, classes: list[str]) -> bool:
    """The source's EMA (its averaged weights and their update count) into this run's, where the
    checkpoint keeps one (last.pt) and the classes are the same; otherwise the EMA starts from the
    loaded model, as a new EMA does. Returns whether it was loaded."""
    kept = source.state.get("ema")
    if not isinstance(kept, Mapping) or source.classes != list(classes):
        log.info("init_from: the EMA starts from the loaded weights (%s)", "other classes" if kept else "none kept")
        return False
    ema.load_state_dict(dict(kept))
    log.info("init_from: the EMA continues from the checkpoint's (%d updates)", ema.updates)
    return True
