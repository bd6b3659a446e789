#!/usr/bin/env python
"""Regenerate the paper's Hydra configs from src/animalcls/paper_results.csv.

Writes conf/paper_config/<paper_config>.yaml (one per distinct paper configuration),
conf/experiment/paper/table_*.yaml and all.yaml, refreshes the CSV's `paper_config` column (a CSV
from before the rename has it as `config_id`: renamed in place), and removes files in those
folders that no longer correspond to a configuration. `--check` writes nothing and exits 1 if anything
is out of date (for CI).

    python scripts/make_paper_configs.py [--check]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # works from a checkout without `pip install -e`

from animalcls import paper  # noqa: E402

COLUMN, OLD_COLUMN = "paper_config", "config_id"


def csv_with_ids() -> str:
    """The paper CSV text with its `paper_config` column (appended if absent) recomputed."""
    with open(paper.PAPER_CSV, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    if OLD_COLUMN in header and COLUMN not in header:  # one name for one idea
        header[header.index(OLD_COLUMN)] = COLUMN
    if COLUMN not in header:
        header.append(COLUMN)
        body = [r + [""] for r in body]
    column = header.index(COLUMN)
    for row, cid in zip(body, paper.load()[COLUMN]):
        row[column] = cid
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *body])
    return out.getvalue()


def planned() -> dict[Path, str]:
    files = {ROOT / "conf" / rel: text for rel, text in paper.render_config_files().items()}
    files[paper.PAPER_CSV] = csv_with_ids()
    return files


def stale(files: dict[Path, str]) -> list[Path]:
    folders = [ROOT / "conf" / "paper_config", ROOT / "conf" / "experiment" / "paper"]
    return [p for d in folders if d.is_dir() for p in sorted(d.glob("*.yaml")) if p not in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = parser.parse_args(argv)
    files = planned()
    changed = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    extra = stale(files)
    if args.check:
        for p in changed + extra:
            print(f"out of date: {p.relative_to(ROOT)}")
        return 1 if changed or extra else 0
    for p in changed:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[p])
    for p in extra:
        p.unlink()
    print(f"{len(files)} files checked: {len(changed)} written, {len(extra)} stale removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
