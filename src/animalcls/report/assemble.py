"""`run_report`: read the results tables, write the tables and figures, and assemble report.md.

Reads one or more results tables (never trains, needs no GPU) and writes under `out`:

    report.md                    the index: coverage, what is missing, tables, figures, choices
    report.html                  report.md as one self-contained page (figures inlined as base64
                                 PNG, tables sortable by a click on a header, no network)
    paper_comparison.csv         every paper row (67) with its reproduced numbers
    tables/table_2_1_1.{md,csv,tex} ...   one per paper table, the paper's columns
    runs.csv, runs.md            every run: settings, top-1/3/5, GFLOPs, GMACs, params, time, status
    tables/beyond_the_paper.{md,csv}   per model and data set: the paper's best, the paper's
                                 recipe here, the best other recipe and the difference
    tables/epoch_budget.csv      the base CNN's test top-1 per recipe and epoch budget
    figures/*.png                accuracy-efficiency (the paper's, then one per data set of the
                                 runs), curves, failure cases, class distribution, per-class
                                 accuracy, confusion matrix, epoch budget

Rules (also stated in report.md):
- Runs are matched to paper rows by `paper_config`; a run without one is matched by its settings.
- A run id that appears several times (a re-run, merged tables) counts once: its latest ok row,
  else its latest row.
- Only true repeats are averaged: runs with one paper_config and one repeat_id (the same settings,
  precision, split and data, differing by seed alone; see `report.aggregate`), one run per seed:
  mean, sample std (ddof=1) and n. Averaged are `ok` runs with a finite test accuracy; `diverged`
  runs (and `ok` rows whose accuracy is NaN or infinite), `failed` and `interrupted` runs are
  counted apart, never averaged (a non-finite number would make the mean NaN or -inf).
- A paper row with no averaged run shows "missing" (empty numbers in CSV), never 0.
- Runs of a table written before recipes existed count as the paper's recipe; the paper's tables
  prefer groups trained with the paper's recipe. "Beyond the paper" compares recipes on one data
  set (see `report.beyond`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from animalcls import paper, record
from animalcls import results as results_table
from animalcls.registry import base_model, display_name
from animalcls.report import beyond, figures, html, rundirs
from animalcls.report.aggregate import GROUP_KEYS, aggregate, confusion, per_class_accuracy, prepare, top_confusions
from animalcls.report.tables import MISSING, comparison, markdown_table, write_csv, write_paper_tables, write_runs
from animalcls.report.text import is_blank, md_code, md_text, plain

Figure = tuple[str, Path | None, str]  # (heading as plain text, PNG or None, Markdown text)


# ---------------------------------------------------------------- run titles and figures


def run_title(row: dict[str, Any]) -> str:
    """What ran (plain text): its ran_as id, the paper configuration it stands for when that
    differs, the data set when it is not the paper's, the seed and the test accuracy."""
    ran, config = row.get("ran_as") or "", row.get("paper_config") or ""
    name = ran or config or str(row.get("run_id", ""))
    if config and ran and config != ran:
        name += f" (for {config})"
    data = row.get("data_name") or ""
    data = f", data {data}" if data and data != "animals" else ""
    seed = "" if is_blank(row.get("seed")) else f", seed {plain(row['seed'])}"
    acc = "" if is_blank(row.get("test_top1")) else f", test top-1 {row['test_top1']:.2f} %"
    return f"{name}{data}{seed}{acc}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def figure_failures(
    predictions: pd.DataFrame, folder: Path, bases: list[Path], title: str, path: Path, limit: int = 12
) -> tuple[Path | None, int]:
    """Misclassified test images, most confident mistakes first, with true and predicted labels.
    Returns (figure or None when no image file could be opened, number of images shown)."""
    tiles = rundirs.failure_images(predictions, folder, bases, limit)
    if not tiles:
        return None, 0
    return figures.figure_gallery(tiles, title, path), len(tiles)


def _per_run_figures(chosen: list[dict[str, Any]], problems: list[str], bases: list[Path], out: Path) -> list[Figure]:
    found: list[Figure] = []
    for row in chosen:
        folder = rundirs.resolve_path(row.get("run_dir"), bases)
        history = rundirs.history_of(folder)
        heading = f"Training curves, {row['label']}: {run_title(row)}"
        if history is None or folder is None:  # (no folder, no history)
            found.append(
                (
                    heading,
                    None,
                    f"No history.csv for this run (run dir {md_code(row.get('run_dir', ''))} not found or incomplete).",
                )
            )
            continue
        path = out / "figures" / f"curves_{_slug(str(row.get('run_id') or folder.name))}.png"
        found.append((heading, figures.figure_curves(history, f"{row['label']}: {run_title(row)}", path), ""))
    return found + [("Training curves", None, md_text(p)) for p in problems]


def _analysis_figures(frame: pd.DataFrame, bases: list[Path], out: Path) -> list[Figure]:
    """Failure cases, per-class accuracy, confusion matrix and class distribution."""
    run = rundirs.analysis_run(frame, bases)
    if run is None:
        text = "No finished run with a predictions.csv in its run dir: no per-image figures."
        return [("Failure cases and per-class accuracy", None, text)]
    folder, title = run["folder"], run_title(run)
    predictions = rundirs.predictions_of(folder)
    if predictions is None or predictions.empty:
        return [("Failure cases", None, f"{md_code(folder / 'predictions.csv')} is empty or unreadable.")]
    gallery, shown = figure_failures(predictions, folder, bases, title, out / "figures" / "failure_cases.png")
    wrong = int((predictions["label"] != predictions["predicted"]).sum())
    note = (
        f"{wrong} of {len(predictions)} test images misclassified by the best run; {shown} shown."
        if gallery
        else f"{wrong} of {len(predictions)} test images misclassified, but none of their image "
        f"files could be opened (moved or deleted?), so no gallery."
    )
    found: list[Figure] = [(f"Failure cases: {title}", gallery, note)]
    per_class = per_class_accuracy(predictions)
    write_csv(per_class, out / "per_class_accuracy.csv")
    overall = 100 * float((predictions["label"] == predictions["predicted"]).mean())
    found.append(
        (
            f"Per-class accuracy: {title}",
            figures.figure_per_class(per_class, overall, title, out / "figures" / "per_class_accuracy.png"),
            "All classes: per_class_accuracy.csv.",
        )
    )
    matrix = confusion(predictions, rundirs.class_names(folder))
    pairs = top_confusions(matrix)
    text = ("Most frequent confusions:\n\n" + markdown_table(pairs)) if len(pairs) else ""
    found.append(
        (
            f"Confusion matrix: {title}",
            figures.figure_confusion(matrix, title, out / "figures" / "confusion_matrix.png"),
            text,
        )
    )
    return found + [_distribution_figure(frame, folder, bases, out)]


def _efficiency_figures(groups: pd.DataFrame, out: Path) -> list[Figure]:
    """Paper Figure 3.1: the paper's points on a figure of their own, then one figure per data set
    of the reproduced runs. Points measured on different data sets never share axes (a demo run
    next to the paper's point would read as a reproduction of it); the figures share their axes'
    ranges and colours, so they read side by side."""
    paper_name = figures.PAPER_DATA
    path = out / "figures" / f"accuracy_efficiency_paper_{paper_name}.png"
    found: list[Figure] = [
        (
            f"Accuracy vs efficiency (paper Figure 3.1): the paper ({paper_name}, as reported)",
            figures.figure_paper_efficiency(groups, path),
            f"The paper's own numbers, measured on its data set ({paper_name}): hollow, one colour "
            "per model. The reproduced runs are in the figures below, one per data set.",
        )
    ]
    for data, slug, points in figures.efficiency_data_sets(groups):
        path = out / "figures" / f"accuracy_efficiency_runs_{slug}.png"
        found.append(
            (
                f"Accuracy vs efficiency: reproduced on {data}",
                figures.figure_accuracy_efficiency(groups, points, data, path),
                f"Runs on {md_text(data)} only: test top-1, mean ± std over seeds, one point per group "
                f"of true repeats ({len(points)}); triangles: settings or data differ from the paper's "
                "(see the tables' notes). Same axes and colours as the paper's figure above, but a "
                "separate figure: a point here is comparable to the paper's only where the data set "
                "is the paper's.",
            )
        )
    if len(found) == 1:
        found.append(("Accuracy vs efficiency: reproduced", None, "No run with a test accuracy and GFLOPs yet."))
    return found


def _distribution_figure(frame: pd.DataFrame, preferred: Path, bases: list[Path], out: Path) -> Figure:
    found = rundirs.split_of(frame, preferred, bases)
    if found is None:
        return ("Class distribution", None, "No split.csv found in any run dir.")
    source, split = found
    path = figures.figure_class_distribution(split, out / "figures" / "class_distribution.png")
    return ("Class distribution", path, f"From {md_code(source)}.")


def _figure_lines(found: list[Figure], out: Path) -> list[str]:
    lines = []
    for heading, file, text in found:
        lines += [f"### {md_text(heading)}", ""]
        if text:
            lines += [text, ""]
        if file is not None:
            lines += [f"![{md_text(heading)}]({file.relative_to(out).as_posix()})", ""]
    return lines


# ---------------------------------------------------------------- report.md sections


def _coverage(compared: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for table in paper.tables():
        t = compared[compared["table"] == table]
        done = int((t["status"] == "ok").sum())
        rows.append(
            {
                "Table": table,
                "What it varies": paper.TABLE_TITLES.get(table, ""),
                "Paper rows": len(t),
                "Reproduced": done,
                "Missing": len(t) - done,
                "Sweep": f"`animalcls train -m +experiment=paper/{paper.experiment_name(table)}`",
            }
        )
    return pd.DataFrame(rows)


def _missing_section(compared: pd.DataFrame) -> list[str]:
    missing = compared[compared["status"] != "ok"].drop_duplicates("paper_config")
    total = compared["paper_config"].nunique()
    if missing.empty:
        return [f"All {total} distinct configurations have at least one finished run.", ""]
    lines = [
        f"{len(missing)} of {total} distinct configurations have no finished run yet "
        f'(shown as "missing" in the tables, never as 0):',
        "",
    ]
    for r in missing.to_dict("records"):
        tables = compared.loc[compared["paper_config"] == r["paper_config"], "table"]
        detail = r["status"][len(MISSING) :].strip(" ()")
        # ids from the paper's own data: code spans are safe
        lines.append(
            f"- {md_code(r['paper_config'])} ({detail + '; ' if detail else ''}tables {', '.join(sorted(set(tables)))})"
        )
    lines += [
        "",
        "Run everything that is missing (finished runs are skipped): "
        "`animalcls train -m +experiment=paper/all seed=0,1,2`",
        "",
    ]
    return lines


def _observed_choices(frame: pd.DataFrame, bases: list[Path]) -> dict[str, str]:
    """Values the runs actually used for the settings the paper leaves open (from .hydra)."""
    seen: dict[str, set[str]] = {"rotation": set(), "norm": set(), "split": set()}
    for row in frame.drop_duplicates(GROUP_KEYS).to_dict("records"):
        cfg = rundirs.run_config(rundirs.resolve_path(row["run_dir"], bases))
        aug, data, model = cfg.get("aug", {}), cfg.get("data", {}), cfg.get("model", {})
        if aug.get("rotation"):
            seen["rotation"].add(f"+-{aug.get('rotation')} degrees")
        if paper.has_base_options(model.get("name")) and "mean" in aug:
            seen["norm"].add(f"mean {aug['mean']}, std {aug.get('std')}")
        if "split" in data:
            seen["split"].add(f"{data.get('name', '')}: {data['split']}")
    return {k: "; ".join(sorted(v)) for k, v in seen.items()}


def _choices_section(frame: pd.DataFrame, bases: list[Path]) -> list[str]:
    observed = _observed_choices(frame, bases)
    table = pd.DataFrame(
        {
            "Left open by the paper": [q for _, q, _ in paper.OPEN_SETTINGS],
            "Choice made here": [c for _, _, c in paper.OPEN_SETTINGS],
            "Used by the runs in this report": [observed.get(k, "") for k, _, _ in paper.OPEN_SETTINGS],
        }
    )
    # the first two columns are this project's own Markdown; the third comes from run dirs
    return [markdown_table(table, raw=["Left open by the paper", "Choice made here"])]


def _rules() -> list[str]:
    return [
        "- **Reproduced** = test top-1 accuracy, mean ± sample std (ddof = 1) over seed repeats; "
        "**n** = runs averaged. Averaged are `ok` runs with a finite test accuracy; `diverged` "
        "runs (a NaN or infinite loss or accuracy), `failed` and `interrupted` runs are counted "
        "in the notes and never averaged.",
        "- Only true repeats are averaged: runs that differ by seed alone (one `repeat_id`: the "
        "same settings, precision, split and data set), one run per seed. Runs recorded before "
        "`repeat_id` existed are grouped by their settings, data, precision and split. Other "
        "groups of the same paper configuration are counted in the row's note.",
        "- A paper row without an averaged run reads **missing** (an empty cell in the CSV), never 0.",
        "- **Diff.** = reproduced - paper, in percentage points.",
        "- Runs are matched to paper rows by `paper_config` (set by the paper sweeps), else by their "
        "settings. When a run's settings differ from the paper's row (e.g. `epochs=1` or another "
        "data set), the row's note says so; runs with exactly the paper's settings are preferred. "
        "`ran_as` (runs.csv) is the paper configuration id of the settings a run actually ran.",
        "- A run id seen more than once (a re-run, merged tables) counts once: its latest ok row.",
        '- **Paper GFLOPs** is the paper\'s "efficiency"; **measured GFLOPs** counts 2 x '
        "multiply-adds over conv and linear layers (the paper's convention); fvcore's GMACs "
        "(multiply-adds, including batch-norm) are in runs.md.",
        "- The **best run** is the ok run with the highest test top-1 (as the paper picks its best "
        "model); the **base run** is the paper's Table 2.1.1 row 0 configuration.",
        "",
    ]


def _sources(tables: list[str], raw_rows: int, frame: pd.DataFrame) -> list[str]:
    counts = frame["status"].value_counts()
    status = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in record.STATUSES)
    files = ", ".join(md_code(t) for t in tables)
    return [
        f"Generated by `animalcls report` from {files}: {raw_rows} rows, {len(frame)} runs "
        f"after merging repeats of a run id ({status}). Nothing was trained to make it.",
        "",
    ]


def _paper_tables_section(inline: dict[str, str]) -> list[str]:
    lines = []
    for table in paper.tables():
        name = paper.experiment_name(table)
        lines += [
            f"### Table {table}: {paper.TABLE_TITLES.get(table, '')}",
            "",
            inline[table],
            "",
            f"Files: [CSV](tables/{name}.csv) · [Markdown](tables/{name}.md) · "
            f"[LaTeX](tables/{name}.tex) · all rows: [paper_comparison.csv](paper_comparison.csv)",
            "",
        ]
    return lines


FIGURES = (
    "accuracy_efficiency",  # a report from before the figure was drawn per data set
    "failure_cases",
    "per_class_accuracy",
    "confusion_matrix",
    "class_distribution",
    "epoch_budget",
)


def _clear_previous(out: Path) -> None:
    """Remove figures an earlier report left here, so none outlives the data it came from
    (only files with the names this module writes)."""
    folder = out / "figures"
    stale = [
        *folder.glob("curves_*.png"),
        *folder.glob("accuracy_efficiency_*.png"),
        *(folder / f"{name}.png" for name in FIGURES),
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    (out / "per_class_accuracy.csv").unlink(missing_ok=True)


def _beyond_rules() -> list[str]:
    return [
        "This project's recipes (`recipe=scratch`, `recipe=finetune`, or the paper's recipe with "
        "changed procedures: *paper+changes*) against this project's runs of the paper's recipe, "
        "one row per model and data set:",
        "",
        "- **Paper's best** = the highest accuracy the paper reports for the model (any of its "
        "configurations, on its animals data); — where the paper has none.",
        "- **Paper recipe here** = the best group of seed repeats (highest mean validation top-1, "
        "then most runs) among runs with the paper's recipe (`recipe=paper`, no recipe setting "
        "changed; runs of tables written before recipes existed count as the paper's recipe). "
        "**Best recipe** = the best group among runs with any other recipe; its settings are what "
        "differs from the paper's recipe. Both are picked on validation top-1 and reported on the "
        "test set (a pick on test would report the luckiest of many draws); the note says among "
        "how many groups.",
        "- Like with like: both columns of a row are on one data set (its name, identity and "
        "split). Each says its epochs; the note says when they differ.",
        "- **Diff.** = best recipe - paper recipe here, in test top-1 percentage points: the mean "
        "of per-seed differences where the two groups share seeds (**Paired seeds**, with its 95 % "
        "Student-t interval and a verdict only from 3 seeds and an interval that excludes 0, as "
        "`animalcls compare` prints), else the difference of the means (the note says so).",
        "",
    ]


def _beyond_section(frame: pd.DataFrame, groups: pd.DataFrame, out: Path) -> list[str]:
    """tables/beyond_the_paper.{md,csv}, tables/epoch_budget.csv, figures/epoch_budget.png."""
    folder = out / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    table = beyond.beyond_table(groups, frame)
    write_csv(table, folder / "beyond_the_paper.csv")
    shown = beyond.beyond_display(table)
    (folder / "beyond_the_paper.md").write_text("## Beyond the paper\n\n" + markdown_table(shown))
    lines = [
        *_beyond_rules(),
        markdown_table(shown) if len(table) else "No runs yet.",
        "",
        "Files: [CSV](tables/beyond_the_paper.csv) · [Markdown](tables/beyond_the_paper.md)",
        "",
    ]
    return lines + _epoch_budget_section(frame, out)


def _epoch_budget_section(frame: pd.DataFrame, out: Path) -> list[str]:
    model = base_model()
    name = f"{display_name('model', model)} model"
    points = beyond.epoch_budget(frame, model)
    write_csv(points, out / "tables" / "epoch_budget.csv")
    lines = [f"### Epoch budget: {md_text(name)}", ""]
    if points.empty:
        return lines + [f"No `ok` run of the {md_text(name)} yet: no epoch-budget figure.", ""]
    data = str(points["data"].iloc[0])
    budgets = sorted({int(e) for e in points["epochs"]})
    lines += [
        f"Test top-1 of `ok` runs of the {md_text(name)} on {md_text(data)} (the data set with the most "
        "such runs) against the epoch budget (the `epochs` setting), one line per recipe: mean ± "
        "sample std over seeds, n in the legend. Each point is the best group of true repeats of "
        "that recipe and budget (its configuration and how many groups it was picked from are in "
        "the table and tables/epoch_budget.csv).",
        "",
    ]
    if len(budgets) < 2:
        lines += [
            f"Only one epoch budget ({budgets[0]}) has `ok` runs here, so the figure shows no trend: "
            "run more budgets, e.g. `animalcls train -m recipe=scratch epochs=15,30,60 seed=0,1,2`.",
            "",
        ]
    stopped = int(points["n_stopped_early"].sum())
    if stopped:
        lines += [f"{stopped} of these runs stopped early: x is the budget, not the epochs trained.", ""]
    shown = pd.DataFrame(
        {
            "Recipe": points["recipe"],
            "Epochs": points["epochs"].astype(str),
            "n": points["n"].astype(str),
            "Test top-1 % (mean ± std)": [beyond.mean_std(m, s) for m, s in zip(points["mean"], points["std"])],
            "Configuration": points["config"],
            "Recipe settings": points["recipe_settings"],
            "Of groups": points["groups"].astype(str),
        }
    )
    title = f"Test top-1 vs epoch budget: {name} on {data}"
    path = figures.figure_epoch_budget(points, title, out / "figures" / "epoch_budget.png")
    return lines + [
        markdown_table(shown),
        f"![Epoch budget]({path.relative_to(out).as_posix()})",
        "",
        "Numbers: [tables/epoch_budget.csv](tables/epoch_budget.csv)",
        "",
    ]


# ---------------------------------------------------------------- the report


def run_report(tables: list[str], out: str, runs: list[str] | None = None) -> Path:
    """Write the report of one or more results tables under `out`; return report.md's path.

    `runs` picks the runs whose training curves are drawn (run ids or unique prefixes of at least
    6 characters, paper configuration ids, or run directories); default: the paper's base run
    and the best run. Missing or partial results give a partial report that says what is missing.
    """
    tables = [str(tables)] if isinstance(tables, (str, os.PathLike)) else [str(t) for t in tables]
    runs = [runs] if isinstance(runs, str) else runs
    folder = Path(out)
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    _clear_previous(folder)
    raw = results_table.load(tables)
    frame = prepare(raw)
    groups = aggregate(frame)
    compared = comparison(groups)
    write_csv(compared, folder / "paper_comparison.csv")
    inline = write_paper_tables(compared, folder)
    runs_md = write_runs(frame, folder)
    bases = rundirs.bases_of(tables)
    chosen, problems = rundirs.choose_runs(frame, runs, bases)
    found = [
        *_efficiency_figures(groups, folder),
        *_per_run_figures(chosen, problems, bases, folder),
        *_analysis_figures(frame, bases, folder),
    ]
    lines = [
        '# Reproduction of "Image Classification on Animals" (Ko and Guo)',
        "",
        *_sources(tables, len(raw), frame),
        "## Coverage",
        "",
        markdown_table(_coverage(compared), raw=["Sweep"]),
        "",
        "### What is missing",
        "",
        *_missing_section(compared),
        "## How to read the tables",
        "",
        *_rules(),
        "## Settings the paper leaves open, and the choices made",
        "",
        *_choices_section(frame, bases),
        "",
        "## The paper's tables",
        "",
        *_paper_tables_section(inline),
        "## Beyond the paper",
        "",
        *_beyond_section(frame, groups, folder),
        "## Figures",
        "",
        *_figure_lines(found, folder),
        "## Every run",
        "",
        "[runs.csv](runs.csv) · [runs.md](runs.md)",
        "",
        runs_md if len(frame) <= 200 else "(more than 200 runs: see runs.md)",
        "",
    ]
    index = folder / "report.md"
    index.write_text("\n".join(lines))
    html.write_html(index)  # the same report as one file a browser opens: figures inline
    return index
