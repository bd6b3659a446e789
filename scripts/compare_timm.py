"""resnet18 from scratch: `animalcls train recipe=scratch` against timm's train.py, same split and epochs.

    pip install timm            # plus timm's train.py and validate.py from its repository
    python scripts/compare_timm.py --data ../shared/datasets/caltech101-animals \\
        --timm-repo path/to/pytorch-image-models --epochs 10 --size 128 112 --out outputs/timm-compare

1. Runs `animalcls train model=resnet18 model.pretrained=false recipe=scratch` (AdamW, cosine with
   a 1-epoch warm-up, label smoothing 0.1, flip, random-resized crop 0.6-1, weight EMA 0.998) and
   times the process. Its decode cache starts cold, so its one decode is in its time, as timm's
   decoding every epoch is in timm's.
2. Writes that run's split (its split.csv) out as train/validation/test folders of symlinks.
3. Runs timm's train.py with the same recipe on those folders (best checkpoint by validation
   top-1, as animalcls' test_on=best), then timm's validate.py on the test folder; times both.
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

RECIPE = {"lr": 1e-3, "weight_decay": 0.02, "batch_size": 32, "smoothing": 0.1, "scale": (0.6, 1.0), "ema": 0.998}


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
        "model=resnet18",
        "model.pretrained=false",
        "recipe=scratch",
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


def run_timm(args: argparse.Namespace, folders: Path, classes: int, out: Path) -> dict:
    resize, crop = args.size
    repo = Path(args.timm_repo)
    shared = ["--model", "resnet18", "--num-classes", str(classes), "--img-size", str(crop)]
    shared += ["--crop-pct", f"{crop / resize:.6f}", "--interpolation", "bilinear"]  # torchvision Resize
    shared += ["--device", "cpu", "--workers", str(args.workers)]
    train = [sys.executable, str(repo / "train.py"), "--data-dir", str(folders), *shared]
    train += ["--train-split", "train", "--val-split", "validation", "--epochs", str(args.epochs)]
    train += ["--seed", str(args.seed), "--opt", "adamw", "--lr", str(RECIPE["lr"])]
    train += ["--weight-decay", str(RECIPE["weight_decay"]), "-b", str(RECIPE["batch_size"])]
    train += ["--sched", "cosine", "--sched-on-updates", "--warmup-epochs", "1", "--min-lr", "0"]
    train += ["--smoothing", str(RECIPE["smoothing"]), "--scale", *map(str, RECIPE["scale"])]
    train += ["--hflip", "0.5", "--color-jitter", "0", "--no-prefetcher", "--checkpoint-hist", "1"]
    train += ["--model-ema", "--model-ema-decay", str(RECIPE["ema"]), "--model-ema-warmup"]
    train += ["--output", str(out / "timm"), "--experiment", "run", "--log-interval", "1000"]
    shutil.rmtree(out / "timm" / "run", ignore_errors=True)
    train_s = timed(train, out / "timm-train.log")
    summary = pd.read_csv(out / "timm" / "run" / "summary.csv")
    results = out / "timm-test.json"
    validate = [sys.executable, str(repo / "validate.py"), "--data-dir", str(folders), "--split", "test", *shared]
    validate += ["--checkpoint", str(out / "timm" / "run" / "model_best.pth.tar"), "--results-file", str(results)]
    validate += ["--results-format", "json", "--use-ema"]  # the EMA weights, as train.py picked the best by
    test_s = timed(validate, out / "timm-test.log")
    tested = json.loads(results.read_text())
    tested = tested[0] if isinstance(tested, list) else tested
    return {
        "test_top1": float(tested["top1"]),
        "val_top1": float(summary["eval_top1"].max()),
        "wall_s": train_s + test_s,
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

    ours = run_animalcls(args, out)
    counts = write_split_folders(Path(args.data), Path(ours["run_dir"]) / "split.csv", out / "split")
    classes = len(list((out / "split" / "train").iterdir()))
    theirs = run_timm(args, out / "split", classes, out)

    report = {"epochs": args.epochs, "seed": args.seed, "size": list(args.size), "split": counts}
    report |= {"recipe": RECIPE, "animalcls": ours, "timm": theirs}
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresnet18 from scratch, {args.epochs} epochs, seed {args.seed}, {args.size[1]} px, split {counts}")
    print(f"{'':10} {'val top-1':>10} {'test top-1':>11} {'wall s':>8}")
    for name, side in (("animalcls", ours), ("timm", theirs)):
        print(f"{name:10} {side['val_top1']:10.2f} {side['test_top1']:11.2f} {side['wall_s']:8.0f}")
    print(f"wall time timm / animalcls: {theirs['wall_s'] / ours['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
