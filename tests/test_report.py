"""`animalcls report` on small results tables and fake run dirs made here (no training)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from animalcls import paper, report
from animalcls.results import append_row, load

CLASSES = ["canis-lupus", "felis-catus", "vulpes-vulpes"]
BASE = "base-adam-lr1e-3-bs16-e10-ce"
BEST = "mobilenet_v3_large-sgd-lr1e-1-bs32-e20-ce"


def settings(paper_config: str) -> dict:
    c = paper.configs().set_index("paper_config").loc[paper_config]
    return dict(model=c["model"], pretrained=bool(c["pretrained"]), optimizer=c["optimizer"],
                lr=float(c["lr"]), batch_size=int(c["batch_size"]), epochs=int(c["epochs"]),
                loss=c["loss"], aug=c["augmentation"], batch_norm=bool(c["batch_norm"]),
                dropout=float(c["dropout"]))


def row(run_id: str, paper_config: str, seed: int, status: str = "ok", top1: float | None = None,
        tagged: bool = True, run_dir: str = "", **changes) -> dict:
    values = {**settings(paper_config), "run_id": run_id, "status": status, "seed": seed,
              "data": "animals", "timestamp": f"2024-01-01T00:00:{seed:02d}", "run_dir": run_dir,
              "paper_config": paper_config if tagged else "",
              "tags": ";".join(paper.configs().set_index("paper_config").loc[paper_config, "tables"])
              if tagged else "", **changes}
    if top1 is not None:
        values.update(test_top1=top1, test_top3=min(100.0, top1 + 10), test_top5=min(100.0, top1 + 20),
                      val_top1=top1 - 1, gflops=0.69 if values["model"] == "base" else 0.44,
                      gmacs_fvcore=0.35, params=1.2e6, train_seconds=60.0, images_per_s=900.0)
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
        f"  split: [0.5, 0.0, 0.5]\n")
    epoch = list(range(1, epochs + 1))
    pd.DataFrame({"epoch": epoch, "train_loss": [2.0 / e for e in epoch],
                  "train_top1": [30 + 5 * e for e in epoch], "val_loss": [2.2 / e for e in epoch],
                  "val_top1": [28 + 4 * e for e in epoch], "val_top3": [40 + 4 * e for e in epoch],
                  "val_top5": [50 + 4 * e for e in epoch], "lr": 0.001, "seconds": 1.0,
                  "images_per_s": 100.0}).to_csv(folder / "history.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"classes": CLASSES, "test_top1": 50.0}))
    labels = [p.split("/")[0] for p in paths]
    predicted = [labels[0]] + [CLASSES[(CLASSES.index(l) + 1) % 3] if k % 2 else l
                               for k, l in enumerate(labels[1:], 1)]
    pd.DataFrame({"path": paths, "label": labels, "predicted": predicted,
                  "top5": [";".join(CLASSES)] * len(paths),
                  "probability": [0.5 + 0.05 * k for k in range(len(paths))]}
                 ).to_csv(folder / "predictions.csv", index=False)
    pd.DataFrame({"path": paths, "label": labels,
                  "split": ["train" if k % 2 else "test" for k in range(len(paths))]}
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
        row("b0", BASE, 0, status="interrupted"),          # superseded by its ok re-run below
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
    return {"results": [str(first), str(second)], "out": tmp_path / "report",
            "data": tmp_path / "data", "best_dir": best_dir, "paths": paths}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The fixture tables and the report made from them (made once: figures take seconds)."""
    fixture = write_fixture(tmp_path_factory.mktemp("report"))
    fixture["index"] = report.run_report(fixture["results"], str(fixture["out"]))
    return fixture


def table_csv(out: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{paper.experiment_name(table)}.csv", dtype={"table": str})


def test_aggregate_seed_repeats_mean_std_n():
    frame = pd.DataFrame([
        row("a", BASE, 0, top1=30.0), row("b", BASE, 1, top1=34.0), row("c", BASE, 2, top1=38.0),
        row("d", BASE, 3, status="failed"), row("e", BASE, 4, status="interrupted"),
        row("x", "base-adam-lr1e-1-bs16-e10-ce", 0, status="diverged", top1=0.5),
        row("y", "base-adam-lr1e-1-bs16-e10-ce", 1, top1=2.5),
        row("z", "base-adam-lr1e-2-bs16-e10-ce", 0, status="failed"),
    ])
    groups = report.aggregate(report.prepare(frame)).set_index("paper_config")
    base = groups.loc[BASE]
    assert (base["n"], base["n_runs"], base["n_failed"]) == (3, 5, 2)
    assert base["test_top1_mean"] == pytest.approx(34.0)
    assert base["test_top1_std"] == pytest.approx(4.0)            # sample std, ddof=1
    assert base["test_top5_mean"] == pytest.approx(54.0)
    assert base["seeds"] == "0,1,2"
    diverged = groups.loc["base-adam-lr1e-1-bs16-e10-ce"]
    assert (diverged["n"], diverged["n_diverged"]) == (2, 1)      # a diverged accuracy is real
    assert diverged["test_top1_mean"] == pytest.approx(1.5)
    failed = groups.loc["base-adam-lr1e-2-bs16-e10-ce"]
    assert failed["n"] == 0 and math.isnan(failed["test_top1_mean"])   # never averaged as 0


def test_repeated_run_id_counts_once_and_settings_match_without_paper_config():
    frame = pd.DataFrame([row("a", BASE, 0, top1=30.0), row("a", BASE, 0, status="interrupted"),
                          row("r", "resnet18-sgd-lr1e-3-bs16-e10-ce", 0, top1=90.0, tagged=False),
                          row("s", BASE, 0, top1=20.0, epochs=1, data="demo")])
    prepared = report.prepare(frame)
    assert len(prepared) == 3
    assert prepared.set_index("run_id").loc["a", "status"] == "ok"
    assert prepared.set_index("run_id").loc["r", "paper_config"] == "resnet18-sgd-lr1e-3-bs16-e10-ce"
    diffs = prepared.set_index("run_id").loc["s", "diffs"]
    assert "epochs=1 (paper 10)" in diffs and "data=demo" in diffs
    groups = report.aggregate(prepared)
    assert len(groups[groups["paper_config"] == BASE]) == 2           # paper settings kept apart


def test_report_writes_every_table_and_figure(built):
    out = built["out"]
    assert built["index"] == out / "report.md" and built["index"].is_file()
    for table in paper.tables():
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{paper.experiment_name(table)}.{ext}").is_file()
    for name in ("accuracy_efficiency", "curves_b0", "curves_m0", "failure_cases",
                 "class_distribution", "per_class_accuracy", "confusion_matrix"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 9 and set(runs["status"]) == {"ok", "diverged", "failed"}


def test_paper_tables_aggregate_seeds_and_mark_missing(built):
    out = built["out"]
    t212 = table_csv(out, "2.1.2").set_index("row")
    assert list(t212.columns[:3]) == ["table", "lr", "paper_accuracy_pct"]   # the paper's columns
    assert t212.loc[0, "reproduced_top1_mean"] == pytest.approx(34.0)
    assert t212.loc[0, "reproduced_top1_std"] == pytest.approx(4.0)
    assert t212.loc[0, "n"] == 3 and t212.loc[0, "diff_pp"] == pytest.approx(34.0 - 37.53)
    assert t212.loc[4, "status"] == "ok" and "1 diverged" in t212.loc[4, "note"]
    missing = t212.loc[[1, 2, 3]]
    assert missing["status"].str.startswith("missing").all()
    assert missing["reproduced_top1_mean"].isna().all() and missing["diff_pp"].isna().all()
    assert t212.loc[3, "status"] == "missing (1 failed)"

    t221 = table_csv(out, "2.2.1").set_index("row")
    assert t221.loc[2, "n"] == 1 and t221.loc[2, "reproduced_top1_mean"] == 90.0   # by settings
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
    for expected in ("## Coverage", "What is missing", "`base-adam-lr1e-2-bs16-e10-ce` (1 failed; tables 2.1.2)",
                     "Table 2.3.4", "figures/accuracy_efficiency.png", "figures/failure_cases.png",
                     "figures/curves_b0.png", "leaves open", "runs.csv", "tables/table_2_1_1.tex"):
        assert expected in text, expected


def test_choose_runs_by_config_dir_or_id(built):
    frame = report.prepare(load(built["results"]))
    bases = [Path.cwd()]
    chosen, problems = report.choose_runs(frame, [BEST, "b1", built["best_dir"], "nosuchrun"], bases)
    assert [r["run_id"] for r in chosen] == ["m0", "b1"]          # the dir is m0's: drawn once
    by_dir, _ = report.choose_runs(frame, [built["best_dir"]], bases)
    assert [r["run_id"] for r in by_dir] == ["m0"]
    assert problems == ["run 'nosuchrun' not found (give a run id, a configuration id or a run dir)"]
    default, _ = report.choose_runs(frame, None, bases)
    assert [(r["label"], r["run_id"]) for r in default] == [("base run", "b0"), ("best run", "m0")]


def test_failure_gallery_skips_missing_images(built, tmp_path):
    predictions = report.predictions_of(Path(built["best_dir"]))
    predictions["path"] = "gone/" + predictions["path"]
    figure, shown = report.figure_failures(predictions, Path(built["best_dir"]), [tmp_path], "t",
                                           tmp_path / "gallery.png")
    assert (figure, shown) == (None, 0) and not (tmp_path / "gallery.png").exists()


def test_report_without_results_says_everything_is_missing(tmp_path):
    out = tmp_path / "report"
    text = report.run_report([str(tmp_path / "nothing.csv")], str(out)).read_text()
    assert "38 of 38 distinct configurations have no finished run" in text
    compared = pd.read_csv(out / "paper_comparison.csv")
    assert len(compared) == 67 and (compared["status"] == "missing").all()
    assert compared["reproduced_top1_mean"].isna().all()
    assert (out / "figures" / "accuracy_efficiency.png").is_file()
