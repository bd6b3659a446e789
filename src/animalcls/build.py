"""Factories from a resolved config: device, precision, model, optimizer, loss, data, batches.

`run` (training), the `eval`, `predict`, `profile` and `bench` commands and the tests all build
their parts here, so one setting means the same thing everywhere. Names are looked up in
`animalcls.registry`; an unknown one raises.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from animalcls.config import DEVICE_PATTERN
from animalcls.data import Dataset, PILBatches, TensorBatches, find_unreadable, load_cache, scan, split_indices
from animalcls.errors import AnimalclsError
from animalcls.registry import LOSSES, MODELS, OPTIMIZERS

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- device and numerics


def resolve_device(name: str) -> torch.device:
    if not DEVICE_PATTERN.match(str(name)):
        raise AnimalclsError(f"device={name!r} is not a device; use device=auto, cpu, cuda or cuda:N.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AnimalclsError(f"device={name} but CUDA is not available here; use device=cpu or device=auto.")
    return torch.device(name)


def cpu_has_amx() -> bool:
    return "AMX" in torch.backends.cpu.get_cpu_capability().upper()


def choose_precision(amp: str, device: torch.device, model_name: str) -> str:
    """The autocast precision actually used: fp32, bf16 or fp16 (what the run id records)."""
    if amp == "off":
        return "fp32"
    if amp in ("bf16", "fp16"):
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_amx() and MODELS.get(model_name).cpu_bf16 else "fp32"


def choose_channels_last(setting: Any) -> bool:
    # auto = channels_last on CUDA and on the CPU too: measured on an AVX2 CPU (issue 4), fp32 train
    # steps ran 1.06-1.10x faster for base (112 px) and 1.45-1.6x for mobilenet_v3_large (224 px)
    setting = str(setting).lower()
    return setting == "auto" or setting == "true"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- model, optimizer, loss


def create_model(name: str, num_classes: int, **options: Any) -> torch.nn.Module:
    """The registered model `name` with a `num_classes` head; options go to its builder."""
    return MODELS.get(name).build(num_classes, **options)


def build_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    m = cfg.model
    return create_model(
        m.name,
        num_classes,
        pretrained=bool(m.pretrained),
        weights=m.weights,
        batch_norm=m.batch_norm,
        dropout=m.dropout,
        input_size=cfg.aug.crop,
    )


def build_optimizer(cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    spec = OPTIMIZERS.get(cfg.optim.name)
    return spec.build(params, lr=cfg.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


def build_criterion(cfg: DictConfig) -> torch.nn.Module:
    return LOSSES.get(cfg.loss.name).build()


# ---------------------------------------------------------------- data


@dataclass
class Prepared:
    data: Dataset
    split: dict[str, np.ndarray]
    skipped: list[tuple[str, str]]
    images: torch.Tensor | None  # the decode-once cache (None for the PIL pipeline)


def scan_data(cfg: DictConfig) -> Dataset:
    """The data set's files and classes (generating the demo set on first use); cheap, no decoding."""
    if cfg.data.name == "demo":
        from animalcls.demo import ensure_demo_data  # deferred: only the demo set needs it

        ensure_demo_data(cfg.data.root)
    return scan(cfg.data.root)


def prepare_data(
    cfg: DictConfig, data: Dataset | None = None, should_stop: Callable[[], bool] | None = None
) -> Prepared:
    """Scan, split by seed, then find unreadable files (skipped, or fatal with data.strict)."""
    data = scan_data(cfg) if data is None else data
    split = split_indices(len(data.paths), list(cfg.data.split), cfg.seed)
    images: torch.Tensor | None
    if cfg.data.pipeline == "cached":
        images, skipped = load_cache(
            data, cfg.aug.resize, cfg.aug.crop, cfg.data.cache_dir, cfg.workers, should_stop=should_stop
        )
    else:
        images, skipped = None, find_unreadable(data, cfg.workers)
    if skipped:
        listing = "; ".join(f"{p} ({why})" for p, why in skipped[:5])
        if cfg.data.strict:
            raise AnimalclsError(
                f"{len(skipped)} unreadable image(s) under {data.root}: {listing}. "
                f"Remove or replace them, or set data.strict=false to skip them."
            )
        for path, why in skipped:
            log.warning("skipping unreadable image %s: %s", path, why)
        bad = {data.paths.index(p) for p, _ in skipped}
        split = {k: np.asarray([i for i in v if i not in bad], dtype=np.int64) for k, v in split.items()}
    if min(len(v) for v in split.values()) == 0:
        raise AnimalclsError(
            f"{data.root} has {len(data.paths)} images: too few for a train/val/test "
            f"split of {list(cfg.data.split)}; add images or change data.split."
        )
    return Prepared(data, split, skipped, images)


def make_batches(
    cfg: DictConfig,
    prepared: Prepared,
    part: str,
    device: torch.device,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
) -> TensorBatches | PILBatches:
    index = prepared.split[part]
    # under DDP a training step of batch_size images is split across the ranks (batch_size / N each)
    batch_size = cfg.batch_size // world_size if train else (cfg.eval_batch_size or 4 * cfg.batch_size)
    if prepared.images is None:
        return PILBatches(
            prepared.data, index, cfg.aug, train, batch_size, device, cfg.workers, cfg.seed, rank, world_size
        )
    images = prepared.images[torch.from_numpy(index)]
    labels = torch.from_numpy(prepared.data.labels[index])
    if device.type == "cuda" and _fits_on_device(images, device):
        images, labels = images.to(device), labels.to(device)
    return TensorBatches(
        images, labels, batch_size, device, shuffle=train, seed=cfg.seed, rank=rank, world_size=world_size
    )


def _fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() < 0.3 * free
