"""Beyond the paper: this project's recipes against its reproduction of the paper's recipe.

Pure data-frame functions on the report's groups of seed repeats (`report.aggregate`):

- `beyond_table`: one row per (model, data set) with at least one run: the paper's best accuracy
  for the model, the best group trained with the paper's recipe here, the best group trained with
  any other recipe, and their difference.
- `epoch_budget`: test top-1 per epoch budget (the `epochs` setting) and recipe, for one model on
  the data set it has the most `ok` runs on (the numbers behind figures/epoch_budget.png).

Rules:
- A group's recipe is its `recipe` column; a table written before recipes existed has none, and
  its runs count as the paper's recipe. A run with recipe "paper" whose `recipe_settings` are not
  empty changed some of the paper's procedures: it is a recipe of its own, "paper+changes".
- A data set is its name, its identity (`data_id`, the file list) and its split: the paper-recipe
  and recipe columns of one row are always measured on one test set.
- "Best" is the group with the highest mean validation top-1 (then the most runs averaged), among
  groups that averaged at least one run with a test top-1; groups without a validation score rank
  last. Picked on validation, never on test: a pick on the test set would report the winner of
  many noisy draws as if it were one measurement. The note says among how many groups.
- The difference is paired where the two picked groups share seeds (`report.paired`): the mean of
  per-seed differences of test top-1, its 95 % Student-t interval and a verdict ("recipe beats
  paper" only with 3 or more pairs and an interval that excludes 0). Without a shared seed it is
  the difference of the two means, and the note says so.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import pandas as pd

from animalcls import paper
from animalcls.registry import MODELS, display_name
from animalcls.report import paired
from animalcls.report.aggregate import PAPER_RECIPE, aggregate, row_dict
from animalcls.report.text import is_blank, plain

PAPER_CHANGED = "paper+changes"  # the paper's recipe with some of its procedures changed
DATA_KEY = ["data_name", "data_id", "split"]  # one test set
MISSING = "missing"
DASH = "—"

BEYOND_COLUMNS = [
    "model",
    "model_name",
    "data",
    "data_id",
    "split",
    "paper_best_pct",
    "paper_recipe_top1_mean",
    "paper_recipe_top1_std",
    "paper_recipe_n",
    "paper_recipe_epochs",
    "paper_recipe_config",
    "recipe",
    "recipe_top1_mean",
    "recipe_top1_std",
    "recipe_n",
    "recipe_epochs",
    "recipe_config",
    "recipe_settings",
    "diff_pp",
    "diff_pairs",
    "diff_ci_low",
    "diff_ci_high",
    "verdict",
    "note",
]
BUDGET_COLUMNS = [
    "recipe",
    "epochs",
    "n",
    "mean",
    "std",
    "model",
    "data",
    "config",
    "recipe_settings",
    "groups",
    "n_stopped_early",
]


def recipe_label(row: Any) -> str:
    """The recipe a group or run was trained with (see the module docstring)."""
    name = "" if is_blank(row.get("recipe")) else str(row["recipe"])
    name = name or PAPER_RECIPE
    if name == PAPER_RECIPE and not is_blank(row.get("recipe_settings")):
        return PAPER_CHANGED
    return name


def _labelled(groups: pd.DataFrame) -> pd.DataFrame:
    labels = [recipe_label(g) for g in groups.to_dict("records")]
    return groups.assign(recipe_label=pd.Series(labels, index=groups.index, dtype=object))


def best_group(groups: pd.DataFrame) -> tuple[dict[str, Any] | None, int]:
    """The group with the highest mean validation top-1 (then the most runs averaged) among those
    that averaged a run with a test top-1; returns (that group or None, number of such groups)."""
    measured = groups[(groups["n"] > 0) & groups["test_top1_mean"].notna()]
    if measured.empty:
        return None, 0
    val = measured["val_top1_mean"].fillna(float("-inf"))  # no validation score: ranked last
    ranked = measured.assign(_val=val).sort_values(["_val", "n"], ascending=False, kind="mergesort")
    return row_dict(ranked.drop(columns="_val").iloc[0]), len(ranked)


def _runs_of(frame: pd.DataFrame | None, group: dict[str, Any] | None) -> pd.DataFrame | None:
    """The ok runs with a test top-1 that a group averaged (None without the runs' frame)."""
    if frame is None or group is None:
        return None
    mine = frame[(frame["paper_config"] == group["paper_config"]) & (frame["repeat_key"] == group["repeat_key"])]
    ok: pd.DataFrame = mine[(mine["status"] == "ok") & mine["test_top1"].notna()]
    return ok


def paired_diff(
    frame: pd.DataFrame | None, own: dict[str, Any] | None, other: dict[str, Any] | None
) -> paired.MetricResult | None:
    """Recipe - paper recipe in test top-1, paired by seed; None when no seed is shared."""
    own_runs, other_runs = _runs_of(frame, own), _runs_of(frame, other)
    if own_runs is None or other_runs is None or own_runs.empty or other_runs.empty:
        return None
    pairs, _ = paired.pair_seeds(own_runs, other_runs)
    result = paired.compare_metric(pairs, paired.METRICS[0])
    return result if result.n else None


def _verdict(result: paired.MetricResult) -> str:
    return result.verdict.replace("b beats a", "recipe beats paper").replace("a beats b", "paper beats recipe")


def _model_order(model: str) -> tuple[int, str]:
    names = MODELS.names()
    return (names.index(model) if model in names else len(names), model)


def _data_label(data_name: str, ambiguous: bool, data_id: str, split: str) -> str:
    """The data set's name; with its identity and split when the name alone is ambiguous."""
    name = data_name or "?"
    if not ambiguous:
        return name
    return f"{name} ({data_id[:8] or 'no data_id'}, split {split or '?'})"


def _epochs(group: dict[str, Any] | None) -> Any:
    return float("nan") if group is None or is_blank(group.get("epochs")) else int(group["epochs"])


def _note(
    key_name: str,
    paper_best: float,
    own: dict[str, Any] | None,
    own_of: int,
    other: dict[str, Any] | None,
    other_of: int,
    pairs: int,
) -> str:
    notes = []
    if own is not None and other is not None and not pairs:
        notes.append("no seed in common: difference of means, unpaired")
    if own is not None and other is not None:
        if _epochs(own) != _epochs(other):
            notes.append(f"epochs differ: paper recipe {plain(own['epochs'])}, recipe {plain(other['epochs'])}")
        if own["precision"] != other["precision"]:
            notes.append(f"precision differs: paper recipe {own['precision']}, recipe {other['precision']}")
    if own_of > 1:
        notes.append(f"paper recipe: best of {own_of} groups")
    if other_of > 1:
        notes.append(f"recipe: best of {other_of} groups")
    for label, group in (("paper recipe", own), ("recipe", other)):
        if group is not None and group["n_diverged"]:
            notes.append(f"{label}: {group['n_diverged']} diverged run(s), not averaged")
        if group is not None and group["n_stopped_early"]:
            notes.append(f"{label}: {group['n_stopped_early']} of {group['n']} run(s) stopped early")
    if not is_blank(paper_best) and key_name != "animals":
        notes.append("the paper's number is on its animals data")
    return "; ".join(notes)


def beyond_table(groups: pd.DataFrame, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (model, data set) with at least one run (BEYOND_COLUMNS; NaN where missing).

    `frame` is the prepared runs the groups were aggregated from: with it, the difference is
    paired by seed where the two groups share seeds."""
    if groups.empty:
        return pd.DataFrame(columns=BEYOND_COLUMNS)
    paper_best = paper.load().groupby("model")["accuracy_pct"].max().to_dict()
    groups = _labelled(groups[groups["model"] != ""])
    keys = sorted(
        {tuple(str(v) for v in key) for key in groups[["model", *DATA_KEY]].itertuples(index=False)},
        key=lambda key: (_model_order(key[0]), key[1:]),
    )
    names = Counter((model, data_name) for model, data_name, _, _ in keys)
    out = []
    for model, data_name, data_id, split in keys:
        here = groups[
            (groups["model"] == model)
            & (groups["data_name"] == data_name)
            & (groups["data_id"] == data_id)
            & (groups["split"] == split)
        ]
        is_paper = here["recipe_label"] == PAPER_RECIPE
        own, own_of = best_group(here[is_paper])
        other, other_of = best_group(here[~is_paper])
        best_pct = paper_best.get(model, float("nan"))
        own_mean = own["test_top1_mean"] if own else float("nan")
        other_mean = other["test_top1_mean"] if other else float("nan")
        diff = paired_diff(frame, own, other)
        nan = float("nan")
        out.append(
            {
                "model": model,
                "model_name": display_name("model", model),
                "data": _data_label(data_name, names[(model, data_name)] > 1, data_id, split),
                "data_id": data_id,
                "split": split,
                "paper_best_pct": best_pct,
                "paper_recipe_top1_mean": own_mean,
                "paper_recipe_top1_std": own["test_top1_std"] if own else float("nan"),
                "paper_recipe_n": own["n"] if own else 0,
                "paper_recipe_epochs": _epochs(own),
                "paper_recipe_config": own["ran_as"] if own else "",
                "recipe": other["recipe_label"] if other else "",
                "recipe_top1_mean": other_mean,
                "recipe_top1_std": other["test_top1_std"] if other else float("nan"),
                "recipe_n": other["n"] if other else 0,
                "recipe_epochs": _epochs(other),
                "recipe_config": other["ran_as"] if other else "",
                "recipe_settings": other["recipe_settings"] if other else "",
                "diff_pp": diff.diff.mean if diff else other_mean - own_mean,
                "diff_pairs": diff.n if diff else 0,
                "diff_ci_low": diff.diff.low if diff else nan,
                "diff_ci_high": diff.diff.high if diff else nan,
                "verdict": _verdict(diff) if diff else "",
                "note": _note(data_name, best_pct, own, own_of, other, other_of, diff.n if diff else 0),
            }
        )
    frame = pd.DataFrame(out, columns=BEYOND_COLUMNS)
    for column in ("paper_recipe_epochs", "recipe_epochs"):
        frame[column] = frame[column].astype("Int64")  # whole epochs; blank where missing
    return frame


def mean_std(mean: Any, std: Any) -> str:
    """'mean ± std' (std left out for one run); "missing" without a mean."""
    if is_blank(mean):
        return MISSING
    return f"{float(mean):.2f}" + ("" if is_blank(std) else f" ± {float(std):.2f}")


def _ci(low: Any, high: Any) -> str:
    return "" if is_blank(low) else f"{float(low):+.2f} to {float(high):+.2f}"


def _count(n: Any, mean: Any) -> str:
    return "" if is_blank(mean) else str(int(n))


def beyond_display(table: pd.DataFrame) -> pd.DataFrame:
    """The beyond table as strings for Markdown: missing numbers read "missing", never 0."""
    rows = table.to_dict("records")
    return pd.DataFrame(
        {
            "Model": [r["model_name"] for r in rows],
            "Data": [r["data"] for r in rows],
            "Paper's best %": [DASH if is_blank(r["paper_best_pct"]) else f"{r['paper_best_pct']:.2f}" for r in rows],
            "Paper recipe here: top-1 %": [
                mean_std(r["paper_recipe_top1_mean"], r["paper_recipe_top1_std"]) for r in rows
            ],
            "n (paper recipe)": [_count(r["paper_recipe_n"], r["paper_recipe_top1_mean"]) for r in rows],
            "Epochs (paper recipe)": [plain(r["paper_recipe_epochs"]) if r["paper_recipe_n"] else "" for r in rows],
            "Best recipe": [r["recipe"] or "" for r in rows],
            "Recipe: top-1 %": [mean_std(r["recipe_top1_mean"], r["recipe_top1_std"]) for r in rows],
            "n (recipe)": [_count(r["recipe_n"], r["recipe_top1_mean"]) for r in rows],
            "Epochs (recipe)": [plain(r["recipe_epochs"]) if r["recipe_n"] else "" for r in rows],
            "Diff. (pp)": ["" if is_blank(r["diff_pp"]) else f"{r['diff_pp']:+.2f}" for r in rows],
            "Paired seeds": [str(r["diff_pairs"]) if r["diff_pairs"] else "" for r in rows],
            "95 % CI (paired)": [_ci(r["diff_ci_low"], r["diff_ci_high"]) for r in rows],
            "Verdict": [r["verdict"] for r in rows],
            "Recipe settings": [r["recipe_settings"] for r in rows],
            "Note": [r["note"] for r in rows],
        }
    )


# ---------------------------------------------------------------- the epoch budget


def _recipe_order(label: str) -> tuple[int, str]:
    return (0 if label == PAPER_RECIPE else 1 if label == PAPER_CHANGED else 2, label)


def epoch_budget(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """Test top-1 per (recipe, epoch budget) from the `ok` runs of one model, on the data set it
    has the most such runs on (BUDGET_COLUMNS). Per point, the best group of true repeats of that
    recipe and budget (see the module docstring); `groups` counts the candidates."""
    ok = frame[
        (frame["status"] == "ok") & (frame["model"] == model) & frame["test_top1"].notna() & frame["epochs"].notna()
    ]
    if ok.empty:
        return pd.DataFrame(columns=BUDGET_COLUMNS)
    counts = ok.groupby(DATA_KEY, sort=False).size().reset_index(name="runs")
    counts = counts.assign(_other=counts["data_name"] != "animals")  # ties: the paper's data set first
    top = counts.sort_values(["runs", "_other", *DATA_KEY], ascending=[False, True, True, True, True]).iloc[0]
    chosen = ok[(ok[DATA_KEY] == top[DATA_KEY]).all(axis=1)]
    groups = _labelled(aggregate(chosen))
    rows = []
    for (label, epochs), candidates in groups.groupby(["recipe_label", "epochs"], sort=False):
        group, count = best_group(candidates)
        if group is None:
            continue
        rows.append(
            {
                "recipe": label,
                "epochs": int(cast(float, epochs)),
                "n": int(group["n"]),
                "mean": group["test_top1_mean"],
                "std": group["test_top1_std"],
                "model": model,
                "data": top["data_name"],
                "config": group["ran_as"],
                "recipe_settings": group["recipe_settings"],
                "groups": count,
                "n_stopped_early": int(group["n_stopped_early"]),
            }
        )
    rows.sort(key=lambda r: (_recipe_order(r["recipe"]), r["epochs"]))
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)
