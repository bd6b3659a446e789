"""Finding run directories and reading their files: history, predictions, split, config, metrics.

A results row names its run dir, often relative to where the run was started; a report may be
made elsewhere, so paths are tried against a few bases. A missing or unreadable file is logged
and read as None: a partial run dir gives a partial report, never an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from animalcls import paper
from animalcls.report.aggregate import best, first_of, ranked_ok, records, row_dict
from animalcls.report.text import is_blank, plain

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


def bases_of(results: list[str]) -> list[Path]:
    """Folders a relative run_dir or image path may be relative to: the cwd, and the project
    that holds each results table (outputs/results.csv -> the folder above outputs/)."""
    bases = [Path.cwd()]
    for r in results:
        p = Path(r).resolve().parent
        bases += [p, p.parent]
    return list(dict.fromkeys(bases))


def resolve_path(path: Any, bases: Iterable[Path]) -> Path | None:
    """The existing file or folder a recorded path names, or None."""
    if is_blank(path):
        return None
    p = Path(str(path)).expanduser()
    for candidate in [p] if p.is_absolute() else [b / p for b in bases]:
        if candidate.exists():
            return candidate
    return None


def run_config(run_dir: Path | None) -> dict[str, Any]:
    """The run's resolved Hydra config as a plain dict ({} when absent or unreadable)."""
    if run_dir is None or not (run_dir / ".hydra" / "config.yaml").is_file():
        return {}
    try:
        from omegaconf import OmegaConf

        # Hydra writes a mapping there (to_container is typed for lists and strings too)
        return cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml")))
    except Exception as error:  # a hand-edited or torn file must not stop the report
        log.warning("could not read %s/.hydra/config.yaml: %s", run_dir, error)
        return {}


def read_csv(path: Path | None) -> pd.DataFrame | None:
    if path is None or not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except Exception as error:  # torn or hand-edited: reported, the report goes on
        log.warning("could not read %s: %s", path, error)
        return None


def history_of(folder: Path | None) -> pd.DataFrame | None:
    """The run's per-epoch history, or None when there is none worth drawing."""
    history = read_csv(folder / "history.csv") if folder else None
    return None if history is None or history.empty or "epoch" not in history else history


def class_names(folder: Path) -> list[str]:
    try:
        return list(json.loads((folder / "metrics.json").read_text()).get("classes", []))
    except (OSError, ValueError):
        return []


def _named(values: Iterable[Any], classes: list[str]) -> list[str]:
    """Labels as class names: integer labels are mapped through metrics.json's class list."""
    out = []
    for v in values:
        text = plain(v)
        out.append(classes[int(text)] if text.isdigit() and int(text) < len(classes) else text)
    return out


def predictions_of(folder: Path) -> pd.DataFrame | None:
    """The run's test-set predictions with class names as labels, or None."""
    frame = read_csv(folder / "predictions.csv")
    if frame is None or not {"label", "predicted"} <= set(frame.columns):
        return None
    classes = class_names(folder)
    frame["label"] = _named(frame["label"], classes)
    frame["predicted"] = _named(frame["predicted"], classes)
    return frame


def split_of(frame: pd.DataFrame, preferred: Path, bases: list[Path]) -> tuple[Path, pd.DataFrame] | None:
    """The first readable split.csv: the preferred run's, else any run's."""
    for folder in [preferred] + [resolve_path(d, bases) for d in frame["run_dir"]]:
        split = read_csv(folder / "split.csv") if folder else None
        if folder is not None and split is not None and {"label", "split"} <= set(split.columns):
            return folder / "split.csv", split
    return None


def image_bases(folder: Path, bases: list[Path]) -> list[Path]:
    """Where test-image paths may be relative to: the run's data root, then the usual bases."""
    root = run_config(folder).get("data", {}).get("root")
    roots = [r for r in (resolve_path(root, bases),) if r is not None]
    return [*roots, folder, *bases]


def failure_images(
    predictions: pd.DataFrame, folder: Path, bases: list[Path], limit: int = 12
) -> list[tuple[Image.Image, dict[str, Any]]]:
    """(thumbnail, prediction row) of misclassified test images whose files still open, most
    confident mistakes first."""
    from PIL import Image

    wrong = predictions[predictions["label"] != predictions["predicted"]]
    if "probability" in wrong:
        wrong = wrong.sort_values("probability", ascending=False, kind="mergesort")
    places = image_bases(folder, bases)
    tiles: list[tuple[Image.Image, dict[str, Any]]] = []
    for r in records(wrong):
        file = resolve_path(r.get("path"), places)
        if file is None:
            continue
        try:
            with Image.open(file) as im:
                image = im.convert("RGB")
                image.thumbnail((224, 224))
        except OSError:  # moved, deleted or not an image any more: skip it
            continue
        tiles.append((image, r))
        if len(tiles) == limit:
            break
    return tiles


# ---------------------------------------------------------------- choosing runs


def choose_runs(
    frame: pd.DataFrame, specs: list[str] | None, bases: list[Path]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The runs whose curves are drawn: by run id (or prefix), paper configuration id, or run
    dir. Default: the paper's base run and the best run. Returns (runs, problems)."""
    counted = frame[frame["counted"]]
    if specs is None:
        return _default_runs(counted)
    chosen: list[dict[str, Any]] = []
    problems: list[str] = []
    for spec in specs:
        row = _find_run(frame, counted, spec, bases)
        if row is None:
            problems.append(f"run {spec!r} not found (give a run id, a configuration id or a run dir)")
        elif row["run_id"] not in [c["run_id"] for c in chosen]:
            chosen.append({**row, "label": f"run {spec}"})
    return chosen, problems


def _default_runs(counted: pd.DataFrame) -> tuple[list[dict[str, Any]], list[str]]:
    base_id = paper.table_rows(paper.tables()[0])["paper_config"].iloc[0]
    chosen: dict[str, dict[str, Any]] = {}
    for label, row in (("base run", first_of(counted, base_id)), ("best run", best(counted))):
        if row is None:
            continue
        if row["run_id"] in chosen:  # the base run may also be the best one
            chosen[row["run_id"]]["label"] += f" = {label}"
        else:
            chosen[row["run_id"]] = {**row, "label": label}
    return list(chosen.values()), [] if chosen else ["no finished run to draw curves for"]


def _find_run(frame: pd.DataFrame, counted: pd.DataFrame, spec: str, bases: list[Path]) -> dict[str, Any] | None:
    exact = frame[frame["run_id"] == spec]
    if len(exact):
        return row_dict(exact.iloc[0])
    if len(spec) >= 6:
        prefixed = frame[frame["run_id"].str.startswith(spec)]
        if len(prefixed) == 1:
            return row_dict(prefixed.iloc[0])
    by_config = first_of(counted, spec)
    if by_config is not None:
        return by_config
    folder = resolve_path(spec, bases)
    if folder is not None and folder.is_dir():
        matches = frame[frame["run_dir"].map(lambda d: resolve_path(d, bases) == folder)]
        row = row_dict(matches.iloc[0]) if len(matches) else {"run_id": folder.name}
        return {**row, "run_dir": str(folder)}
    return None


def analysis_run(frame: pd.DataFrame, bases: list[Path]) -> dict[str, Any] | None:
    """The best ok run whose directory still has predictions.csv (for the per-image figures)."""
    for row in records(ranked_ok(frame)):
        folder = resolve_path(row["run_dir"], bases)
        if folder is not None and (folder / "predictions.csv").is_file():
            return {**row, "folder": folder}
    return None
