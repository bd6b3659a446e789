"""The results table at scale: the skip check and an append at 10 rows and at 100,000, side by side.

    python scripts/bench_table.py [--rows 100000] [--repeats 5]

Writes two tables of realistic rows (every column filled as a run fills it, a tag with a comma and
a newline in every tenth row), then times, taking turns between the small and the large table:
- the skip check: the rows of a run id that is in the table and of one that is not
  (`results.rows_of`, what `animalcls train` reads before it decides to train);
- an append: `results.append_row`, the whole time the table's lock is held.
Prints the median of each and the difference large - small (target: under 0.5 s each). The
machine is shared and noisy: read the differences, not the absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from animalcls import results  # noqa: E402
from animalcls.record import COLUMNS  # noqa: E402


def row(index: int) -> dict[str, object]:
    filled = {c: f"{c}-{index % 97}" for c in COLUMNS}
    filled.update(
        run_id=f"{index:016x}",
        repeat_id=f"{index // 3:016x}",
        status="ok" if index % 7 else "failed",
        tags='table 2.1.1, "quoted"\nsecond line' if index % 10 == 0 else "2.1.1;2.1.2",
        test_top1=round(index % 1000 / 10, 2),
        run_dir=f"/home/user/project/outputs/runs/2026-12-04/{index:06d}_base",
    )
    return filled


def write_table(path: Path, rows: int) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([[row(i)[c] for c in COLUMNS] for i in range(rows)])


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="animalcls-table-"))
    sizes = {"small": 10, "large": args.rows}
    tables = {name: folder / f"{name}.csv" for name in sizes}
    for name, rows in sizes.items():
        write_table(tables[name], rows)
    print(f"tables: {', '.join(f'{n} {sizes[n]:,} rows, {tables[n].stat().st_size / 1e6:.1f} MB' for n in sizes)}")
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for name, table in tables.items():  # taking turns: both see the same load
            present = row(sizes[name] // 2)["run_id"]
            checks = {
                "skip check, id present": lambda: results.rows_of(table, [present]),
                "skip check, id absent": lambda: results.rows_of(table, ["feedfacecafebeef"]),
                "append (lock held)": lambda: results.append_row(table, row(10**9 + repeat)),
            }
            for what, action in checks.items():
                times.setdefault((what, name), []).append(timed(action))
    print(
        f"{'what':<26} {'10 rows':>10} {f'{args.rows:,} rows':>14} {'difference':>12}   (median of {args.repeats}, s)"
    )
    worst = 0.0
    for what in ("skip check, id present", "skip check, id absent", "append (lock held)"):
        small, large = (statistics.median(times[(what, n)]) for n in sizes)
        worst = max(worst, large - small)
        print(f"{what:<26} {small:>10.4f} {large:>14.4f} {large - small:>12.4f}")
    print(f"largest difference {worst:.3f} s: {'under' if worst < 0.5 else 'OVER'} the 0.5 s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
