"""The paper's configurations: ids, generated Hydra files, sweep expansion and composition."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from animalcls import paper
from animalcls.config import register_schema

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def hydra_conf():
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def sweep_params(experiment: str) -> list[str]:
    """The sweep of an experiment file, as `key=values` overrides (read without composing, fast)."""
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    return [f"{key}={value}" for key, value in params.items()]


def sweep_jobs(params: list[str], *extra: str) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for these sweep params plus command-line `extra`."""
    overrides = OverridesParser.create().parse_overrides([*params, *extra])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def covering_configs() -> list[dict]:
    """A few configurations that together use every value of every setting (composing all 38
    takes ~10 s; the files are checked to be generated uniformly by the test above)."""
    configs = paper.configs().to_dict("records")
    keys = [k for k in paper.SETTINGS if k != "lr"]  # lr is a plain number: one is enough
    values = [{(k, str(c[k])) for k in keys} for c in configs]
    chosen, seen = [], set()
    while any(v - seen for v in values):  # greedy set cover: the most new values first
        best = max(range(len(configs)), key=lambda i: len(values[i] - seen))
        chosen.append(configs[best])
        seen |= values[best]
    return chosen


def rows_of(jobs: list[list[str]]) -> list[str]:
    return [o.split("=", 1)[1] for job in jobs for o in job if o.startswith("+paper_config=")]


def test_paper_data_has_every_table_and_38_configurations():
    rows = paper.load()
    assert paper.tables() == [
        "2.1.1",
        "2.1.2",
        "2.1.3",
        "2.1.4",
        "2.1.5",
        "2.1.6",
        "2.1.7",
        "2.1.8",
        "2.2.1",
        "2.2.2",
        "2.3.1",
        "2.3.2",
        "2.3.3",
        "2.3.4",
    ]
    assert len(rows) == 67
    assert rows["paper_config"].nunique() == len(paper.configs()) == 38
    assert set(paper.TABLE_COLUMNS) == set(paper.tables()) == set(paper.TABLE_TITLES)
    # one configuration has one accuracy in the paper, whichever table repeats it
    assert (rows.groupby("paper_config")["accuracy_pct"].nunique() == 1).all()


def test_paper_config_ids_are_readable_hydra_names_and_match_the_csv_column():
    rows = paper.load()
    assert all(re.fullmatch(r"[a-z0-9_-]+", cid) for cid in rows["paper_config"])
    shipped = pd.read_csv(paper.PAPER_CSV, dtype=str)["paper_config"]
    assert list(shipped) == list(rows["paper_config"])
    base = rows[(rows["table"] == "2.1.1") & (rows["row"] == 0)]["paper_config"].item()
    assert base == "base-adam-lr1e-3-bs16-e10-ce"
    assert (
        paper.paper_config_of(
            dict(
                model="base",
                optimizer="adam",
                lr=1e-4,
                batch_size=16,
                epochs=10,
                loss="cross_entropy",
                batch_norm=True,
                dropout=0.5,
                aug="rotation_112",
                pretrained=False,
            )
        )
        == "base-adam-lr1e-4-bs16-e10-ce-bn-drop0p5-rot"
    )


def test_table_columns_cover_what_each_table_varies():
    for table in paper.tables():
        rows = paper.table_rows(table)
        varying = {c for c in paper.SETTINGS if rows[c].astype(str).nunique() > 1}
        varying -= {"pretrained", "augmentation", "batch_norm", "dropout"} if table == "2.2.1" else set()
        assert varying <= set(paper.TABLE_COLUMNS[table]), table


def test_generated_config_files_are_up_to_date():
    """conf/paper_config and conf/experiment/paper are what scripts/make_paper_configs.py writes."""
    files = paper.render_config_files()
    for rel, text in files.items():
        assert (CONF / rel).read_text() == text, f"{rel} is stale: run scripts/make_paper_configs.py"
    on_disk = {
        p.relative_to(CONF).as_posix() for d in ("paper_config", "experiment/paper") for p in (CONF / d).glob("*.yaml")
    }
    assert on_disk == set(files)


@pytest.mark.parametrize("table", paper.tables())
def test_table_sweep_expands_to_the_paper_rows(table):
    expected = list(paper.table_rows(table)["paper_config"])
    jobs = sweep_jobs(sweep_params(f"paper/{paper.experiment_name(table)}"))
    assert len(jobs) == len(expected)  # every row of a table is a distinct configuration
    assert sorted(rows_of(jobs)) == sorted(expected)


def test_composed_sweep_runs_each_configuration_once_and_seeds_multiply(hydra_conf):
    cfg = compose("config", overrides=["+experiment=paper/all"], return_hydra_config=True)
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    jobs = sweep_jobs(params)
    assert len(jobs) == 38 and sorted(rows_of(jobs)) == sorted(paper.configs()["paper_config"])
    assert len(sweep_jobs(sweep_params("paper/table_2_1_2"), "seed=0,1,2")) == 3 * 5


def test_paper_configs_compose_to_their_settings(hydra_conf):
    configs = covering_configs()
    assert len(configs) <= 10
    for c in configs:
        cfg = compose("config", overrides=[f"+paper_config={c['paper_config']}"])
        ran = dict(
            model=cfg.model.name,
            pretrained=cfg.model.pretrained,
            optimizer=cfg.optim.name,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            loss=cfg.loss.name,
            batch_norm=cfg.model.batch_norm,
            dropout=cfg.model.dropout,
            aug=cfg.aug.name,
        )
        assert paper.paper_config_of(ran) == c["paper_config"]
        assert cfg.paper_config == c["paper_config"]
        assert list(cfg.tags) == c["tables"]
        if c["optimizer"] == "sgd_momentum":
            assert cfg.optim.momentum == 0.9
        if c["model"] != "base":  # the torchvision transform of Section 2.2
            assert (cfg.aug.resize, cfg.aug.crop, cfg.aug.hflip) == (256, 224, 0.0)


def test_base_configuration_is_tagged_with_every_table_it_appears_in(hydra_conf):
    cfg = compose("config", overrides=["+paper_config=base-adam-lr1e-3-bs16-e10-ce"])
    assert list(cfg.tags) == ["2.1.1", "2.1.2", "2.1.3", "2.1.4", "2.1.5", "2.1.6", "2.1.7", "2.1.8", "2.2.1"]


def test_command_line_overrides_win_over_the_row(hydra_conf):
    jobs = sweep_jobs(sweep_params("paper/table_2_3_4"), "epochs=1", "data=demo")
    cfg = compose("config", overrides=["+experiment=paper/table_2_3_4", *jobs[-1]])
    assert cfg.paper_config == "mobilenet_v3_large-sgd-lr1e-1-bs32-e20-ce"
    assert (cfg.epochs, cfg.data.name, cfg.lr, cfg.batch_size) == (1, "demo", 0.1, 32)


def test_a_paper_experiment_without_multirun_is_refused(tmp_path, cli, capsys):
    assert cli(["train", "+experiment=paper/table_2_1_1", "data=demo"], tmp_path) == 2
    assert "add -m" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "results.csv").exists()
