"""resnet18 from scratch: `animalcls train recipe=scratch` against timm's train.py, same split and epochs.

    pip install timm            # plus timm's train.py and validate.py from its repository
    python scripts/compare_timm.py --data ../shared/datasets/caltech101-animals \\
        --timm-repo path/to/pytorch-image-models --epochs 10 --size 128 112 --out outputs/timm-compare

1. Runs `animalcls train model=resnet18 model.pretrained=false recipe=scratch tta=false` and times
   the process. Its decode cache starts cold, so its one decode is in its time, as timm's
   decoding every epoch is in timm's. (Flip TTA is off: timm's validate.py has no such option.)
2. Writes that run's split (its split.csv) out as train/validation/test folders of symlinks.
3. Runs timm's train.py with the same recipe on those folders (best checkpoint by validation
   top-1, as animalcls' test_on=best), then timm's validate.py on the test folder; times both.
   The recipe's numbers (lr, weight decay, batch, warm-up, smoothing, crop, flip, EMA) are read
   from the config animalcls composes, so the two sides cannot drift apart.
4. Prints test top-1 and wall time side by side and writes them to OUT/compare.json.

Both sides read the same images, at the same size (resize R, crop C), on the same machine, one
after the other. What differs is how each tool gets there: animalcls decodes once into a cache
and augments on the device; timm decodes every image every epoch in its DataLoader workers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

RECIPE_ARGS = ["model=resnet18", "model.pretrained=false", "recipe=scratch", "tta=false"]


def recipe_values(args: argparse.Namespace) -> dict:
    """The scratch recipe's numbers for resnet18, as `animalcls train` composes them."""
    from animalcls.config import compose

    resize, crop = args.size
    cfg = compose([*RECIPE_ARGS, f"aug.resize={resize}", f"aug.crop={crop}"])
    if (cfg.optim.name, cfg.sched.name) != ("adamw", "cosine"):
        sys.exit(f"compare_timm maps AdamW with a cosine schedule only, not {cfg.optim.name} with {cfg.sched.name}")
    if cfg.sched.warmup_steps or cfg.sched.warmup_epochs != int(cfg.sched.warmup_epochs):
        sys.exit("compare_timm needs a warm-up of whole epochs (timm's --warmup-epochs is an integer)")
    return {
        "lr": cfg.lr,
        "weight_decay": cfg.optim.weight_decay,
        "batch_size": cfg.batch_size,
        "warmup_epochs": int(cfg.sched.warmup_epochs),
        "min_lr": cfg.lr * cfg.sched.min_lr_ratio,
        "smoothing": cfg.loss.label_smoothing,
        "scale": list(cfg.aug.rrc_scale),
        "ratio": list(cfg.aug.rrc_ratio),
        "hflip": cfg.aug.hflip,
        "ema": cfg.ema.decay,
    }


def timm_recipe_flags(recipe: dict) -> list[str]:
    """train.py's flags for the recipe. A crop of scale 1 is animalcls' centre square, which timm
    gives for scale 1 with ratio 1 (the whole-image crop does not fit, so it falls back to the centre)."""
    ratio = recipe["ratio"] if recipe["scale"] != [1.0, 1.0] else [1.0, 1.0]
    flags = ["--opt", "adamw", "--lr", str(recipe["lr"]), "--weight-decay", str(recipe["weight_decay"])]
    flags += ["-b", str(recipe["batch_size"]), "--sched", "cosine", "--sched-on-updates"]
    flags += ["--warmup-epochs", str(recipe["warmup_epochs"]), "--min-lr", str(recipe["min_lr"])]
    flags += ["--smoothing", str(recipe["smoothing"]), "--scale", *map(str, recipe["scale"])]
    flags += ["--ratio", *map(str, ratio), "--hflip", str(recipe["hflip"]), "--color-jitter", "0"]
    if recipe["ema"] > 0:
        flags += ["--model-ema", "--model-ema-decay", str(recipe["ema"]), "--model-ema-warmup"]
    return flags


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


def run_animalcls(args: argparse.Namespace, out: Path) -> dict:
    resize, crop = args.size
    table, stamp = out / "results.csv", time.strftime("animalcls-%Y%m%d-%H%M%S")
    command = [  # the interpreter timm's scripts run on too
        sys.executable,
        "-m",
        "animalcls",
        "train",
        *RECIPE_ARGS,
        f"epochs={args.epochs}",
        f"seed={args.seed}",
        f"data.root={Path(args.data).resolve()}",
        f"aug.resize={resize}",
        f"aug.crop={crop}",
        f"results={table}",
        f"hydra.run.dir={out / stamp}",  # a fresh run dir each time
        f"data.cache_dir={out / stamp / 'cache'}",  # a cold cache: the decode counts, as on a first run
        f"workers={args.workers}",  # the same number of decode workers as timm's loader
        "tags=[timm-compare]",
        "force=true",
    ]
    seconds = timed(command, out / "animalcls.log")
    row = pd.read_csv(table, dtype=str).iloc[-1]
    return {
        "test_top1": float(row["test_top1"]),
        "val_top1": float(row["val_top1"]),
        "wall_s": seconds,
        "run_dir": row["run_dir"],
    }


def write_split_folders(data: Path, split_csv: Path, out: Path) -> dict[str, int]:
    """train/validation/test folders of symlinks to the images, in class subfolders."""
    split = pd.read_csv(split_csv, dtype=str)
    names = {"train": "train", "val": "validation", "test": "test"}
    if out.exists():
        shutil.rmtree(out)
    for _, image in split.iterrows():
        target = out / names[image["split"]] / image["label"] / Path(image["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((data / image["path"]).resolve())
    return {names[key]: int(count) for key, count in split["split"].value_counts().items()}


def run_timm(args: argparse.Namespace, recipe: dict, folders: Path, classes: int, out: Path) -> dict:
    resize, crop = args.size
    repo = Path(args.timm_repo)
    shared = ["--model", "resnet18", "--num-classes", str(classes), "--img-size", str(crop)]
    shared += ["--crop-pct", f"{crop / resize:.6f}", "--interpolation", "bilinear"]  # torchvision Resize
    shared += ["--device", "cpu", "--workers", str(args.workers)]
    train = [sys.executable, str(repo / "train.py"), "--data-dir", str(folders), *shared]
    train += ["--train-split", "train", "--val-split", "validation", "--epochs", str(args.epochs)]
    flags = timm_recipe_flags(recipe)
    train += ["--seed", str(args.seed), *flags, "--no-prefetcher", "--checkpoint-hist", "1"]
    train += ["--output", str(out / "timm"), "--experiment", "run", "--log-interval", "1000"]
    shutil.rmtree(out / "timm" / "run", ignore_errors=True)
    train_s = timed(train, out / "timm-train.log")
    summary = pd.read_csv(out / "timm" / "run" / "summary.csv")
    results = out / "timm-test.json"
    validate = [sys.executable, str(repo / "validate.py"), "--data-dir", str(folders), "--split", "test", *shared]
    validate += ["--checkpoint", str(out / "timm" / "run" / "model_best.pth.tar"), "--results-file", str(results)]
    # the EMA weights when there are some, as train.py then picked the best checkpoint by them
    validate += ["--results-format", "json", *(["--use-ema"] if recipe["ema"] > 0 else [])]
    test_s = timed(validate, out / "timm-test.log")
    tested = json.loads(results.read_text())
    tested = tested[0] if isinstance(tested, list) else tested
    return {
        "test_top1": float(tested["top1"]),
        "val_top1": float(summary["eval_top1"].max()),
        "wall_s": train_s + test_s,
        "recipe_flags": flags,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an image folder (one subfolder per class)")
    parser.add_argument("--timm-repo", required=True, help="a checkout of pytorch-image-models (train.py)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 224), metavar=("RESIZE", "CROP"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="outputs/timm-compare")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    recipe = recipe_values(args)
    ours = run_animalcls(args, out)
    counts = write_split_folders(Path(args.data), Path(ours["run_dir"]) / "split.csv", out / "split")
    classes = len(list((out / "split" / "train").iterdir()))
    theirs = run_timm(args, recipe, out / "split", classes, out)

    report = {"epochs": args.epochs, "seed": args.seed, "size": list(args.size), "split": counts}
    report |= {"recipe": recipe, "animalcls": ours, "timm": theirs}
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresnet18 from scratch, {args.epochs} epochs, seed {args.seed}, {args.size[1]} px, split {counts}")
    print(f"{'':10} {'val top-1':>10} {'test top-1':>11} {'wall s':>8}")
    for name, side in (("animalcls", ours), ("timm", theirs)):
        print(f"{name:10} {side['val_top1']:10.2f} {side['test_top1']:11.2f} {side['wall_s']:8.0f}")
    print(f"wall time timm / animalcls: {theirs['wall_s'] / ours['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
