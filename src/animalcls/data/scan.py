"""Which images a data set has and which split each belongs to: scan, identity, seeded split, manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from animalcls.errors import AnimalclsError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SPLITS = ("train", "val", "test")

Indices = npt.NDArray[np.int64]


@dataclass
class Dataset:
    """The scanned data set: image paths relative to root, their class index, and class names."""

    root: Path
    paths: list[str]
    labels: Indices
    classes: list[str]


def scan(root: str | os.PathLike[str]) -> Dataset:
    """Find <root>/<class>/<image> files; classes are sorted by name, as torchvision's ImageFolder.

    Hidden class folders, hidden subfolders and hidden files (".DS_Store", "._x.jpg", ".thumbs/")
    are skipped alike: they are left by tools, not data. Other non-image files are skipped too, and
    counted in one log line, so a folder of unsupported images does not vanish without a word.
    """
    root = Path(root)
    classes = _class_names(root)
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    ignored: list[Path] = []
    for index, name in enumerate(classes):
        files, others = _class_files(root, name)
        ignored += others
        if not files:
            empty.append(name)
        paths += files
        labels += [index] * len(files)
    if empty:
        raise AnimalclsError(
            f"class folder(s) with no images under {root}: {', '.join(empty[:10])}. "
            f"Remove them or add images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    if ignored:
        _log_ignored(root, ignored)
    return Dataset(root, paths, np.asarray(labels, dtype=np.int64), classes)


def _class_names(root: Path) -> list[str]:
    """The class folders under root, sorted; raises with the fix when there are none."""
    if not root.is_dir():
        raise AnimalclsError(
            f"data root {root} does not exist. Put an ImageFolder tree there "
            f"(<root>/<class>/<image>.jpg) or point data.root=... at one; "
            f"`data=demo` uses the embedded demo set."
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise AnimalclsError(f"data root {root} has no class folders: expected <root>/<class>/<image>.jpg.")
    return classes


def _class_files(root: Path, name: str) -> tuple[list[str], list[Path]]:
    """The image files under one class folder (relative to root, sorted), and its other
    (non-hidden) files. Plain strings, not Paths: pathlib's parsing and comparisons were 90% of a
    200k-file scan's time (5 s); the order is the same as sorting the Paths (by their parts)."""
    folder = root / name
    top = str(folder)
    images: list[str] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # os.walk then skips them
        rel_dir = name + dirpath[len(top) :]  # os.walk joins each subfolder onto `top`
        for file in filenames:
            if file.startswith("."):
                continue
            full = os.path.join(dirpath, file)
            if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(full):
                images.append(rel_dir + os.sep + file)
            else:
                others.append(Path(full))
    # sorted by parts, as the Paths were before: the split by seed depends on this order
    images.sort(key=lambda rel: rel.split(os.sep))
    return images, others


def _log_ignored(root: Path, ignored: list[Path]) -> None:
    examples = ", ".join(str(p.relative_to(root)) for p in sorted(ignored)[:3])
    log.info(
        "ignored %d non-image file(s) under %s (e.g. %s); images are %s",
        len(ignored),
        root,
        examples,
        " ".join(IMAGE_EXTENSIONS),
    )


def data_identity(data: Dataset) -> str:
    """16 hex digits naming the data set's content: class names, each image's relative path and size.

    File mtimes and the root path are left out on purpose: the same data given as `tiny`, `./tiny`
    or an absolute path, or copied to another machine (which gives every file a new mtime), is the
    same data set for a run id. The decode cache key (`cache_key`) still uses mtimes, because there
    they are the cheap way to notice an edited file.
    """
    digest = hashlib.sha1(json.dumps(["data", 1, data.classes]).encode())
    for rel in data.paths:
        size = (data.root / rel).stat().st_size
        digest.update(f"{Path(rel).as_posix()}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def split_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Val and test sizes are rounded down, train takes the rest: 6,270 -> 5,330 / 313 / 627."""
    n_val = int(n * fractions[1] + 1e-9)
    n_test = int(n * fractions[2] + 1e-9)
    return n - n_val - n_test, n_val, n_test


def split_indices(n: int, fractions: Sequence[float], seed: int) -> dict[str, Indices]:
    """A seeded random split; the same n, fractions and seed always give the same indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val, _ = split_sizes(n, fractions)
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def manifest(data: Dataset, split: dict[str, Indices]) -> pd.DataFrame:
    """The split as a table (path, label, label_idx, split), saved in every run dir."""
    import pandas as pd

    rows = [
        (data.paths[i], data.classes[data.labels[i]], int(data.labels[i]), name) for name in SPLITS for i in split[name]
    ]
    return pd.DataFrame(rows, columns=["path", "label", "label_idx", "split"])
