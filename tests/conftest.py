"""Shared fixtures: tiny generated image folders and an in-process runner for the real CLI.

Running `animalcls` in-process (instead of a subprocess per test) keeps the suite fast: torch and
torchvision are imported once.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from animalcls.demo import make_image_folder  # noqa: F401  (the tests import it from here)

TINY = ["aug.resize=48", "aug.crop=48", "workers=0", "batch_size=8", "eval_batch_size=16"]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


def run_cli(args: list[str], cwd: Path) -> int:
    """Run `animalcls ARGS` in this process from `cwd`; returns the exit status."""
    from hydra.core.global_hydra import GlobalHydra

    from animalcls.cli import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        GlobalHydra.instance().clear()
        main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        os.chdir(old)
        GlobalHydra.instance().clear()
        _retire_joblib_workers()
    return 0


def _retire_joblib_workers() -> None:
    """joblib's loky workers outlive a sweep and keep the working directory they were started in;
    the next test's sweep would run its jobs in the previous test's folder. A user's process runs
    one sweep from one folder, so this is the tests' problem only."""
    import sys

    if "joblib" in sys.modules:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)


@pytest.fixture
def cli():
    return run_cli


def tiny_train_args(root: Path, *extra: str) -> list[str]:
    """`animalcls train` on a generated folder, small enough to finish in seconds."""
    return ["train", f"data.root={root}", "data.cache_dir=cache", "epochs=1", *TINY, *extra]


@contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs at `where` (e.g. options "size=64k" for a full disk, "size=4m,ro" for a read-only
    one); skips the test with the reason where mounting is not allowed (it needs root)."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True, capture_output=True)
    except (PermissionError, FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield where
    finally:
        # lazy: a tensor still memory-mapped from the mount would make a plain umount fail
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


# ---------------------------------------------------------------- test tiers
# Every test gets exactly one tier marker, so the edit loop can run the fast ones alone:
#   pytest -m unit               pure functions on small in-memory data (seconds)
#   pytest -m "unit or integration"   also the exhaustive and heavy in-process checks
#   pytest                       everything, e2e included (what CI runs: no filter)
# A test marked by hand (@pytest.mark.unit / integration / e2e) keeps its mark; the rest are
# sorted here, so a new test needs no marker.

# e2e: runs the CLI, trains on an image folder, or starts another process
E2E_FIXTURES = {"cli", "image_folder", "images"}  # fixtures that use these are covered too (closure)
E2E_CALLS = (
    "run_cli(",
    "tiny_train_args(",
    "subprocess",
    "sys.executable",
    "make_image_folder(",
    "ensure_demo_data(",
    "mounted_tmpfs(",
    "multiprocessing",
)
# integration: in-process and without training, but exhaustive or heavy (each a second or more)
INTEGRATION_FIXTURES = {"built", "hostile", "recipes"}  # a whole report, figures included
INTEGRATION_CALLS = (
    "run_report(",  # a whole report
    "figures.",  # matplotlib figures
    "MLflowTracker(",  # mlflow and tensorboard take seconds to import
    "TensorBoardTracker(",
    "train_one_epoch(",  # training steps, if on a tiny model
    "train_step(",
)
INTEGRATION = {  # node id prefixes, with why
    "tests/test_every_config.py": "builds every model, recipe and config option",
    "tests/test_recipes.py::test_every_recipe_passes_validation_with_every_model": "every recipe x model",
    "tests/test_recipes.py::test_recipes_compose_and_say_why": "composes every recipe",
    "tests/test_paper_configs.py::test_paper_configs_compose_to_their_settings": "composes every paper config",
    "tests/test_paper_configs.py::test_composed_sweep_runs_each_configuration_once_and_seeds_multiply": "a sweep",
    "tests/test_run_id_keys.py::test_every_key_of_the_schema": "every key of every group option",
    "tests/test_run_id_keys.py::test_recorded_ids_and_recipe_settings": "composes every pinned config",
    "tests/test_units.py::test_torchvision_models_get_a_new_head": "builds torchvision models",
    "tests/test_layers.py::test_the_contract_catches_the_imports_issue_23_removed": "parses the package per case",
    "tests/test_record_round2.py::test_kills_around_appends_and_rebuilds": "every order of four operations",
    "tests/test_recipes.py::test_freezing_trains_the_head_only": "trains",
    "tests/test_gpu_paths.py::test_eager_and_graphed_steps_share_one_after_step": "trains",
    "tests/test_tracking.py::test_make_tracker_picks_by_logger_name": "imports tensorboard",
    "tests/test_tracking.py::test_a_store_that_cannot_be_opened_is_one_message": "imports mlflow",
    "tests/test_gpu_paths.py::test_graphs_object_on_a_cpu_falls_back_once_and_changes_nothing": "trains epochs",
    "tests/test_gpu_paths.py::test_why_a_training_step_cannot_be_captured": "builds and steps models",
}
TIERS = ("unit", "integration", "e2e")


def _tier(item: pytest.Item) -> str:
    import inspect

    if item.get_closest_marker("slow"):
        return "e2e"
    names = set(getattr(item, "fixturenames", ()))
    if names & E2E_FIXTURES:
        return "e2e"
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        source = ""
    if any(call in source for call in E2E_CALLS):
        return "e2e"
    if names & INTEGRATION_FIXTURES or any(call in source for call in INTEGRATION_CALLS):
        return "integration"
    node = item.nodeid.split("[")[0]
    if any(node == key or node.startswith(key) for key in INTEGRATION):
        return "integration"
    return "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(_tier(item))
