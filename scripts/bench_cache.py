"""The decode cache at scale: build speed, memory, disk, start-up and one loader epoch (issue 21).

    python scripts/bench_cache.py [--images 5000] [--crop 112] [--dir /tmp/animalcls-bench-cache] [--out FILE]

Writes N synthetic JPEGs of a realistic size (300x200, gradients plus noise, about 35 KB each; kept
in --dir and reused by the next run), then, each in a fresh process so that its peak memory is its
own:
  - decode only, 2000 images, a thread pool vs a process pool at every usable core (the choice
    behind data/cache.py's threads) and a thread pool of 1;
  - the cache build with 1 decode thread and with every usable core: wall seconds, img/s, peak
    RSS (VmHWM) and peak RssAnon (sampled every 20 ms; mapped file pages are not anonymous), the
    cache file's size; the build at every core also resumes nothing (a fresh dir each);
  - start-up on a built cache: scan + cache_key (a stat per file) + the memory-mapped load;
  - one epoch of TensorBatches over the whole cache (shuffled, batch 256, CPU), img/s and the
    RssAnon it added, with the file in the page cache (a second epoch's view; a first read from
    disk is bounded by the disk instead).
Prints a table and writes it to --out (default docs/bench/cache-<date>.txt only when asked).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def make_jpegs(root: Path, count: int) -> Path:
    """`count` 300x200 JPEGs in 10 class folders (reused if already there)."""
    import numpy as np
    from PIL import Image

    have = len(list(root.glob("*/*.jpg"))) if root.exists() else 0
    if have >= count:
        return root
    yy, xx = np.mgrid[0:200, 0:300]

    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        base = (np.stack([xx * (i % 7 + 1), yy * (i % 5 + 1), xx + yy], -1) % 256).astype(np.int16)
        pixels = np.clip(base + rng.integers(-40, 40, base.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        folder = root / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"img_{i:07d}.jpg", quality=90)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, range(count)))
    return root


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class PeakAnon:
    """The highest RssAnon seen while the block runs (sampled in a thread)."""

    def __enter__(self) -> PeakAnon:
        self.base = self.peak = _status("RssAnon")
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from animalcls.data import TensorBatches, cache_key, load_cache, scan

    if args.child == "decode":
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        from animalcls.data.decode import decode_or_reason

        paths = sorted(Path(args.root).glob("*/*.jpg"))[:2000]
        decode_or_reason(paths[0], args.crop, args.crop)  # imports out of the clock
        pool_type = ThreadPoolExecutor if args.pool == "thread" else ProcessPoolExecutor
        start = time.perf_counter()
        with pool_type(args.workers) as pool:
            for _ in pool.map(
                decode_or_reason,
                paths,
                [args.crop] * len(paths),
                [args.crop] * len(paths),
                chunksize=1 if args.pool == "thread" else 32,
            ):
                pass
        seconds = time.perf_counter() - start
        return {"images": len(paths), "seconds": seconds, "img_s": len(paths) / seconds}
    if args.child == "build":
        data = scan(args.root)
        import torchvision.transforms.functional  # noqa: F401  (decode's import, out of the clock)
        from tqdm.auto import tqdm  # noqa: F401

        with PeakAnon() as anon:
            start = time.perf_counter()
            images, _ = load_cache(data, args.crop, args.crop, args.cache, workers=args.workers)
            seconds = time.perf_counter() - start
        file = next(Path(args.cache).glob("*[0-9a-f].npy"))
        return {
            "images": len(data.paths),
            "seconds": seconds,
            "img_s": len(data.paths) / seconds,
            "peak_rss": _status("VmHWM"),
            "anon_before": anon.base,
            "anon_peak": anon.peak,
            "file_bytes": file.stat().st_size,
        }
    # start-up and one epoch
    start = time.perf_counter()
    data = scan(args.root)
    scanned = time.perf_counter()
    cache_key(data, args.crop, args.crop)
    keyed = time.perf_counter()
    images, _ = load_cache(data, args.crop, args.crop, args.cache, workers=1)
    loaded = time.perf_counter()
    rows = torch.arange(images.shape[0])
    labels = torch.from_numpy(data.labels)
    batches = TensorBatches(images, labels, 256, torch.device("cpu"), shuffle=True, rows=rows)
    for _x, _ in batches:  # warm the page cache (the file was just written: usually warm already)
        pass
    batches.set_epoch(1)
    with PeakAnon() as anon:
        start_epoch = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in batches)
        epoch = time.perf_counter() - start_epoch
    return {
        "scan_s": scanned - start,
        "key_s": keyed - scanned,
        "load_s": loaded - keyed,
        "epoch_img_s": seen / epoch,
        "epoch_anon_added": anon.peak - anon.base,
    }


def run_child(*extra: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--dir", default="/tmp/animalcls-bench-cache")
    parser.add_argument("--out", default="")
    parser.add_argument("--skip-decode", action="store_true", help="skip the threads-vs-processes comparison")
    parser.add_argument("--child", choices=["decode", "build", "epoch"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pool", default="thread", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import shutil

    from animalcls.data.cache import usable_cores

    cores = usable_cores()
    work = Path(args.dir)
    root = work / f"jpegs-{args.images}"
    start = time.perf_counter()
    make_jpegs(root, args.images)
    jpeg_bytes = sum(p.stat().st_size for p in root.glob("*/*.jpg"))
    lines = [
        f"bench_cache: {args.images} synthetic 300x200 JPEGs ({jpeg_bytes / args.images / 1e3:.1f} KB each, "
        f"made in {time.perf_counter() - start:.0f} s), crop {args.crop}, {cores} usable cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f} (a shared machine)",
    ]
    common = ["--root", str(root), "--crop", str(args.crop)]
    if not args.skip_decode:
        lines.append("decode only, 2000 images (img/s):")
        for pool, workers in [
            ("thread", 1),
            ("thread", cores),
            ("process", cores),
            ("thread", cores),
            ("process", cores),
        ]:
            got = run_child("--child", "decode", *common, "--pool", pool, "--workers", str(workers))
            lines.append(f"  {pool:7s} x{workers}: {got['img_s']:7.0f}")
            print(lines[-1], flush=True)
    lines.append("build (fresh cache dir each):")
    for workers in (1, cores):
        cache = work / f"cache-{args.images}-{workers}"
        shutil.rmtree(cache, ignore_errors=True)
        got = run_child("--child", "build", *common, "--cache", str(cache), "--workers", str(workers))
        lines.append(
            f"  {workers} thread(s): {got['seconds']:7.1f} s  {got['img_s']:6.0f} img/s  "
            f"peak RSS {got['peak_rss'] / 2**20:6.0f} MiB  RssAnon {got['anon_before'] / 2**20:.0f} -> peak "
            f"{got['anon_peak'] / 2**20:.0f} MiB  file {got['file_bytes'] / 1e9:.3f} GB "
            f"({got['file_bytes'] / got['images']:.0f} B/image)"
        )
        print(lines[-1], flush=True)
    got = run_child("--child", "epoch", *common, "--cache", str(work / f"cache-{args.images}-{cores}"))
    lines.append(
        f"start-up on the built cache: scan {got['scan_s']:.2f} s, cache_key {got['key_s']:.2f} s, "
        f"mapped load {got['load_s']:.3f} s"
    )
    lines.append(
        f"one epoch of TensorBatches (batch 256, shuffled, CPU, file in the page cache): "
        f"{got['epoch_img_s']:.0f} img/s, RssAnon added {got['epoch_anon_added'] / 2**20:.1f} MiB"
    )
    print("\n".join(lines[-2:]), flush=True)
    for workers in (1, cores):
        shutil.rmtree(work / f"cache-{args.images}-{workers}", ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as stream:
            stream.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
