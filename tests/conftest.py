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
