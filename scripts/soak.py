"""Soak the record: W processes x R runs of a trivial config into one results table, with tags full
of newlines, commas, quotes, unicode and `=`, SIGKILLs in the middle of some runs, then
`animalcls report` and a count: every run exactly once, nothing merged, nothing lost.

The table starts hostile: `outputs/results.csv` is a symlink to a table that holds a row of a
status this version does not know, with a byte that is not UTF-8 in its tags, and no final
newline. After the workers, a process appending rows is SIGKILLed mid-append and
`animalcls results rebuild` runs; the count is taken after that: every finished run present
exactly once, the hostile row still there, the link still a link.

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


SEEDED = "seeded-requeued"


def hostile_table(out: Path) -> Path:
    """outputs/results.csv as a link to a table with an unknown-status row holding a non-UTF-8
    byte, without a final newline; returns the link."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from animalcls.record import COLUMNS

    target = out / "outputs" / "shared" / "table.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    cells = {c: b"" for c in COLUMNS} | {
        "run_id": SEEDED.encode(),
        "status": b"requeued",
        "run_dir": str(out / "elsewhere").encode(),
        "tags": b"caf\xe9",  # Latin-1, not UTF-8
    }
    target.write_bytes(",".join(COLUMNS).encode() + b"\n" + b",".join(cells[c] for c in COLUMNS))
    link = out / "outputs" / "results.csv"
    link.symlink_to(target)
    return link


def appender(table: Path) -> None:
    """Append rows of long error cells until killed (no record: these rows are the table's only)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from animalcls import results

    for index in range(10**6):
        run_dir = table.parent / "appender" / f"{index:06d}"
        results.append_row(
            table, {"run_id": f"appended-{index}", "status": "failed", "run_dir": str(run_dir), "error": "e" * 200_000}
        )
        print(index, flush=True)  # this row is in: the count expects it


def kill_an_append_then_rebuild(out: Path, rng: random.Random) -> None:
    table = out / "outputs" / "results.csv"
    with open(out / "appended.txt", "w") as log:
        process = subprocess.Popen([sys.executable, __file__, "--appender", str(table)], stdout=log)
        time.sleep(rng.uniform(1.5, 3.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = subprocess.run(
        [sys.executable, "-m", "animalcls", "results", "rebuild", "results=outputs/results.csv"],
        cwd=out,
        capture_output=True,
        text=True,
    )
    print(f"SIGKILL during appends, then rebuild (exit {done.returncode}): {done.stdout.strip()}", flush=True)


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
    link = out / "outputs" / "results.csv"
    table = results.load(link)
    ok = table[table["status"] == "ok"]
    per_dir = table[table["run_dir"] != ""].groupby(["run_dir", "status"]).size()
    dir_twice = int((per_dir > 1).sum())
    hostile_kept = link.is_symlink() and list(table.loc[table["run_id"] == SEEDED, "tags"]) == ["caf\ufffd"]
    # every append that returned is in the table; the one killed mid-write may be, or not
    acknowledged = len((out / "appended.txt").read_text().split())
    appended = int(table["run_id"].str.startswith("appended-").sum())
    appends_kept = acknowledged <= appended <= acknowledged + 1
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
        f"run dir with a status twice {dir_twice}; hostile row and link kept {hostile_kept}; "
        f"appends acknowledged {acknowledged}, in the table {appended}; "
        f"report exit {code.returncode}, runs.csv rows {None if runs is None else len(runs)}"
    )
    if code.returncode:
        print(code.stderr[-2000:])
    runs_ok = runs is not None and len(runs[runs["status"] == "ok"]) == len(expected)
    table_ok = not dir_twice and hostile_kept and appends_kept
    return not twice and not missing and not wrong_tag and table_ok and runs_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/animalcls-soak"))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--appender", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.appender:
        appender(args.appender)
        return 0
    if args.worker:
        worker(args.worker, args.data, args.out)
        return 0
    from animalcls.demo import make_image_folder

    args.out.mkdir(parents=True, exist_ok=True)
    data = make_image_folder(args.out / "images", classes=3, per_class=12, size=48)
    jobs = plan(args.workers, args.runs, args.seed)
    hostile_table(args.out)
    start = time.time()
    rng = random.Random(args.seed)
    killed = run_all(jobs, data, args.out, args.kills, rng)
    kill_an_append_then_rebuild(args.out, rng)
    print(f"{args.workers} workers x {args.runs} runs, {killed} SIGKILLs, {time.time() - start:.0f} s")
    return 0 if count(jobs, args.out) else 1


if __name__ == "__main__":
    sys.exit(main())
