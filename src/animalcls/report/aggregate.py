"""Results rows -> one row per run -> one row per group of true repeats. Pure data-frame functions.

Names used throughout the report:
- `paper_config`: the paper configuration a run stands for (as tagged by the paper sweep, else the
  one its settings make), the key of the paper's tables;
- `ran_as`: the paper configuration id of the settings a run actually ran (it differs from
  `paper_config` when a sweep row was run with overrides such as `epochs=1`);
- `repeat_key`: runs with one paper_config and one repeat_key differ by seed alone and are
  averaged. It is the recorded `repeat_id` (a hash of everything the run measures except the
  seed: precision, split, data identity, recipe settings, ...); rows from before record_version 2
  have none and fall back to ran_as + data + precision + split (+ recipe and recipe_settings when
  they are not the paper's), so bf16 and fp32 runs, two different test sets or two recipes are
  never pooled.
- `recipe`: the training recipe ("paper", "scratch", "finetune"); empty in tables written before
  recipes existed, which read as "paper". `recipe_settings` lists what differs from the paper's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from animalcls import paper, record
from animalcls.report.text import is_blank, plain

ACCURACY = ("test_top1", "test_top3", "test_top5")
# Report-only views of record.COLUMNS: which columns are text (names of choices) and booleans;
# every other column of the schema is a number.
CHOICES = ("model", "optimizer", "loss", "aug", "precision", "test_on", "pipeline")
BOOLEANS = ("pretrained", "batch_norm")
TEXT = (*record.TEXT_COLUMNS, *CHOICES)
NUMERIC = tuple(c for c in record.COLUMNS if c not in TEXT and c not in BOOLEANS)
GROUP_KEYS = ["paper_config", "repeat_key"]
PAPER_RECIPE = "paper"  # the `recipe` of the paper's procedures (and of rows from before recipes)
SETTINGS_SHOWN = (
    "model",
    "optimizer",
    "lr",
    "batch_size",
    "epochs",
    "loss",
    "aug",
    "batch_norm",
    "dropout",
    "pretrained",
)
AGGREGATE_COLUMNS = [
    *GROUP_KEYS,
    "ran_as",
    "data_name",
    "data_id",
    "precision",
    "split",
    "recipe",
    "recipe_settings",
    *SETTINGS_SHOWN,
    "n",
    "n_runs",
    "n_ok",
    "n_diverged",
    "n_failed",
    "n_stopped_early",
    "seeds",
    "diffs",
    "run_ids",
    *(f"{m}_{s}" for m in (*ACCURACY, "val_top1") for s in ("mean", "std")),
    "gflops",
    "gmacs_fvcore",
    "params",
    "train_seconds",
]


# ---------------------------------------------------------------- one row per run


def data_name(value: Any, record_version: Any = None) -> str:
    """The data set of a run from the results' `data` cell. Since record_version 2 the cell is a
    label (the data config's name or the root's folder name), taken as it is; older rows hold a
    name, a root path (its folder name is the data set) or a JSON object."""
    if is_blank(value):
        return ""
    text = str(value)
    if not is_blank(record_version) and float(record_version) >= 2:
        return text
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        text = str(parsed.get("name") or parsed.get("root") or "")
    return Path(text).name if "/" in text else text


def ran_as(row: dict[str, Any]) -> str:
    """The paper configuration id of the settings a run ran ('' if they were never recorded)."""
    try:
        return paper.paper_config_of(row)
    except (KeyError, TypeError, ValueError):  # a run that failed before its settings were known
        return ""


def settings_diff(row: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """How a run's settings differ from a paper configuration, e.g. ['epochs=1 (paper 10)']."""
    ran = {"augmentation": row.get("aug"), **row}
    keys = ["model", "pretrained", "optimizer", "lr", "batch_size", "epochs", "loss", "augmentation"]
    if paper.has_base_options(config["model"]):
        keys += ["batch_norm", "dropout"]
    return [
        f"{key}={plain(ran.get(key))} (paper {plain(config[key])})"
        for key in keys
        if not _same(key, ran.get(key), config[key])
    ]


def _same(key: str, mine: Any, theirs: Any) -> bool:
    if key in BOOLEANS:
        return paper.as_bool(mine) == paper.as_bool(theirs)
    if key in ("lr", "dropout", "batch_size", "epochs"):
        return not is_blank(mine) and math.isclose(float(mine), float(theirs), rel_tol=1e-9)
    return str(mine) == str(theirs)


def _stamps(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["timestamp"], errors="coerce", utc=True, format="mixed")


def dedupe(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run id: the latest ok row, else the latest row (file order breaks ties)."""
    frame = frame.reset_index(drop=True)
    frame["_order"] = range(len(frame))
    frame["_stamp"] = _stamps(frame)
    frame = frame.sort_values(["_stamp", "_order"], na_position="first", kind="mergesort")
    no_id = frame["run_id"] == ""
    keyed = frame[~no_id]
    ok_last = keyed[keyed["status"] == "ok"].groupby("run_id").tail(1)
    rest = keyed[~keyed["run_id"].isin(ok_last["run_id"])].groupby("run_id").tail(1)
    kept = pd.concat([ok_last, rest, frame[no_id]]).sort_values("_order")
    return kept.drop(columns=["_order", "_stamp"]).reset_index(drop=True)


def _types(frame: pd.DataFrame) -> pd.DataFrame:
    """Every schema column present (an old table lacks the newer ones), with one type each."""
    frame = frame.reindex(columns=list(dict.fromkeys([*record.COLUMNS, *frame.columns])))
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in TEXT:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "").astype(str)
    for column in BOOLEANS:
        frame[column] = frame[column].map(paper.as_bool)
    frame["dropout"] = frame["dropout"].fillna(0.0)
    return frame


def repeat_key(row: dict[str, Any]) -> str:
    """What a run shares with its true repeats (see the module docstring)."""
    repeat_id: str = row["repeat_id"]
    if repeat_id:
        return repeat_id
    legacy: tuple[str, ...] = (row["ran_as"], row["data_name"], row["data_id"], row["precision"], row["split"])
    if row["recipe"] != PAPER_RECIPE or row["recipe_settings"]:  # the paper's recipe keeps its old key
        legacy += (row["recipe"], row["recipe_settings"])
    return "legacy:" + json.dumps(legacy)


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Normalise a results table: types, one row per run, and its matching and grouping keys.

    Adds `data_name`, `ran_as`, `paper_config` (the recorded one, else `ran_as`), `repeat_key`,
    `diffs` (settings that differ from that paper configuration) and `counted` (whether its
    accuracy is averaged: `ok` runs with a finite test top-1 only). An `ok` row whose test top-1
    is NaN or infinite reads as `diverged`: it is counted apart, never averaged (one such row
    made every mean of its group NaN or -inf). An empty `recipe` (a table written before recipes
    existed) reads as the paper's recipe.
    """
    frame = dedupe(_types(frame))
    frame["recipe"] = frame["recipe"].where(frame["recipe"] != "", PAPER_RECIPE)
    frame["data_name"] = [data_name(d, v) for d, v in zip(frame["data"], frame["record_version"])]
    frame["ran_as"] = [ran_as(r) for r in records(frame)]
    frame["paper_config"] = frame["paper_config"].where(frame["paper_config"] != "", frame["ran_as"])
    frame["repeat_key"] = [repeat_key(r) for r in records(frame)]
    known = cast(dict[str, dict[str, Any]], paper.configs().set_index("paper_config").to_dict("index"))
    frame["diffs"] = ["; ".join(_diffs(r, known.get(r["paper_config"]))) for r in records(frame)]
    finite = pd.Series(np.isfinite(frame["test_top1"].to_numpy(dtype=float)), index=frame.index)
    frame["status"] = frame["status"].where((frame["status"] != "ok") | finite, "diverged")
    frame["counted"] = (frame["status"] == "ok") & finite
    return frame


def _diffs(row: dict[str, Any], config: dict[str, Any] | None) -> list[str]:
    notes = settings_diff(row, config) if config else []
    if row["data_name"] and row["data_name"] != "animals":
        notes.append(f"data={row['data_name']} (paper: animals)")
    return notes


# ---------------------------------------------------------------- groups of repeats


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Seed repeats -> one row per (paper_config, repeat_key): see AGGREGATE_COLUMNS.

    n = runs averaged (one per seed; ok runs with finite accuracy), n_runs, n_ok, n_diverged
    (diverged, never averaged), n_failed (failed + interrupted, never averaged),
    seeds, `<metric>_mean` / `<metric>_std` for test top-1/3/5 and val top-1, and the means of
    gflops, gmacs_fvcore, params, train_seconds. `frame` is a prepared table (see `prepare`);
    std is the sample std (NaN for n=1).
    """
    rows = [_aggregate_group(keys, group) for keys, group in frame.groupby(GROUP_KEYS, sort=False, dropna=False)]
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


def one_per_seed(counted: pd.DataFrame) -> pd.DataFrame:
    """The latest run of each seed: two runs of one group with one seed measured the same thing
    (e.g. one run recorded under two old-style run ids), so they are one sample, not two."""
    seeded = counted[counted["seed"].notna()]
    latest = (
        seeded.assign(_stamp=_stamps(seeded))
        .sort_values("_stamp", na_position="first", kind="mergesort")
        .drop_duplicates("seed", keep="last")
        .drop(columns="_stamp")
    )
    return pd.concat([latest, counted[counted["seed"].isna()]])


def _aggregate_group(keys: tuple[Hashable, ...], group: pd.DataFrame) -> dict[str, Any]:
    counted = one_per_seed(group[group["counted"]])
    status = group["status"]
    first = group.iloc[0]
    row: dict[str, Any] = dict(zip(GROUP_KEYS, keys))
    shown = ("ran_as", "data_name", "data_id", "precision", "split", "recipe", "recipe_settings", *SETTINGS_SHOWN)
    row.update({k: first[k] for k in shown})
    row.update(
        n=len(counted),
        n_runs=len(group),
        n_ok=int((status == "ok").sum()),
        n_diverged=int((status == "diverged").sum()),
        n_failed=int(status.isin(["failed", "interrupted"]).sum()),
        n_stopped_early=int((counted["stopped_early"] != "").sum()),
        seeds=",".join(plain(s) for s in sorted(counted["seed"].dropna().unique())),
        diffs=first["diffs"],
        run_ids=";".join(group["run_id"]),
    )
    for metric in (*ACCURACY, "val_top1"):
        values = counted[metric][np.isfinite(counted[metric].to_numpy(dtype=float))]  # never a NaN or inf mean
        row[f"{metric}_mean"] = values.mean() if len(values) else float("nan")
        row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
    for metric in ("gflops", "gmacs_fvcore", "params", "train_seconds"):
        values = group[metric].dropna()
        row[metric] = values.mean() if len(values) else float("nan")
    return row


# ---------------------------------------------------------------- picking runs


def row_dict(row: pd.Series) -> dict[str, Any]:
    """One row as a dict. The columns here are named by strings; pandas-stubs types the keys as
    Hashable."""
    return cast(dict[str, Any], row.to_dict())


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as dicts (string column names, as `row_dict`)."""
    return cast(list[dict[str, Any]], frame.to_dict("records"))


def first_of(counted: pd.DataFrame, paper_config: str) -> dict[str, Any] | None:
    """The run that stands for a paper configuration: exact settings first, then lowest seed."""
    rows = counted[counted["paper_config"] == paper_config]
    rows = rows.assign(_exact=rows["diffs"] == "").sort_values(
        ["_exact", "seed"], ascending=[False, True], kind="mergesort"
    )
    return row_dict(rows.iloc[0]) if len(rows) else None


def ranked_ok(frame: pd.DataFrame) -> pd.DataFrame:
    """ok runs with a test accuracy, best first (as the paper picks its best model)."""
    ok: pd.DataFrame = frame[(frame["status"] == "ok") & np.isfinite(frame["test_top1"].to_numpy(dtype=float))]
    return ok.sort_values(["test_top1", "val_top1"], ascending=False, kind="mergesort")


def best(counted: pd.DataFrame) -> dict[str, Any] | None:
    ranked = ranked_ok(counted)
    return row_dict(ranked.iloc[0]) if len(ranked) else None


# ---------------------------------------------------------------- one run's predictions


def per_class_accuracy(predictions: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy [%] and test images per true class, lowest accuracy first."""
    correct = predictions["label"] == predictions["predicted"]
    table = correct.groupby(predictions["label"]).agg(["mean", "size"])
    table.columns = ["accuracy_pct", "test_images"]
    table["accuracy_pct"] *= 100
    return table.sort_values(["accuracy_pct", "test_images"]).rename_axis("class").reset_index()


def confusion(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Counts, rows = true class, columns = predicted class, in `classes` order."""
    names = list(dict.fromkeys([*classes, *sorted(set(predictions["label"]) | set(predictions["predicted"]))]))
    table = pd.crosstab(predictions["label"], predictions["predicted"])
    return table.reindex(index=names, columns=names, fill_value=0)


def top_confusions(matrix: pd.DataFrame, limit: int = 10) -> pd.DataFrame:
    def count(t: Hashable, p: Hashable) -> float:
        return cast(float, matrix.at[t, p])  # a number (pandas-stubs types .at as any scalar)

    pairs = [(t, p, int(count(t, p))) for t in matrix.index for p in matrix.columns if t != p and count(t, p) > 0]
    pairs.sort(key=lambda x: -x[2])
    return pd.DataFrame(pairs[:limit], columns=["True class", "Predicted as", "Test images"])
