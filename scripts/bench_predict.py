"""Batched `animalcls predict` on a folder vs one `animalcls predict` call per image.

    python scripts/bench_predict.py [--images N] [--singles 20] [--ckpt PATH] [--device cpu]

Makes N test images (96 px, like the demo set) and, unless --ckpt is given, a checkpoint of an
untrained base CNN at 112 px (the speed does not depend on the weights) in a temporary folder.
Then it times, as a user would run them (a fresh process each):
  - batched: `animalcls predict ckpt=... images=FOLDER/ out=preds.csv` over all N images (3 runs,
    median), and
  - one call per image: `animalcls predict ckpt=... images=IMAGE` for --singles of the images; the
    mean time per call times N is the per-image loop's time (extrapolated, not run N times).
The batched runs are spread between the single calls, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command() -> list[str]:
    found = shutil.which("animalcls")
    return [found] if found else [sys.executable, "-m", "animalcls"]


def make_checkpoint(folder: Path, classes: list[str]) -> Path:
    import torch
    from omegaconf import OmegaConf

    from animalcls.build import create_model
    from animalcls.config import compose

    cfg = compose(["data.root=images"])
    torch.manual_seed(0)
    model = create_model(cfg.model.name, len(classes), input_size=cfg.aug.crop)
    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "classes": classes, "run_id": "bench"}
    path = folder / "best.pt"
    torch.save({"format": 2, "model": model.state_dict(), "meta": meta, "epoch": 1}, path)
    return path


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images in the folder (default 300)")
    parser.add_argument("--singles", type=int, default=20, help="single-image calls timed (default 20)")
    parser.add_argument("--ckpt", help="a checkpoint to use instead of an untrained base CNN")
    parser.add_argument("--device", default="cpu", help="device= for predict (default cpu)")
    options = parser.parse_args()

    from animalcls.demo import make_image_folder

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = Path(tmp)
        per_class = -(-options.images // 6)
        make_image_folder(work / "images", classes=6, per_class=per_class, size=96)
        files = sorted((work / "images").rglob("*.jpg"))
        for extra in files[options.images :]:
            extra.unlink()
        files = files[: options.images]
        ckpt = Path(options.ckpt).resolve() if options.ckpt else make_checkpoint(work, [f"class_{i}" for i in range(6)])
        base = [*command(), "predict", f"ckpt={ckpt}", f"device={options.device}"]
        batched_args = [*base, f"images=[{work / 'images'}]", f"out={work / 'preds.csv'}"]
        step = max(1, len(files) // options.singles)
        singles = files[::step][: options.singles]

        timed(batched_args, work)  # warm the file cache and the imports once, untimed
        batched, single = [], []
        for part in range(3):
            batched.append(timed(batched_args, work))
            for image in singles[part * len(singles) // 3 : (part + 1) * len(singles) // 3]:
                single.append(timed([*base, f"images={image}"], work))
        per_call = statistics.mean(single)
        loop = per_call * len(files)
        fast = statistics.median(batched)
        print(f"{len(files)} images, device={options.device}, {Path(base[0]).name} {' '.join(base[1:2])}")
        print(f"{'batched: one call, folder':<44} {'one call per image (extrapolated)':<44} speed-up")
        print(
            f"{f'{fast:.1f} s (median of 3 runs)':<44} "
            f"{f'{loop:.1f} s ({per_call:.2f} s/call x {len(files)}; {len(single)} calls timed)':<44} "
            f"{loop / fast:.1f}x"
        )


if __name__ == "__main__":
    main()
