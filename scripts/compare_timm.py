"""resnet18 from scratch: `animalcls train recipe=scratch` against timm's train.py, with the fairness checked.

    pip install timm            # plus timm's train.py and validate.py from its repository
    python scripts/compare_timm.py --data ../shared/datasets/caltech101-animals \\
        --timm-repo path/to/pytorch-image-models --timm-commit <its commit, if not a git checkout> \\
        --epochs 5 --size 128 112 --workers 1 --seeds 0 1 2 --out outputs/timm-compare
    python scripts/compare_timm.py --summary outputs/timm-compare/compare.json   # its table again

For each seed, before anything trains:

1. The split animalcls will draw (its own scan + split_indices + manifest) is written out as
   train/validation/test folders of symlinks, with EVERY class folder in every split, and a class
   map (timm's --class-map, animalcls' class order). timm's own dataset (timm.data.create_dataset
   with that map) is read back, and every image must carry animalcls' label in the same split
   (`check_labels`). A folder without a class once gave timm a shifted class index.
2. Pixels (`check_pixels`): for the first N test images, animalcls' evaluation input (the decode
   cache, data.load_cache, and augment.DeviceAugment(train=False), its real eval path) against
   timm's evaluation input (its dataset and create_transform, configured by resolve_data_config
   from the flags given to validate.py), and the same for the training view with the flip off.
3. Training setup (`check_training_setup`), with train.py's own argument parser on the exact
   flags: the model (state-dict names and shapes, batch-norm eps/momentum, initial weights: no
   zero-initialised last BN), the optimizer per parameter (class, lr, betas, eps, weight decay:
   none on norms and biases on both sides), the loss on random logits, the number of epochs and
   the lr of every update (timm's scheduler against animalcls' LambdaLR), and timm's defaults that
   the recipe does not use (random erasing, AutoAugment, mixup, dropout, BCE, clipping, layer decay,
   lr scaling by batch size, ...). Any mismatch stops the script (exit status 1).
Then `animalcls train model=resnet18 model.pretrained=false recipe=scratch tta=false amp=off` runs
(its split.csv must equal the checked split), timm's train.py and validate.py run on the folders,
and both are timed. Flip TTA is off: validate.py has none.

What cannot be matched with any train.py flag is listed, one line each, under "known_differences"
in OUT/compare.json and in the output (e.g. with RESIZE > CROP animalcls trains and tests on the
centre CROP/RESIZE of the image; timm's train.py has no deterministic centre crop for training,
so timm is given the whole centre square at train and test time, --crop-pct 1.0; with
--size C C the evaluation pixels are identical and the training views differ by resampling
only). compare.json also holds the checks' numbers, timm's version and repository commit, one
row per seed and a per-side list; animalcls' rows also go to OUT/results.csv (tag timm-compare)
for the paired-compare tooling.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

RECIPE_ARGS = ["model=resnet18", "model.pretrained=false", "recipe=scratch", "tta=false", "amp=off"]
FOLDERS = {"train": "train", "val": "validation", "test": "test"}  # animalcls' split -> timm's folder
PIXEL_TOLERANCE = 0.05  # max |difference| of normalised inputs for "the same pixels" (JPEG, resampling)
# train.py's training augmentation defaults (timm 1.0), used as they are with --timm-aug timm
TIMM_OWN_AUG = {
    "scale": [0.08, 1.0],
    "ratio": [3.0 / 4.0, 4.0 / 3.0],
    "color_jitter": 0.4,
    "train_interpolation": "random",
}
LR_TOLERANCE = 0.05  # max |lr difference| / lr, update by update, for "the same schedule"


class Unfair(Exception):
    """A fairness check failed: the two sides would not train or test on the same thing."""


# ---------------------------------------------------------------- the recipe, both sides


def compose_recipe(size: tuple[int, int], seed: int = 0, data: str | None = None) -> Any:
    """The config `animalcls train` composes for the comparison's overrides."""
    from animalcls.config import compose

    resize, crop = size
    extra = [f"data.root={data}"] if data else []
    return compose([*RECIPE_ARGS, f"aug.resize={resize}", f"aug.crop={crop}", f"seed={seed}", *extra])


def recipe_values(cfg: Any) -> dict[str, Any]:
    """The scratch recipe's numbers for resnet18; stops on a setting the timm flags do not map."""
    unmapped = {
        "optimizer/schedule other than AdamW + cosine": (cfg.optim.name, cfg.sched.name) != ("adamw", "cosine"),
        "a warm-up not in whole epochs (timm's --warmup-epochs is an integer)": bool(cfg.sched.warmup_steps)
        or cfg.sched.warmup_epochs != int(cfg.sched.warmup_epochs),
        "aug.rotation": cfg.aug.rotation > 0,
        "aug.color_jitter": cfg.aug.color_jitter > 0,
        "aug.trivial_augment": bool(cfg.aug.trivial_augment),
        "a random-resized crop (animalcls draws it on the cached square, timm on the original)": list(cfg.aug.rrc_scale)
        != [1.0, 1.0],
        "mixup/cutmix": cfg.mix.mixup_alpha > 0 or cfg.mix.cutmix_alpha > 0,
        "optim.clip_grad_norm": cfg.optim.clip_grad_norm > 0,
        "optim.decay_norm_bias (timm never decays norms and biases)": bool(cfg.optim.decay_norm_bias),
        "finetune options": cfg.finetune.freeze_epochs > 0 or cfg.finetune.head_lr_mult != 1.0,
        "data.pipeline other than cached": cfg.data.pipeline != "cached",
        "flip TTA (validate.py has none)": bool(cfg.tta),
    }
    if any(unmapped.values()):
        raise Unfair("compare_timm does not map: " + "; ".join(k for k, v in unmapped.items() if v))
    return {
        "lr": float(cfg.lr),
        "weight_decay": float(cfg.optim.weight_decay),
        "batch_size": int(cfg.batch_size),
        "warmup_epochs": int(cfg.sched.warmup_epochs),
        "min_lr": float(cfg.lr * cfg.sched.min_lr_ratio),
        "smoothing": float(cfg.loss.label_smoothing),
        "scale": [float(v) for v in cfg.aug.rrc_scale],
        "hflip": float(cfg.aug.hflip),
        "ema": float(cfg.ema.decay),
        "ema_warmup": bool(cfg.ema.warmup),
        "mean": [float(v) for v in cfg.aug.mean],
        "std": [float(v) for v in cfg.aug.std],
    }


def timm_flags(
    recipe: dict[str, Any], cfg: Any, classes: int, class_map: Path, workers: int, timm_aug: str = "recipe"
) -> tuple[list[str], list[str]]:
    """(flags for both train.py and validate.py, flags for train.py only).

    animalcls runs E epochs with the warm-up inside them; timm's --warmup-prefix puts the warm-up
    before --epochs, so train.py gets --epochs E - warm-up (its scheduler then runs E in all).
    timm_aug="timm" leaves train.py's own augmentation defaults (TIMM_OWN_AUG) in place of the
    recipe's centre square, flips only."""
    from animalcls.build import choose_channels_last

    shared = ["--model", "resnet18", "--num-classes", str(classes), "--img-size", str(cfg.aug.crop)]
    shared += ["--crop-pct", "1.0", "--interpolation", "bilinear"]  # the square timm trains on; PIL bilinear
    shared += ["--mean", *map(str, recipe["mean"]), "--std", *map(str, recipe["std"])]
    shared += ["--class-map", str(class_map), "--model-kwargs", "zero_init_last=False"]
    shared += ["--device", "cpu", "--workers", str(workers), "--no-prefetcher"]
    if choose_channels_last(cfg.channels_last):
        shared.append("--channels-last")  # animalcls' memory format (channels_last=auto: on)
    epochs = int(cfg.epochs) - recipe["warmup_epochs"]
    if epochs < 1:
        raise Unfair(
            f"--epochs {cfg.epochs} leaves no cosine after the {recipe['warmup_epochs']}-epoch warm-up "
            "(timm needs --epochs > warm-up)"
        )
    train = ["--opt", "adamw", "--lr", repr(recipe["lr"]), "--weight-decay", repr(recipe["weight_decay"])]
    train += ["-b", str(recipe["batch_size"]), "--sched", "cosine", "--sched-on-updates", "--warmup-prefix"]
    train += ["--epochs", str(epochs), "--warmup-epochs", str(recipe["warmup_epochs"])]
    train += ["--min-lr", repr(recipe["min_lr"]), "--cooldown-epochs", "0", "--smoothing", repr(recipe["smoothing"])]
    train += ["--hflip", repr(recipe["hflip"])]
    if timm_aug == "recipe":
        # a crop of scale 1 and ratio 1: RandomResizedCrop falls back to the centre square of the image
        train += ["--scale", "1.0", "1.0", "--ratio", "1.0", "1.0"]
        train += ["--color-jitter", "0", "--train-interpolation", "bilinear"]
    if recipe["ema"] > 0:
        train += ["--model-ema", "--model-ema-decay", repr(recipe["ema"])]
        train += ["--model-ema-warmup"] if recipe["ema_warmup"] else []
    return shared, train


def load_timm_script(repo: Path, name: str) -> ModuleType:
    """timm's train.py or validate.py as a module (its parser; main() does not run)."""
    path = repo / f"{name}.py"
    module_name = f"timm_repo_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise Unfair(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def parse_timm_args(repo: Path, name: str, flags: list[str]) -> argparse.Namespace:
    """The namespace train.py / validate.py will run with (their own parser, their own defaults)."""
    args: argparse.Namespace = load_timm_script(repo, name).parser.parse_args(flags)
    return args


# ---------------------------------------------------------------- the split, both sides


def animalcls_split(data_root: Path, cfg: Any) -> tuple[pd.DataFrame, list[str]]:
    """The split `animalcls train` draws for cfg (path, label, label_idx, split) and its classes."""
    from animalcls.data import manifest, scan, split_indices

    data = scan(data_root)
    frame = manifest(data, split_indices(len(data.paths), list(cfg.data.split), int(cfg.seed)))
    return frame, data.classes


def link_name(index: int, rel_path: str) -> str:
    """A unique file name for the symlink of an image: its row number, its path below the class
    folder, and an extension timm's folder reader takes (it reads .png/.jpg/.jpeg only; PIL opens
    the file by its content, not its name)."""
    from timm.data import get_img_extensions

    inside = "__".join(Path(rel_path).parts[1:])
    suffix = "" if Path(inside).suffix.lower() in get_img_extensions(as_set=True) else ".png"
    return f"{index:06d}-{inside}{suffix}"


def write_split_folders(data_root: Path, split: pd.DataFrame, classes: list[str], out: Path) -> Path:
    """train/validation/test folders of symlinks, every class folder in every split (empty ones
    too), and class_map.txt (one class per line, animalcls' index order). Adds split["link"]."""
    if any(c != c.strip() or "\n" in c or not c for c in classes):
        raise Unfair(f"a class name timm's class-map file cannot hold: {[c for c in classes if c != c.strip()]}")
    if out.exists():
        shutil.rmtree(out)
    for folder in FOLDERS.values():
        for name in classes:
            (out / folder / name).mkdir(parents=True)
    links = []
    for index, image in enumerate(split.itertuples()):
        link = out / FOLDERS[str(image.split)] / str(image.label) / link_name(index, str(image.path))
        link.symlink_to((data_root / str(image.path)).resolve())
        links.append(str(link))
    split["link"] = links
    class_map = out / "class_map.txt"
    class_map.write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    return class_map


def timm_dataset(folders: Path, folder: str, class_map: Path, training: bool = False) -> Any:
    """timm's own dataset for one split folder, as train.py / validate.py build it."""
    from timm.data import create_dataset

    return create_dataset("", root=str(folders), split=folder, is_training=training, class_map=str(class_map))


def check_labels(folders: Path, class_map: Path, split: pd.DataFrame) -> dict[str, Any]:
    """Every image timm's dataset reads has animalcls' label, in the same split, and no more or
    fewer images. Raises Unfair with the first differences."""
    counts: dict[str, int] = {}
    problems: list[str] = []
    for name, folder in FOLDERS.items():
        ours = split[split["split"] == name]
        expected = {str(link): int(label) for link, label in zip(ours["link"], ours["label_idx"])}
        theirs = {str(path): int(target) for path, target in timm_dataset(folders, folder, class_map).reader.samples}
        for path in sorted(set(expected) - set(theirs))[:5]:
            problems.append(f"{folder}: timm does not read {path}")
        for path in sorted(set(theirs) - set(expected))[:5]:
            problems.append(f"{folder}: timm reads {path}, which is not in animalcls' {name} split")
        wrong = [p for p in sorted(set(expected) & set(theirs)) if expected[p] != theirs[p]]
        for path in wrong[:5]:
            problems.append(f"{folder}: {path} is class {theirs[path]} for timm, {expected[path]} for animalcls")
        if len(wrong) > 5:
            problems.append(f"{folder}: {len(wrong)} images with another label in all")
        counts[folder] = len(theirs)
    if problems:
        raise Unfair("timm's labels are not animalcls' labels:\n  " + "\n  ".join(problems))
    return {"images": counts, "all_labels_equal": True}


# ---------------------------------------------------------------- pixels


def animalcls_inputs(data_root: Path, paths: list[str], cfg: Any, train_view: bool = False) -> Any:
    """animalcls' model inputs for these images, through its real path for this recipe: the decode
    cache (data.load_cache at augment.cache_decode_size) and DeviceAugment. train_view: the
    training augmentation with the flip off (the rest of this recipe's training view is fixed)."""
    import numpy as np
    from omegaconf import OmegaConf

    from animalcls.augment import DeviceAugment, cache_decode_size
    from animalcls.data import Dataset, load_cache

    aug = OmegaConf.merge(cfg.aug, {"hflip": 0.0}) if train_view else cfg.aug
    subset = Dataset(data_root, list(paths), np.zeros(len(paths), dtype=np.int64), ["any"])
    with tempfile.TemporaryDirectory() as cache_dir:
        images, bad = load_cache(subset, *cache_decode_size(aug), cache_dir, workers=1)
    if bad:
        raise Unfair(f"animalcls cannot decode {bad[:3]}")
    return DeviceAugment(aug, train=train_view, channels_last=False, cached=True)(images)


def timm_eval_transform(eval_args: argparse.Namespace, model: Any, crop_pct: float | None = None) -> Any:
    """validate.py's transform: resolve_data_config on its arguments and the model, then
    create_transform as create_loader calls it (no prefetcher: ToTensor + Normalize in it)."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(vars(eval_args), model=model, use_test_size=not eval_args.use_train_size)
    return create_transform(
        config["input_size"],
        is_training=False,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"] if crop_pct is None else crop_pct,
        crop_mode=config["crop_mode"],
        crop_border_pixels=eval_args.crop_border_pixels,
    )


def timm_train_transform(train_args: argparse.Namespace, model: Any) -> Any:
    """train.py's training transform (create_loader's create_transform call), flip off."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(vars(train_args), model=model)
    return create_transform(
        config["input_size"],
        is_training=True,
        no_aug=train_args.no_aug,
        train_crop_mode=train_args.train_crop_mode,
        scale=train_args.scale,
        ratio=train_args.ratio,
        hflip=0.0,
        vflip=train_args.vflip,
        color_jitter=train_args.color_jitter,
        color_jitter_prob=train_args.color_jitter_prob,
        grayscale_prob=train_args.grayscale_prob,
        gaussian_blur_prob=train_args.gaussian_blur_prob,
        auto_augment=train_args.aa,
        interpolation=train_args.train_interpolation or config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        re_prob=train_args.reprob,
        re_mode=train_args.remode,
        re_count=train_args.recount,
    )


def timm_inputs(dataset: Any, links: list[str], transform: Any) -> Any:
    """timm's inputs for these files: its dataset reads them (Image.open + convert), `transform` maps them."""
    import torch

    index = {str(path): i for i, (path, _) in enumerate(dataset.reader.samples)}
    dataset.transform = transform
    return torch.stack([dataset[index[link]][0] for link in links])


def difference(a: Any, b: Any) -> dict[str, Any]:
    if tuple(a.shape) != tuple(b.shape):
        return {"shape": [list(a.shape), list(b.shape)], "max_abs": math.inf, "mean_abs": math.inf, "agree": False}
    gap = (a.float() - b.float()).abs()
    max_abs, mean_abs = float(gap.max()), float(gap.mean())
    return {"max_abs": max_abs, "mean_abs": mean_abs, "agree": max_abs < PIXEL_TOLERANCE}


def check_pixels(
    data_root: Path,
    folders: Path,
    class_map: Path,
    split: pd.DataFrame,
    cfg: Any,
    eval_args: argparse.Namespace,
    train_args: argparse.Namespace,
    count: int = 16,
) -> dict[str, Any]:
    """The first `count` test images through both tools' evaluation inputs (and training views,
    flip off); max and mean |difference| of the normalised tensors.

    "eval" and "train_view" are what the script runs. Where RESIZE == CROP the eval inputs must
    agree. Where RESIZE > CROP they cannot (see known_differences), and "eval_at_animalcls_view"
    must show that timm's eval at --crop-pct CROP/RESIZE gives animalcls' pixels, so the field of
    view is the only difference. The training view (flip off) is reported, not required: timm
    crops the centre square of the original and resizes it, animalcls resizes the short side and
    crops, which on a non-square image shifts the pixels by a fraction of one. Raises Unfair."""
    import timm

    test = split[split["split"] == "test"].head(count)
    paths, links = list(test["path"]), list(test["link"])
    model = timm.create_model(eval_args.model, num_classes=eval_args.num_classes, **eval_args.model_kwargs)
    dataset = timm_dataset(folders, "test", class_map)
    ours_eval = animalcls_inputs(data_root, paths, cfg)
    ours_train = animalcls_inputs(data_root, paths, cfg, train_view=True)
    result: dict[str, Any] = {
        "images": len(paths),
        "tolerance": PIXEL_TOLERANCE,
        "eval": difference(ours_eval, timm_inputs(dataset, links, timm_eval_transform(eval_args, model))),
        "train_view": difference(ours_train, timm_inputs(dataset, links, timm_train_transform(train_args, model))),
    }
    resize, crop = int(cfg.aug.resize), int(cfg.aug.crop)
    if resize == crop:
        if not result["eval"]["agree"]:
            raise Unfair(f"the evaluation inputs differ: {result['eval']}")
    else:
        same_view = timm_eval_transform(eval_args, model, crop_pct=crop / resize)
        result["eval_at_animalcls_view"] = difference(ours_eval, timm_inputs(dataset, links, same_view))
        result["eval_at_animalcls_view"]["crop_pct"] = crop / resize
        if not result["eval_at_animalcls_view"]["agree"]:
            raise Unfair(f"timm at --crop-pct {crop / resize:g} does not give animalcls' eval pixels: {result}")
    return result


# ---------------------------------------------------------------- model, optimizer, loss, schedule


def check_timm_defaults(
    train_args: argparse.Namespace, recipe: dict[str, Any], epochs: int, timm_aug: str = "recipe"
) -> dict[str, Any]:
    """train.py's settings that the recipe fixes, as train.py parsed the flags: each must hold
    (with timm_aug="timm", the augmentation settings must be train.py's own defaults instead)."""
    expected = {
        "lr": (recipe["lr"], "given, so train.py does not scale --lr-base by the batch size"),
        "reprob": (0.0, "no random erasing"),
        "aa": (None, "no AutoAugment/RandAugment"),
        "mixup": (0.0, "no mixup"),
        "cutmix": (0.0, "no cutmix"),
        "cutmix_minmax": (None, "no cutmix"),
        "drop": (0.0, "no dropout before the head"),
        "drop_path": (None, "no stochastic depth"),
        "drop_block": (None, "no DropBlock"),
        "bce_loss": (False, "cross entropy, not BCE"),
        "jsd_loss": (False, "no JSD loss"),
        "aug_splits": (0, "no AugMix splits"),
        "aug_repeats": (0, "no repeated augmentation"),
        "opt_eps": (None, "AdamW's eps: torch's 1e-8, as animalcls"),
        "opt_betas": (None, "AdamW's betas: torch's (0.9, 0.999), as animalcls"),
        "clip_grad": (None, "no gradient clipping"),
        "layer_decay": (None, "no layer-wise lr decay"),
        "smoothing": (recipe["smoothing"], "label smoothing"),
        "amp": (False, "fp32, as animalcls with amp=off"),
        "model_dtype": (None, "fp32 weights"),
        "bn_momentum": (None, "the model's BN momentum (0.1, as torchvision)"),
        "bn_eps": (None, "the model's BN eps (1e-5, as torchvision)"),
        "warmup_prefix": (True, "the cosine starts after the warm-up, as animalcls'"),
        "cooldown_epochs": (0, "no cooldown epochs after the cosine"),
        "epochs": (epochs, "--epochs excludes the --warmup-prefix epochs"),
        "epoch_repeats": (0.0, "one pass over the data per epoch"),
        "grad_accum_steps": (1, "one batch per update"),
        "lr_noise": (None, "no lr noise"),
        "lr_cycle_limit": (1, "one cosine cycle"),
        "lr_k_decay": (1.0, "plain cosine"),
        "vflip": (0.0, "no vertical flip"),
        "color_jitter": (0.0, "no colour jitter"),
        "train_interpolation": ("bilinear", "bilinear resampling in training (the default is random)"),
        "train_crop_mode": (None, "RandomResizedCrop (scale 1, ratio 1: the centre square)"),
        "no_aug": (False, "train.py's augmentation path"),
        "torchcompile": (None, "no torch.compile (animalcls compile=false)"),
        "model_kwargs": ({"zero_init_last": False}, "no zero-initialised last BN (timm's default zeroes it)"),
        "pretrained": (False, "from scratch"),
    }
    if timm_aug == "timm":
        expected |= {name: (value, "train.py's own default") for name, value in TIMM_OWN_AUG.items()}
    values = {name: getattr(train_args, name, "<missing>") for name in expected}
    wrong = [f"{n}={values[n]!r}, expected {v!r} ({why})" for n, (v, why) in expected.items() if values[n] != v]
    if wrong:
        raise Unfair("train.py would run with:\n  " + "\n  ".join(wrong))
    return {name: (value if not isinstance(value, tuple) else list(value)) for name, value in values.items()}


def _named_groups(optimizer: Any, model: Any) -> dict[str, dict[str, Any]]:
    names = {id(p): n for n, p in model.named_parameters()}
    settings: dict[str, dict[str, Any]] = {}
    for group in optimizer.param_groups:
        kept = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
        for parameter in group["params"]:
            settings[names[id(parameter)]] = {
                k: kept.get(k) for k in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
            }
    return settings


def check_training_setup(
    cfg: Any, recipe: dict[str, Any], train_args: argparse.Namespace, classes: int, train_images: int
) -> dict[str, Any]:
    """Both sides' model, initial weights, optimizer, loss and lr schedule, built by each tool's
    own code; raises Unfair on a difference."""
    import numpy as np
    import timm
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    from animalcls.build import build_criterion, build_model, build_optimizer, build_scheduler
    from animalcls.schedule import warmup_steps

    problems: list[str] = []
    torch.manual_seed(0)
    ours = build_model(cfg, classes)
    theirs = timm.create_model(
        train_args.model,
        pretrained=train_args.pretrained,
        num_classes=train_args.num_classes,
        drop_rate=train_args.drop,
        drop_path_rate=train_args.drop_path,
        drop_block_rate=train_args.drop_block,
        global_pool=train_args.gp,
        bn_momentum=train_args.bn_momentum,
        bn_eps=train_args.bn_eps,
        **train_args.model_kwargs,
    )
    # the model: same tensors, same norms, the same initial weights (in distribution: other draws)
    a, b = ours.state_dict(), theirs.state_dict()
    if {k: tuple(v.shape) for k, v in a.items()} != {k: tuple(v.shape) for k, v in b.items()}:
        problems.append(f"state dicts differ: {sorted(set(a) ^ set(b))[:5]} or shapes")
    norms = [
        (n, m.eps, m.momentum)
        for model in (ours, theirs)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    half = len(norms) // 2
    if norms[:half] != norms[half:]:
        problems.append("batch-norm eps/momentum differ")
    for name, tensor in a.items():
        if name not in b or not tensor.is_floating_point() or "running" in name:
            continue
        mine, other = tensor.float(), b[name].float()
        if tensor.ndim == 1:  # BN weights and biases, linear bias: constants on both sides, or both uniform
            same = torch.equal(mine, other) or (name.endswith("fc.bias") and abs(mine.std() - other.std()) < 0.05)
        else:
            same = abs(float(mine.std()) / max(float(other.std()), 1e-12) - 1) < 0.15
        if not same:
            stats = [f"{float(t.mean()):.4g}/{float(t.std()):.4g}" for t in (mine, other)]
            problems.append(f"initial {name} differs (mean/std {stats[0]} vs {stats[1]})")
    last_bn = [float(b[k].min()) for k in b if k.endswith("bn2.weight")]
    # the optimizer, per parameter
    opt_a = build_optimizer(cfg, ours)
    opt_b = create_optimizer_v2(theirs, **optimizer_kwargs(cfg=train_args), **train_args.opt_kwargs)
    if type(opt_a) is not type(opt_b):
        problems.append(f"optimizers {type(opt_a).__name__} vs {type(opt_b).__name__}")
    groups_a, groups_b = _named_groups(opt_a, ours), _named_groups(opt_b, theirs)
    differ = [n for n in groups_a if groups_a[n] != groups_b.get(n)]
    for name in differ[:5]:
        problems.append(f"optimizer settings of {name}: {groups_a[name]} vs {groups_b.get(name)}")
    no_decay = sorted(n for n, g in groups_b.items() if g["weight_decay"] == 0)
    # the loss, as train.py picks it (no mixup, no BCE, smoothing > 0)
    logits, target = torch.randn(64, classes, generator=torch.Generator().manual_seed(0)), torch.arange(64) % classes
    loss_a = float(build_criterion(cfg)(logits, target))
    loss_b = float(LabelSmoothingCrossEntropy(smoothing=train_args.smoothing)(logits, target))
    if abs(loss_a - loss_b) > 1e-5:
        problems.append(f"losses {loss_a} vs {loss_b}")
    # the schedule: animalcls' LambdaLR on ceil(n/b) steps per epoch, timm's on floor(n/b) (drop_last)
    steps_a = math.ceil(train_images / cfg.batch_size)
    probe = torch.nn.Parameter(torch.zeros(1))
    sgd_a = torch.optim.SGD([probe], lr=cfg.lr)
    scheduler_a = build_scheduler(cfg, sgd_a, steps_a)
    lrs_a = []
    for _ in range(int(cfg.epochs) * steps_a):
        lrs_a.append(sgd_a.param_groups[0]["lr"])
        sgd_a.step()
        if scheduler_a is not None:
            scheduler_a.step()
    steps_b = train_images // train_args.batch_size
    sgd_b = torch.optim.SGD([probe], lr=train_args.lr)
    scheduler_b, epochs_b = create_scheduler_v2(sgd_b, **scheduler_kwargs(train_args), updates_per_epoch=steps_b)
    lrs_b, updates = [], 0
    for epoch in range(epochs_b):  # train.py's loop: step_update after each update, step per epoch
        for _ in range(steps_b):
            lrs_b.append(sgd_b.param_groups[0]["lr"])
            updates += 1
            scheduler_b.step_update(num_updates=updates)
        scheduler_b.step(epoch + 1)
    if epochs_b != cfg.epochs:
        problems.append(f"timm's scheduler runs {epochs_b} epochs, animalcls {cfg.epochs}")
    # the warm-ups: both reach lr after warmup_epochs epochs (their first values differ, see
    # known_differences); the cosines: update by update, at the same fraction of the cosine
    warm_a, warm_b = warmup_steps(cfg.sched, steps_a), recipe["warmup_epochs"] * steps_b
    if warm_a and not math.isclose(lrs_a[warm_a - 1], cfg.lr):
        problems.append(f"animalcls' warm-up ends at {lrs_a[warm_a - 1]}, not lr {cfg.lr}")
    if len(lrs_b) <= warm_b or not math.isclose(lrs_b[warm_b], cfg.lr):
        problems.append(f"timm's cosine does not start at lr {cfg.lr} after {warm_b} warm-up updates")
    cos_a, cos_b = lrs_a[warm_a:], lrs_b[warm_b:]
    if cos_a and cos_b:  # animalcls' cosine, linearly interpolated at each timm update's fraction
        at_b = np.interp(np.arange(len(cos_b)) / len(cos_b), np.arange(len(cos_a)) / len(cos_a), cos_a)
        max_gap = float(np.abs(np.asarray(cos_b) - at_b).max()) / cfg.lr
    else:
        max_gap = math.inf
    if max_gap > LR_TOLERANCE:
        problems.append(f"the cosines differ by up to {max_gap:.1%} of lr")
    warm_gaps = [abs(lr - lrs_a[k * warm_a // warm_b]) for k, lr in enumerate(lrs_b[:warm_b])] if warm_a else [0.0]
    if problems:
        raise Unfair("the training setup differs:\n  " + "\n  ".join(problems))
    return {
        "parameters": len(groups_a),
        "optimizer": type(opt_b).__name__,
        "optimizer_settings_equal": True,
        "no_weight_decay": len(no_decay),
        "last_bn_weight_min_timm": min(last_bn) if last_bn else None,
        "loss": [loss_a, loss_b],
        "epochs": [int(cfg.epochs), int(epochs_b)],
        "updates_per_epoch": [steps_a, steps_b],
        "lr_first": [lrs_a[0], lrs_b[0]],
        "lr_peak": [max(lrs_a), max(lrs_b)],
        "lr_last": [lrs_a[-1], lrs_b[-1]],
        "warmup_updates": [warm_a, warm_b],
        "cosine_max_gap_of_lr": max_gap,
        "warmup_max_gap_of_lr": max(warm_gaps) / cfg.lr,
        "lr_tolerance": LR_TOLERANCE,
    }


def known_differences(
    cfg: Any,
    recipe: dict[str, Any],
    train_args: argparse.Namespace,
    train_images: int,
    pixels: dict[str, Any],
    timm_aug: str = "recipe",
) -> list[str]:
    """What no train.py flag matches (and, with timm_aug="timm", what was left unmatched), one line each."""
    resize, crop, batch = int(cfg.aug.resize), int(cfg.aug.crop), int(cfg.batch_size)
    lines = []
    if timm_aug == "timm":
        lines.append(
            "augmentation, by choice (--timm-aug timm): timm trains with its own defaults, random-resized crops "
            "of scale 0.08-1 and ratio 3/4-4/3, colour jitter 0.4 and a random interpolation, plus the flips; "
            "animalcls with the recipe's centre square and flips"
        )
    if resize != crop:
        lines.append(
            f"field of view: animalcls trains and tests on the centre {crop}/{resize} of the image's short-side "
            f"square (Resize({resize}) + CenterCrop({crop})); timm on the whole square resized to {crop} "
            f"(train.py has no deterministic centre crop for training, so --crop-pct 1.0 keeps its test view "
            f"its training view; --size {crop} {crop} makes the views the same)"
        )
    elif not pixels["train_view"]["agree"]:
        lines.append(
            "training view (flip off): timm crops the image's centre square and resizes it, animalcls resizes the "
            "short side and crops the centre: the same region, resampled on a grid shifted by under one pixel on "
            f"non-square images (max |diff| {pixels['train_view']['max_abs']:.3f}, mean "
            f"{pixels['train_view']['mean_abs']:.4f} on {pixels['images']} test images)"
        )
    if train_images % batch:
        lines.append(
            f"timm drops the last partial training batch: {train_images // batch} updates per epoch and "
            f"{train_images % batch} images sitting out each epoch; animalcls {math.ceil(train_images / batch)} updates"
        )
    lines.append(
        f"warm-up start: timm's lr rises linearly from --warmup-lr {train_args.warmup_lr:g} at update 0 to lr at "
        f"update W; animalcls' from lr/W at step 0 to lr at step W-1 (both reach lr after the same warm-up "
        "epochs; checked)"
    )
    if recipe["ema"] > 0:
        lines.append(
            "EMA: timm's warm-up decay is 1-(1+n)^(-2/3) (no flag for its power) and it averages the BN running "
            "statistics too; animalcls' is min(decay, (1+n)/(10+n)) and it copies the BN statistics"
        )
    lines.append(
        "data path, by design: animalcls decodes once into a uint8 cache and flips on the device; timm decodes "
        "every image every epoch in its DataLoader workers (that is what the wall times compare)"
    )
    lines.append(
        "random streams: the same seed number draws different initial weights, batch orders and flips on the two sides"
    )
    return lines


# ---------------------------------------------------------------- runs


def timed(command: list[str], log: Path) -> float:
    """Run `command` with its output in `log`; the wall time in seconds. A failure stops the script."""
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"exit {done.returncode} after {seconds:.0f} s; see {log}")
    return seconds


def run_animalcls(args: argparse.Namespace, seed: int, out: Path, table: Path) -> dict[str, Any]:
    resize, crop = args.size
    run_dir = out / time.strftime(f"animalcls-seed{seed}-%Y%m%d-%H%M%S")
    command = [  # the interpreter timm's scripts run on too
        sys.executable,
        "-m",
        "animalcls",
        "train",
        *RECIPE_ARGS,
        f"epochs={args.epochs}",
        f"seed={seed}",
        f"data.root={Path(args.data).resolve()}",
        f"aug.resize={resize}",
        f"aug.crop={crop}",
        f"results={table}",
        f"hydra.run.dir={run_dir}",  # a fresh run dir each time
        f"data.cache_dir={run_dir / 'cache'}",  # a cold cache: the decode counts, as on a first run
        f"workers={args.workers}",  # the same number of decode workers as timm's loader
        "tags=[timm-compare]",
        "force=true",
    ]
    seconds = timed(command, out / "animalcls.log")
    rows = pd.read_csv(table, dtype=str)
    row = rows[rows["run_dir"].map(lambda d: Path(d).resolve() == run_dir.resolve())].iloc[-1]
    if row["precision"] != "fp32":
        raise Unfair(f"animalcls ran in {row['precision']}, timm in fp32")
    return {
        "test_top1": float(row["test_top1"]),
        "val_top1": float(row["val_top1"]),
        "wall_s": seconds,
        "run_dir": str(run_dir),
        "run_id": row["run_id"],
    }


def same_split(split: pd.DataFrame, split_csv: Path) -> None:
    """The split animalcls trained on is the one the checks ran on."""
    ran = pd.read_csv(split_csv, dtype=str)
    key = ["path", "label_idx", "split"]
    checked = split[key].astype(str).sort_values(key).reset_index(drop=True)
    if not checked.equals(ran[key].sort_values(key).reset_index(drop=True)):
        raise Unfair(f"animalcls' {split_csv} is not the split the checks ran on")


def run_timm(
    args: argparse.Namespace, shared: list[str], train_flags: list[str], folders: Path, seed: int, out: Path
) -> dict[str, Any]:
    repo = Path(args.timm_repo)
    train = [sys.executable, str(repo / "train.py"), "--data-dir", str(folders), *shared, *train_flags]
    train += ["--train-split", "train", "--val-split", "validation", "--seed", str(seed)]
    train += ["--checkpoint-hist", "1", "--output", str(out / "timm"), "--experiment", "run", "--log-interval", "1000"]
    shutil.rmtree(out / "timm" / "run", ignore_errors=True)
    train_s = timed(train, out / "timm-train.log")
    summary = pd.read_csv(out / "timm" / "run" / "summary.csv")
    if len(summary) != args.epochs:
        raise Unfair(f"timm trained {len(summary)} epochs, animalcls {args.epochs}")
    results = out / "timm-test.json"
    validate = [sys.executable, str(repo / "validate.py"), "--data-dir", str(folders), "--split", "test", *shared]
    validate += ["--checkpoint", str(out / "timm" / "run" / "model_best.pth.tar"), "--results-file", str(results)]
    # the EMA weights when there are some, as train.py then picked the best checkpoint by them
    validate += ["--results-format", "json", *(["--use-ema"] if "--model-ema" in train_flags else [])]
    test_s = timed(validate, out / "timm-test.log")
    tested = json.loads(results.read_text())
    tested = tested[0] if isinstance(tested, list) else tested
    return {
        "test_top1": float(tested["top1"]),
        "val_top1": float(summary["eval_top1"].max()),
        "wall_s": train_s + test_s,
        "epochs": len(summary),
    }


def timm_provenance(args: argparse.Namespace) -> dict[str, Any]:
    import timm

    repo = Path(args.timm_repo)
    commit = args.timm_commit
    if not commit:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = done.stdout.strip() if done.returncode == 0 else "unknown (not a git checkout; pass --timm-commit)"
    version_file = repo / "timm" / "version.py"
    repo_version = version_file.read_text().split("=")[-1].strip().strip("'\"") if version_file.exists() else None
    return {"version": timm.__version__, "repo": str(repo.resolve()), "commit": commit, "repo_version": repo_version}


def check_seed(args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    """Every check for one seed's split, before anything trains; raises Unfair."""
    data_root = Path(args.data).resolve()
    cfg = compose_recipe(tuple(args.size), seed)
    cfg.epochs = args.epochs
    recipe = recipe_values(cfg)
    split, classes = animalcls_split(data_root, cfg)
    class_map = write_split_folders(data_root, split, classes, out / "split")
    timm_aug = getattr(args, "timm_aug", "recipe")
    shared, train_flags = timm_flags(recipe, cfg, len(classes), class_map, args.workers, timm_aug)
    repo = Path(args.timm_repo)
    train_args = parse_timm_args(repo, "train", [*shared, *train_flags, "--seed", str(seed)])
    eval_args = parse_timm_args(repo, "validate", [*shared, "--split", "test"])
    train_images = int((split["split"] == "train").sum())
    checks = {
        "labels": check_labels(out / "split", class_map, split),
        "pixels": check_pixels(data_root, out / "split", class_map, split, cfg, eval_args, train_args, args.pixels),
        "training": check_training_setup(cfg, recipe, train_args, len(classes), train_images),
        "timm_settings": check_timm_defaults(train_args, recipe, args.epochs - recipe["warmup_epochs"], timm_aug),
    }
    return {
        "split": split,
        "recipe": recipe,
        "shared": shared,
        "train_flags": train_flags,
        "checks": checks,
        "known_differences": known_differences(cfg, recipe, train_args, train_images, checks["pixels"], timm_aug),
        "counts": {FOLDERS[k]: int(v) for k, v in split["split"].value_counts().items()},
    }


def print_checks(checks: dict[str, Any], differences: list[str]) -> None:
    pixels, training = checks["pixels"], checks["training"]
    print(f"labels: every image has animalcls' label in timm's dataset {checks['labels']['images']}")
    for view in ("eval", "train_view", "eval_at_animalcls_view"):
        if view in pixels:
            d = pixels[view]
            print(f"pixels {view:24} max |diff| {d['max_abs']:.4f}  mean {d['mean_abs']:.5f}  agree {d['agree']}")
    print(
        f"training setup: {training['parameters']} tensors, {training['optimizer']} settings equal, "
        f"{training['no_weight_decay']} without weight decay, epochs {training['epochs']}, "
        f"updates/epoch {training['updates_per_epoch']}, cosine gap <= {training['cosine_max_gap_of_lr']:.2%} "
        f"of lr, warm-up gap <= {training['warmup_max_gap_of_lr']:.1%}"
    )
    print("known differences:")
    for line in differences:
        print(f"  - {line}")


def mean_std(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return [mean, std]


# metric, whether higher is better: the paired difference is timm - animalcls, seed by seed
PAIRED_METRICS = (("test_top1", True), ("val_top1", True), ("wall_s", False))
VERDICT_NAMES = {"b beats a": "timm beats animalcls", "a beats b": "animalcls beats timm"}  # b is timm


def paired_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: both sides' mean and std over the seeds that have both, timm - animalcls per
    seed, its mean and Student-t 95 % interval, and the verdict of animalcls.report.paired (a
    side "beats" the other only from 3 seeds and an interval that excludes 0)."""
    from animalcls.report import paired

    both = [r for r in rows if "animalcls" in r and "timm" in r]
    summary: dict[str, Any] = {"seeds": [r["seed"] for r in both], "difference": "timm - animalcls"}
    for metric, higher_is_better in PAIRED_METRICS:
        ours = [float(r["animalcls"][metric]) for r in both]
        theirs = [float(r["timm"][metric]) for r in both]
        diffs = [t - o for t, o in zip(theirs, ours, strict=True)]
        interval = paired.paired_interval(diffs)
        said = paired.verdict(interval, higher_is_better)
        summary[metric] = {
            "animalcls": mean_std(ours) if ours else None,
            "timm": mean_std(theirs) if theirs else None,
            "per_seed": diffs,
            "mean": interval.mean,
            "ci95": [interval.low, interval.high],
            "verdict": VERDICT_NAMES.get(said, said),
        }
    return summary


def with_totals(report: dict[str, Any]) -> dict[str, Any]:
    """Adds each side's test top-1 mean and std and the paired summary; report["timm"] stays
    timm's provenance (version, commit): the per-seed numbers are in report["rows"]."""
    for side in ("animalcls", "timm"):
        report[f"{side}_test_top1_mean_std"] = mean_std([r[side]["test_top1"] for r in report["rows"]])
    report["paired"] = paired_summary(report["rows"])
    return report


def print_summary(report: dict[str, Any]) -> None:
    """The per-seed table and the paired comparison, from a compare.json's contents."""
    rows = [r for r in report["rows"] if "animalcls" in r and "timm" in r]
    seeds = [r["seed"] for r in rows]
    aug = report.get("timm_aug", "recipe")
    print(f"resnet18 from scratch, {report['epochs']} epochs, {report['size'][1]} px, seeds {seeds}, timm's aug: {aug}")
    print(f"{'seed':>4} {'side':10} {'val top-1':>10} {'test top-1':>11} {'wall s':>8}")
    for r in rows:
        for side in ("animalcls", "timm"):
            s = r[side]
            print(f"{r['seed']:>4} {side:10} {s['val_top1']:10.2f} {s['test_top1']:11.2f} {s['wall_s']:8.0f}")
    summary = paired_summary(rows)
    print(f"\npaired by seed, timm - animalcls (n={len(rows)}, Student-t 95 % interval):")
    for metric, _ in PAIRED_METRICS:
        m = summary[metric]
        (ma, sa), (mt, st) = m["animalcls"], m["timm"]
        per_seed = " ".join(f"{d:+.2f}" for d in m["per_seed"])
        low, high = m["ci95"]
        print(
            f"  {metric:9} animalcls {ma:.2f} +- {sa:.2f}, timm {mt:.2f} +- {st:.2f}; "
            f"per seed {per_seed}; mean {m['mean']:+.2f}, CI {low:+.2f} to {high:+.2f}: {m['verdict']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="an image folder (one subfolder per class)")
    parser.add_argument("--timm-repo", help="a checkout of pytorch-image-models (train.py)")
    parser.add_argument("--timm-commit", default="", help="its commit, where it is not a git checkout")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--size", type=int, nargs=2, default=(256, 224), metavar=("RESIZE", "CROP"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pixels", type=int, default=16, help="test images in the pixel check")
    parser.add_argument(
        "--timm-aug",
        choices=["recipe", "timm"],
        default="recipe",
        help="timm's training augmentation: the recipe's (matched) or train.py's own defaults",
    )
    parser.add_argument("--check-only", action="store_true", help="run the checks, train nothing")
    parser.add_argument("--out", default="outputs/timm-compare")
    parser.add_argument("--summary", metavar="COMPARE_JSON", help="print a recorded comparison's table, train nothing")
    args = parser.parse_args()
    if args.summary:
        print_summary(json.loads(Path(args.summary).read_text()))
        return
    if not (args.data and args.timm_repo):
        parser.error("--data and --timm-repo are needed to run a comparison (--summary only reads one)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"epochs": args.epochs, "seeds": args.seeds, "size": list(args.size)}
    report["timm_aug"] = args.timm_aug
    report["timm"] = timm_provenance(args)
    report["rows"] = []
    table = out / "results.csv"
    for seed in args.seeds:
        seed_out = out / f"seed{seed}"
        seed_out.mkdir(exist_ok=True)
        try:
            checked = check_seed(args, seed, seed_out)
        except Unfair as exc:
            sys.exit(f"seed {seed}: fairness check failed, nothing trained: {exc}")
        print(f"\nseed {seed}, split {checked['counts']}")
        print_checks(checked["checks"], checked["known_differences"])
        report |= {"recipe": checked["recipe"], "known_differences": checked["known_differences"]}
        report["timm_flags"] = {"shared": checked["shared"], "train": checked["train_flags"]}
        row: dict[str, Any] = {"seed": seed, "split": checked["counts"], "checks": checked["checks"]}
        if not args.check_only:
            try:
                row["animalcls"] = run_animalcls(args, seed, seed_out, table)
                same_split(checked["split"], Path(row["animalcls"]["run_dir"]) / "split.csv")
                folders = seed_out / "split"
                row["timm"] = run_timm(args, checked["shared"], checked["train_flags"], folders, seed, seed_out)
            except Unfair as exc:
                sys.exit(f"seed {seed}: {exc}")
        report["rows"].append(row)
        (out / "compare.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.check_only:
        print(f"\nchecks written to {out / 'compare.json'}")
        return
    with_totals(report)
    (out / "compare.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print_summary(report)
    print(f"written to {out / 'compare.json'}; animalcls' rows in {table}")


if __name__ == "__main__":
    main()
