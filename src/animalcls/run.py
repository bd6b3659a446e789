"""One training run from a resolved config: data, model, fit, test, and its record.

Leaves in the run dir: split.csv, history.csv, last.pt, best.pt, predictions.csv, metrics.json
(Hydra adds the resolved config and the log), and appends one row to the results table.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from animalcls import distributed, results
from animalcls.augment import DeviceAugment
from animalcls.config import run_id, validate
from animalcls.data import (Dataset, PILBatches, TensorBatches, find_unreadable, load_cache, manifest,
                            scan, split_indices)
from animalcls.engine import Interrupted, StepSettings, evaluate, fit
from animalcls.errors import AnimalclsError
from animalcls.models import create_model

log = logging.getLogger(__name__)

# amp=auto uses bf16 on the CPU only with AMX, and only for these (depthwise MobileNets are expected to
# gain nothing). Without AMX bf16 is far slower: on an AVX2 CPU (issue 4, `animalcls bench amp=bf16`)
# train steps took 7.5x longer for base and ~4.5x for mobilenet_v3_large. AMX gains are not measured here.
CPU_BF16_MODELS = ("base", "resnet18", "resnet34", "resnet50")


# ---------------------------------------------------------------- settings

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AnimalclsError(f"device={name} but CUDA is not available here; use device=cpu or device=auto.")
    return torch.device(name)


def cpu_has_amx() -> bool:
    return "AMX" in torch.backends.cpu.get_cpu_capability().upper()


def choose_precision(amp: str, device: torch.device, model_name: str) -> str:
    if amp == "off":
        return "fp32"
    if amp in ("bf16", "fp16"):
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_amx() and model_name in CPU_BF16_MODELS else "fp32"


def choose_channels_last(setting: Any) -> bool:
    # auto = channels_last on CUDA and on the CPU too: measured on an AVX2 CPU (issue 4), fp32 train
    # steps ran 1.06-1.10x faster for base (112 px) and 1.45-1.6x for mobilenet_v3_large (224 px)
    setting = str(setting).lower()
    return setting == "auto" or setting == "true"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_criterion(name: str) -> torch.nn.Module:
    return torch.nn.CrossEntropyLoss() if name == "cross_entropy" else torch.nn.MultiMarginLoss()


def make_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    if cfg.optim.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.optim.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


def build_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    m = cfg.model
    return create_model(m.name, num_classes, pretrained=m.pretrained, weights=m.weights,
                        batch_norm=m.batch_norm, dropout=m.dropout, input_size=cfg.aug.crop)


# ---------------------------------------------------------------- data

@dataclass
class Prepared:
    data: Dataset
    split: dict[str, np.ndarray]
    skipped: list[tuple[str, str]]
    images: torch.Tensor | None   # the decode-once cache (None for the PIL pipeline)


def scan_data(cfg: DictConfig) -> Dataset:
    """The data set's files and classes (generating the demo set on first use); cheap, no decoding."""
    if cfg.data.name == "demo":
        from animalcls.demo import ensure_demo_data
        ensure_demo_data(cfg.data.root)
    return scan(cfg.data.root)


def prepare_data(cfg: DictConfig, data: Dataset | None = None) -> Prepared:
    """Scan, split by seed, then find unreadable files (skipped, or fatal with data.strict)."""
    data = scan_data(cfg) if data is None else data
    split = split_indices(len(data.paths), list(cfg.data.split), cfg.seed)
    if cfg.data.pipeline == "cached":
        images, skipped = load_cache(data, cfg.aug.resize, cfg.aug.crop, cfg.data.cache_dir, cfg.workers)
    else:
        images, skipped = None, find_unreadable(data, cfg.workers)
    if skipped:
        listing = "; ".join(f"{p} ({why})" for p, why in skipped[:5])
        if cfg.data.strict:
            raise AnimalclsError(f"{len(skipped)} unreadable image(s) under {data.root}: {listing}. "
                                 f"Remove or replace them, or set data.strict=false to skip them.")
        for path, why in skipped:
            log.warning("skipping unreadable image %s: %s", path, why)
        bad = {data.paths.index(p) for p, _ in skipped}
        split = {k: np.asarray([i for i in v if i not in bad], dtype=np.int64) for k, v in split.items()}
    if min(len(v) for v in split.values()) == 0:
        raise AnimalclsError(f"{data.root} has {len(data.paths)} images: too few for a train/val/test "
                             f"split of {list(cfg.data.split)}; add images or change data.split.")
    return Prepared(data, split, skipped, images)


def make_batches(cfg: DictConfig, prepared: Prepared, part: str, device: torch.device, train: bool,
                 rank: int = 0, world_size: int = 1):
    index = prepared.split[part]
    # under DDP a training step of batch_size images is split across the ranks (batch_size / N each)
    batch_size = cfg.batch_size // world_size if train else (cfg.eval_batch_size or 4 * cfg.batch_size)
    if prepared.images is None:
        return PILBatches(prepared.data, index, cfg.aug, train, batch_size, device, cfg.workers,
                          cfg.seed, rank, world_size)
    images = prepared.images[torch.from_numpy(index)]
    labels = torch.from_numpy(prepared.data.labels[index])
    if device.type == "cuda" and _fits_on_device(images, device):
        images, labels = images.to(device), labels.to(device)
    return TensorBatches(images, labels, batch_size, device, shuffle=train, seed=cfg.seed,
                         rank=rank, world_size=world_size)


def _fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() < 0.3 * free


# ---------------------------------------------------------------- signals

@contextmanager
def stop_on_signals(stop: threading.Event):
    """Ctrl-C and SIGTERM set `stop`; the loop ends at the next batch and the run records itself."""
    def handler(signum, _frame):
        log.warning("received %s: stopping after this batch", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- records

def versions() -> str:
    import torchvision
    return f"torch={torch.__version__};torchvision={torchvision.__version__}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def settings_row(cfg: DictConfig) -> dict[str, Any]:
    return {"model": cfg.model.name, "pretrained": cfg.model.pretrained, "optimizer": cfg.optim.name,
            "lr": cfg.lr, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "loss": cfg.loss.name,
            "aug": cfg.aug.name, "batch_norm": cfg.model.batch_norm, "dropout": cfg.model.dropout,
            "seed": cfg.seed, "data": cfg.data.name if cfg.data.name != "animals" else cfg.data.root,
            "paper_config": cfg.paper_config, "tags": ";".join(cfg.tags)}


def write_history(run_dir: Path, history: list[dict]) -> None:
    import pandas as pd
    tmp = run_dir / "history.csv.tmp"
    pd.DataFrame(history).to_csv(tmp, index=False)
    os.replace(tmp, run_dir / "history.csv")


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_predictions(run_dir: Path, prepared: Prepared, logits: torch.Tensor, targets: torch.Tensor) -> None:
    import pandas as pd
    classes = prepared.data.classes
    probs = logits.float().softmax(dim=1)
    top = probs.topk(min(5, probs.shape[1]), dim=1)
    paths = [prepared.data.paths[i] for i in prepared.split["test"]]
    pd.DataFrame({
        "path": [str(prepared.data.root / p) for p in paths],
        "label": [classes[t] for t in targets.tolist()],
        "predicted": [classes[i[0]] for i in top.indices.tolist()],
        "top5": [";".join(classes[j] for j in i) for i in top.indices.tolist()],
        "probability": top.values[:, 0].tolist(),
    }).to_csv(run_dir / "predictions.csv", index=False)


# ---------------------------------------------------------------- resume

def resume_pointer(cfg: DictConfig, rid: str) -> Path:
    """Where an unfinished run of this run id leaves the path of its run dir."""
    return Path(cfg.results).parent / "unfinished" / rid


def find_resume_state(cfg: DictConfig, rid: str) -> dict | None:
    if str(cfg.resume).lower() == "false":
        return None
    pointer = resume_pointer(cfg, rid)
    if not pointer.exists():
        if str(cfg.resume).lower() == "true":
            log.warning("resume=true but no unfinished run of this configuration was found; starting fresh")
        return None
    last = Path(pointer.read_text().strip()) / "last.pt"
    if not last.exists():
        return None
    state = torch.load(last, map_location="cpu", weights_only=True)
    log.info("resuming from %s after epoch %d", last, state["epoch"])
    state["resumed_from"] = str(last.parent)
    return state


# ---------------------------------------------------------------- the run

def recorded_val_top1(cfg: DictConfig) -> float:
    """The val top-1 of this configuration's latest ok row (what a skipped run reports to Optuna)."""
    done = results.ok_rows(cfg.results, run_id(cfg))
    return float(done["val_top1"].iloc[-1]) if len(done) else float("nan")


def run_training(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Train, validate and test one configuration; returns the results row (None if skipped).

    Under torchrun every rank calls this; rank 0 decides and writes (see animalcls.distributed).
    """
    validate(cfg)
    rid = run_id(cfg)
    ctx = distributed.setup(resolve_device(cfg.device), cfg.device)
    if ctx.enabled and cfg.batch_size % ctx.world_size:
        raise AnimalclsError(f"batch_size={cfg.batch_size} is the images per optimizer step over all "
                             f"{ctx.world_size} processes and must divide evenly among them; e.g. "
                             f"batch_size={ctx.world_size * max(1, cfg.batch_size // ctx.world_size)}.")
    run_dir = Path(ctx.from_main(lambda: str(run_dir)))   # every rank agrees on rank 0's run dir
    if ctx.from_main(lambda: not cfg.force and results.has_ok_row(cfg.results, rid)):
        log.info("skipping: run %s already has an ok row in %s (force=true re-runs it)", rid, cfg.results)
        return None
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    data = scan_data(cfg)
    model = build_model(cfg, len(data.classes))   # before decoding: missing weights fail fast
    prepared = prepare_data(cfg, data)
    if ctx.enabled and len(prepared.split["test"]) < ctx.world_size:
        raise AnimalclsError(f"{len(prepared.split['test'])} test image(s) for {ctx.world_size} processes: "
                             f"every process needs at least one; use fewer processes or more data.")
    if ctx.is_main:
        manifest(prepared.data, prepared.split).to_csv(run_dir / "split.csv", index=False)
    cost = _profile(model, cfg.aug.crop) if ctx.is_main else {}
    state = ctx.from_main(lambda: find_resume_state(cfg, rid))
    pointer = resume_pointer(cfg, rid)
    if ctx.is_main:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(str(run_dir.resolve()))

    row = {"run_id": rid, **settings_row(cfg), **cost, "device": ctx.describe(), "versions": versions(),
           "git_commit": git_commit(), "run_dir": str(run_dir), "skipped_files": len(prepared.skipped)}
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            outcome = _train_and_test(cfg, run_dir, prepared, model, ctx, stop, state, row)
        except Interrupted:
            log.warning("interrupted: state of the last complete epoch is in %s; run the same command "
                        "again to resume", run_dir / "last.pt")
            row.update(status="interrupted")
            if ctx.is_main:   # the other ranks train and evaluate, and record nothing
                _record(cfg, row)
            return row
        except AnimalclsError:   # bad input found late (e.g. weights): a message, no row
            if ctx.is_main:
                pointer.unlink(missing_ok=True)
            raise
        except Exception as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:300])
            if ctx.is_main:
                _record(cfg, row)
                pointer.unlink(missing_ok=True)
            raise
    row.update(outcome)
    if not ctx.is_main:
        return row
    _record(cfg, row)
    pointer.unlink(missing_ok=True)
    log.info("run dir: %s", run_dir)
    log.info("results: row %s (%s, test top-1 %.2f%%) appended to %s", rid, row["status"],
             row.get("test_top1", float("nan")), cfg.results)
    return row


def _profile(model: torch.nn.Module, input_size: int) -> dict[str, float]:
    from animalcls.profile import profile_model
    stats = profile_model(model, input_size)
    return {"params": stats["params"], "gmacs_fvcore": round(stats["gmacs_fvcore"], 4),
            "gflops": round(stats["gflops"], 4)}


def _record(cfg: DictConfig, row: dict[str, Any]) -> None:
    row.setdefault("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S"))
    results.append_row(cfg.results, row)


def _train_and_test(cfg: DictConfig, run_dir: Path, prepared: Prepared, model: torch.nn.Module,
                    ctx: distributed.Context, stop: threading.Event, state: dict | None,
                    row: dict[str, Any]) -> dict[str, Any]:
    device = ctx.device
    precision = choose_precision(cfg.amp, device, cfg.model.name)
    channels_last = choose_channels_last(cfg.channels_last)
    row["precision"] = precision
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = make_optimizer(cfg, model.parameters())
    criterion = make_criterion(cfg.loss.name)
    start_epoch, history, best = 0, [], -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, best = state["epoch"], state["history"], state["best_val_top1"]
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        if ctx.is_main:
            write_history(run_dir, history)
            if (Path(state["resumed_from"]) / "best.pt").exists():
                shutil.copyfile(Path(state["resumed_from"]) / "best.pt", run_dir / "best.pt")
    if ctx.rank > 0:   # own augmentation draws per rank; the weights come from rank 0 (DDP broadcast)
        torch.manual_seed(cfg.seed + 7919 * ctx.rank + start_epoch)
    trained = ctx.wrap(model)   # DDP across ranks; checkpoints save the unwrapped `model`
    trained = torch.compile(trained) if cfg.compile else trained
    settings = StepSettings(device, precision, stop, progress=ctx.is_main)
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
    train = make_batches(cfg, prepared, "train", device, train=True, **shard)
    train = ctx.even_steps(train, len(prepared.split["train"]), cfg.batch_size // ctx.world_size)
    val = make_batches(cfg, prepared, "val", device, train=False, **shard)
    test = make_batches(cfg, prepared, "test", device, train=False, **shard)
    reduce = ctx.sum if ctx.enabled else None
    train_aug = DeviceAugment(cfg.aug, train=cfg.data.pipeline == "cached", channels_last=channels_last)
    eval_aug = DeviceAugment(cfg.aug, train=False, channels_last=channels_last)
    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "classes": prepared.data.classes,
            "run_id": row["run_id"]}

    def on_epoch_end(epoch: int, hist: list[dict], is_best: bool) -> None:
        best_val = max(h["val_top1"] for h in hist)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                      "history": hist, "best_val_top1": best_val, "rng_cpu": torch.get_rng_state(),
                      "meta": meta}
        if device.type == "cuda":
            checkpoint["rng_cuda"] = torch.cuda.get_rng_state(device)
        atomic_torch_save(checkpoint, run_dir / "last.pt")
        if is_best:
            atomic_torch_save({"model": model.state_dict(), "epoch": epoch, "meta": meta}, run_dir / "best.pt")
        write_history(run_dir, hist)

    result = fit(trained, train, val, train_aug, eval_aug, criterion, optimizer, settings, cfg.epochs,
                 start_epoch, history, best, on_epoch_end if ctx.is_main else None, reduce=reduce,
                 eval_model=model if ctx.enabled else None)
    if cfg.test_on == "best" and ctx.is_main and (run_dir / "best.pt").exists():
        model.load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=True)["model"])
    ctx.broadcast_module(model)   # the other ranks test rank 0's weights too
    test_metrics, logits, targets = evaluate(model, test, eval_aug, criterion, settings, keep_outputs=True,
                                             reduce=reduce)
    logits, targets = ctx.gather_shards(logits), ctx.gather_shards(targets)   # None on ranks > 0
    if ctx.is_main:
        write_predictions(run_dir, prepared, logits, targets)
    last = result.history[-1]
    best_row = next((h for h in result.history if h["epoch"] == result.best_epoch), last)
    val_row = best_row if cfg.test_on == "best" else last
    outcome = {
        "status": result.status, "epochs_done": len(result.history),
        "val_top1": round(val_row["val_top1"], 2), "val_top3": round(val_row["val_top3"], 2),
        "val_top5": round(val_row["val_top5"], 2),
        "test_top1": round(test_metrics["top1"], 2), "test_top3": round(test_metrics["top3"], 2),
        "test_top5": round(test_metrics["top5"], 2),
        "train_seconds": round(result.train_seconds, 2),
        "images_per_s": round(sum(h["images_per_s"] for h in result.history) / len(result.history), 1),
    }
    metrics = {**row, **outcome, "best_epoch": result.best_epoch, "test_loss": test_metrics["loss"],
               "classes": prepared.data.classes, "skipped": [list(s) for s in prepared.skipped]}
    if ctx.is_main:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return outcome
