"""Soak the record: W processes x R runs of a trivial config into one results table, with tags full
of newlines, commas, quotes, unicode and `=`, SIGKILLs in the middle of some runs, then
`animalcls report` and a count: every run exactly once, nothing merged, nothing lost.

    python scripts/soak.py --workers 4 --runs 50 --kills 3 --out /tmp/soak

Each worker is one process that runs `animalcls train` R times in-process (seeds w*R .. w*R+R-1,
each with its own random tag). The parent SIGKILLs a random worker mid-run `--kills` times and
starts it again with the same list: runs it finished are skipped, the killed one starts over or
resumes. Exit status 0 when the count holds; the numbers are printed either way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ALPHABET = ["a", "b", "Z", " ", ",", '"', "\n", "=", "é", "猫", "🦊", ";", "|", "<", ">", "-", "+", "@", "\t"]


def random_tag(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24)))


def hydra_quoted(text: str) -> str:
    """`text` as a single-quoted Hydra string (a quote or backslash is escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def plan(workers: int, runs: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    return [[{"seed": w * runs + r, "tag": random_tag(rng)} for r in range(runs)] for w in range(workers)]


def worker(jobs_file: Path, data: Path, out: Path) -> None:
    """Run each job of the list in this process, like a user's loop over `animalcls train`."""
    from hydra.core.global_hydra import GlobalHydra

    from animalcls.cli import main

    os.chdir(out)
    for job in json.loads(jobs_file.read_text()):
        args = [
            "train",
            f"data.root={data}",
            "data.cache_dir=cache",
            "epochs=1",
            "aug.resize=48",
            "aug.crop=48",
            "workers=0",
            "batch_size=8",
            "eval_batch_size=32",
            f"seed={job['seed']}",
            f"tags=[{hydra_quoted(job['tag'])}]",
        ]
        GlobalHydra.instance().clear()
        try:
            main(args)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                print(f"worker: seed {job['seed']} exited {exit_.code}", file=sys.stderr)


def _start(index: int, jobs: list[dict], data: Path, out: Path) -> subprocess.Popen:
    jobs_file = out / f"jobs-{index}.json"
    jobs_file.write_text(json.dumps(jobs))
    log = open(out / f"worker-{index}.log", "a")
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(jobs_file), "--data", str(data), "--out", str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_all(jobs: list[list[dict]], data: Path, out: Path, kills: int, rng: random.Random) -> int:
    processes = {i: _start(i, j, data, out) for i, j in enumerate(jobs)}
    killed = 0
    while any(p.poll() is None for p in processes.values()):
        time.sleep(rng.uniform(2, 6))
        alive = [i for i, p in processes.items() if p.poll() is None]
        if killed < kills and alive:
            victim = rng.choice(alive)
            processes[victim].send_signal(signal.SIGKILL)
            processes[victim].wait()
            killed += 1
            print(f"SIGKILL worker {victim}; starting it again", flush=True)
            processes[victim] = _start(victim, jobs[victim], data, out)
    return killed


def count(jobs: list[list[dict]], out: Path) -> bool:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import pandas as pd

    from animalcls import results

    expected = {j["seed"]: j["tag"] for w in jobs for j in w}
    table = results.load(out / "outputs" / "results.csv")
    ok = table[table["status"] == "ok"]
    per_seed = ok.groupby("seed").size()
    twice = sorted(int(s) for s, n in per_seed.items() if n > 1)
    missing = sorted(set(expected) - {int(s) for s in ok["seed"]})
    wrong_tag = sorted(int(r.seed) for r in ok.itertuples() if expected.get(int(r.seed)) != r.tags)
    code = subprocess.run(
        [sys.executable, "-m", "animalcls", "report", "results=outputs/results.csv", "out=outputs/report"],
        cwd=out,
        capture_output=True,
        text=True,
    )
    runs = pd.read_csv(out / "outputs" / "report" / "runs.csv") if code.returncode == 0 else None
    print(
        f"runs planned {len(expected)}; rows {len(table)} (ok {len(ok)}, other {len(table) - len(ok)}); "
        f"ok twice {twice}; missing {missing}; tag not as given {wrong_tag}; "
        f"report exit {code.returncode}, runs.csv rows {None if runs is None else len(runs)}"
    )
    if code.returncode:
        print(code.stderr[-2000:])
    return not twice and not missing and not wrong_tag and runs is not None and len(runs) == len(expected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/animalcls-soak"))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.out)
        return 0
    from animalcls.demo import make_image_folder

    args.out.mkdir(parents=True, exist_ok=True)
    data = make_image_folder(args.out / "images", classes=3, per_class=12, size=48)
    jobs = plan(args.workers, args.runs, args.seed)
    start = time.time()
    killed = run_all(jobs, data, args.out, args.kills, random.Random(args.seed))
    print(f"{args.workers} workers x {args.runs} runs, {killed} SIGKILLs, {time.time() - start:.0f} s")
    return 0 if count(jobs, args.out) else 1


if __name__ == "__main__":
    sys.exit(main())
