"""The subcommands other than train: eval, predict, profile, bench, report."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from animalcls.errors import AnimalclsError


def _key_values(args: list[str], allowed: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise AnimalclsError(f"unexpected argument {arg!r}; expected {' '.join(k + '=...' for k in allowed)}")
        values[key] = value
    return values


def _list_value(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part.strip().strip("'\"") for part in text.split(",") if part.strip()]


def load_checkpoint(path: str) -> dict[str, Any]:
    """An animalcls checkpoint, loaded with weights_only=True: code in a pickle is never run."""
    import torch

    if not path:
        raise AnimalclsError("give the checkpoint to use: ckpt=outputs/runs/<date>/<run>/best.pt")
    file = Path(path)
    if not file.is_file():
        raise AnimalclsError(f"checkpoint {path} does not exist; runs keep best.pt and last.pt in their run dir.")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:   # torch raises many types for truncated or foreign files
        first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
            detail = next((l for l in str(exc).splitlines() if "Unsupported" in l), first_line).strip()
            raise AnimalclsError(f"refused to load {path}: it holds Python objects that could run code "
                                 f"when loaded, which checkpoints never need ({detail[:160]}).") from None
        raise AnimalclsError(f"{path} is not a readable checkpoint (truncated or another format: "
                             f"{type(exc).__name__}: {first_line}).") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "meta" not in checkpoint:
        raise AnimalclsError(f"{path} is not an animalcls checkpoint (no model and meta entries); "
                             f"use the best.pt or last.pt of an animalcls run dir.")
    return checkpoint


def _model_from_checkpoint(checkpoint: dict[str, Any], path: str):
    from omegaconf import OmegaConf

    from animalcls.run import build_model

    cfg = OmegaConf.create(checkpoint["meta"]["config"])
    classes = checkpoint["meta"]["classes"]
    model = build_model(OmegaConf.merge(cfg, {"model": {"pretrained": False, "weights": None}}), len(classes))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise AnimalclsError(f"{path} does not fit model={cfg.model.name} with {len(classes)} classes: "
                             f"{str(exc).splitlines()[0][:160]}") from None
    return cfg, classes, model.eval()


def eval_checkpoint(args: list[str]) -> int:
    """Re-measure a checkpoint on the test split saved in its run dir."""
    import numpy as np
    import pandas as pd
    import torch

    from animalcls.augment import DeviceAugment
    from animalcls.data import Dataset, load_cache
    from animalcls.engine import StepSettings, evaluate
    from animalcls.run import Prepared, make_batches, make_criterion, resolve_device

    options = _key_values(args, ("ckpt", "device", "data.root"))
    checkpoint = load_checkpoint(options.get("ckpt", ""))
    cfg, classes, model = _model_from_checkpoint(checkpoint, options["ckpt"])
    split_file = Path(options["ckpt"]).parent / "split.csv"
    if not split_file.exists():
        raise AnimalclsError(f"{split_file} is missing: eval needs the split.csv saved beside the checkpoint.")
    test = pd.read_csv(split_file).query("split == 'test'")
    root = Path(options.get("data.root", cfg.data.root))
    data = Dataset(root, test["path"].tolist(), test["label_idx"].to_numpy(np.int64), classes)
    missing = [p for p in data.paths if not (root / p).exists()]
    if missing:
        raise AnimalclsError(f"{len(missing)} test image(s) are missing under {root} (e.g. {missing[0]}); "
                             f"pass data.root=... where the data set lives now.")
    images, bad = load_cache(data, cfg.aug.resize, cfg.aug.crop, cfg.data.cache_dir, cfg.workers)
    keep = np.asarray([i for i in range(len(data.paths)) if data.paths[i] not in {p for p, _ in bad}])
    prepared = Prepared(data, {"test": keep}, bad, images)
    device = resolve_device(options.get("device", "auto"))
    batches = make_batches(cfg, prepared, "test", device, train=False)
    metrics = evaluate(model.to(device), batches, DeviceAugment(cfg.aug, train=False),
                       make_criterion(cfg.loss.name), StepSettings(device, "fp32", progress=False))
    print(f"checkpoint {options['ckpt']}: {len(keep)} test images")
    for k in (1, 3, 5):
        print(f"test_top{k}  {metrics[f'top{k}']:.2f}")
    print(f"test_loss  {metrics['loss']:.4f}")
    return 0


def predict(args: list[str]) -> int:
    """Print the top-5 classes with probabilities for each image."""
    import torch

    from animalcls.augment import DeviceAugment
    from animalcls.data import decode_uint8

    options = _key_values(args, ("ckpt", "images"))
    images = _list_value(options.get("images", ""))
    if not images:
        raise AnimalclsError("give images to classify: images=[a.jpg,b.jpg]")
    checkpoint = load_checkpoint(options.get("ckpt", ""))
    cfg, classes, model = _model_from_checkpoint(checkpoint, options["ckpt"])
    batch = []
    for path in images:
        if not Path(path).is_file():
            raise AnimalclsError(f"image {path} does not exist.")
        try:
            batch.append(decode_uint8(Path(path), cfg.aug.resize, cfg.aug.crop))
        except Exception as exc:
            raise AnimalclsError(f"{path} is not a readable image ({type(exc).__name__}: {exc}).") from None
    with torch.inference_mode():
        probs = model(DeviceAugment(cfg.aug, train=False)(torch.stack(batch))).float().softmax(dim=1)
    top = probs.topk(min(5, len(classes)), dim=1)
    for path, values, indices in zip(images, top.values.tolist(), top.indices.tolist()):
        print(path)
        for rank, (p, i) in enumerate(zip(values, indices), 1):
            print(f"  {rank}. {classes[i]:<30} {100 * p:6.2f}%")
    return 0


def profile(args: list[str]) -> int:
    """Cost of a model at its augmentation's input size (no weights needed)."""
    from animalcls.cli import compose
    from animalcls.profile import profile_model
    from animalcls.run import build_model

    cfg = compose(args + ["model.pretrained=false"] if not any(a.startswith("model.pretrained") for a in args) else args)
    num_classes = 151   # the paper's class count; the head is a small part of the cost
    model = build_model(cfg, num_classes)
    stats = profile_model(model, cfg.aug.crop, latency=True)
    print(f"model           {cfg.model.name} ({num_classes} classes, {cfg.aug.crop}x{cfg.aug.crop} input)")
    print(f"params          {stats['params']:,}")
    print(f"GMACs (fvcore)  {stats['gmacs_fvcore']:.4f}")
    print(f"GFLOPs          {stats['gflops']:.4f}   (2 x MACs of conv and linear layers: the paper's 'efficiency')")
    print(f"CPU latency     {stats['latency_ms']:.1f} ms   (batch 1, median of 5)")
    return 0


def bench(args: list[str]) -> int:
    from animalcls.bench import main as bench_main
    return bench_main(args)


def report(args: list[str]) -> int:
    from animalcls.report import run_report

    options = _key_values(args, ("results", "out", "runs"))
    tables = _list_value(options.get("results", "outputs/results.csv"))
    out = options.get("out", "outputs/report")
    runs = _list_value(options["runs"]) if "runs" in options else None
    index = run_report(tables, out, runs=runs)
    print(f"report written: {index}")
    return 0
