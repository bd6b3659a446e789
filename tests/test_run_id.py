"""The library layer and the run id: one source for every name, no import circles, an id that
changes exactly when what a run measures changes, and tables of animalcls 0.1 still working."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from animalcls import registry, results
from animalcls.build import choose_precision
from animalcls.record import Resolved, legacy_run_id, run_id

from conftest import make_image_folder, tiny_train_args

SRC = Path(__file__).resolve().parents[1] / "src" / "animalcls"
FIXTURES = Path(__file__).with_name("fixtures")


def _table(cwd: Path) -> pd.DataFrame:
    return results.load(cwd / "outputs" / "results.csv")


# ---------------------------------------------------------------- the shape of the code


def _imports(path: Path, package: str) -> set[str]:
    """Every animalcls module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n.startswith("animalcls.") and n != package}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for imported in _imports(path, package):
            while imported not in modules and "." in imported:  # `from pkg.mod import name`
                imported = imported.rpartition(".")[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle_counting_deferred_imports():
    graph = import_graph()
    assert {"animalcls.cli", "animalcls.run", "animalcls.build", "animalcls.registry"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert not any("animalcls.cli" in targets for name, targets in graph.items() if name != "animalcls.__main__")


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_each_model_name_lives_in_one_python_place():
    for name in registry.MODELS.names():
        hits = [p.name for p in SRC.rglob("*.py") if f'"{name}"' in p.read_text() or f"'{name}'" in p.read_text()]
        assert hits == ["registry.py"], (name, hits)


def test_config_groups_and_registries_agree():
    from animalcls.config import group_options

    assert group_options("model") == sorted(registry.MODELS.names())
    assert group_options("optim") == sorted(registry.OPTIMIZERS.names())
    assert group_options("loss") == sorted(registry.LOSSES.names())
    assert group_options("aug") == sorted(registry.AUGMENTATIONS.names())


def test_unknown_names_raise_instead_of_falling_back():
    from animalcls.errors import AnimalclsError

    for reg in (registry.MODELS, registry.OPTIMIZERS, registry.LOSSES, registry.AUGMENTATIONS):
        with pytest.raises(AnimalclsError, match="choose one of"):
            reg.get("nope")


@pytest.fixture
def fake_model():
    def build(num_classes: int, **_: object) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, num_classes))

    registry.register_model(
        registry.ModelSpec("tiny_fake", "TinyFake", build, default_aug="default_112", has_imagenet_weights=False)
    )
    yield "tiny_fake"
    registry.MODELS.remove("tiny_fake")


def test_a_model_added_to_the_registry_trains_with_no_other_change(tmp_path, image_folder, cli, fake_model):
    assert cli(tiny_train_args(image_folder, f"model.name={fake_model}"), tmp_path) == 0
    row = _table(tmp_path).iloc[0]
    assert row["model"] == fake_model and row["status"] == "ok" and row["params"] == 48 * 3 + 3


# ---------------------------------------------------------------- the run id


def test_run_ids_are_pinned():
    """Changing these ids makes every recorded run look undone: do it only on purpose."""
    from animalcls.config import compose

    resolved = Resolved("fp32", "0123456789abcdef")
    assert run_id(compose([]), resolved) == "659545687f68f29e"
    assert run_id(compose(["model=mobilenet_v3_large", "optim=sgd", "lr=0.1"]), resolved) == "e7268b866eb3de05"
    assert (
        run_id(compose(["+paper_config=base-adam-lr1e-4-bs16-e10-ce-bn-drop0p5-rot"]), resolved) == "3e54d0fea4d527d1"
    )


def _runs(tmp_path: Path, cli, *variants: list[str]) -> list[int]:
    """Run each variant in turn; how many rows the table has after each."""
    counts = []
    for args in variants:
        assert cli(args, tmp_path) == 0
        counts.append(len(_table(tmp_path)))
    return counts


@pytest.mark.parametrize("change", [["test_on=last"], ["data.pipeline=pil"]])
def test_a_change_in_what_is_measured_gets_its_own_run(tmp_path, image_folder, cli, change):
    base = tiny_train_args(image_folder)
    assert _runs(tmp_path, cli, base, base + change, base + change) == [1, 2, 2]


def test_adding_images_to_the_data_root_gets_its_own_run(tmp_path, image_folder, cli):
    args = tiny_train_args(image_folder)
    assert cli(args, tmp_path) == 0
    make_image_folder(image_folder, per_class=13, seed=5)  # one more image per class
    assert cli(args, tmp_path) == 0
    table = _table(tmp_path)
    assert len(table) == 2 and table["data_id"].nunique() == 2 and table["run_id"].nunique() == 2


def test_one_data_set_spelled_four_ways_or_copied_is_one_run(tmp_path, cli):
    make_image_folder(tmp_path / "tiny")
    shutil.copytree(tmp_path / "tiny", tmp_path / "copy")  # new mtimes, same files
    spellings = ["tiny", "./tiny", "tiny/", str(tmp_path / "tiny"), "copy"]
    counts = _runs(tmp_path, cli, *(tiny_train_args(Path(s)) for s in spellings))
    assert counts == [1] * len(spellings)


def test_settings_that_only_change_speed_share_the_run(tmp_path, image_folder, cli):
    base = tiny_train_args(image_folder)
    counts = _runs(
        tmp_path,
        cli,
        base,
        base + ["channels_last=true"],
        base + ["channels_last=false"],
        base + ["eval_batch_size=5", "workers=1"],
    )
    assert counts == [1, 1, 1, 1]


def test_amp_shares_the_run_exactly_when_the_precision_chosen_is_the_same(tmp_path, image_folder, cli):
    base = tiny_train_args(image_folder)
    same = choose_precision("auto", torch.device("cpu"), "base") == "fp32"
    assert _runs(tmp_path, cli, base, base + ["amp=off"]) == [1, 1 if same else 2]
    assert _runs(tmp_path, cli, base + ["amp=bf16"]) == [2 if same else 3]


def test_the_seed_changes_the_run_but_not_its_repeat_group(tmp_path, image_folder, cli):
    base = tiny_train_args(image_folder)
    assert _runs(tmp_path, cli, base, base + ["seed=1"]) == [1, 2]
    table = _table(tmp_path)
    assert table["run_id"].nunique() == 2 and table["repeat_id"].nunique() == 1


# ---------------------------------------------------------------- a table of animalcls 0.1

OLD_ARGS = [
    "data.root=images",
    "data.cache_dir=cache",
    "epochs=1",
    "aug.resize=48",
    "aug.crop=48",
    "workers=0",
    "batch_size=8",
    "eval_batch_size=16",
]


@pytest.fixture
def old_table(tmp_path: Path) -> Path:
    """`tests/fixtures/results_v0_1.csv`, written by animalcls 0.1 (commit e3883df) with OLD_ARGS
    plus seed=0, seed=1, lr=0.01 and one paper row, from a folder made by make_image_folder."""
    make_image_folder(tmp_path / "images")
    (tmp_path / "outputs").mkdir()
    shutil.copy(FIXTURES / "results_v0_1.csv", tmp_path / "outputs" / "results.csv")
    return tmp_path / "outputs" / "results.csv"


def test_an_old_table_loads_with_every_column(old_table):
    table = results.load(old_table)
    assert len(table) == 4 and (table["status"] == "ok").all()
    assert list(table.columns[:36]) == pd.read_csv(old_table).columns.tolist()
    assert (table["repeat_id"] == "").all() and table["record_version"].isna().all()


def test_an_old_table_skips_what_it_holds_and_runs_what_it_does_not(tmp_path, old_table, cli):
    from animalcls.config import compose

    assert legacy_run_id(compose(OLD_ARGS)) == results.load(old_table)["run_id"].iloc[0]
    assert cli(["train", *OLD_ARGS], tmp_path) == 0  # seed=0 is in the old table
    assert len(results.load(old_table)) == 4
    assert cli(["train", *OLD_ARGS, "seed=2"], tmp_path) == 0  # not in it
    table = results.load(old_table)
    assert len(table) == 5 and table["record_version"].iloc[-1] == 2
    assert cli(["train", *OLD_ARGS, "seed=2"], tmp_path) == 0  # now done, by the new id
    assert len(results.load(old_table)) == 5


def test_an_old_table_reports(tmp_path, old_table, cli):
    assert cli(["report", f"results={old_table}", f"out={tmp_path / 'report'}"], tmp_path) == 0
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert len(runs) == 4
    assert "2.1.1" in (tmp_path / "report" / "tables" / "table_2_1_1.md").read_text()
