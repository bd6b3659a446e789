"""The decode cache's build speed, this working tree against another git revision, side by side.

    python scripts/bench_build_revs.py [--base HEAD] [--images 20000] [--rounds 3] [--dir /tmp/animalcls-bench-cache]
        [--same-bytes FOLDER]

Checks the base revision out into a temporary git worktree, then, for each round, builds the
cache of the same N synthetic 300x200 JPEGs (bench_cache.make_jpegs, reused from --dir) at 112 px
with each code base and 1 and every usable core's decode threads, each build in a fresh process
with PYTHONPATH pointing at that code's src/, the order reversed every other round so that both
meet the same load. Prints img/s per build, the per-round ratio working tree / base, and per thread
count the paired difference over rounds with its 95 % t-interval and verdict
(animalcls.report.paired: "faster" only with 3 or more rounds and an interval that excludes 0).
With --same-bytes FOLDER it first builds FOLDER's cache at three sizes with both code bases and
stops unless the files are byte-identical: a faster build must not change what runs train on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# One build in a fresh process: img/s and the CPU seconds it used per wall second.
CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
import animalcls
assert animalcls.__file__.startswith(os.environ["PYTHONPATH"]), animalcls.__file__
from animalcls.data.cache import load_cache
from animalcls.data.scan import scan

folder, cache, resize, crop, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
data = scan(folder)
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
load_cache(data, resize, crop, cache, workers=threads)
wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
print(json.dumps({"images_per_s": len(data.paths) / wall, "cpu_per_wall": cpu / wall}))
"""


def build(src: Path, folder: Path, resize: int, crop: int, threads: int, cache: Path) -> dict[str, float]:
    """Build `folder`'s cache into a fresh `cache` dir with code base `src`, in a fresh process."""
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    args = [str(folder), str(cache), str(resize), str(crop), str(threads)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"a build with {src} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def digests(cache: Path) -> list[tuple[str, str]]:
    """The sha256 of each file of a built cache."""
    return [(f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for f in sorted(cache.iterdir())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD)")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "animalcls-bench-cache")
    parser.add_argument(
        "--same-bytes", type=Path, metavar="FOLDER", help="first check both build byte-identical caches of FOLDER"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO / "src"))
    from bench_cache import make_jpegs

    from animalcls.data.cache import usable_cores
    from animalcls.report.paired import paired_interval, verdict

    images = make_jpegs(args.dir / f"jpegs-{args.images}", args.images)
    cores = usable_cores()
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", args.base], capture_output=True, text=True, check=True
    )
    base_rev = commit.stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        worktree = scratch / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(worktree), base_rev], check=True
        )
        try:
            codes = {"base": worktree / "src", "tree": REPO / "src"}
            print(
                f"{args.images} images, 112 px, {cores} usable cores; base {base_rev[:10]}, working tree "
                f"{'with' if dirty.stdout.strip() else 'without'} changes in src/ ({time.strftime('%Y-%m-%d %H:%M')})"
            )
            if args.same_bytes:  # a faster build must not change what runs train on
                for resize, crop in ((128, 112), (112, 112), (48, 48)):
                    built = []
                    for src in codes.values():
                        build(src, args.same_bytes, resize, crop, cores, scratch / "cache")
                        built.append(digests(scratch / "cache"))
                    same = "byte-identical" if built[0] == built[1] else "DIFFERENT"
                    print(f"cache of {args.same_bytes} at resize {resize}, crop {crop}: {same}", flush=True)
                    if built[0] != built[1]:
                        sys.exit(1)
            rows = []
            for round_ in range(args.rounds):
                order = [(code, threads) for threads in dict.fromkeys([1, cores]) for code in codes]
                for code, threads in order if round_ % 2 == 0 else order[::-1]:
                    result = build(codes[code], images, 112, 112, threads, scratch / "cache")
                    rows.append({"round": round_, "code": code, "threads": threads, **result})
                    print(
                        f"round {round_} {code:4s} {threads} thread(s): {result['images_per_s']:7.1f} img/s, "
                        f"CPU {result['cpu_per_wall']:.2f} cores busy",
                        flush=True,
                    )
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)

    if not rows:  # --rounds 0: the byte check only
        return

    def rates(code: str, threads: int) -> list[float]:
        return [r["images_per_s"] for r in rows if r["code"] == code and r["threads"] == threads]

    for threads in dict.fromkeys([1, cores]):
        base, tree = rates("base", threads), rates("tree", threads)
        interval = paired_interval([t - b for t, b in zip(tree, base)])
        said = verdict(interval).replace("seeds", "rounds")  # b is the working tree, a the base
        said = {"b beats a": "the working tree is faster", "a beats b": "the base is faster"}.get(said, said)
        print(
            f"{threads} thread(s): base {statistics.median(base):.0f}, tree {statistics.median(tree):.0f} img/s "
            f"(medians); tree/base per round {' '.join(f'{t / b:.2f}' for t, b in zip(tree, base))}; "
            f"difference {interval.mean:+.0f} img/s, 95 % CI {interval.low:+.0f} to {interval.high:+.0f}: {said}"
        )
    for code in codes:
        one, many = statistics.median(rates(code, 1)), statistics.median(rates(code, cores))
        if cores > 1:
            print(f"{code}: {cores}-thread rate / ({cores} x 1-thread rate) = {many / cores / one:.2f} (medians)")


if __name__ == "__main__":
    main()
