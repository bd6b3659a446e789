"""`animalcls report` on small results tables and fake run dirs made here (no training)."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from animalcls import paper, record, report
from animalcls.registry import display_name
from animalcls.report import beyond
from animalcls.results import append_row, load

CLASSES = ["canis-lupus", "felis-catus", "vulpes-vulpes"]
BASE = "base-adam-lr1e-3-bs16-e10-ce"
BEST = "mobilenet_v3_large-sgd-lr1e-1-bs32-e20-ce"


def settings(paper_config: str) -> dict:
    c = paper.configs().set_index("paper_config").loc[paper_config]
    return dict(
        model=c["model"],
        pretrained=bool(c["pretrained"]),
        optimizer=c["optimizer"],
        lr=float(c["lr"]),
        batch_size=int(c["batch_size"]),
        epochs=int(c["epochs"]),
        loss=c["loss"],
        aug=c["augmentation"],
        batch_norm=bool(c["batch_norm"]),
        dropout=float(c["dropout"]),
    )


def row(
    run_id: str,
    paper_config: str,
    seed: int,
    status: str = "ok",
    top1: float | None = None,
    tagged: bool = True,
    run_dir: str = "",
    **changes,
) -> dict:
    values = {
        **settings(paper_config),
        "run_id": run_id,
        "status": status,
        "seed": seed,
        "data": "animals",
        "timestamp": f"2024-01-01T00:00:{seed:02d}",
        "run_dir": run_dir,
        "paper_config": paper_config if tagged else "",
        "tags": ";".join(paper.configs().set_index("paper_config").loc[paper_config, "tables"]) if tagged else "",
        **changes,
    }
    if top1 is not None:
        values.update(
            test_top1=top1,
            test_top3=min(100.0, top1 + 10),
            test_top5=min(100.0, top1 + 20),
            val_top1=top1 - 1,
            gflops=0.69 if values["model"] == "base" else 0.44,
            gmacs_fvcore=0.35,
            params=1.2e6,
            train_seconds=60.0,
            images_per_s=900.0,
        )
    return values


def make_images(root: Path) -> list[str]:
    """Two tiny images per class (a JPEG and a PNG); returns paths relative to root."""
    paths = []
    for i, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for j, ext in enumerate(("jpg", "png")):
            Image.new("RGB", (40, 30), (80 * i, 120 + 60 * j, 200 - 60 * i)).save(root / name / f"{j}.{ext}")
            paths.append(f"{name}/{j}.{ext}")
    return paths


def make_run_dir(folder: Path, data_root: Path, paths: list[str], epochs: int) -> str:
    """A run dir as the engine leaves it: history, metrics, predictions, split, .hydra config."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        f"model:\n  name: base\naug:\n  name: default_112\n  mean: [0.485, 0.456, 0.406]\n"
        f"  std: [0.229, 0.224, 0.225]\ndata:\n  name: animals\n  root: {data_root}\n"
        f"  split: [0.5, 0.0, 0.5]\n"
    )
    epoch = list(range(1, epochs + 1))
    pd.DataFrame(
        {
            "epoch": epoch,
            "train_loss": [2.0 / e for e in epoch],
            "train_top1": [30 + 5 * e for e in epoch],
            "val_loss": [2.2 / e for e in epoch],
            "val_top1": [28 + 4 * e for e in epoch],
            "val_top3": [40 + 4 * e for e in epoch],
            "val_top5": [50 + 4 * e for e in epoch],
            "lr": 0.001,
            "seconds": 1.0,
            "images_per_s": 100.0,
        }
    ).to_csv(folder / "history.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"classes": CLASSES, "test_top1": 50.0}))
    labels = [p.split("/")[0] for p in paths]
    predicted = [labels[0]] + [CLASSES[(CLASSES.index(l) + 1) % 3] if k % 2 else l for k, l in enumerate(labels[1:], 1)]
    pd.DataFrame(
        {
            "path": paths,
            "label": labels,
            "predicted": predicted,
            "top5": [";".join(CLASSES)] * len(paths),
            "probability": [0.5 + 0.05 * k for k in range(len(paths))],
        }
    ).to_csv(folder / "predictions.csv", index=False)
    pd.DataFrame(
        {"path": paths, "label": labels, "split": ["train" if k % 2 else "test" for k in range(len(paths))]}
    ).to_csv(folder / "split.csv", index=False)
    return str(folder)


def write_fixture(tmp_path: Path) -> dict:
    """Two results tables (merged by the report) covering ok, repeats, diverged, failed,
    interrupted-then-ok, a run without paper_config, and a run with non-paper settings."""
    paths = make_images(tmp_path / "data" / "animals")
    base_dir = make_run_dir(tmp_path / "runs" / "base0", tmp_path / "data" / "animals", paths, 10)
    best_dir = make_run_dir(tmp_path / "runs" / "best0", tmp_path / "data" / "animals", paths, 20)
    first, second = tmp_path / "results_a.csv", tmp_path / "results_b.csv"
    for values in [
        row("b0", BASE, 0, status="interrupted"),  # superseded by its ok re-run below
        row("b0", BASE, 0, top1=30.0, run_dir=base_dir),
        row("b1", BASE, 1, top1=34.0),
        row("b2", BASE, 2, top1=38.0),
        row("d0", "base-adam-lr1e-1-bs16-e10-ce", 0, status="diverged", top1=0.66),
        row("f0", "base-adam-lr1e-2-bs16-e10-ce", 0, status="failed", error="CUDA OOM"),
    ]:
        append_row(first, values)
    for values in [
        row("m0", BEST, 0, top1=97.0, run_dir=best_dir),
        row("m1", BEST, 1, status="failed"),
        row("r0", "resnet18-sgd-lr1e-3-bs16-e10-ce", 0, top1=90.0, tagged=False),
        row("v0", "mobilenet_v2-sgd-lr1e-2-bs16-e10-ce", 0, top1=20.0, epochs=1, data="demo"),
    ]:
        append_row(second, values)
    return {
        "results": [str(first), str(second)],
        "out": tmp_path / "report",
        "data": tmp_path / "data",
        "best_dir": best_dir,
        "paths": paths,
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The fixture tables and the report made from them (made once: figures take seconds)."""
    fixture = write_fixture(tmp_path_factory.mktemp("report"))
    fixture["index"] = report.run_report(fixture["results"], str(fixture["out"]))
    return fixture


def table_csv(out: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{paper.experiment_name(table)}.csv", dtype={"table": str})


def test_aggregate_seed_repeats_mean_std_n():
    frame = pd.DataFrame(
        [
            row("a", BASE, 0, top1=30.0),
            row("b", BASE, 1, top1=34.0),
            row("c", BASE, 2, top1=38.0),
            row("d", BASE, 3, status="failed"),
            row("e", BASE, 4, status="interrupted"),
            row("x", "base-adam-lr1e-1-bs16-e10-ce", 0, status="diverged", top1=0.5),
            row("y", "base-adam-lr1e-1-bs16-e10-ce", 1, top1=2.5),
            row("z", "base-adam-lr1e-2-bs16-e10-ce", 0, status="failed"),
        ]
    )
    groups = report.aggregate(report.prepare(frame)).set_index("paper_config")
    base = groups.loc[BASE]
    assert (base["n"], base["n_runs"], base["n_failed"]) == (3, 5, 2)
    assert base["test_top1_mean"] == pytest.approx(34.0)
    assert base["test_top1_std"] == pytest.approx(4.0)  # sample std, ddof=1
    assert base["test_top5_mean"] == pytest.approx(54.0)
    assert base["seeds"] == "0,1,2"
    diverged = groups.loc["base-adam-lr1e-1-bs16-e10-ce"]
    assert (diverged["n"], diverged["n_diverged"]) == (1, 1)  # a diverged run is counted apart, never averaged
    assert diverged["test_top1_mean"] == pytest.approx(2.5)
    failed = groups.loc["base-adam-lr1e-2-bs16-e10-ce"]
    assert failed["n"] == 0 and math.isnan(failed["test_top1_mean"])  # never averaged as 0


def test_repeated_run_id_counts_once_and_settings_match_without_paper_config():
    frame = pd.DataFrame(
        [
            row("a", BASE, 0, top1=30.0),
            row("a", BASE, 0, status="interrupted"),
            row("r", "resnet18-sgd-lr1e-3-bs16-e10-ce", 0, top1=90.0, tagged=False),
            row("s", BASE, 0, top1=20.0, epochs=1, data="demo"),
        ]
    )
    prepared = report.prepare(frame)
    assert len(prepared) == 3
    assert prepared.set_index("run_id").loc["a", "status"] == "ok"
    assert prepared.set_index("run_id").loc["r", "paper_config"] == "resnet18-sgd-lr1e-3-bs16-e10-ce"
    diffs = prepared.set_index("run_id").loc["s", "diffs"]
    assert "epochs=1 (paper 10)" in diffs and "data=demo" in diffs
    groups = report.aggregate(prepared)
    assert len(groups[groups["paper_config"] == BASE]) == 2  # paper settings kept apart


def test_report_writes_every_table_and_figure(built):
    out = built["out"]
    assert built["index"] == out / "report.md" and built["index"].is_file()
    for table in paper.tables():
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{paper.experiment_name(table)}.{ext}").is_file()
    for name in (
        "accuracy_efficiency_paper_Animals-151",
        "accuracy_efficiency_runs_animals",
        "accuracy_efficiency_runs_demo",
        "curves_b0",
        "curves_m0",
        "failure_cases",
        "class_distribution",
        "per_class_accuracy",
        "confusion_matrix",
    ):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 9 and set(runs["status"]) == {"ok", "diverged", "failed"}


def test_paper_tables_aggregate_seeds_and_mark_missing(built):
    out = built["out"]
    t212 = table_csv(out, "2.1.2").set_index("row")
    assert list(t212.columns[:3]) == ["table", "lr", "paper_accuracy_pct"]  # the paper's columns
    assert t212.loc[0, "reproduced_top1_mean"] == pytest.approx(34.0)
    assert t212.loc[0, "reproduced_top1_std"] == pytest.approx(4.0)
    assert t212.loc[0, "n"] == 3 and t212.loc[0, "diff_pp"] == pytest.approx(34.0 - 37.53)
    # its only run diverged: counted apart, never averaged, so the row is missing
    assert t212.loc[4, "status"] == "missing (1 diverged)" and "1 diverged" in t212.loc[4, "note"]
    missing = t212.loc[[1, 2, 3]]
    assert missing["status"].str.startswith("missing").all()
    assert missing["reproduced_top1_mean"].isna().all() and missing["diff_pp"].isna().all()
    assert t212.loc[3, "status"] == "missing (1 failed)"

    t221 = table_csv(out, "2.2.1").set_index("row")
    assert t221.loc[2, "n"] == 1 and t221.loc[2, "reproduced_top1_mean"] == 90.0  # by settings
    t222 = table_csv(out, "2.2.2").set_index("row")
    assert "epochs=1 (paper 10)" in t222.loc[3, "note"] and "data=demo" in t222.loc[3, "note"]
    t234 = table_csv(out, "2.3.4").set_index("row")
    assert t234.loc[3, "n"] == 1 and "1 failed" in t234.loc[3, "note"]

    md = (out / "tables" / "table_2_1_2.md").read_text()
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "missing" in lines["3"] and "0.00" not in lines["3"] and "34.00 ± 4.00" in lines["0"]
    assert "\\pm" in (out / "tables" / "table_2_1_2.tex").read_text()


def test_report_index_links_everything_and_says_what_is_missing(built):
    text = built["index"].read_text()
    for expected in (
        "## Coverage",
        "What is missing",
        "`base-adam-lr1e-2-bs16-e10-ce` (1 failed; tables 2.1.2)",
        "Table 2.3.4",
        "figures/accuracy_efficiency_paper_Animals-151.png",
        "Accuracy vs efficiency: reproduced on demo",
        "figures/accuracy_efficiency_runs_demo.png",
        "figures/failure_cases.png",
        "figures/curves_b0.png",
        "leaves open",
        "runs.csv",
        "tables/table_2_1_1.tex",
    ):
        assert expected in text, expected


def test_choose_runs_by_config_dir_or_id(built):
    frame = report.prepare(load(built["results"]))
    bases = [Path.cwd()]
    chosen, problems = report.choose_runs(frame, [BEST, "b1", built["best_dir"], "nosuchrun"], bases)
    assert [r["run_id"] for r in chosen] == ["m0", "b1"]  # the dir is m0's: drawn once
    by_dir, _ = report.choose_runs(frame, [built["best_dir"]], bases)
    assert [r["run_id"] for r in by_dir] == ["m0"]
    assert problems == ["run 'nosuchrun' not found (give a run id, a configuration id or a run dir)"]
    default, _ = report.choose_runs(frame, None, bases)
    assert [(r["label"], r["run_id"]) for r in default] == [("base run", "b0"), ("best run", "m0")]


def test_failure_gallery_skips_missing_images(built, tmp_path):
    predictions = report.predictions_of(Path(built["best_dir"]))
    predictions["path"] = "gone/" + predictions["path"]
    figure, shown = report.figure_failures(
        predictions, Path(built["best_dir"]), [tmp_path], "t", tmp_path / "gallery.png"
    )
    assert (figure, shown) == (None, 0) and not (tmp_path / "gallery.png").exists()


def test_report_without_results_says_everything_is_missing(tmp_path):
    out = tmp_path / "report"
    text = report.run_report([str(tmp_path / "nothing.csv")], str(out)).read_text()
    assert "38 of 38 distinct configurations have no finished run" in text
    compared = pd.read_csv(out / "paper_comparison.csv")
    assert len(compared) == 67 and (compared["status"] == "missing").all()
    assert compared["reproduced_top1_mean"].isna().all()
    figures = sorted(p.name for p in (out / "figures").glob("accuracy_efficiency*"))
    assert figures == ["accuracy_efficiency_paper_Animals-151.png"]  # no runs: the paper's figure alone
    assert "No run with a test accuracy and GFLOPs yet." in text


# ---------------------------------------------------------------- accuracy vs GFLOPs: one data set per figure


def drawn_x(fig) -> set[float]:
    """The x of every point drawn on a figure's axes (scatter and error-bar markers)."""
    from matplotlib.collections import PathCollection

    (ax,) = fig.axes  # one panel
    xs = {round(float(x), 6) for c in ax.collections if isinstance(c, PathCollection) for x, _ in c.get_offsets()}
    return xs | {round(float(x), 6) for line in ax.lines for x in line.get_xdata()}


def test_accuracy_efficiency_draws_each_data_set_apart_from_the_paper(tmp_path, monkeypatch):
    from animalcls.report import figures

    saved: dict[str, set[float]] = {}

    def keep(fig, path: Path) -> Path:  # what was drawn, instead of a PNG
        saved[path.name] = drawn_x(fig)
        figures._pyplot().close(fig)
        return path

    monkeypatch.setattr(figures, "_save", keep)

    def demo(data_id: str) -> dict:
        return {**V2, "data": "demo", "data_id": data_id}

    groups = groups_of(  # GFLOPs told apart, so each figure's points say where they came from
        {**row("a", BASE, 0, top1=30.0, **V2, repeat_id="r1"), "gflops": 0.7},
        {**row("b", BASE, 0, top1=20.0, **demo("demo-1"), repeat_id="r2"), "gflops": 0.8},
        {**row("c", BASE, 1, top1=21.0, **demo("demo-2"), repeat_id="r3"), "gflops": 0.9},
    )
    sets = figures.efficiency_data_sets(groups)
    assert [(label, slug) for label, slug, _ in sets] == [
        ("animals", "animals"),
        ("demo (data id demo-1)", "demo-demo-1"),
        ("demo (data id demo-2)", "demo-demo-2"),
    ]
    for label, slug, points in sets:
        figures.figure_accuracy_efficiency(groups, points, label, tmp_path / f"{slug}.png")
        assert saved[f"{slug}.png"] == {round(float(g), 6) for g in points["gflops"]}  # its own runs, nothing else
    figures.figure_paper_efficiency(groups, tmp_path / "paper.png")
    assert saved["paper.png"] == {round(float(g), 6) for g in paper.configs()["efficiency_g"]}


# ---------------------------------------------------------------- only true repeats are pooled

V2 = dict(record_version=2, split="0.85/0.05/0.1", data_id="d1", precision="fp32")


def groups_of(*rows: dict) -> pd.DataFrame:
    return report.aggregate(report.prepare(pd.DataFrame(list(rows))))


def test_bf16_and_fp32_runs_are_never_pooled():
    # old rows (no repeat_id): the fallback key holds the precision
    old = groups_of(row("a", BASE, 0, top1=30.0, precision="bf16"), row("b", BASE, 1, top1=40.0, precision="fp32"))
    assert sorted(old["precision"]) == ["bf16", "fp32"] and list(old["n"]) == [1, 1]
    # new rows: the precision is in the repeat_id
    new = groups_of(
        row("c", BASE, 0, top1=30.0, **{**V2, "precision": "bf16"}, repeat_id="r-bf16"),
        row("d", BASE, 1, top1=40.0, **V2, repeat_id="r-fp32"),
    )
    assert len(new) == 2 and list(new["n"]) == [1, 1]


def test_runs_on_different_splits_are_not_pooled():
    groups = groups_of(
        row("a", BASE, 0, top1=30.0, precision="fp32", split="0.85/0.05/0.1"),
        row("b", BASE, 1, top1=40.0, precision="fp32", split="0.8/0.1/0.1"),
    )
    assert sorted(groups["split"]) == ["0.8/0.1/0.1", "0.85/0.05/0.1"] and list(groups["n"]) == [1, 1]


def test_runs_differing_by_seed_alone_are_one_group_with_a_std():
    groups = groups_of(
        row("a", BASE, 0, top1=30.0, **V2, repeat_id="r1"), row("b", BASE, 1, top1=34.0, **V2, repeat_id="r1")
    )
    assert len(groups) == 1
    group = groups.iloc[0]
    assert (group["n"], group["seeds"], group["repeat_key"]) == (2, "0,1", "r1")
    assert group["test_top1_mean"] == pytest.approx(32.0)
    assert group["test_top1_std"] == pytest.approx(math.sqrt(8.0))


def test_one_seed_counts_once_in_a_group():
    # two old-style run ids for one measurement (e.g. the data set typed as two paths)
    groups = groups_of(
        row("a", BASE, 0, top1=30.0, timestamp="2024-01-01T00:00:00"),
        row("b", BASE, 0, top1=31.0, timestamp="2024-01-02T00:00:00"),
        row("c", BASE, 1, top1=35.0),
    )
    group = groups.iloc[0]
    assert (len(groups), group["n"], group["n_runs"], group["seeds"]) == (1, 2, 3, "0,1")
    assert group["test_top1_mean"] == pytest.approx(33.0)  # the latest of seed 0: 31


def test_paper_table_shows_one_group_and_counts_the_others(tmp_path):
    table = tmp_path / "results.csv"
    for values in [
        row("a", BASE, 0, top1=30.0, **V2, repeat_id="r1"),
        row("b", BASE, 1, top1=34.0, **V2, repeat_id="r1"),
        row("c", BASE, 0, top1=60.0, **{**V2, "precision": "bf16"}, repeat_id="r2"),
    ]:
        append_row(table, {k: v for k, v in values.items() if k in record.COLUMNS})
    report.run_report([str(table)], str(tmp_path / "report"))
    t211 = table_csv(tmp_path / "report", "2.1.1").set_index("row")
    assert t211.loc[0, "n"] == 2 and t211.loc[0, "reproduced_top1_mean"] == pytest.approx(32.0)
    assert "1 other group(s)" in t211.loc[0, "note"]


# ---------------------------------------------------------------- tables from animalcls 0.1

OLD_HEADER = record.COLUMNS[:36]  # animalcls 0.1: no record_version, repeat_id, split, ...


def test_a_table_from_animalcls_0_1_loads_and_reports(tmp_path):
    assert OLD_HEADER[-1] == "error" and "record_version" not in OLD_HEADER
    table = tmp_path / "old.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, OLD_HEADER, extrasaction="ignore")
        writer.writeheader()
        for values in [
            row("0a1b2c3d4e5f", BASE, 0, top1=30.0, precision="fp32"),
            row("0a1b2c3d4e60", BASE, 1, top1=34.0, precision="fp32"),
            row("0a1b2c3d4e61", BEST, 0, top1=90.0, precision="bf16"),
        ]:
            writer.writerow({**values, "data": "data/animals"})  # 0.1 recorded the root
    frame = report.prepare(load([str(table)]))
    assert set(frame["data_name"]) == {"animals"} and (frame["diffs"] == "").all()
    assert frame["repeat_key"].str.startswith("legacy:").all()
    out = tmp_path / "report"
    text = report.run_report([str(table)], str(out)).read_text()
    assert "3 rows, 3 runs" in text
    t211 = table_csv(out, "2.1.1").set_index("row")
    assert t211.loc[0, "n"] == 2 and t211.loc[0, "reproduced_top1_mean"] == pytest.approx(32.0)
    runs = pd.read_csv(out / "runs.csv", dtype={"run_id": str})
    assert list(runs["run_id"]) == ["0a1b2c3d4e5f", "0a1b2c3d4e60", "0a1b2c3d4e61"]


# ---------------------------------------------------------------- nothing from a table runs

FORMULA = '=HYPERLINK("http://x","y")'
SCRIPT = "<script>alert(1)</script>"
HOSTILE = [
    FORMULA,
    SCRIPT,
    "a | b",
    "one\ntwo\r\nthree",
    "[link](http://x) `code`",
    "a\\|b",
    "+1+cmd|' /C calc'!A0",
    "@SUM(A1)",
    "$\\frac{1}{$",
]


def unescaped_pipes(line: str) -> int:
    """Table separators: pipes preceded by an even number of backslashes."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))


def markdown_tables(text: str) -> list[list[str]]:
    blocks, block = [], []
    for line in text.splitlines():  # as strict as readers come: \u2028 ends a line too
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks, block = blocks + [block], []
    return blocks + ([block] if block else [])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """A report of a table whose tags, paper_config and data hold formulas, HTML, pipes and
    line breaks (record_version 2 rows: their data cell is a label, shown as it is)."""
    tmp = tmp_path_factory.mktemp("hostile")
    paths = make_images(tmp / "data" / "animals")
    run_dir = make_run_dir(tmp / "runs" / "evil", tmp / "data" / "animals", paths, 3)
    table = tmp / "results.csv"
    for k, text in enumerate(HOSTILE):
        best = text.startswith("$")  # the best run: its curves are drawn, its title in them
        values = row(
            f"h{k}",
            BASE,
            k,
            top1=90.0 if best else 40.0 + k,
            **V2,
            repeat_id=f"r{k}",
            tags=text,
            data=text,
            run_dir=run_dir if best else "",
        )
        # even rows: a hostile paper_config; odd rows stand for Table 2.1.1 row 0, so their data
        # name reaches the paper tables' notes
        values["paper_config"] = BASE if k % 2 else text
        append_row(table, {key: v for key, v in values.items() if key in record.COLUMNS})
    negative = row("neg", "base-sgd-lr1e-3-bs16-e10-ce", 0, top1=1.0, **V2, repeat_id="rn")
    append_row(table, {**negative, "val_top1": -1.5})
    report.run_report([str(table)], str(tmp / "report"))
    return tmp / "report"


def test_csv_cells_for_people_cannot_run_formulas(hostile):
    with open(hostile / "runs.csv", newline="") as f:
        runs = {r["run_id"]: r for r in csv.DictReader(f)}
    assert runs["h0"]["tags"] == "'" + FORMULA and runs["h0"]["paper_config"] == "'" + FORMULA
    assert runs["h0"]["data_name"] == "'" + FORMULA
    assert runs["h6"]["tags"].startswith("'+") and runs["h7"]["data_name"] == "'@SUM(A1)"
    assert runs["neg"]["val_top1"] == "-1.5"  # a number stays a number
    assert runs["h1"]["tags"] == SCRIPT  # harmless in a CSV: kept as is
    for name in ("paper_comparison.csv", "tables/table_2_1_1.csv"):
        with open(hostile / name, newline="") as f:
            for cells in csv.reader(f):
                assert not any(c.startswith(("=", "+", "@")) for c in cells), (name, cells)


def test_markdown_cannot_hold_html_links_or_broken_rows(hostile):
    for name in ("report.md", "runs.md", "tables/table_2_1_1.md"):
        text = (hostile / name).read_text()
        assert "<script>" not in text and not re.search(r"(?<!\\)\]\(http", text), name  # no link
        for block in markdown_tables(text):
            assert {unescaped_pipes(line) for line in block} == {unescaped_pipes(block[0])}, name
    text = (hostile / "report.md").read_text()
    assert "&lt;script&gt;" in text and "one two three" in text
    assert (hostile / "figures" / "curves_h8.png").is_file()  # a '$' in a title is drawn


def test_escaping_rules_per_format():
    from animalcls.report.text import csv_text, latex_text, md_code, md_text, mpl_text

    assert md_text("a<b>&c|d`e[f]g\\h") == "a&lt;b&gt;&amp;c\\|d\\`e\\[f\\]g\\\\h"
    assert md_text("one\ntwo\rthree\u2028four") == "one two three four"  # every line break
    assert md_code("base-adam-lr1e-3") == "`base-adam-lr1e-3`" and md_code("a`b") == "a\\`b"
    assert [csv_text(v) for v in ("=1+1", "+1", "-1+2", "@x", "\tx", "\rx", "-1.5", "1e-3", "a=b")] == [
        "'=1+1",
        "+1",
        "'-1+2",
        "'@x",
        "'\tx",
        "'\rx",
        "-1.5",
        "1e-3",
        "a=b",
    ]
    assert csv_text(-1.5) == -1.5
    assert latex_text("50% & [x]\n\ny") == r"50\% \& {[}x{]}  y"
    assert mpl_text("$x$") == r"\$x\$"
    assert mpl_text("one\rtwo\x1cthree") == "one two three"


def test_latex_tables_escape_what_runs_recorded(hostile):
    tex = (hostile / "tables" / "table_2_1_1.tex").read_text()
    assert "<script>" not in tex and r"\textless{}script\textgreater{}" in tex
    assert "\n\n" not in tex.split(r"\end{tabular}")[0]  # no paragraph break in a row
    note = [line for line in tex.splitlines() if line.startswith("0 &")][0]
    assert note.count(" & ") == len(paper.TABLE_COLUMNS["2.1.1"]) + 9  # columns stay columns


# ---------------------------------------------------------------- beyond the paper

E20 = "base-adam-lr1e-3-bs16-e20-ce"
SCRATCH = dict(
    optimizer="adamw",
    batch_size=32,
    recipe="scratch",
    recipe_settings="sched.name=cosine;loss.label_smoothing=0.1",
    tagged=False,
)


def recipe_rows() -> list[dict]:
    """Base CNN on animals: two paper-recipe groups (10 and 20 epochs), four scratch groups (15,
    30 and 60 epochs, two at 30), a diverged and a failed run; the scratch recipe on another data
    set; a model the paper has no number for; MobileNetV3-large with the paper's recipe and a
    fine-tuning recipe."""
    demo = {**V2, "data": "demo", "data_id": "d2"}
    return [
        row("p0", BASE, 0, top1=30.0, **V2, repeat_id="p10"),
        row("p1", BASE, 1, top1=34.0, **V2, repeat_id="p10"),
        row("q0", E20, 0, top1=40.0, **V2, repeat_id="p20"),
        row("q1", E20, 1, top1=44.0, **V2, repeat_id="p20"),
        row("x0", BASE, 0, status="diverged", top1=2.0, **V2, repeat_id="s60", epochs=60, **SCRATCH),
        row("s0", BASE, 0, top1=50.0, **V2, repeat_id="s15", epochs=15, **SCRATCH),
        row("s1", BASE, 1, top1=52.0, **V2, repeat_id="s15", epochs=15, **SCRATCH),
        row("s2", BASE, 2, top1=54.0, **V2, repeat_id="s15", epochs=15, **SCRATCH),
        row("t0", BASE, 0, top1=60.0, **V2, repeat_id="s30", epochs=30, **SCRATCH),
        row("t1", BASE, 1, top1=64.0, **V2, repeat_id="s30", epochs=30, **SCRATCH),
        row("t2", BASE, 2, status="failed", **V2, repeat_id="s30", epochs=30, **SCRATCH),
        row("u0", BASE, 0, top1=58.0, **V2, repeat_id="s30b", epochs=30, **{**SCRATCH, "lr": 0.002}),
        row("d0", BASE, 0, top1=99.0, **demo, repeat_id="sd", epochs=30, **{**SCRATCH, "recipe_settings": "a|b<b>"}),
        row("n0", BASE, 0, top1=80.0, **V2, repeat_id="ms", model="mobilenet_v3_small", tagged=False),
        row("m0", BEST, 0, top1=97.0, **V2, repeat_id="m"),
        row("f0", BEST, 0, top1=98.5, **V2, repeat_id="mf", recipe="finetune", recipe_settings="ema.decay=0.999"),
    ]


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("recipes")
    table = tmp / "results.csv"
    for values in recipe_rows():
        append_row(table, {k: v for k, v in values.items() if k in record.COLUMNS})
    report.run_report([str(table)], str(tmp / "report"))
    return tmp / "report"


def beyond_csv(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / "beyond_the_paper.csv", dtype={"data_id": str, "split": str})


def test_beyond_picks_the_best_paper_recipe_and_recipe_groups(recipes):
    table = beyond_csv(recipes).set_index(["model", "data"])
    base = table.loc[("base", "animals")]
    assert base["model_name"] == display_name("model", "base") and base["paper_best_pct"] == pytest.approx(53.23)
    # the best paper-recipe group is the 20-epoch one (42), not the 10-epoch one (32)
    assert (base["paper_recipe_top1_mean"], base["paper_recipe_n"], base["paper_recipe_epochs"]) == (42.0, 2, 20)
    assert base["paper_recipe_top1_std"] == pytest.approx(math.sqrt(8.0))  # two seeds, ddof=1
    assert base["paper_recipe_config"] == E20
    # the failed run of the 30-epoch scratch group is counted, never averaged
    assert (base["recipe"], base["recipe_n"], base["recipe_epochs"]) == ("scratch", 2, 30)
    assert base["recipe_top1_mean"] == pytest.approx(62.0) and base["recipe_top1_std"] == pytest.approx(math.sqrt(8.0))
    assert base["recipe_settings"] == SCRATCH["recipe_settings"]
    # paired by seed: seeds 0 and 1 ran both (40->60, 44->64); two pairs give no verdict
    assert base["diff_pp"] == pytest.approx(20.0) and base["diff_pairs"] == 2
    assert base["diff_ci_low"] == pytest.approx(20.0) and base["verdict"] == "too few seeds (n=2): no verdict"
    assert "epochs differ: paper recipe 20, recipe 30" in base["note"]
    # 3, not 4: the 60-epoch scratch group has only a diverged run, which is never averaged
    assert "recipe: best of 3 groups" in base["note"] and "paper recipe: best of 2 groups" in base["note"]
    best = table.loc[("mobilenet_v3_large", "animals")]
    assert (best["recipe"], best["recipe_top1_mean"], best["paper_recipe_top1_mean"]) == ("finetune", 98.5, 97.0)
    assert best["diff_pp"] == pytest.approx(1.5) and "epochs differ" not in str(best["note"])
    small = table.loc[("mobilenet_v3_small", "animals")]
    assert math.isnan(small["paper_best_pct"]) and math.isnan(small["recipe_top1_mean"])
    md = (recipes / "tables" / "beyond_the_paper.md").read_text()
    name = display_name("model", "mobilenet_v3_small")
    small_line = [line for line in md.splitlines() if line.startswith(f"| {name} |")][0]
    assert "| — |" in small_line and "missing" in small_line and "80.00" in small_line
    assert "42.00 ± 2.83" in md and "62.00 ± 2.83" in md and "+20.00" in md


def test_beyond_never_compares_rows_of_another_data_set(recipes):
    table = beyond_csv(recipes).set_index(["model", "data"])
    demo = table.loc[("base", "demo")]
    assert demo["recipe_top1_mean"] == 99.0 and demo["recipe_n"] == 1
    assert math.isnan(demo["paper_recipe_top1_mean"]) and math.isnan(demo["diff_pp"])  # no paper run on demo
    assert "on its animals data" in demo["note"]
    assert table.loc[("base", "animals"), "recipe_top1_mean"] == pytest.approx(62.0)  # 99 stays on demo
    md = (recipes / "tables" / "beyond_the_paper.md").read_text()
    assert "<b>" not in md and "a\\|b&lt;b&gt;" in md  # recipe settings escaped as all table text
    report_md = (recipes / "report.md").read_text()
    assert "## Beyond the paper" in report_md and "tables/beyond_the_paper.csv" in report_md


def test_beyond_groups_are_the_seed_repeat_groups():
    prepared = report.prepare(pd.DataFrame(recipe_rows()))
    table = beyond.beyond_table(report.aggregate(prepared), prepared).set_index(["model", "data"])
    assert len(table) == 4 and table.loc[("base", "animals"), "recipe_top1_mean"] == pytest.approx(62.0)
    # without repeat_ids the recipe still keeps groups apart (settings alone would pool p0 and a
    # scratch run that changed only recipe settings)
    legacy = [
        {k: v for k, v in r.items() if k not in ("repeat_id", "record_version")}
        for r in [
            row("a", BASE, 0, top1=30.0),
            row("b", BASE, 1, top1=40.0, recipe="paper", recipe_settings="loss.label_smoothing=0.1"),
        ]
    ]
    groups = report.aggregate(report.prepare(pd.DataFrame(legacy)))
    assert len(groups) == 2 and list(groups["n"]) == [1, 1]
    only = beyond.beyond_table(groups).iloc[0]
    assert (only["paper_recipe_top1_mean"], only["recipe"], only["recipe_top1_mean"]) == (30.0, "paper+changes", 40.0)


def test_epoch_budget_csv_has_one_point_per_recipe_and_budget(recipes):
    points = pd.read_csv(recipes / "tables" / "epoch_budget.csv")
    assert list(points.columns[:5]) == ["recipe", "epochs", "n", "mean", "std"]
    got = {(r["recipe"], r["epochs"]): (r["n"], r["mean"]) for r in points.to_dict("records")}
    # ok runs of the base CNN on animals (the data set with the most): the diverged run (60
    # epochs) and the demo run are not in it; at 30 epochs the better of two scratch groups
    assert got == {
        ("paper", 10): (2, 32.0),
        ("paper", 20): (2, 42.0),
        ("scratch", 15): (3, 52.0),
        ("scratch", 30): (2, 62.0),
    }
    assert set(points["data"]) == {"animals"} and set(points["model"]) == {"base"}
    assert points.set_index(["recipe", "epochs"]).loc[("scratch", 15), "std"] == pytest.approx(2.0)
    assert points.set_index(["recipe", "epochs"]).loc[("scratch", 30), "groups"] == 2
    assert (recipes / "figures" / "epoch_budget.png").stat().st_size > 1000
    text = (recipes / "report.md").read_text()
    assert "figures/epoch_budget.png" in text and "Only one epoch budget" not in text


def test_an_old_table_reports_paper_recipe_rows_only(tmp_path):
    table = tmp_path / "old.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, OLD_HEADER, extrasaction="ignore")
        writer.writeheader()
        for values in [
            row("0a1b2c3d4e5f", BASE, 0, top1=30.0, precision="fp32"),
            row("0a1b2c3d4e60", BASE, 1, top1=34.0, precision="fp32"),
            row("0a1b2c3d4e61", BEST, 0, top1=90.0, precision="bf16"),
        ]:
            writer.writerow(values)
    out = tmp_path / "report"
    text = report.run_report([str(table)], str(out)).read_text()
    table_ = beyond_csv(out).set_index("model")
    assert list(table_.index) == ["base", "mobilenet_v3_large"]
    assert table_.loc["base", "paper_recipe_top1_mean"] == pytest.approx(32.0)
    assert table_.loc["base", "paper_recipe_n"] == 2 and table_.loc["base", "paper_recipe_epochs"] == 10
    assert table_["recipe"].isna().all() and table_["recipe_top1_mean"].isna().all() and (table_["recipe_n"] == 0).all()
    points = pd.read_csv(out / "tables" / "epoch_budget.csv")
    assert points[["recipe", "epochs", "n"]].values.tolist() == [["paper", 10, 2]]
    assert "Only one epoch budget (10)" in text and (out / "figures" / "epoch_budget.png").is_file()
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["recipe"]) == {"paper"}


def test_paper_tables_prefer_the_paper_recipe(tmp_path):
    table = tmp_path / "results.csv"
    for values in [
        row("a", BASE, 0, top1=30.0, **V2, repeat_id="r1"),
        row("b", BASE, 1, top1=60.0, **V2, repeat_id="r2", recipe="paper", recipe_settings="sched.name=cosine"),
        row("c", BASE, 2, top1=61.0, **V2, repeat_id="r3", recipe="paper", recipe_settings="sched.name=cosine"),
    ]:
        append_row(table, {k: v for k, v in values.items() if k in record.COLUMNS})
    report.run_report([str(table)], str(tmp_path / "report"))
    t211 = table_csv(tmp_path / "report", "2.1.1").set_index("row")
    assert t211.loc[0, "n"] == 1 and t211.loc[0, "reproduced_top1_mean"] == pytest.approx(30.0)


def test_no_runs_no_beyond_rows_and_no_epoch_budget_figure(tmp_path):
    out = tmp_path / "report"
    text = report.run_report([str(tmp_path / "nothing.csv")], str(out)).read_text()
    assert beyond_csv(out).empty and pd.read_csv(out / "tables" / "epoch_budget.csv").empty
    assert not (out / "figures" / "epoch_budget.png").exists() and "no epoch-budget figure" in text


def test_beyond_picks_on_validation_and_pairs_the_difference_by_seed():
    # the 20-epoch paper group wins on test (44 vs 32) but the 10-epoch one on validation: the pick
    # is on validation; the scratch groups likewise (s15 on validation, s30 on test)
    rows = [
        {**row(f"p{k}", BASE, k, top1=t, **V2, repeat_id="p10"), "val_top1": 50.0}
        for k, t in enumerate([30.0, 32.0, 34.0])
    ]
    rows += [{**row(f"q{k}", E20, k, top1=44.0, **V2, repeat_id="p20"), "val_top1": 40.0} for k in range(3)]
    rows += [
        {**row(f"s{k}", BASE, k, top1=t, **V2, repeat_id="s15", epochs=15, **SCRATCH), "val_top1": 70.0}
        for k, t in enumerate([35.0, 38.0, 41.0, 50.0])
    ]
    rows += [{**row("t0", BASE, 0, top1=90.0, **V2, repeat_id="s30", epochs=30, **SCRATCH), "val_top1": 60.0}]
    prepared = report.prepare(pd.DataFrame(rows))
    base = beyond.beyond_table(report.aggregate(prepared), prepared).iloc[0]
    assert (base["paper_recipe_config"], base["paper_recipe_top1_mean"]) == (BASE, pytest.approx(32.0))
    assert (base["recipe_epochs"], base["recipe_n"]) == (15, 4)
    # seeds 0-2 pair (diffs 5, 6, 7; seed 3 has no paper run): 6 ± 4.3027 / sqrt(3)
    assert base["diff_pairs"] == 3 and base["diff_pp"] == pytest.approx(6.0)
    assert base["diff_ci_low"] == pytest.approx(6.0 - 4.3027 / math.sqrt(3), abs=1e-3)
    assert base["verdict"] == "recipe beats paper"
    shown = beyond.beyond_display(beyond.beyond_table(report.aggregate(prepared), prepared)).iloc[0]
    assert (shown["Paired seeds"], shown["Verdict"]) == ("3", "recipe beats paper")
    # without the runs (or without a shared seed) the difference is of the means, and said so
    unpaired = beyond.beyond_table(report.aggregate(prepared)).iloc[0]
    assert unpaired["diff_pp"] == pytest.approx(41.0 - 32.0) and unpaired["diff_pairs"] == 0
    assert "no seed in common" in unpaired["note"]


# ---------------------------------------------------------------- report.html


class _Page(HTMLParser):
    """Tables (their header cells), images and script/link tags of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[str]] = []
        self.images: list[dict[str, str | None]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "th":
            self._in_th = True
            self.tables[-1].append("")
        elif tag == "img":
            self.images.append(attributes)
        elif tag in ("script", "link", "iframe"):
            self.scripts.append(attributes)
        elif tag == "a":
            self.links.append(attributes.get("href") or "")

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._in_th:
            self.tables[-1][-1] += data


def _parsed(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    return page


def _md_tables_and_figures(out: Path) -> tuple[int, list[str]]:
    lines = (out / "report.md").read_text().splitlines()
    tables = sum(1 for a, b in zip(lines, lines[1:]) if a.startswith("|") and b.startswith("|---"))
    figures = [m.group(1) for m in re.finditer(r"!\[[^\]]*\]\(([^)]+)\)", "\n".join(lines))]
    return tables, figures


def test_report_html_holds_every_table_and_figure_inline(built):
    out = built["out"]
    page = _parsed(out)
    tables, figures = _md_tables_and_figures(out)
    assert tables > 5 and len(page.tables) == tables
    assert len(figures) >= 9 and len(page.images) == len(figures)
    for image, figure in zip(page.images, figures):
        src = image["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (out / figure).read_bytes()
    # no network: images inline (above), one inline script (the sorting), nothing loaded from elsewhere
    assert page.scripts == [{}]
    assert page.tables[-1][:2] == ["Run", "Status"] and "Top-1 %" in page.tables[-1]  # the runs table
    assert 'addEventListener("click"' in (out / "report.html").read_text()


def test_report_html_keeps_hostile_text_inert(hostile):
    text = (hostile / "report.html").read_text(encoding="utf-8")
    page = _parsed(hostile)
    assert page.scripts == [{}]  # only the page's own script: none from a results table
    assert SCRIPT not in text and "<script>alert" not in text
    assert len(page.tables) == _md_tables_and_figures(hostile)[0]


def test_report_html_renders_in_headless_chromium(built, tmp_path):
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH: report.html was checked by parsing only")
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (built["out"] / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("<table") == len(_parsed(built["out"]).tables)
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            (built["out"] / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr
    with Image.open(shot) as image:
        grey = image.convert("L")
        colours = grey.getcolors(maxcolors=256 * 256) or []
        dark = sum(count for count, value in colours if value < 128)
    # a page of tables and figures: many shades (text anti-aliasing, the plots), and dark pixels
    # (text) on at least 1 % of the page; a blank or failed render is one flat colour
    assert len(colours) > 32 and dark > 0.01 * grey.width * grey.height, (len(colours), dark)
