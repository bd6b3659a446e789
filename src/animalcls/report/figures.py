"""The report's figures: pure functions, data frames in, PNG paths out.

matplotlib is imported on first use (it costs about a second), and with the Agg backend, so a
report never needs a display. Text that came from the data (run titles, class names) goes
through `mpl_text`, so a `$` in a name is drawn, not parsed as math.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pandas as pd

from animalcls import paper
from animalcls.registry import MODELS, display_name
from animalcls.report.text import is_blank, mpl_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _gflops_axis(ax: Any, xs: list[float]) -> None:
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_xticks([0.25, 0.5, 1, 2, 4, 8, 16])  # plain numbers, not 4x10^-1
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
    ax.set_xlabel("compute per image [GFLOPs = 2 x multiply-adds, conv + linear; log scale]")


def _legend(ax: Any, models: list[str], colors: dict[Hashable, Any], marks: list[tuple[str, bool, str]]) -> None:
    """Model colours, then one entry per marker kind: (marker, hollow, label)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="s", linestyle="", color=colors[m], label=display_name("model", m)) for m in models
    ]
    for marker, hollow, label in marks:
        face = "none" if hollow else "black"
        handles.append(
            Line2D([], [], marker=marker, linestyle="", markerfacecolor=face, color="black", label=mpl_text(label))
        )
    ax.legend(handles=handles, loc="lower right", fontsize=8)


PAPER_DATA = "Animals-151"  # the paper's data set: its reported points are measured on it alone


def reproduced_points(groups: pd.DataFrame) -> pd.DataFrame:
    """Groups that can be drawn: a test top-1 mean and measured GFLOPs."""
    return groups[groups["test_top1_mean"].notna() & groups["gflops"].notna()]


def efficiency_data_sets(groups: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """The reproduced points per data set, as (label, file-name part, points): one figure each.
    A data set is its name (`data_name`); two data sets of one name (different `data_id`, e.g.
    another download or downsampling) are told apart by the id's first 8 characters."""
    points = reproduced_points(groups)
    found = []
    name: Hashable
    for name, by_name in points.groupby(points["data_name"].fillna("").astype(str), sort=True):
        ids = by_name["data_id"].fillna("").astype(str)
        label = str(name) or "unknown data set"
        if ids.nunique() == 1:
            found.append((label, _slug(label), by_name))
            continue
        for data_id, one in by_name.groupby(ids, sort=True):
            short = str(data_id)[:8] or "none"
            found.append((f"{label} (data id {short})", _slug(f"{label}-{short}"), one))
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"


def _efficiency_axes(groups: pd.DataFrame, title: str) -> tuple[Any, Any, list[str], dict[Hashable, Any]]:
    """A figure with the axes every accuracy-efficiency figure shares (the same models' colours,
    x range and y range), so figures of different data sets read side by side."""
    plt = _pyplot()
    configs = paper.configs()
    # the registry's order, so a model keeps its colour whichever runs a report holds
    models = [m for m in MODELS.names() if m in set(configs["model"]) | set(groups.get("model", []))]
    colors: dict[Hashable, Any] = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, ax = plt.subplots(figsize=(9, 6))
    _gflops_axis(ax, [*configs["efficiency_g"], *reproduced_points(groups)["gflops"]])
    ax.set_ylim(0, 102)
    ax.set_ylabel("test accuracy [%]")
    ax.set_title(mpl_text(title), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax, models, colors


def figure_paper_efficiency(groups: pd.DataFrame, path: Path) -> Path:
    """Figure 3.1 as the paper reports it: its own points (hollow), on its data set alone.
    `groups` only sets the shared colours and axes."""
    fig, ax, models, colors = _efficiency_axes(groups, f"Accuracy vs efficiency: paper ({PAPER_DATA}, as reported)")
    model: Hashable  # a group key
    for model, points in paper.configs().groupby("model"):
        ax.scatter(
            points["efficiency_g"],
            points["accuracy_pct"],
            s=60,
            facecolors="none",
            edgecolors=[colors.get(model, "grey")],
            linewidths=1.5,
            zorder=3,
        )
    _legend(ax, models, colors, [("o", True, f"paper, on {PAPER_DATA} (as reported)")])
    return _save(fig, path)


def figure_accuracy_efficiency(groups: pd.DataFrame, points: pd.DataFrame, data: str, path: Path) -> Path:
    """Figure 3.1's axes for the reproduced runs of one data set (`points`, from
    `efficiency_data_sets`): test top-1 mean ± std over seeds per group, filled; triangles where
    settings or data differ from the paper's. The paper's points are never drawn here: they were
    measured on another data set (or another copy of it), so they have a figure of their own."""
    fig, ax, models, colors = _efficiency_axes(groups, f"Accuracy vs efficiency: reproduced on {data}")
    model: Hashable  # a group key
    for (model, exact), some in points.groupby(["model", points["diffs"] == ""]):
        ax.errorbar(
            some["gflops"],
            some["test_top1_mean"],
            yerr=some["test_top1_std"].fillna(0.0),
            fmt="o" if exact else "^",
            color=colors.get(model, "grey"),
            markersize=6,
            capsize=3,
            zorder=4,
        )
    marks = [("o", False, f"reproduced on {data} (test top-1, mean ± std)")]
    if (points["diffs"] != "").any():
        marks.append(("^", False, "settings or data differ from the paper's"))
    _legend(ax, models, colors, marks)
    return _save(fig, path)


def figure_curves(history: pd.DataFrame, title: str, path: Path) -> Path:
    """Training/validation accuracy (paper Fig. 5.1) and loss (Fig. 5.2) per epoch."""
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    epoch = history["epoch"]
    for column, label, style in (
        ("train_top1", "train top-1", "-o"),
        ("val_top1", "validation top-1", "-s"),
        ("val_top3", "validation top-3", "--"),
    ):
        if column in history:
            acc.plot(epoch, history[column], style, label=label, markersize=3)
    acc.set(xlabel="epoch", ylabel="accuracy [%]", title="Accuracy")
    for column, label, style in (("train_loss", "train loss", "-o"), ("val_loss", "validation loss", "-s")):
        if column in history:
            loss.plot(epoch, history[column], style, label=label, markersize=3)
    loss.set(xlabel="epoch", ylabel="loss (per image)", title="Loss")
    from matplotlib.ticker import MaxNLocator

    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(mpl_text(title), fontsize=10)
    return _save(fig, path)


def figure_gallery(tiles: list[tuple[Image.Image, dict[str, Any]]], title: str, path: Path) -> Path:
    """Misclassified test images (thumbnail, prediction row), with true and predicted labels."""
    plt = _pyplot()
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, r) in zip(axes.flat, tiles):
        ax.imshow(image)
        prob = "" if is_blank(r.get("probability")) else f" ({float(r['probability']):.0%})"
        ax.set_title(mpl_text(f"true: {r['label']}\npredicted: {r['predicted']}{prob}"), fontsize=8, color="darkred")
    fig.suptitle(mpl_text(f"Misclassified test images (most confident first): {title}"), fontsize=10)
    return _save(fig, path)


def figure_class_distribution(split: pd.DataFrame, path: Path) -> Path:
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
    ax.set_xticklabels(map(mpl_text, counts.index), rotation=90, fontsize=6 if len(counts) > 40 else 8)
    ax.set(xlabel="class", ylabel="images", xlim=(-0.6, len(counts) - 0.4))
    totals = ", ".join(f"{counts[c].sum():,} {c}" for c in counts.columns)
    ax.set_title(
        f"Class distribution: {int(counts.values.sum()):,} images in {len(counts)} classes ({totals})", fontsize=10
    )
    ax.legend(title="split")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def figure_per_class(per_class: pd.DataFrame, overall: float, title: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8.0, 0.13 * len(per_class) + 2), 5))
    ax.bar(range(len(per_class)), per_class["accuracy_pct"], width=0.85, color="tab:blue")
    ax.axhline(overall, color="tab:red", linestyle="--", label=f"overall {overall:.2f} %")
    ax.set_xticks(range(len(per_class)))
    ax.set_xticklabels(map(mpl_text, per_class["class"]), rotation=90, fontsize=6 if len(per_class) > 40 else 8)
    ax.set(
        xlabel="true class (lowest accuracy first)",
        ylabel="test top-1 accuracy [%]",
        ylim=(0, 105),
        xlim=(-0.6, len(per_class) - 0.4),
    )
    ax.set_title(mpl_text(f"Per-class test accuracy: {title}"), fontsize=10)
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def figure_confusion(matrix: pd.DataFrame, title: str, path: Path) -> Path:
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
        ax.set_xticklabels(map(mpl_text, matrix.columns), rotation=90, fontsize=7)
        ax.set_yticks(range(n))
        ax.set_yticklabels(map(mpl_text, matrix.index), fontsize=7)
    ax.set(
        xlabel="predicted class" + ("" if n <= 40 else " (index, sorted by name)"),
        ylabel="true class" + ("" if n <= 40 else " (index, sorted by name)"),
    )
    ax.set_title(mpl_text(f"Confusion matrix: {title}"), fontsize=10)
    return _save(fig, path)


def figure_epoch_budget(points: pd.DataFrame, title: str, path: Path) -> Path:
    """Test top-1 (mean ± std over seeds) against the epoch budget, one line per recipe; the
    x axis is log2 with a tick at each budget present. `points`: report.beyond.epoch_budget."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    recipe: Hashable  # a group key
    for recipe, line in points.groupby("recipe", sort=False):
        line = line.sort_values("epochs")
        counts = sorted({int(n) for n in line["n"]})
        n = f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]}–{counts[-1]}"
        ax.errorbar(
            line["epochs"],
            line["mean"],
            yerr=line["std"].fillna(0.0),
            fmt="-o",
            capsize=3,
            markersize=5,
            label=mpl_text(f"{recipe!s} recipe ({n} seeds per point)"),
        )
    budgets = sorted({int(e) for e in points["epochs"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(budgets) / 1.4, max(budgets) * 1.4)
    ax.set_xlabel("epoch budget (the epochs setting; log2 scale)")
    ax.set_ylabel("test top-1 accuracy [%] (mean ± std over seeds)")
    ax.set_title(mpl_text(title), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
