"""`animalcls eval ckpt=PATH|RUN_DIR [device=auto] [data.root=DIR] [data.cache_dir=DIR] [eval_batch_size=N] [workers=N]`

Re-measures a checkpoint on the test split saved beside it (`split.csv` of its run dir), with the
settings it was trained with; only where and how fast it runs, and where the data lives now, may
be given. Prints test top-1/3/5 and loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from animalcls import build, checkpoint
from animalcls.augment import DeviceAugment, cache_decode_size
from animalcls.build import (
    Prepared,
    build_criterion,
    choose_channels_last,
    choose_precision,
    make_batches,
    resolve_device,
)
from animalcls.commands import RUN_SETTINGS, checked_overrides, overlay
from animalcls.data import Dataset, load_cache
from animalcls.engine import evaluate
from animalcls.errors import AnimalclsError
from animalcls.steps import StepSettings

log = logging.getLogger(__name__)

ACCEPTED = ("ckpt", *RUN_SETTINGS)
SPLIT_COLUMNS = {"path", "label_idx", "split"}


def main(args: list[str]) -> int:
    given, keys = checked_overrides(args, "eval", ACCEPTED)
    ckpt = checkpoint.locate(given.ckpt)  # a run dir means its best.pt (else last.pt)
    loaded = checkpoint.read(ckpt)
    run_cfg, classes, model = build.model_from_checkpoint(loaded, ckpt)
    cfg = overlay(run_cfg, given, keys)
    prepared = test_split(cfg, ckpt.parent / "split.csv", classes)
    metrics = measure(cfg, model, prepared, resolve_device(cfg.device))
    print(f"checkpoint {ckpt}: {len(prepared.split['test'])} test images")
    for k in (1, 3, 5):
        print(f"test_top{k}  {metrics[f'top{k}']:.2f}")
    print(f"test_loss  {metrics['loss']:.4f}")
    return 0


def test_split(cfg: DictConfig, split_file: Path, classes: list[str]) -> Prepared:
    """The run's test images (from its split manifest, not a new split), decoded once into the cache."""
    if not split_file.is_file():
        raise AnimalclsError(f"{split_file} is missing: eval needs the split.csv saved beside the checkpoint.")
    table = pd.read_csv(split_file)
    if not SPLIT_COLUMNS <= set(table.columns):
        raise AnimalclsError(
            f"{split_file} is not a split manifest (needs columns {', '.join(sorted(SPLIT_COLUMNS))})."
        )
    test = table[table["split"] == "test"]
    if test.empty:
        raise AnimalclsError(f"{split_file} lists no test images.")
    root = Path(cfg.data.root)
    data = Dataset(root, test["path"].astype(str).tolist(), test["label_idx"].to_numpy(np.int64), classes)
    missing = [p for p in data.paths if not (root / p).is_file()]
    if missing:
        raise AnimalclsError(
            f"{len(missing)} test image(s) are missing under {root} (e.g. {missing[0]}); "
            f"pass data.root=... where the data set lives now."
        )
    # the run's own view: a recipe's larger cached squares give the same centre view as its test
    images, bad = load_cache(data, *cache_decode_size(cfg.aug), cfg.data.cache_dir)
    for path, why in bad:
        log.warning("skipping unreadable test image %s: %s", path, why)
    unreadable = {p for p, _ in bad}
    keep = np.asarray([i for i, p in enumerate(data.paths) if p not in unreadable], dtype=np.int64)
    return Prepared(data, {"test": keep}, bad, images)


def measure(cfg: DictConfig, model: torch.nn.Module, prepared: Prepared, device: torch.device) -> dict[str, float]:
    """engine.evaluate with the precision and memory format the run itself tested with."""
    precision = choose_precision(cfg.get("amp", "auto"), device, cfg.model.name, cfg.batch_size)  # as the run chose
    channels_last = choose_channels_last(cfg.get("channels_last", "auto"))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = make_batches(cfg, prepared, "test", device, train=False)
    augment = DeviceAugment(cfg.aug, train=False, channels_last=channels_last)
    return evaluate(model, batches, augment, build_criterion(cfg), StepSettings(device, precision, progress=False))
