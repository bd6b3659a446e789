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
    disk is bounded by the disk instead);
  - the read order (data.order, --order-rounds): one epoch each of order=random and order=block,
    alternating, each in a fresh process on a cold page cache (the cache file's pages evicted with
    posix_fadvise(DONTNEED) first: a cache larger than RAM, read from disk every epoch), with the
    ratio block/random per round; then both once with the file in the page cache; then, with
    --starved-every K, passes that evict the file every K batches (RAM that holds about K batches:
    the kernel's read-ahead around each random row is then thrown away before its neighbours are
    read, as when the cache is much larger than RAM).
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
    if args.child == "order":
        return order_pass(args)
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


def resident_bytes(file: Path) -> int:
    """How much of `file` is in the page cache (util-linux fincore); -1 where it is not installed."""
    import shutil

    if not shutil.which("fincore"):
        return -1
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(file)], capture_output=True, text=True
    )
    return int(out.stdout.strip() or -1) if out.returncode == 0 else -1


def order_pass(args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of TensorBatches (batch 256, shuffled, CPU) over the whole cache in `args.order`.

    --cold: the file's pages are evicted first (fsync, then posix_fadvise DONTNEED: no root needed
    for clean pages; pages mapped by a process stay, so this runs before the file is mapped).
    --warm: an untimed epoch first. --evict-every K: during the pass, every K batches the mapping's
    pages are dropped (madvise DONTNEED) and the file's evicted again, that time off the clock;
    --max-batches stops the pass early."""
    import mmap

    import numpy as np
    import torch

    from animalcls.data import TensorBatches

    file = next(Path(args.cache).glob("*[0-9a-f].npy"))
    fd = os.open(file, os.O_RDONLY)
    try:
        if args.cold or args.evict_every:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        resident_before = resident_bytes(file)
        array = np.load(file, mmap_mode="c", allow_pickle=False)  # as data/cache.py maps it
        images = torch.from_numpy(array)
        n = images.shape[0]
        batches = TensorBatches(
            images,
            torch.zeros(n, dtype=torch.long),
            256,
            torch.device("cpu"),
            shuffle=True,
            rows=torch.arange(n),
            order=args.order,
            block_images=args.block_images,
            block_window=args.block_window,
        )
        if args.warm:
            batches.set_epoch(10_000 + args.epoch)
            for _x, _ in batches:
                pass
        batches.set_epoch(args.epoch)
        seen, evicting, count = 0, 0.0, 0
        start = time.perf_counter()
        for x, _ in batches:
            seen += int(x.shape[0])
            count += 1
            if args.evict_every and count % args.evict_every == 0:
                paused = time.perf_counter()
                array._mmap.madvise(mmap.MADV_DONTNEED)  # our mapping's pages (copy-on-write, unwritten)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                evicting += time.perf_counter() - paused
            if args.max_batches and count >= args.max_batches:
                break
        seconds = time.perf_counter() - start - evicting
    finally:
        os.close(fd)
    return {
        "images": seen,
        "img_s": seen / seconds,
        "resident_before": resident_before,
        "file_bytes": file.stat().st_size,
    }


def run_child(*extra: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def available_ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def read_ahead_kb(path: Path) -> str:
    """The read-ahead of the block device under `path` (the kernel reads this much around a fault)."""
    try:
        dev = os.stat(path).st_dev
        sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        queue = sysfs / "queue" if (sysfs / "queue").exists() else sysfs.resolve().parent / "queue"
        return (queue / "read_ahead_kb").read_text().strip() + " KB"
    except OSError:
        return "unknown"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _rounds(args: argparse.Namespace, common: list[str], title: str, *flags: str) -> list[str]:
    lines = [title, "    round  random img/s  block img/s  block/random"]
    print(lines[0], flush=True)
    ratios = []
    for round_ in range(args.order_rounds):
        got = {
            order: run_child(*common, "--order", order, "--epoch", str(round_), *flags)
            for order in ("random", "block")  # alternating: random, block, random, block, ...
        }
        ratios.append(got["block"]["img_s"] / got["random"]["img_s"])
        lines.append(
            f"    {round_ + 1:5d}  {got['random']['img_s']:12.0f}  {got['block']['img_s']:11.0f}  {ratios[-1]:12.2f}"
            + (
                f"   (resident before: {got['random']['resident_before'] / 2**20:.0f} / "
                f"{got['block']['resident_before'] / 2**20:.0f} MiB)"
                if got["random"]["resident_before"] >= 0
                else ""
            )
        )
        print(lines[-1], flush=True)
    above = sum(r > 1 for r in ratios)
    lines.append(
        f"    median block/random {_median(ratios):.2f}; block above random in {above} of {len(ratios)} rounds"
    )
    print(lines[-1], flush=True)
    return lines


def compare_orders(args: argparse.Namespace, cache: Path, common: list[str]) -> list[str]:
    """data.order=random vs block, one epoch each over the whole cache, cold, warm and starved."""
    file = next(cache.glob("*[0-9a-f].npy"))
    common = [
        "--child", "order", *common, "--cache", str(cache),
        "--block-images", str(args.block_images), "--block-window", str(args.block_window),
    ]  # fmt: skip
    lines = [
        f"read order (data.order), TensorBatches over the whole cache ({file.stat().st_size / 1e9:.3f} GB), "
        f"batch 256, shuffled, CPU; block = {args.block_images} images x window {args.block_window}; "
        f"device read-ahead {read_ahead_kb(file)}; each pass a fresh process, random and block alternating"
    ]
    print(lines[0], flush=True)
    lines += _rounds(
        args, common, "  cold: the file evicted from the page cache before each pass (one epoch from disk)", "--cold"
    )
    warm = {order: run_child(*common, "--order", order, "--warm")["img_s"] for order in ("random", "block")}
    lines.append(
        f"  warm: the file in the page cache (after an untimed epoch): random {warm['random']:.0f} img/s, "
        f"block {warm['block']:.0f} img/s, block/random {warm['block'] / warm['random']:.2f}"
    )
    print(lines[-1], flush=True)
    if args.starved_every:
        lines += _rounds(
            args,
            common,
            f"  starved: cold, and the file evicted again every {args.starved_every} batches "
            f"({args.starved_every * 256} images; eviction off the clock), first {args.starved_batches} batches",
            "--evict-every",
            str(args.starved_every),
            "--max-batches",
            str(args.starved_batches),
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--dir", default="/tmp/animalcls-bench-cache")
    parser.add_argument("--out", default="")
    parser.add_argument("--skip-decode", action="store_true", help="skip the threads-vs-processes comparison")
    parser.add_argument("--order-only", action="store_true", help="skip the decode comparison and the 1-thread build")
    parser.add_argument("--order-rounds", type=int, default=3, help="cold random/block rounds (0: skip)")
    parser.add_argument("--block-images", type=int, default=256, help="data.block_images of order=block")
    parser.add_argument("--block-window", type=int, default=8, help="data.block_window of order=block")
    parser.add_argument("--starved-every", type=int, default=0, help="also evict every K batches (0: skip)")
    parser.add_argument("--starved-batches", type=int, default=48, help="batches per starved pass")
    parser.add_argument("--child", choices=["decode", "build", "epoch", "order"], help=argparse.SUPPRESS)
    parser.add_argument("--order", default="random", help=argparse.SUPPRESS)
    parser.add_argument("--epoch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--evict-every", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-batches", type=int, default=0, help=argparse.SUPPRESS)
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
        f"  CPU {cpu_model()}; disk free at {work}: {shutil.disk_usage(work).free / 1e9:.0f} GB; "
        f"RAM available {available_ram() / 1e9:.1f} GB",
    ]
    print("\n".join(lines), flush=True)  # what the run measured, and where, with the numbers below
    common = ["--root", str(root), "--crop", str(args.crop)]
    if not (args.skip_decode or args.order_only):
        lines.append("decode only, 2000 images (img/s):")
        print(lines[-1], flush=True)
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
    print(lines[-1], flush=True)
    for workers in (cores,) if args.order_only else (1, cores):
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
    if args.order_rounds:
        lines += compare_orders(args, work / f"cache-{args.images}-{cores}", common)
    for workers in (1, cores):
        shutil.rmtree(work / f"cache-{args.images}-{workers}", ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as stream:
            stream.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
