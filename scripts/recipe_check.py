"""Does `recipe=scratch` still beat the paper's best base recipe on photos it was not tuned on?

    python scripts/recipe_check.py --data ../shared/datasets/caltech101-animals --size 48 \\
        --seeds 0 1 2 --epochs 15 --out docs/experiments/caltech48-2026-12-05

The recipe was chosen on Caltech-101 animals' validation splits at 112 px. This writes a copy of a
data set downsampled to SIZE px on its shorter side (blurry thumbnails: a data set of another
character), trains the base CNN at SIZE px with both recipes over the same seeds (the paper's best
base configuration, Table 2.1.7 row 3, against `recipe=scratch` with the same model options, in
fp32), all into OUT/results.csv, and prints the paired comparison (`animalcls compare`). The
verdict is the comparison's: "beats" only with 3 or more seeds and a 95 % interval that excludes 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from animalcls.data import scan  # noqa: E402

SIDES = {
    "paper-best": ["+paper_config=base-adam-lr1e-4-bs16-e10-ce-bn-drop0p5"],
    "recipe-scratch": ["recipe=scratch", "model.batch_norm=true", "model.dropout=0.5"],
}


def downsample(source: Path, target: Path, size: int) -> int:
    """Every image animalcls finds in `source` (its own scan: the same images, classes and hidden-
    file rules as a run) with its shorter side resized to `size` px, as JPEG, into `target`;
    images already written are kept. Returns the number of images."""
    data = scan(source)
    for relative in data.paths:
        out = (target / relative).with_suffix(".jpg")
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(data.root / relative) as picture:
            picture = picture.convert("RGB")
            scale = size / min(picture.size)
            shape = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            picture.resize(shape, Image.Resampling.BICUBIC, reducing_gap=3.0).save(out, quality=90)
    return len(data.paths)


def train(name: str, side: list[str], args: argparse.Namespace, data: Path, out: Path) -> None:
    seeds = ",".join(map(str, args.seeds))
    command = [sys.executable, "-m", "animalcls", "train", "-m", *side, f"seed={seeds}", f"epochs={args.epochs}"]
    command += [f"data.root={data}", f"aug.resize={args.size}", f"aug.crop={args.size}", "amp=off"]
    command += [f"results={out / 'results.csv'}", f"data.cache_dir={out / 'cache'}"]
    command += [f"hydra.sweep.dir={out / 'runs' / name}"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="an image folder (one subfolder per class)")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out.resolve()
    data = out / "data" / f"{args.data.resolve().name}-{args.size}px"
    print(f"{downsample(args.data, data, args.size)} images at {args.size} px in {data}", flush=True)
    for name, side in SIDES.items():
        train(name, [*side, f"tags=[{name}]"], args, data, out)  # a seed already in the table is skipped as done
    compare = [sys.executable, "-m", "animalcls", "compare", f"results={out / 'results.csv'}"]
    compare += ["a.tags=paper-best", "b.tags=recipe-scratch", "vary=[optimizer,lr,weight_decay,recipe,recipe_settings]"]
    print("$", " ".join(compare), flush=True)
    return subprocess.run(compare).returncode


if __name__ == "__main__":
    sys.exit(main())
