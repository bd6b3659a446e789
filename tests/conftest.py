"""Shared fixtures: tiny generated image folders and an in-process runner for the real CLI.

Running `animalcls` in-process (instead of a subprocess per test) keeps the suite fast: torch and
torchvision are imported once.
"""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

TINY = ["aug.resize=48", "aug.crop=48", "workers=0", "batch_size=8", "eval_batch_size=16"]


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """A learnable ImageFolder tree: each class is a different dominant colour, with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 200), (40, 200, 200)]
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(palette[c % len(palette)]) + rng.normal(0, 30, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img_{i:03d}.jpg", quality=90)
    return root


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
    return 0


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
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                       check=True, capture_output=True)
    except (PermissionError, FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield where
    finally:
        # lazy: a tensor still memory-mapped from the mount would make a plain umount fail
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)
