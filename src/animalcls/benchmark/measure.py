"""`animalcls bench`'s default mode: images/s of the compute limit (random tensors on the device),
of engine.train_one_epoch over the decode-once cache (warm and cold) and over the PIL pipeline, and
of engine.evaluate, each pooled over rounds; the result as a dict and as the printed table."""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from animalcls.augment import DeviceAugment
from animalcls.build import (
    Prepared,
    build_criterion,
    build_graphs,
    build_model,
    build_optimizer,
    choose_channels_last,
    choose_precision,
    make_batches,
    prepare_data,
    resolve_device,
    seed_everything,
)
from animalcls.config import validate
from animalcls.engine import evaluate, synchronize, train_one_epoch
from animalcls.errors import AnimalclsError
from animalcls.machine import cpu_features, cpu_model, gpu_name
from animalcls.steps import EpochBatches, Recipe, StepSettings, train_step

log = logging.getLogger("animalcls.commands.bench")  # the name its log lines have always had


class Capped:
    """`count` batches of a batch iterator (TensorBatches, PILBatches), restarting it with the next
    epoch when it runs out, so a tiny data set still gives as many batches as asked for."""

    def __init__(self, batches: EpochBatches, count: int, first_epoch: int = 1) -> None:
        self.batches, self.count, self.epoch = batches, count, first_epoch
        self.stamps: list[float] = []  # perf_counter when each batch was handed out, then the end
        self.sizes: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        done = 0
        self.stamps, self.sizes = [], []
        while done < self.count:
            self.batches.set_epoch(self.epoch)
            self.epoch += 1
            for images, labels in self.batches:
                self.stamps.append(time.perf_counter())
                self.sizes.append(int(labels.shape[0]))
                yield images, labels
                done += 1
                if done == self.count:
                    return

    def steps(self, end: float) -> list[tuple[int, float]]:
        """(images, seconds) per batch: from handing it out to handing out the next (or `end`)."""
        stamps = self.stamps + [end]
        return [(n, stamps[i + 1] - stamps[i]) for i, n in enumerate(self.sizes)]


def device_name(device: torch.device) -> str:
    return gpu_name(device) or cpu_model()


def _fresh_model(
    cfg: DictConfig, num_classes: int, device: torch.device, channels_last: bool
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module]:
    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    # torch.compile of a Module is an OptimizedModule, a Module (its stubs only say Callable)
    trained = cast(torch.nn.Module, torch.compile(model)) if cfg.compile else model
    return trained, optimizer, build_criterion(cfg)


def measure_limit(
    cfg: DictConfig, num_classes: int, device: torch.device, precision: str, channels_last: bool
) -> dict[str, Any]:
    """Train steps on one random batch that already sits on the device: no data, no augmentation,
    no metrics. The same autocast, loss and optimizer step as engine.train_one_epoch."""
    model, optimizer, criterion = _fresh_model(cfg, num_classes, device, channels_last)
    model.train()
    settings = StepSettings(device, precision, progress=False)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    x = torch.randn(cfg.batch_size, 3, cfg.aug.crop, cfg.aug.crop, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)

    def step() -> None:
        train_step(model, x, y, criterion, optimizer, settings, scaler)

    for _ in range(cfg.bench.warmup):
        step()
    synchronize(device)
    stamps = [time.perf_counter()]
    for _ in range(cfg.bench.batches):
        step()
        stamps.append(time.perf_counter())
    synchronize(device)
    stamps[-1] = time.perf_counter()
    steps = [(cfg.batch_size, stamps[i + 1] - stamps[i]) for i in range(cfg.bench.batches)]
    return {
        "steps": steps,
        "seconds": stamps[-1] - stamps[0],
        "images": cfg.bench.batches * cfg.batch_size,
        "precision": precision,
    }


def _count_syncs(fn: Callable[[], object]) -> int | None:
    """How many synchronising CUDA calls `fn` makes (torch's sync debug mode); None off CUDA."""
    if not torch.cuda.is_available():
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def measure_training(
    cfg: DictConfig, prepared: Prepared, device: torch.device, precision: str, channels_last: bool
) -> dict[str, Any]:
    """engine.train_one_epoch over `bench.batches` batches of the training split, after warm-up."""
    model, optimizer, criterion = _fresh_model(cfg, len(prepared.data.classes), device, channels_last)
    settings = StepSettings(device, precision, progress=False)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    start = time.perf_counter()
    batches = make_batches(cfg, prepared, "train", device, train=True)
    batches_seconds = time.perf_counter() - start
    cached = cfg.data.pipeline == "cached"  # the PIL pipeline's batches are augmented already
    augment = DeviceAugment(cfg.aug, train=cached, channels_last=channels_last, cached=cached)
    recipe = Recipe(graphs=build_graphs(cfg, device))  # the graphs capture during the warm-up batches
    warm = Capped(batches, cfg.bench.warmup, first_epoch=1)
    syncs = None
    if device.type == "cuda" and cfg.bench.warmup > 0:
        syncs = _count_syncs(
            lambda: train_one_epoch(model, warm, augment, criterion, optimizer, settings, scaler, recipe=recipe)
        )
    else:
        train_one_epoch(model, warm, augment, criterion, optimizer, settings, scaler, recipe=recipe)
    timed = Capped(batches, cfg.bench.batches, first_epoch=warm.epoch)
    stats = train_one_epoch(model, timed, augment, criterion, optimizer, settings, scaler, recipe=recipe)
    result = {
        "steps": timed.steps(time.perf_counter()),
        "seconds": stats["seconds"],
        "images": sum(timed.sizes),
        "precision": precision,
        "batches_setup_seconds": batches_seconds,
        "epoch_images": batches.num_samples,
        "epoch_batches": len(batches),
        **_graphs_used(recipe.graphs),
    }
    if syncs is not None:
        result["cuda_syncs_per_warmup_batch"] = syncs / cfg.bench.warmup
    return result


def measure_eval(
    cfg: DictConfig, prepared: Prepared, device: torch.device, precision: str, channels_last: bool
) -> dict[str, Any]:
    """engine.evaluate over `bench.eval_batches` batches of the test split (eval batch size)."""
    model, _, criterion = _fresh_model(cfg, len(prepared.data.classes), device, channels_last)
    settings = StepSettings(device, precision, progress=False)
    batches = make_batches(cfg, prepared, "test", device, train=False)
    augment = DeviceAugment(cfg.aug, train=False, channels_last=channels_last, cached=cfg.data.pipeline == "cached")
    graphs = build_graphs(cfg, device)
    evaluate(model, Capped(batches, max(1, cfg.bench.warmup)), augment, criterion, settings, graphs=graphs)
    timed = Capped(batches, cfg.bench.eval_batches)
    synchronize(device)
    start = time.perf_counter()
    evaluate(model, timed, augment, criterion, settings, graphs=graphs)
    synchronize(device)
    end = time.perf_counter()
    return {
        "steps": timed.steps(end),
        "seconds": end - start,
        "images": sum(timed.sizes),
        "batch_size": cfg.eval_batch_size or 4 * cfg.batch_size,
        "precision": precision,
        "cuda_graphs_used": graphs is not None,
    }


def _graphs_used(graphs: Any) -> dict[str, Any]:
    """Whether the training steps ran as CUDA graphs, and if not, why (when graphs were asked for)."""
    if graphs is None:
        return {"cuda_graphs_used": False}
    return {"cuda_graphs_used": not graphs.reason, "cuda_graphs_fallback": graphs.reason}


def summarise(runs: list[dict[str, Any]], statistic: str) -> dict[str, Any]:
    """Pool the rounds of one measurement: images/s over the total time, and the median of the
    per-batch images/s (robust to another process taking the cores for a while); `images_per_s`
    is the one `statistic` names."""
    steps = [step for run in runs for step in run["steps"]]
    images, seconds = sum(r["images"] for r in runs), sum(r["seconds"] for r in runs)
    result = {k: v for k, v in runs[0].items() if k not in ("steps", "seconds", "images")}
    result.update(
        images=images,
        seconds=seconds,
        rounds=len(runs),
        images_per_s_total=images / seconds,
        images_per_s_median=statistics.median(n / max(t, 1e-9) for n, t in steps),
        step_seconds=[round(t, 4) for _, t in steps],
    )
    result["images_per_s"] = result[f"images_per_s_{statistic}"]
    if len(runs) > 1 and "cuda_syncs_per_warmup_batch" in runs[0]:
        result["cuda_syncs_per_warmup_batch"] = max(r["cuda_syncs_per_warmup_batch"] for r in runs)
    return result


def _prepare(cfg: DictConfig) -> tuple[Prepared, float]:
    start = time.perf_counter()
    prepared = prepare_data(cfg)
    return prepared, time.perf_counter() - start


def _with(cfg: DictConfig, **changes: Any) -> DictConfig:
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.set_struct(cfg, True)
    return cfg


def run_bench(cfg: DictConfig) -> dict[str, Any]:
    import torchvision  # deferred: only for its version string, and it costs seconds to import

    validate(cfg)  # bench.* numbers included (config.RANGES)
    if cfg.bench.statistic not in ("auto", "median", "total"):
        raise AnimalclsError(f"bench.statistic={cfg.bench.statistic!r}: choose auto, median or total")
    device = resolve_device(cfg.device)
    precision = choose_precision(cfg.amp, device, cfg.model.name, cfg.batch_size)
    channels_last = choose_channels_last(cfg.channels_last)
    measurements: dict[str, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="animalcls-bench-cache-"))
    try:
        # The cache: cold = decode every file into an empty temporary cache dir; warm = the same
        # call again, which finds and loads that cache. Both time scan + cache key + load. Without
        # bench.cold, warm loads the run's own cache (data.cache_dir), built first if missing.
        cache_dir = str(tmp) if cfg.bench.cold else cfg.data.cache_dir
        cached_cfg = _with(cfg, **{"data.pipeline": "cached", "data.cache_dir": cache_dir})
        cold_seconds = None
        if cfg.bench.cold:
            _, cold_seconds = _prepare(cached_cfg)
        else:
            _prepare(cached_cfg)
        prepared, warm_seconds = _prepare(cached_cfg)
        num_classes = len(prepared.data.classes)
        log.info(
            "bench: %s, %d images (%d train), %s %s, precision %s, channels_last %s",
            cfg.model.name,
            len(prepared.data.paths),
            len(prepared.split["train"]),
            device,
            device_name(device),
            precision,
            channels_last,
        )

        # limit, engine and old path alternate, `rounds` times, and each pools its rounds: on a
        # shared, noisy host they then meet the same disturbances
        if cfg.bench.pil:
            # the PIL path reads image files, not the cache, so data.order does not apply to it
            # (train refuses the pair): it is timed in its own random order, as it trains
            pil_cfg = _with(cfg, **{"data.pipeline": "pil", "data.order": "random"})
            pil_prepared, pil_seconds = _prepare(pil_cfg)
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(cfg.bench.rounds):
            for p in dict.fromkeys(["fp32", precision]):
                runs.setdefault(f"limit_{p}", []).append(measure_limit(cfg, num_classes, device, p, channels_last))
            runs.setdefault("engine", []).append(
                measure_training(cached_cfg, prepared, device, precision, channels_last)
            )
            if cfg.bench.pil:
                runs.setdefault("old_pil", []).append(
                    measure_training(pil_cfg, pil_prepared, device, precision, channels_last)
                )
        runs["eval"] = [measure_eval(cached_cfg, prepared, device, precision, channels_last)]
        statistic = (
            cfg.bench.statistic if cfg.bench.statistic != "auto" else ("total" if device.type == "cuda" else "median")
        )
        summary = {key: summarise(value, statistic) for key, value in runs.items()}
        for p in dict.fromkeys(["fp32", precision]):
            measurements[f"limit_{p}"] = summary[f"limit_{p}"]
        engine = summary["engine"]
        measurements["engine_warm"] = {**engine, "setup_seconds": warm_seconds + engine["batches_setup_seconds"]}
        if cold_seconds is not None:
            measurements["engine_cold"] = {**engine, "setup_seconds": cold_seconds + engine["batches_setup_seconds"]}
        if cfg.bench.pil:
            old = summary["old_pil"]
            measurements["old_pil"] = {**old, "setup_seconds": pil_seconds + old["batches_setup_seconds"]}
        measurements["eval"] = summary["eval"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for m in measurements.values():
        if "setup_seconds" in m:  # one full epoch from files on disk, at the measured rate
            m["epoch_seconds"] = m["setup_seconds"] + m["epoch_images"] / m["images_per_s"]
            m["epoch_images_per_s"] = m["epoch_images"] / m["epoch_seconds"]
    limit = measurements[f"limit_{precision}"]["images_per_s"]
    warm = measurements["engine_warm"]
    ratios = {
        "engine_over_limit": warm["images_per_s"] / limit,
        "engine_over_limit_fp32": warm["images_per_s"] / measurements["limit_fp32"]["images_per_s"],
    }
    if "old_pil" in measurements:
        old = measurements["old_pil"]
        ratios["engine_over_old"] = warm["images_per_s"] / old["images_per_s"]
        ratios["engine_epoch_over_old_epoch"] = warm["epoch_images_per_s"] / old["epoch_images_per_s"]
        if "engine_cold" in measurements:
            ratios["engine_cold_epoch_over_old_epoch"] = (
                measurements["engine_cold"]["epoch_images_per_s"] / old["epoch_images_per_s"]
            )
    return {
        "model": cfg.model.name,
        "crop": cfg.aug.crop,
        "batch_size": cfg.batch_size,
        "eval_batch_size": cfg.eval_batch_size or 4 * cfg.batch_size,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "workers": cfg.workers,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "precision": precision,
        "amp": cfg.amp,
        "channels_last": channels_last,
        "compile": cfg.compile,
        "cuda_graphs": str(cfg.cuda_graphs),
        "cuda_graphs_used": measurements["engine_warm"]["cuda_graphs_used"],
        "data_root": str(prepared.data.root),
        "data_order": {"engine": cached_cfg.data.order, **({"old_pil": pil_cfg.data.order} if cfg.bench.pil else {})},
        "images": len(prepared.data.paths),
        "train_images": len(prepared.split["train"]),
        "classes": num_classes,
        "batches": cfg.bench.batches,
        "warmup": cfg.bench.warmup,
        "eval_batches": cfg.bench.eval_batches,
        "rounds": cfg.bench.rounds,
        "statistic": statistic,
        "ratios": ratios,
        "measurements": measurements,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


ROWS = [  # key, label
    ("limit_fp32", "limit fp32 (random tensors on device)"),
    ("limit_bf16", "limit bf16 (random tensors on device)"),
    ("limit_fp16", "limit fp16 (random tensors on device)"),
    ("engine_warm", "engine, cache warm"),
    ("engine_cold", "engine, cache cold (decode first)"),
    ("old_pil", "old path (data.pipeline=pil)"),
    ("eval", "eval (engine.evaluate)"),
]


def format_table(result: dict[str, Any]) -> str:
    precision = result["precision"]
    limit = result["measurements"][f"limit_{precision}"]["images_per_s"]
    lines = [
        f"animalcls bench: model={result['model']} {result['crop']}px batch {result['batch_size']} "
        f"(eval {result['eval_batch_size']}), {result['device']} ({result['device_name']}, "
        f"{result['threads']} threads, load {result['load_average_1min']}), precision {precision}, channels_last "
        f"{str(result['channels_last']).lower()}, cuda graphs {'on' if result['cuda_graphs_used'] else 'off'}, "
        f"torch {result['torch']}",
        f"{result['images']} images ({result['train_images']} train); {result['warmup']} warm-up + "
        f"{result['batches']} timed batches per measurement"
        + (f" and round ({result['rounds']} rounds, alternating)" if result["rounds"] > 1 else "")
        + f"; img/s = {'median over batches' if result['statistic'] == 'median' else 'images / total time'}",
        "",
        f"{'measurement':<40} {'img/s':>9} {'vs limit':>9} {'setup s':>8} {'epoch img/s':>12}",
        "-" * 82,
    ]
    for key, label in ROWS:
        m = result["measurements"].get(key)
        if m is None:
            continue
        versus = m["images_per_s"] / limit if key != "eval" else float("nan")
        setup = f"{m['setup_seconds']:8.2f}" if "setup_seconds" in m else f"{'':>8}"
        epoch = f"{m['epoch_images_per_s']:12.1f}" if "epoch_images_per_s" in m else f"{'':>12}"
        vs = f"{versus:9.2f}" if key != "eval" else f"{'':>9}"
        lines.append(f"{label:<40} {m['images_per_s']:9.1f} {vs} {setup} {epoch}")
    lines.append("")
    lines += [f"{name:<34} {value:.3f}" for name, value in result["ratios"].items()]
    syncs = result["measurements"]["engine_warm"].get("cuda_syncs_per_warmup_batch")
    if syncs is not None:
        lines.append(f"{'cuda syncs per training batch':<34} {syncs:.1f}")
    lines.append(
        "(vs limit: against the limit in the engine's precision; epoch img/s: setup + one full "
        "training epoch at the measured rate)"
    )
    return "\n".join(lines)
