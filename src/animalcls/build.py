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
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from animalcls import checkpoint, graphs
from animalcls.augment import cache_decode_size
from animalcls.config import DEVICE_PATTERN, mixing_enabled
from animalcls.data import Dataset, PILBatches, TensorBatches, find_unreadable, load_cache, scan, split_indices
from animalcls.ema import ModelEma
from animalcls.errors import AnimalclsError
from animalcls.finetune import Freezer, parameter_groups
from animalcls.graphs import StepGraphs
from animalcls.mix import Mixer
from animalcls.registry import LOSSES, MODELS, OPTIMIZERS, SCHEDULES
from animalcls.schedule import lr_factor, warmup_steps
from animalcls.steps import Recipe

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


# amp=auto on CUDA: fp32 below this batch size, bf16 (fp16 without bf16) from it on. A rule from
# measured thresholds, never a timing at run time: the run id hashes the precision it picks. The
# recorded H200 check (docs/bench/h200-2026-11-28) measured, in images/s of the eager step:
#   base CNN, 112 px, batch 16:            fp32 7,468  bf16 5,045  (launch-bound: casts are extra kernels)
#   MobileNetV3-large, 224 px, batch 16:   fp32   690  bf16   619
#   base CNN, 112 px, batch 128:           fp32 21,995 bf16 31,986 (bf16 1.45x)
# Batch 32 is not measured; it counts as small (the same launch-bound models, twice the work per step).
CUDA_BF16_MIN_BATCH = 64


def choose_precision(amp: str, device: torch.device, model_name: str, batch_size: int | None = None) -> str:
    """The autocast precision actually used: fp32, bf16 or fp16 (what the run id records).

    amp=auto: on CUDA, fp32 at batch_size < CUDA_BF16_MIN_BATCH and bf16 (fp16 where the GPU has
    no bf16) from there on; batch_size=None (a caller that does not say) keeps bf16/fp16. On a
    CPU, fp32 for every model: bf16 ran 0.14x to 1.4x of fp32 on the CPUs measured (README,
    "Speed"), so it is an opt-in (amp=bf16). `model_name` is where a per-model rule would go."""
    if amp == "off":
        return "fp32"
    if amp in ("bf16", "fp16"):
        return amp
    if device.type == "cuda":
        if batch_size is not None and batch_size < CUDA_BF16_MIN_BATCH:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def choose_channels_last(setting: Any) -> bool:
    # auto = channels_last on CUDA and on the CPU too: measured on an AVX2 CPU (issue 4), fp32 train
    # steps ran 1.06-1.10x faster for base (112 px) and 1.45-1.6x for mobilenet_v3_large (224 px)
    value = str(setting).lower()
    return value == "auto" or value == "true"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- model, optimizer, loss


def create_model(name: str, num_classes: int, **options: Any) -> torch.nn.Module:
    """The registered model `name` with a `num_classes` head; options go to its builder."""
    model: torch.nn.Module = MODELS.get(name).build(num_classes, **options)
    return model


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


def model_from_checkpoint(loaded: dict[str, Any], path: str | Path) -> tuple[DictConfig, list[str], torch.nn.Module]:
    """A checkpoint's (checkpoint.read) config, class names and model (eval mode, on the CPU)."""
    cfg = checkpoint.config_of(loaded)
    classes = list(loaded["meta"]["classes"])
    # the weights come from the checkpoint: never fetch ImageNet weights to overwrite them
    # (a DictConfig merged with a dict is a DictConfig; OmegaConf.merge is typed for lists too)
    offline = cast(DictConfig, OmegaConf.merge(cfg, {"model": {"pretrained": False, "weights": None}}))
    model = checkpoint.load_weights(build_model(offline, len(classes)), loaded, path)
    return cfg, classes, model.eval()


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameter groups (finetune.parameter_groups), with
    the optimizer's own settings that its registry entry names (OptimizerSpec.options)."""
    spec = OPTIMIZERS.get(cfg.optim.name)
    optim = cfg.optim
    groups = parameter_groups(
        model,
        MODELS.get(cfg.model.name).head,
        cfg.lr,
        optim.weight_decay,
        cfg.finetune.head_lr_mult,
        optim.decay_norm_bias,
    )
    optimizer: torch.optim.Optimizer = spec.build(groups, lr=cfg.lr, weight_decay=optim.weight_decay, optim=optim)
    return optimizer


def build_criterion(cfg: DictConfig) -> torch.nn.Module:
    criterion: torch.nn.Module = LOSSES.get(cfg.loss.name).build()
    # when mixing, the mixer's soft targets are smoothed already: smoothing here too would double it
    if cfg.loss.label_smoothing > 0 and not mixing_enabled(cfg.mix):  # validated: cross entropy only
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(cfg.loss.label_smoothing))
    return criterion


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A per-step schedule; None for the paper's constant lr without warm-up (nothing changes)."""
    sched = cfg.sched
    if sched.name == "constant" and warmup_steps(sched, steps_per_epoch) == 0:
        return None
    formula, total = SCHEDULES.get(sched.name).factor, cfg.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(formula, step, total, steps_per_epoch, sched)
    )


def build_graphs(cfg: DictConfig, device: torch.device) -> StepGraphs | None:
    """The run's CUDA graphs (`cuda_graphs`, animalcls.graphs), or None: eager steps (always off CUDA)."""
    if not graphs.wanted(cfg.get("cuda_graphs", "auto"), device, int(cfg.batch_size)):
        return None
    return StepGraphs(int(cfg.batch_size), cfg.get("cuda_graphs", "auto"))


def build_recipe(
    cfg: DictConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps_per_epoch: int, num_classes: int
) -> Recipe:
    """Everything a recipe adds to the engine's loop; all off for the paper's recipe. The model is
    on its device already (the CUDA graphs decision needs it)."""
    mixer = Mixer(cfg.mix, num_classes, cfg.loss.label_smoothing)
    freezer = Freezer(model, MODELS.get(cfg.model.name).head, cfg.finetune.freeze_epochs)
    frozen = cfg.finetune.freeze_epochs > 0
    return Recipe(
        scheduler=build_scheduler(cfg, optimizer, steps_per_epoch),
        ema=ModelEma(model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.decay > 0 else None,
        mixer=mixer if mixer.enabled else None,
        clip_grad_norm=float(cfg.optim.clip_grad_norm),
        train_mode=freezer.train_mode if frozen else None,
        on_epoch_start=freezer.on_epoch_start if frozen else None,
        patience=int(cfg.early_stop.patience),
        min_delta=float(cfg.early_stop.min_delta),
        tta=bool(cfg.tta),
        graphs=build_graphs(cfg, next(model.parameters()).device),
    )


# ---------------------------------------------------------------- data


@dataclass
class Prepared:
    data: Dataset
    split: dict[str, np.ndarray]
    skipped: list[tuple[str, str]]
    images: torch.Tensor | None  # the decode-once cache (None for the PIL pipeline)


def scan_data(cfg: DictConfig) -> Dataset:
    """The data set's files and classes (generating the demo or stand-in set on first use); cheap,
    no decoding."""
    if cfg.data.name == "demo":
        from animalcls.demo import ensure_demo_data  # deferred: only the generated sets need it

        ensure_demo_data(cfg.data.root)
    elif cfg.data.name == "standin":
        from animalcls.demo import ensure_standin_data

        ensure_standin_data(cfg.data.root, workers=int(cfg.workers))
    return scan(cfg.data.root)


def prepare_data(
    cfg: DictConfig, data: Dataset | None = None, should_stop: Callable[[], bool] | None = None
) -> Prepared:
    """Scan, split by seed, then find unreadable files (skipped, or fatal with data.strict)."""
    data = scan_data(cfg) if data is None else data
    split = split_indices(len(data.paths), list(cfg.data.split), cfg.seed)
    images: torch.Tensor | None
    if cfg.data.pipeline == "cached":
        # the one-off decode uses every usable core (cfg.workers sizes the PIL pipeline's loaders)
        images, skipped = load_cache(data, *cache_decode_size(cfg.aug), cfg.data.cache_dir, should_stop=should_stop)
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
    # the split's rows of the (memory-mapped) cache, read a batch at a time: gathering the split
    # here would copy it into RAM, which a data set larger than RAM does not have
    split = torch.from_numpy(index)
    images, labels = prepared.images, torch.from_numpy(prepared.data.labels[index])
    rows: torch.Tensor | None = split
    if device.type == "cuda" and _fits_on_device(split.numel() * images.shape[1:].numel(), device):
        images, labels, rows = images[split].to(device), labels.to(device), None  # the split, on the device
    # data.order=block: one global block order on every rank, sharded as the random one (block_order)
    return TensorBatches(
        images,
        labels,
        batch_size,
        device,
        shuffle=train,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        rows=rows,
        order=cfg.data.order,
        block_images=cfg.data.block_images,
        block_window=cfg.data.block_window,
    )


def _fits_on_device(numel: int, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return numel < 0.3 * free
