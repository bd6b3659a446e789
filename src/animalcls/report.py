"""`animalcls report`: the paper's tables and figures, side by side with what the runs measured.

Reads one or more results tables (never trains, needs no GPU) and writes under `out_dir`:

    report.md                    the index: coverage, what is missing, tables, figures, choices
    paper_comparison.csv         every paper row (67) with its reproduced numbers
    tables/table_2_1_1.{md,csv,tex} ...   one per paper table, the paper's columns
    runs.csv, runs.md            every run: settings, top-1/3/5, GFLOPs, GMACs, params, time, status
    figures/*.png                accuracy-efficiency, curves, failure cases, class distribution,
                                 per-class accuracy, confusion matrix

Rules (also stated in report.md):
- Runs are matched to paper rows by `paper_config`; a run without one is matched by its settings.
- A run id that appears several times (a re-run, merged tables) counts once: its latest ok row,
  else its latest row.
- Repeats (seeds) are aggregated per (configuration, settings actually run, data set): mean,
  sample std (ddof=1) and n. Averaged are `ok` runs and `diverged` runs that recorded a test
  accuracy (a diverged configuration really does score near chance, which is what the paper's
  1.56 % / 2.76 % rows look like); `failed` and `interrupted` runs are counted, never averaged.
- A paper row with no averaged run shows "missing" (empty numbers in CSV), never 0.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from animalcls import paper
from animalcls import results as results_table

log = logging.getLogger(__name__)

ACCURACY = ("test_top1", "test_top3", "test_top5")
NUMERIC = ("lr", "batch_size", "epochs", "dropout", "seed", "val_top1", "val_top3", "val_top5",
           *ACCURACY, "gmacs_fvcore", "gflops", "params", "train_seconds", "images_per_s",
           "epochs_done")
MISSING = "missing"
GROUP_KEYS = ["config_key", "settings_id", "data_name"]

MODEL_NAMES = {"base": "Base", "resnet18": "ResNet18", "resnet34": "ResNet34",
               "resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2",
               "mobilenet_v3_large": "MobileNetV3_large", "mobilenet_v3_small": "MobileNetV3_small"}
OPTIM_NAMES = {"adam": "Adam", "sgd": "SGD", "sgd_momentum": "SGD + momentum (0.9)"}
LOSS_NAMES = {"cross_entropy": "Cross Entropy", "multi_margin": "Multi Margin Loss"}
AUG_NAMES = {"default_112": "default", "rotation_112": "+ rotation", "imagenet_224": "default (224)"}
COLUMN_NAMES = {"model": "Model", "optimizer": "Optimizer", "lr": "Learning rate",
                "batch_size": "Batch", "epochs": "Epoch", "loss": "Loss function",
                "batch_norm": "Batch normalization", "dropout": "Dropout",
                "augmentation": "Data augmentation"}


# ---------------------------------------------------------------- reading and matching runs

def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ""


def data_name(value: Any) -> str:
    """The data set of a run from the results' `data` cell (a name, a root, or a JSON object)."""
    if _is_blank(value):
        return ""
    text = str(value)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        text = str(parsed.get("name") or parsed.get("root") or "")
    return Path(text).name if "/" in text else text


def _settings_id(row: dict) -> str:
    try:
        return paper.config_id(row)
    except (KeyError, TypeError, ValueError):   # a run that failed before its settings were known
        return ""


def settings_diff(row: dict, config: dict) -> list[str]:
    """How a run's settings differ from a paper configuration, e.g. ['epochs=1 (paper 10)']."""
    ran = {"augmentation": row.get("aug"), **row}
    keys = ["model", "pretrained", "optimizer", "lr", "batch_size", "epochs", "loss", "augmentation"]
    if config["model"] == "base":
        keys += ["batch_norm", "dropout"]
    diffs = []
    for key in keys:
        mine, theirs = ran.get(key), config[key]
        if key in ("pretrained", "batch_norm"):
            same = paper.as_bool(mine) == paper.as_bool(theirs)
        elif key in ("lr", "dropout", "batch_size", "epochs"):
            same = not _is_blank(mine) and math.isclose(float(mine), float(theirs), rel_tol=1e-9)
        else:
            same = str(mine) == str(theirs)
        if not same:
            diffs.append(f"{key}={_plain(mine)} (paper {_plain(theirs)})")
    return diffs


def _plain(value: Any) -> str:
    if _is_blank(value):
        return "?"
    if isinstance(value, float):
        return f"{value:g}" if not value.is_integer() else str(int(value))
    return str(value)


def _dedupe(frame):
    """One row per run id: the latest ok row, else the latest row (file order breaks ties)."""
    import pandas as pd

    frame = frame.reset_index(drop=True)
    frame["_order"] = range(len(frame))
    stamp = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True, format="mixed")
    frame["_stamp"] = stamp
    frame = frame.sort_values(["_stamp", "_order"], na_position="first", kind="mergesort")
    no_id = frame["run_id"] == ""
    keyed = frame[~no_id]
    ok_last = keyed[keyed["status"] == "ok"].groupby("run_id").tail(1)
    rest = keyed[~keyed["run_id"].isin(ok_last["run_id"])].groupby("run_id").tail(1)
    kept = pd.concat([ok_last, rest, frame[no_id]]).sort_values("_order")
    return kept.drop(columns=["_order", "_stamp"]).reset_index(drop=True)


def prepare(frame):
    """Normalise a results table: types, one row per run, and its paper matching keys.

    Adds `data_name`, `settings_id` (the config id of what actually ran), `config_key` (the paper
    configuration it belongs to: `paper_config`, else `settings_id`), `diffs` (settings that
    differ from that paper configuration) and `counted` (whether its accuracy is averaged).
    """
    import pandas as pd

    frame = frame.reindex(columns=list(dict.fromkeys([*results_table.COLUMNS, *frame.columns])))
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in ("run_id", "status", "paper_config", "tags", "model", "optimizer", "loss",
                   "aug", "run_dir", "error", "timestamp", "data"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "").astype(str)
    for column in ("pretrained", "batch_norm"):
        frame[column] = frame[column].map(paper.as_bool)
    frame["dropout"] = frame["dropout"].fillna(0.0)
    frame = _dedupe(frame)
    frame["data_name"] = frame["data"].map(data_name)
    records = frame.to_dict("records")
    frame["settings_id"] = [_settings_id(r) for r in records]
    frame["config_key"] = [r["paper_config"] or sid for r, sid in zip(records, frame["settings_id"])]
    known = paper.configs().set_index("config_id").to_dict("index")
    frame["diffs"] = ["; ".join(_diffs(r, known.get(key)))
                      for r, key in zip(frame.to_dict("records"), frame["config_key"])]
    frame["counted"] = (frame["status"] == "ok") | (
        (frame["status"] == "diverged") & frame["test_top1"].notna())
    return frame


def _diffs(row: dict, config: dict | None) -> list[str]:
    notes = settings_diff(row, config) if config else []
    if row["data_name"] and row["data_name"] != "animals":
        notes.append(f"data={row['data_name']} (paper: animals)")
    return notes


def aggregate(frame):
    """Seed repeats -> one row per (config_key, settings_id, data_name).

    Columns: n (runs averaged), n_runs, n_ok, n_diverged, n_failed (failed + interrupted),
    seeds, `<metric>_mean` / `<metric>_std` for test top-1/3/5 and val top-1, gflops,
    gmacs_fvcore, params, train_seconds (means), diffs, run_ids.
    `frame` is a prepared table (see `prepare`); std is the sample std (NaN for n=1).
    """
    import pandas as pd

    rows = [_aggregate_group(keys, group) for keys, group in
            frame.groupby(GROUP_KEYS, sort=False, dropna=False)]
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


AGGREGATE_COLUMNS = [
    *GROUP_KEYS, "model", "optimizer", "lr", "batch_size", "epochs", "loss", "aug", "batch_norm",
    "dropout", "pretrained", "n", "n_runs", "n_ok", "n_diverged", "n_failed", "seeds", "diffs",
    "run_ids", *(f"{m}_{s}" for m in (*ACCURACY, "val_top1") for s in ("mean", "std")),
    "gflops", "gmacs_fvcore", "params", "train_seconds"]


def _aggregate_group(keys: tuple, group) -> dict:
    counted = group[group["counted"]]
    status = group["status"]
    row = dict(zip(GROUP_KEYS, keys))
    first = group.iloc[0]
    row.update({k: first[k] for k in ("model", "optimizer", "lr", "batch_size", "epochs", "loss",
                                      "aug", "batch_norm", "dropout", "pretrained")})
    row.update(n=len(counted), n_runs=len(group), n_ok=int((status == "ok").sum()),
               n_diverged=int((status == "diverged").sum()),
               n_failed=int(status.isin(["failed", "interrupted"]).sum()),
               seeds=",".join(_plain(s) for s in sorted(counted["seed"].dropna().unique())),
               diffs=first["diffs"], run_ids=";".join(group["run_id"]))
    for metric in (*ACCURACY, "val_top1"):
        values = counted[metric].dropna()
        row[f"{metric}_mean"] = values.mean() if len(values) else float("nan")
        row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
    for metric in ("gflops", "gmacs_fvcore", "params", "train_seconds"):
        values = group[metric].dropna()
        row[metric] = values.mean() if len(values) else float("nan")
    return row


def _group_for(groups, config_id: str):
    """The group that reproduces a paper configuration: one with a measured accuracy first, then
    exact settings and the paper's data set, then the most runs averaged.
    Returns (group row or None, number of other groups)."""
    candidates = groups[groups["config_key"] == config_id]
    if candidates.empty:
        return None, 0
    ranked = candidates.assign(_measured=candidates["n"] > 0, _exact=candidates["diffs"] == "")
    ranked = ranked.sort_values(["_measured", "_exact", "n", "n_runs"], ascending=False,
                                kind="mergesort")
    return ranked.iloc[0].to_dict(), len(ranked) - 1


# ---------------------------------------------------------------- the paper's tables

def _fmt(value: Any, digits: int = 2) -> str:
    return "" if _is_blank(value) else f"{float(value):.{digits}f}"


def _display(column: str, value: Any) -> str:
    if column == "model":
        return MODEL_NAMES.get(value, str(value))
    if column == "optimizer":
        return OPTIM_NAMES.get(value, str(value))
    if column == "loss":
        return LOSS_NAMES.get(value, str(value))
    if column == "augmentation":
        return AUG_NAMES.get(value, str(value))
    if column == "batch_norm":
        return "3 extra" if paper.as_bool(value) else "n/a"
    if column == "dropout":
        return f"{float(value):g}" if float(value) > 0 else "n/a"
    if column == "lr":
        return paper.decimal_text(value)
    return _plain(value)


def _status(group: dict | None) -> str:
    if group is None:
        return MISSING
    if group["n"] > 0:
        return "ok"
    parts = [f"{group[k]} {k[2:]}" for k in ("n_failed", "n_diverged") if group[k]]
    return f"{MISSING} ({', '.join(parts)})" if parts else MISSING


def _row_note(paper_row: dict, group: dict | None, others: int) -> str:
    notes = [f"paper: {paper_row['note']}"] if paper_row["note"] else []
    if group is not None:
        if group["diffs"]:
            notes.append(f"ran with {group['diffs']}")
        if group["n_diverged"]:
            notes.append(f"{group['n_diverged']} diverged")
        if group["n_failed"]:
            notes.append(f"{group['n_failed']} failed/interrupted (not averaged)")
    if others:
        notes.append(f"{others} other group(s) of runs with other settings (see runs.md)")
    return "; ".join(notes)


def comparison(groups):
    """Every paper row with the numbers of the group that reproduces it (NaN where missing)."""
    import pandas as pd

    out = []
    for row in paper.load().to_dict("records"):
        group, others = _group_for(groups, row["config_id"])
        g = group or {}
        mean = g.get("test_top1_mean", float("nan"))
        out.append({
            **{k: row[k] for k in ("table", "row", *paper.SETTINGS, "config_id")},
            "paper_accuracy_pct": row["accuracy_pct"],
            "reproduced_top1_mean": mean, "reproduced_top1_std": g.get("test_top1_std"),
            "n": g.get("n", 0),
            "diff_pp": mean - row["accuracy_pct"] if not _is_blank(mean) else float("nan"),
            "reproduced_top3_mean": g.get("test_top3_mean"),
            "reproduced_top5_mean": g.get("test_top5_mean"),
            "paper_efficiency_g": row["efficiency_g"], "measured_gflops": g.get("gflops"),
            "measured_gmacs_fvcore": g.get("gmacs_fvcore"),
            "n_diverged": g.get("n_diverged", 0), "n_failed": g.get("n_failed", 0),
            "seeds": g.get("seeds", ""), "data": g.get("data_name", ""),
            "status": _status(group), "note": _row_note(row, group, others),
        })
    frame = pd.DataFrame(out)
    for column in ("reproduced_top1_std", "reproduced_top3_mean", "reproduced_top5_mean",
                   "measured_gflops", "measured_gmacs_fvcore"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _table_csv(rows, table: str):
    columns = ["table", "row", *paper.TABLE_COLUMNS[table], "paper_accuracy_pct",
               "reproduced_top1_mean", "reproduced_top1_std", "n", "diff_pp",
               "reproduced_top3_mean", "reproduced_top5_mean", "paper_efficiency_g",
               "measured_gflops", "measured_gmacs_fvcore", "n_diverged", "n_failed", "data",
               "status", "config_id", "note"]
    return rows[columns]


def _table_display(rows, table: str):
    """The paper's table as strings: its own columns, then paper vs reproduced."""
    import pandas as pd

    shown = {"Exp.": rows["row"].astype(str)}
    for column in paper.TABLE_COLUMNS[table]:
        shown[COLUMN_NAMES[column]] = [_display(column, v) for v in rows[column]]
    reproduced, diff = [], []
    for r in rows.to_dict("records"):
        if r["status"] != "ok":
            reproduced.append(r["status"])
            diff.append("")
            continue
        std = "" if _is_blank(r["reproduced_top1_std"]) else f" ± {r['reproduced_top1_std']:.2f}"
        reproduced.append(f"{r['reproduced_top1_mean']:.2f}{std}")
        diff.append(f"{r['diff_pp']:+.2f}")
    shown.update({
        "Paper acc. %": [_fmt(v) for v in rows["paper_accuracy_pct"]],
        "Reproduced top-1 % (mean ± std)": reproduced,
        "n": [str(n) if s == "ok" else "" for n, s in zip(rows["n"], rows["status"])],
        "Diff. (pp)": diff,
        "Top-3 %": [_fmt(v) for v in rows["reproduced_top3_mean"]],
        "Top-5 %": [_fmt(v) for v in rows["reproduced_top5_mean"]],
        "Paper GFLOPs": [_fmt(v) for v in rows["paper_efficiency_g"]],
        "Measured GFLOPs (2xMAC)": [_fmt(v) for v in rows["measured_gflops"]],
        "Note": rows["note"],
    })
    return pd.DataFrame(shown)


def markdown_table(frame) -> str:
    """A GitHub Markdown table (no tabulate dependency); '|' in cells is escaped."""
    def cell(value: Any) -> str:
        return "" if _is_blank(value) else str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(cell, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: Any) -> str:
    escaped = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in ("" if _is_blank(text) else str(text)))
    return escaped.replace("±", r"$\pm$")


def latex_table(frame, caption: str, label: str) -> str:
    # a long last column (the notes) wraps instead of running off the page
    spec = "l" * (len(frame.columns) - 1) + ("p{5cm}" if frame.columns[-1] == "Note" else "l")
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}",
             r"\hline", " & ".join(map(latex_escape, frame.columns)) + r" \\", r"\hline"]
    lines += [" & ".join(map(latex_escape, row)) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}", rf"\caption{{{latex_escape(caption)}}}",
              rf"\label{{{label}}}", r"\end{table}", ""]
    return "\n".join(lines)


def write_paper_tables(compared, out: Path) -> dict[str, str]:
    """tables/table_X.{md,csv,tex} per paper table; returns {table: inline Markdown}."""
    folder = out / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    inline = {}
    for table in paper.tables():
        rows = compared[compared["table"] == table].reset_index(drop=True)
        name = paper.experiment_name(table)
        caption = f"Table {table}: {paper.TABLE_TITLES.get(table, '')} (paper vs reproduced)"
        _table_csv(rows, table).to_csv(folder / f"{name}.csv", index=False, na_rep="")
        shown = _table_display(rows, table)
        inline[table] = markdown_table(shown.drop(columns=["Note"])) + _notes_list(rows)
        (folder / f"{name}.md").write_text(f"## {caption}\n\n" + markdown_table(shown))
        (folder / f"{name}.tex").write_text(latex_table(shown, caption, f"tab:{name}"))
    return inline


def _notes_list(rows) -> str:
    notes = [f"- Exp. {r['row']}: {r['note']}" for r in rows.to_dict("records") if r["note"]]
    return ("\nNotes:\n" + "\n".join(notes) + "\n") if notes else ""


# ---------------------------------------------------------------- all runs

RUN_COLUMNS = ["run_id", "status", "config_key", "model", "pretrained", "optimizer", "lr",
               "batch_size", "epochs", "loss", "aug", "batch_norm", "dropout", "seed",
               "data_name", "precision", "val_top1", "test_top1", "test_top3", "test_top5",
               "gflops", "gmacs_fvcore", "params", "train_seconds", "images_per_s",
               "epochs_done", "device", "tags", "diffs", "run_dir", "error"]


def write_runs(frame, out: Path) -> str:
    """runs.csv (every column) and runs.md (readable); returns the Markdown table."""
    import pandas as pd

    frame[[c for c in RUN_COLUMNS if c in frame]].to_csv(out / "runs.csv", index=False, na_rep="")
    ordered = frame.sort_values(["model", "config_key", "seed"], kind="mergesort")
    shown = pd.DataFrame({
        "Run": ordered["run_id"], "Status": ordered["status"], "Configuration": ordered["config_key"],
        "Seed": [_plain(s) for s in ordered["seed"]], "Data": ordered["data_name"],
        "Top-1 %": [_fmt(v) for v in ordered["test_top1"]],
        "Top-3 %": [_fmt(v) for v in ordered["test_top3"]],
        "Top-5 %": [_fmt(v) for v in ordered["test_top5"]],
        "GFLOPs (2xMAC)": [_fmt(v, 3) for v in ordered["gflops"]],
        "GMACs (fvcore)": [_fmt(v, 3) for v in ordered["gmacs_fvcore"]],
        "Params (M)": [_fmt(v / 1e6, 2) if not _is_blank(v) else "" for v in ordered["params"]],
        "Train time (s)": [_fmt(v, 0) for v in ordered["train_seconds"]],
        "Tables": ordered["tags"].str.replace(";", ", "),
        "Differs from paper": ordered["diffs"],
    })
    text = markdown_table(shown)
    (out / "runs.md").write_text("# Every run\n\nSee runs.csv for all columns.\n\n" + text)
    return text


# ---------------------------------------------------------------- run directories

def _bases(results: list[str]) -> list[Path]:
    """Folders a relative run_dir or image path may be relative to: the cwd, and the project
    that holds each results table (outputs/results.csv -> the folder above outputs/)."""
    bases = [Path.cwd()]
    for r in results:
        p = Path(r).resolve().parent
        bases += [p, p.parent]
    return list(dict.fromkeys(bases))


def resolve_path(path: Any, bases: Iterable[Path]) -> Path | None:
    if _is_blank(path):
        return None
    p = Path(str(path)).expanduser()
    for candidate in ([p] if p.is_absolute() else [b / p for b in bases]):
        if candidate.exists():
            return candidate
    return None


def _run_config(run_dir: Path | None) -> dict:
    """The run's resolved Hydra config as a plain dict ({} when absent or unreadable)."""
    if run_dir is None or not (run_dir / ".hydra" / "config.yaml").is_file():
        return {}
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except Exception as error:   # a hand-edited or torn file must not stop the report
        log.warning("could not read %s/.hydra/config.yaml: %s", run_dir, error)
        return {}


def _read_csv(path: Path | None):
    import pandas as pd

    if path is None or not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except Exception as error:
        log.warning("could not read %s: %s", path, error)
        return None


def choose_runs(frame, specs: list[str] | None, bases: list[Path]) -> tuple[list[dict], list[str]]:
    """The runs whose curves are drawn: by run id (or prefix), configuration id, or run dir.
    Default: the paper's base run and the best run. Returns (runs, problems)."""
    counted = frame[frame["counted"]]
    if specs is None:
        base_id = paper.table_rows(paper.tables()[0])["config_id"].iloc[0]
        picks = [("base run", _first_of(counted, base_id)), ("best run", _best(counted))]
        chosen: dict[str, dict] = {}
        for label, row in picks:
            if row is None:
                continue
            if row["run_id"] in chosen:   # the base run may also be the best one
                chosen[row["run_id"]]["label"] += f" = {label}"
            else:
                chosen[row["run_id"]] = {**row, "label": label}
        return list(chosen.values()), [] if chosen else ["no finished run to draw curves for"]
    chosen, problems = [], []
    for spec in specs:
        row = _find_run(frame, counted, spec, bases)
        if row is None:
            problems.append(f"run {spec!r} not found (give a run id, a configuration id or a run dir)")
        elif row["run_id"] not in [c["run_id"] for c in chosen]:
            chosen.append({**row, "label": f"run {spec}"})
    return chosen, problems


def _first_of(counted, config_id: str) -> dict | None:
    rows = counted[counted["config_key"] == config_id]
    rows = rows.assign(_exact=rows["diffs"] == "").sort_values(
        ["_exact", "seed"], ascending=[False, True], kind="mergesort")
    return rows.iloc[0].to_dict() if len(rows) else None


def _best(counted) -> dict | None:
    ok = counted[(counted["status"] == "ok") & counted["test_top1"].notna()]
    if ok.empty:
        return None
    ranked = ok.sort_values(["test_top1", "val_top1"], ascending=False, kind="mergesort")
    return ranked.iloc[0].to_dict()


def _find_run(frame, counted, spec: str, bases: list[Path]) -> dict | None:
    exact = frame[frame["run_id"] == spec]
    if len(exact):
        return exact.iloc[0].to_dict()
    if len(spec) >= 6:
        prefixed = frame[frame["run_id"].str.startswith(spec)]
        if len(prefixed) == 1:
            return prefixed.iloc[0].to_dict()
    by_config = _first_of(counted, spec)
    if by_config is not None:
        return by_config
    folder = resolve_path(spec, bases)
    if folder is not None and folder.is_dir():
        matches = frame[frame["run_dir"].map(lambda d: resolve_path(d, bases) == folder)]
        row = matches.iloc[0].to_dict() if len(matches) else {"run_id": folder.name}
        return {**row, "run_dir": str(folder)}
    return None


def _analysis_run(frame, bases: list[Path]) -> dict | None:
    """The best ok run whose directory still has predictions.csv (for the per-image figures)."""
    ok = frame[(frame["status"] == "ok") & frame["test_top1"].notna()]
    for row in ok.sort_values(["test_top1", "val_top1"], ascending=False,
                              kind="mergesort").to_dict("records"):
        folder = resolve_path(row["run_dir"], bases)
        if folder is not None and (folder / "predictions.csv").is_file():
            return {**row, "folder": folder}
    return None


def _run_title(row: dict) -> str:
    """What ran: its settings id, the paper configuration it stands for when that differs,
    the data set when it is not the paper's, the seed and the test accuracy."""
    ran, config = row.get("settings_id") or "", row.get("config_key") or ""
    name = ran or config or str(row.get("run_id", ""))
    if config and ran and config != ran:
        name += f" (for {config})"
    data = row.get("data_name") or ""
    data = f", data {data}" if data and data != "animals" else ""
    seed = "" if _is_blank(row.get("seed")) else f", seed {_plain(row['seed'])}"
    acc = "" if _is_blank(row.get("test_top1")) else f", test top-1 {row['test_top1']:.2f} %"
    return f"{name}{data}{seed}{acc}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


# ---------------------------------------------------------------- figures

MODEL_ORDER = list(MODEL_NAMES)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")   # never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def figure_accuracy_efficiency(groups, path: Path) -> Path:
    """Figure 3.1: accuracy vs compute per model; paper points (hollow) beside reproduced ones
    (filled, mean ± std over seeds), a dotted line joining the two for one configuration."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    configs = paper.configs()
    models = [m for m in MODEL_ORDER if m in set(configs["model"]) | set(groups.get("model", []))]
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, ax = plt.subplots(figsize=(9, 6))
    for model, points in configs.groupby("model"):
        ax.scatter(points["efficiency_g"], points["accuracy_pct"], s=60, facecolors="none",
                   edgecolors=[colors.get(model, "grey")], linewidths=1.5, zorder=3)
    reproduced = groups[groups["test_top1_mean"].notna() & groups["gflops"].notna()]
    for (model, exact), points in reproduced.groupby(["model", reproduced["diffs"] == ""]):
        ax.errorbar(points["gflops"], points["test_top1_mean"],
                    yerr=points["test_top1_std"].fillna(0.0), fmt="o" if exact else "^",
                    color=colors.get(model, "grey"), markersize=6, capsize=3, zorder=4)
    paired = reproduced.merge(configs, left_on="config_key", right_on="config_id",
                              suffixes=("", "_paper"))
    for p in paired.to_dict("records"):
        ax.plot([p["efficiency_g"], p["gflops"]], [p["accuracy_pct"], p["test_top1_mean"]], ":",
                color=colors.get(p["model"], "grey"), linewidth=0.8, zorder=2)
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.set_xticks([0.25, 0.5, 1, 2, 4, 8, 16])   # plain numbers, not 4x10^-1
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    xs = [*configs["efficiency_g"], *reproduced["gflops"]]
    ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
    ax.set_xlabel("compute per image [GFLOPs = 2 x multiply-adds, conv + linear; log scale]")
    ax.set_ylabel("test accuracy [%]")
    ax.set_title("Accuracy vs efficiency (paper Figure 3.1): paper vs reproduced")
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], marker="s", linestyle="", color=colors[m], label=MODEL_NAMES[m])
               for m in models]
    handles += [Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                       markeredgecolor="black", color="black", label="paper (as reported)"),
                Line2D([], [], marker="o", linestyle="", color="black",
                       label="reproduced (top-1, mean ± std)")]
    if (reproduced["diffs"] != "").any():
        handles.append(Line2D([], [], marker="^", linestyle="", color="black",
                              label="reproduced, settings differ from the paper"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    return _save(fig, path)


def figure_curves(history, title: str, path: Path) -> Path:
    """Training/validation accuracy (paper Fig. 5.1) and loss (Fig. 5.2) per epoch."""
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    epoch = history["epoch"]
    for column, label, style in (("train_top1", "train top-1", "-o"),
                                 ("val_top1", "validation top-1", "-s"),
                                 ("val_top3", "validation top-3", "--")):
        if column in history:
            acc.plot(epoch, history[column], style, label=label, markersize=3)
    acc.set(xlabel="epoch", ylabel="accuracy [%]", title="Accuracy")
    for column, label, style in (("train_loss", "train loss", "-o"),
                                 ("val_loss", "validation loss", "-s")):
        if column in history:
            loss.plot(epoch, history[column], style, label=label, markersize=3)
    loss.set(xlabel="epoch", ylabel="loss (per image)", title="Loss")
    from matplotlib.ticker import MaxNLocator

    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _class_names(folder: Path) -> list[str]:
    try:
        return list(json.loads((folder / "metrics.json").read_text()).get("classes", []))
    except (OSError, ValueError):
        return []


def _named(values, classes: list[str]) -> list[str]:
    """Labels as class names: integer labels are mapped through metrics.json's class list."""
    out = []
    for v in values:
        text = _plain(v)
        out.append(classes[int(text)] if text.isdigit() and int(text) < len(classes) else text)
    return out


def predictions_of(folder: Path):
    frame = _read_csv(folder / "predictions.csv")
    if frame is None or not {"label", "predicted"} <= set(frame.columns):
        return None
    classes = _class_names(folder)
    frame["label"] = _named(frame["label"], classes)
    frame["predicted"] = _named(frame["predicted"], classes)
    return frame


def _image_bases(folder: Path, bases: list[Path]) -> list[Path]:
    """Where test-image paths may be relative to: the run's data root, then the usual bases."""
    root = _run_config(folder).get("data", {}).get("root")
    roots = [r for r in (resolve_path(root, bases),) if r is not None]
    return [*roots, folder, *bases]


def figure_failures(predictions, folder: Path, bases: list[Path], title: str, path: Path,
                    limit: int = 12) -> tuple[Path | None, int]:
    """Misclassified test images, most confident mistakes first, with true and predicted labels.
    Returns (figure or None when no image file could be opened, number of images shown)."""
    from PIL import Image

    wrong = predictions[predictions["label"] != predictions["predicted"]]
    if "probability" in wrong:
        wrong = wrong.sort_values("probability", ascending=False, kind="mergesort")
    image_bases = _image_bases(folder, bases)
    tiles = []
    for r in wrong.to_dict("records"):
        file = resolve_path(r.get("path"), image_bases)
        if file is None:
            continue
        try:
            with Image.open(file) as im:
                image = im.convert("RGB")
                image.thumbnail((224, 224))
        except OSError:
            continue
        tiles.append((image, r))
        if len(tiles) == limit:
            break
    if not tiles:
        return None, 0
    plt = _pyplot()
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, r) in zip(axes.flat, tiles):
        ax.imshow(image)
        prob = "" if _is_blank(r.get("probability")) else f" ({float(r['probability']):.0%})"
        ax.set_title(f"true: {r['label']}\npredicted: {r['predicted']}{prob}", fontsize=8,
                     color="darkred")
    fig.suptitle(f"Misclassified test images (most confident first): {title}", fontsize=10)
    return _save(fig, path), len(tiles)


def figure_class_distribution(split, path: Path) -> Path:
    """Images per class, stacked by split, classes sorted by size."""
    plt = _pyplot()
    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=[s for s in ("train", "val", "test") if s in counts.columns])
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.13 * len(counts) + 2), 5))
    bottom = None
    for name in counts.columns:
        ax.bar(range(len(counts)), counts[name], bottom=bottom, label=name, width=0.85)
        bottom = counts[name] if bottom is None else bottom + counts[name]
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels(counts.index, rotation=90, fontsize=6 if len(counts) > 40 else 8)
    ax.set(xlabel="class", ylabel="images", xlim=(-0.6, len(counts) - 0.4))
    totals = ", ".join(f"{counts[c].sum():,} {c}" for c in counts.columns)
    ax.set_title(f"Class distribution: {int(counts.values.sum()):,} images in {len(counts)} "
                 f"classes ({totals})", fontsize=10)
    ax.legend(title="split")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def per_class_accuracy(predictions):
    """Test accuracy [%] and test images per true class, lowest accuracy first."""
    correct = predictions["label"] == predictions["predicted"]
    table = correct.groupby(predictions["label"]).agg(["mean", "size"])
    table.columns = ["accuracy_pct", "test_images"]
    table["accuracy_pct"] *= 100
    return table.sort_values(["accuracy_pct", "test_images"]).rename_axis("class").reset_index()


def figure_per_class(per_class, overall: float, title: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8.0, 0.13 * len(per_class) + 2), 5))
    ax.bar(range(len(per_class)), per_class["accuracy_pct"], width=0.85, color="tab:blue")
    ax.axhline(overall, color="tab:red", linestyle="--", label=f"overall {overall:.2f} %")
    ax.set_xticks(range(len(per_class)))
    ax.set_xticklabels(per_class["class"], rotation=90, fontsize=6 if len(per_class) > 40 else 8)
    ax.set(xlabel="true class (lowest accuracy first)", ylabel="test top-1 accuracy [%]",
           ylim=(0, 105), xlim=(-0.6, len(per_class) - 0.4))
    ax.set_title(f"Per-class test accuracy: {title}", fontsize=10)
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def confusion(predictions, classes: list[str]):
    """Counts, rows = true class, columns = predicted class, in `classes` order."""
    import pandas as pd

    names = list(dict.fromkeys([*classes, *sorted(set(predictions["label"]) |
                                                  set(predictions["predicted"]))]))
    table = pd.crosstab(predictions["label"], predictions["predicted"])
    return table.reindex(index=names, columns=names, fill_value=0)


def figure_confusion(matrix, title: str, path: Path) -> Path:
    """Row-normalised confusion matrix [% of each true class]; class names shown up to 40."""
    plt = _pyplot()
    rates = matrix.div(matrix.sum(axis=1).replace(0, 1), axis=0) * 100
    n = len(matrix)
    size = min(14.0, max(6.0, 0.09 * n + 4))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates.values, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="% of the true class's test images", shrink=0.8)
    if n <= 40:
        ax.set_xticks(range(n))
        ax.set_xticklabels(matrix.columns, rotation=90, fontsize=7)
        ax.set_yticks(range(n))
        ax.set_yticklabels(matrix.index, fontsize=7)
    ax.set(xlabel="predicted class" + ("" if n <= 40 else " (index, sorted by name)"),
           ylabel="true class" + ("" if n <= 40 else " (index, sorted by name)"))
    ax.set_title(f"Confusion matrix: {title}", fontsize=10)
    return _save(fig, path)


def top_confusions(matrix, limit: int = 10):
    import pandas as pd

    pairs = [(t, p, int(matrix.at[t, p])) for t in matrix.index for p in matrix.columns
             if t != p and matrix.at[t, p] > 0]
    pairs.sort(key=lambda x: -x[2])
    return pd.DataFrame(pairs[:limit], columns=["True class", "Predicted as", "Test images"])


# ---------------------------------------------------------------- report.md

def _coverage(compared):
    import pandas as pd

    rows = []
    for table in paper.tables():
        t = compared[compared["table"] == table]
        done = int((t["status"] == "ok").sum())
        rows.append({"Table": table, "What it varies": paper.TABLE_TITLES.get(table, ""),
                     "Paper rows": len(t), "Reproduced": done, "Missing": len(t) - done,
                     "Sweep": f"`animalcls train -m +experiment=paper/{paper.experiment_name(table)}`"})
    return pd.DataFrame(rows)


def _missing_section(compared) -> list[str]:
    missing = compared[compared["status"] != "ok"].drop_duplicates("config_id")
    total = compared["config_id"].nunique()
    if missing.empty:
        return [f"All {total} distinct configurations have at least one finished run.", ""]
    lines = [f"{len(missing)} of {total} distinct configurations have no finished run yet "
             f"(shown as \"missing\" in the tables, never as 0):", ""]
    for r in missing.to_dict("records"):
        tables = ", ".join(sorted(set(compared.loc[compared["config_id"] == r["config_id"], "table"])))
        detail = r["status"][len(MISSING):].strip(" ()")
        lines.append(f"- `{r['config_id']}` ({detail + '; ' if detail else ''}tables {tables})")
    lines += ["", "Run everything that is missing (finished runs are skipped): "
              "`animalcls train -m +experiment=paper/all seed=0,1,2`", ""]
    return lines


def _observed_choices(frame, bases: list[Path]) -> dict[str, str]:
    """Values the runs actually used for the settings the paper leaves open (from .hydra)."""
    seen: dict[str, set[str]] = {"rotation": set(), "norm": set(), "split": set()}
    for row in frame.drop_duplicates(GROUP_KEYS).to_dict("records"):
        cfg = _run_config(resolve_path(row["run_dir"], bases))
        aug, data = cfg.get("aug", {}), cfg.get("data", {})
        if aug.get("name") == "rotation_112":
            seen["rotation"].add(f"+-{aug.get('rotation')} degrees")
        if cfg.get("model", {}).get("name") == "base" and "mean" in aug:
            seen["norm"].add(f"mean {aug['mean']}, std {aug.get('std')}")
        if "split" in data:
            seen["split"].add(f"{data.get('name', '')}: {data['split']}")
    return {k: "; ".join(sorted(v)) for k, v in seen.items()}


def _choices_section(frame, bases: list[Path]) -> list[str]:
    import pandas as pd

    observed = _observed_choices(frame, bases)
    table = pd.DataFrame({"Left open by the paper": [q for _, q, _ in paper.OPEN_SETTINGS],
                          "Choice made here": [c for _, _, c in paper.OPEN_SETTINGS],
                          "Used by the runs in this report": [observed.get(k, "")
                                                              for k, _, _ in paper.OPEN_SETTINGS]})
    return [markdown_table(table)]


def _rules() -> list[str]:
    return [
        "- **Reproduced** = test top-1 accuracy, mean ± sample std (ddof = 1) over seed repeats; "
        "**n** = runs averaged. Averaged are `ok` runs and `diverged` runs that recorded a test "
        "accuracy (a configuration that diverges really does score near chance, as the paper's "
        "1.56 % and 2.76 % rows suggest); `failed` and `interrupted` runs are counted in the notes "
        "and never averaged.",
        "- A paper row without an averaged run reads **missing** (an empty cell in the CSV), never 0.",
        "- **Diff.** = reproduced - paper, in percentage points.",
        "- Runs are matched to paper rows by `paper_config` (set by the paper sweeps), else by their "
        "settings. When a run's settings differ from the paper's row (e.g. `epochs=1` or another "
        "data set), the row's note says so; runs with exactly the paper's settings are preferred.",
        "- A run id seen more than once (a re-run, merged tables) counts once: its latest ok row.",
        "- **Paper GFLOPs** is the paper's \"efficiency\"; **measured GFLOPs** counts 2 x "
        "multiply-adds over conv and linear layers (the paper's convention); fvcore's GMACs "
        "(multiply-adds, including batch-norm) are in runs.md.",
        "- The **best run** is the ok run with the highest test top-1 (as the paper picks its best "
        "model); the **base run** is the paper's Table 2.1.1 row 0 configuration.",
        "",
    ]


def _figure_lines(figures: list[tuple[str, Path | None, str]], out: Path) -> list[str]:
    lines = []
    for heading, file, text in figures:
        lines += [f"### {heading}", ""]
        if text:
            lines += [text, ""]
        if file is not None:
            lines += [f"![{heading}]({file.relative_to(out).as_posix()})", ""]
    return lines


def _per_run_figures(frame, chosen: list[dict], problems: list[str], bases: list[Path],
                     out: Path) -> list[tuple[str, Path | None, str]]:
    figures = []
    for row in chosen:
        folder = resolve_path(row.get("run_dir"), bases)
        history = _read_csv(folder / "history.csv") if folder else None
        heading = f"Training curves, {row['label']}: {_run_title(row)}"
        if history is None or history.empty or "epoch" not in history:
            figures.append((heading, None, f"No history.csv for this run (run dir "
                                           f"`{row.get('run_dir', '')}` not found or incomplete)."))
            continue
        path = out / "figures" / f"curves_{_slug(str(row.get('run_id') or folder.name))}.png"
        figures.append((heading, figure_curves(history, f"{row['label']}: {_run_title(row)}", path), ""))
    figures += [("Training curves", None, p) for p in problems]
    return figures


def _analysis_figures(frame, bases: list[Path], out: Path) -> list[tuple[str, Path | None, str]]:
    """Failure cases, per-class accuracy, confusion matrix and class distribution."""
    run = _analysis_run(frame, bases)
    if run is None:
        text = "No finished run with a predictions.csv in its run dir: no per-image figures."
        return [("Failure cases and per-class accuracy", None, text)]
    folder, title = run["folder"], _run_title(run)
    predictions = predictions_of(folder)
    figures: list[tuple[str, Path | None, str]] = []
    if predictions is None or predictions.empty:
        return [("Failure cases", None, f"{folder}/predictions.csv is empty or unreadable.")]
    gallery, shown = figure_failures(predictions, folder, bases, title,
                                     out / "figures" / "failure_cases.png")
    wrong = int((predictions["label"] != predictions["predicted"]).sum())
    note = (f"{wrong} of {len(predictions)} test images misclassified by the best run; "
            f"{shown} shown." if gallery else
            f"{wrong} of {len(predictions)} test images misclassified, but none of their image "
            f"files could be opened (moved or deleted?), so no gallery.")
    figures.append((f"Failure cases: {title}", gallery, note))
    per_class = per_class_accuracy(predictions)
    per_class.to_csv(out / "per_class_accuracy.csv", index=False)
    overall = 100 * float((predictions["label"] == predictions["predicted"]).mean())
    figures.append((f"Per-class accuracy: {title}", figure_per_class(
        per_class, overall, title, out / "figures" / "per_class_accuracy.png"),
        "All classes: per_class_accuracy.csv."))
    matrix = confusion(predictions, _class_names(folder))
    pairs = top_confusions(matrix)
    text = ("Most frequent confusions:\n\n" + markdown_table(pairs)) if len(pairs) else ""
    figures.append((f"Confusion matrix: {title}", figure_confusion(
        matrix, title, out / "figures" / "confusion_matrix.png"), text))
    figures.append(_distribution_figure(frame, folder, bases, out))
    return figures


def _distribution_figure(frame, preferred: Path, bases: list[Path], out: Path):
    folders = [preferred] + [resolve_path(d, bases) for d in frame["run_dir"]]
    for folder in folders:
        split = _read_csv(folder / "split.csv") if folder else None
        if split is not None and {"label", "split"} <= set(split.columns):
            path = figure_class_distribution(split, out / "figures" / "class_distribution.png")
            return ("Class distribution", path, f"From `{folder / 'split.csv'}`.")
    return ("Class distribution", None, "No split.csv found in any run dir.")


def _sources(results: list[str], raw_rows: int, frame) -> list[str]:
    counts = frame["status"].value_counts()
    status = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in results_table.STATUSES)
    files = ", ".join(f"`{r}`" for r in results)
    return [f"Generated by `animalcls report` from {files}: {raw_rows} rows, {len(frame)} runs "
            f"after merging repeats of a run id ({status}). Nothing was trained to make it.", ""]


FIGURES = ("accuracy_efficiency", "failure_cases", "per_class_accuracy", "confusion_matrix",
           "class_distribution")


def _clear_previous(out: Path) -> None:
    """Remove figures an earlier report left here, so none outlives the data it came from
    (only files with the names this module writes)."""
    folder = out / "figures"
    stale = [*folder.glob("curves_*.png"), *(folder / f"{name}.png" for name in FIGURES)]
    for path in stale:
        path.unlink(missing_ok=True)
    (out / "per_class_accuracy.csv").unlink(missing_ok=True)


def run_report(results: list[str], out_dir: str, runs: list[str] | None = None) -> Path:
    """Write the report of one or more results tables under `out_dir`; return report.md's path.

    `runs` picks the runs whose training curves are drawn (run ids or unique prefixes of at least
    6 characters, paper configuration ids, or run directories); default: the paper's base run
    and the best run. Missing or partial results give a partial report that says what is missing.
    """
    results = [str(results)] if isinstance(results, (str, os.PathLike)) else [str(r) for r in results]
    runs = [runs] if isinstance(runs, str) else runs
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    raw = results_table.load(results)
    frame = prepare(raw)
    groups = aggregate(frame)
    compared = comparison(groups)
    compared.to_csv(out / "paper_comparison.csv", index=False, na_rep="")
    inline = write_paper_tables(compared, out)
    runs_md = write_runs(frame, out)
    bases = _bases(results)
    scatter = figure_accuracy_efficiency(groups, out / "figures" / "accuracy_efficiency.png")
    chosen, problems = choose_runs(frame, runs, bases)
    curves = _per_run_figures(frame, chosen, problems, bases, out)
    analysis = _analysis_figures(frame, bases, out)

    lines = ["# Reproduction of \"Image Classification on Animals\" (Ko and Guo)", "",
             *_sources(results, len(raw), frame), "## Coverage", "",
             markdown_table(_coverage(compared)), "", "### What is missing", "",
             *_missing_section(compared), "## How to read the tables", "", *_rules(),
             "## Settings the paper leaves open, and the choices made", "",
             *_choices_section(frame, bases), "", "## The paper's tables", ""]
    for table in paper.tables():
        name = paper.experiment_name(table)
        lines += [f"### Table {table}: {paper.TABLE_TITLES.get(table, '')}", "", inline[table], "",
                  f"Files: [CSV](tables/{name}.csv) · [Markdown](tables/{name}.md) · "
                  f"[LaTeX](tables/{name}.tex) · all rows: [paper_comparison.csv](paper_comparison.csv)", ""]
    lines += ["## Figures", "",
              *_figure_lines([("Accuracy vs efficiency (paper Figure 3.1)", scatter,
                               "Hollow: the paper's numbers; filled: reproduced (mean ± std over "
                               "seeds; triangles: settings or data differ from the paper's, see "
                               "the tables' notes); dotted: the same configuration.")], out),
              *_figure_lines(curves, out), *_figure_lines(analysis, out),
              "## Every run", "", "[runs.csv](runs.csv) · [runs.md](runs.md)", "",
              runs_md if len(frame) <= 200 else "(more than 200 runs: see runs.md)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
