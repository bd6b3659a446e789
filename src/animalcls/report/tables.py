"""The paper's tables (paper vs reproduced) and the list of every run, as Markdown, CSV and LaTeX.

Every cell that came from a results table is escaped for its format (see `report.text`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from animalcls import paper
from animalcls.registry import display_name
from animalcls.report.aggregate import PAPER_RECIPE, records, row_dict
from animalcls.report.text import csv_frame, fmt, is_blank, latex_text, md_text, plain

MISSING = "missing"
COLUMN_NAMES = {
    "model": "Model",
    "optimizer": "Optimizer",
    "lr": "Learning rate",
    "batch_size": "Batch",
    "epochs": "Epoch",
    "loss": "Loss function",
    "batch_norm": "Batch normalization",
    "dropout": "Dropout",
    "augmentation": "Data augmentation",
}
# the registry's kind for each setting that names a registered choice
_KINDS = {"model": "model", "optimizer": "optimizer", "loss": "loss", "augmentation": "augmentation"}


# ---------------------------------------------------------------- formats


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """A CSV for people: blanks empty, formulas in text cells neutralised."""
    csv_frame(frame).to_csv(path, index=False, na_rep="")
    return path


def markdown_table(frame: pd.DataFrame, raw: Iterable[str] = ()) -> str:
    """A GitHub Markdown table (no tabulate dependency). Every cell is escaped (`md_text`) except
    those of the `raw` columns, which hold Markdown this package wrote (e.g. code spans)."""
    raw = set(raw)

    def verbatim(v: Any) -> str:
        return "" if is_blank(v) else str(v)

    escape: list[Callable[[Any], str]] = [verbatim if c in raw else md_text for c in frame.columns]
    header = "| " + " | ".join(md_text(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(f(v) for f, v in zip(escape, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    # a long last column (the notes) wraps instead of running off the page
    spec = "l" * (len(frame.columns) - 1) + ("p{5cm}" if frame.columns[-1] == "Note" else "l")
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\hline",
        " & ".join(map(latex_text, frame.columns)) + r" \\",
        r"\hline",
    ]
    lines += [" & ".join(map(latex_text, row)) + r" \\" for row in frame.itertuples(index=False)]
    lines += [
        r"\hline",
        r"\end{tabular}",
        rf"\caption{{{latex_text(caption)}}}",
        rf"\label{{{label}}}",
        r"\end{table}",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- paper vs reproduced


def _group_for(groups: pd.DataFrame, paper_config: str) -> tuple[dict[str, Any] | None, int]:
    """The group that reproduces a paper configuration: one with a measured accuracy first, then
    the paper's recipe, then exact settings and the paper's data set, then the most runs averaged.
    Returns (group row or None, number of other groups)."""
    candidates = groups[groups["paper_config"] == paper_config]
    if candidates.empty:
        return None, 0
    ranked = candidates.assign(
        _measured=candidates["n"] > 0,
        _paper_recipe=[_recipe_of(g) == "" for g in records(candidates)],
        _exact=candidates["diffs"] == "",
    )
    ranked = ranked.sort_values(
        ["_measured", "_paper_recipe", "_exact", "n", "n_runs"], ascending=False, kind="mergesort"
    )
    return row_dict(ranked.iloc[0]), len(ranked) - 1


def _recipe_of(group: dict[str, Any]) -> str:
    """'' for the paper's recipe (or a table from before recipes), else what the group ran."""
    recipe = "" if is_blank(group.get("recipe")) else str(group["recipe"])
    changes = "" if is_blank(group.get("recipe_settings")) else str(group["recipe_settings"])
    if recipe in ("", PAPER_RECIPE) and not changes:
        return ""
    return f"{recipe or PAPER_RECIPE}" + (f" ({changes})" if changes else "")


def _status(group: dict[str, Any] | None) -> str:
    if group is None:
        return MISSING
    if group["n"] > 0:
        return "ok"
    parts = [f"{group[k]} {k[2:]}" for k in ("n_failed", "n_diverged") if group[k]]
    return f"{MISSING} ({', '.join(parts)})" if parts else MISSING


def _row_note(paper_row: dict[str, Any], group: dict[str, Any] | None, others: int) -> str:
    notes = [f"paper: {paper_row['note']}"] if paper_row["note"] else []
    if group is not None:
        if group["diffs"]:
            notes.append(f"ran with {group['diffs']}")
        if _recipe_of(group):
            notes.append(f"not the paper's recipe: recipe {_recipe_of(group)}")
        if group["n_diverged"]:
            notes.append(f"{group['n_diverged']} diverged (not averaged)")
        if group["n_failed"]:
            notes.append(f"{group['n_failed']} failed/interrupted (not averaged)")
    if others:
        notes.append(
            f"{others} other group(s) of runs with other settings, precision, split or data (not pooled; see runs.md)"
        )
    return "; ".join(notes)


def comparison(groups: pd.DataFrame) -> pd.DataFrame:
    """Every paper row with the numbers of the group that reproduces it (NaN where missing)."""
    out = []
    for row in records(paper.load()):
        group, others = _group_for(groups, row["paper_config"])
        g = group or {}
        mean = g.get("test_top1_mean", float("nan"))
        out.append(
            {
                **{k: row[k] for k in ("table", "row", *paper.SETTINGS, "paper_config")},
                "paper_accuracy_pct": row["accuracy_pct"],
                "reproduced_top1_mean": mean,
                "reproduced_top1_std": g.get("test_top1_std"),
                "n": g.get("n", 0),
                "diff_pp": mean - row["accuracy_pct"] if not is_blank(mean) else float("nan"),
                "reproduced_top3_mean": g.get("test_top3_mean"),
                "reproduced_top5_mean": g.get("test_top5_mean"),
                "paper_efficiency_g": row["efficiency_g"],
                "measured_gflops": g.get("gflops"),
                "measured_gmacs_fvcore": g.get("gmacs_fvcore"),
                "n_diverged": g.get("n_diverged", 0),
                "n_failed": g.get("n_failed", 0),
                "seeds": g.get("seeds", ""),
                "data": g.get("data_name", ""),
                "status": _status(group),
                "note": _row_note(row, group, others),
            }
        )
    frame = pd.DataFrame(out)
    for column in (
        "reproduced_top1_std",
        "reproduced_top3_mean",
        "reproduced_top5_mean",
        "measured_gflops",
        "measured_gmacs_fvcore",
    ):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _table_csv(rows: pd.DataFrame, table: str) -> pd.DataFrame:
    columns = [
        "table",
        "row",
        *paper.TABLE_COLUMNS[table],
        "paper_accuracy_pct",
        "reproduced_top1_mean",
        "reproduced_top1_std",
        "n",
        "diff_pp",
        "reproduced_top3_mean",
        "reproduced_top5_mean",
        "paper_efficiency_g",
        "measured_gflops",
        "measured_gmacs_fvcore",
        "n_diverged",
        "n_failed",
        "data",
        "status",
        "paper_config",
        "note",
    ]
    return rows[columns]


def display(column: str, value: Any) -> str:
    """A setting as the paper's tables write it (names from the registry)."""
    if column in _KINDS:
        return display_name(_KINDS[column], value)
    if column == "batch_norm":
        return "3 extra" if paper.as_bool(value) else "n/a"
    if column == "dropout":
        return f"{float(value):g}" if float(value) > 0 else "n/a"
    if column == "lr":
        return paper.decimal_text(value)
    return plain(value)


def _reproduced(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """'mean ± std' (or the status) and the signed difference, per row."""
    reproduced, diff = [], []
    for r in rows.to_dict("records"):
        if r["status"] != "ok":
            reproduced.append(r["status"])
            diff.append("")
            continue
        std = "" if is_blank(r["reproduced_top1_std"]) else f" ± {r['reproduced_top1_std']:.2f}"
        reproduced.append(f"{r['reproduced_top1_mean']:.2f}{std}")
        diff.append(f"{r['diff_pp']:+.2f}")
    return reproduced, diff


def _table_display(rows: pd.DataFrame, table: str) -> pd.DataFrame:
    """The paper's table as strings: its own columns, then paper vs reproduced."""
    shown: dict[str, pd.Series[str] | list[str]] = {"Exp.": rows["row"].astype(str)}
    for column in paper.TABLE_COLUMNS[table]:
        shown[COLUMN_NAMES[column]] = [display(column, v) for v in rows[column]]
    reproduced, diff = _reproduced(rows)
    shown.update(
        {
            "Paper acc. %": [fmt(v) for v in rows["paper_accuracy_pct"]],
            "Reproduced top-1 % (mean ± std)": reproduced,
            "n": [str(n) if s == "ok" else "" for n, s in zip(rows["n"], rows["status"])],
            "Diff. (pp)": diff,
            "Top-3 %": [fmt(v) for v in rows["reproduced_top3_mean"]],
            "Top-5 %": [fmt(v) for v in rows["reproduced_top5_mean"]],
            "Paper GFLOPs": [fmt(v) for v in rows["paper_efficiency_g"]],
            "Measured GFLOPs (2xMAC)": [fmt(v) for v in rows["measured_gflops"]],
            "Note": rows["note"],
        }
    )
    return pd.DataFrame(shown)


def _notes_list(rows: pd.DataFrame) -> str:
    notes = [f"- Exp. {md_text(r['row'])}: {md_text(r['note'])}" for r in rows.to_dict("records") if r["note"]]
    return ("\nNotes:\n" + "\n".join(notes) + "\n") if notes else ""


def write_paper_tables(compared: pd.DataFrame, out: Path) -> dict[str, str]:
    """tables/table_X.{md,csv,tex} per paper table; returns {table: inline Markdown}."""
    folder = out / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    inline = {}
    for table in paper.tables():
        rows = compared[compared["table"] == table].reset_index(drop=True)
        name = paper.experiment_name(table)
        caption = f"Table {table}: {paper.TABLE_TITLES.get(table, '')} (paper vs reproduced)"
        write_csv(_table_csv(rows, table), folder / f"{name}.csv")
        shown = _table_display(rows, table)
        inline[table] = markdown_table(shown.drop(columns=["Note"])) + _notes_list(rows)
        (folder / f"{name}.md").write_text(f"## {md_text(caption)}\n\n" + markdown_table(shown))
        (folder / f"{name}.tex").write_text(latex_table(shown, caption, f"tab:{name}"))
    return inline


# ---------------------------------------------------------------- every run

RUN_COLUMNS = [
    "run_id",
    "status",
    "paper_config",
    "ran_as",
    "model",
    "pretrained",
    "optimizer",
    "lr",
    "batch_size",
    "epochs",
    "loss",
    "aug",
    "batch_norm",
    "dropout",
    "seed",
    "data_name",
    "precision",
    "split",
    "repeat_id",
    "recipe",
    "recipe_settings",
    "stopped_early",
    "val_top1",
    "test_top1",
    "test_top3",
    "test_top5",
    "gflops",
    "gmacs_fvcore",
    "params",
    "train_seconds",
    "images_per_s",
    "epochs_done",
    "device",
    "tags",
    "diffs",
    "run_dir",
    "error",
]


def write_runs(frame: pd.DataFrame, out: Path) -> str:
    """runs.csv (the columns above) and runs.md (readable); returns the Markdown table."""
    write_csv(frame[[c for c in RUN_COLUMNS if c in frame]], out / "runs.csv")
    ordered = frame.sort_values(["model", "paper_config", "seed"], kind="mergesort")
    shown = pd.DataFrame(
        {
            "Run": ordered["run_id"],
            "Status": ordered["status"],
            "Configuration": ordered["paper_config"],
            "Seed": [plain(s) for s in ordered["seed"]],
            "Data": ordered["data_name"],
            "Precision": ordered["precision"],
            "Split": ordered["split"],
            "Top-1 %": [fmt(v) for v in ordered["test_top1"]],
            "Top-3 %": [fmt(v) for v in ordered["test_top3"]],
            "Top-5 %": [fmt(v) for v in ordered["test_top5"]],
            "GFLOPs (2xMAC)": [fmt(v, 3) for v in ordered["gflops"]],
            "GMACs (fvcore)": [fmt(v, 3) for v in ordered["gmacs_fvcore"]],
            "Params (M)": [fmt(v / 1e6, 2) if not is_blank(v) else "" for v in ordered["params"]],
            "Train time (s)": [fmt(v, 0) for v in ordered["train_seconds"]],
            "Tables": ordered["tags"].str.replace(";", ", "),
            "Differs from paper": ordered["diffs"],
        }
    )
    text = markdown_table(shown)
    (out / "runs.md").write_text("# Every run\n\nSee runs.csv for all columns.\n\n" + text)
    return text
