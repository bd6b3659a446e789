"""Data: scan an ImageFolder tree, split it by seed, decode once into a uint8 cache, and load batches.

Two pipelines feed the same engine with uint8 NCHW batches:
- `cached` (default): every image is decoded and resized once (PIL, as torchvision's Resize) into a
  uint8 tensor kept on disk, keyed by the file list and decode settings; random flip/rotation then
  run per batch on the device (animalcls.augment), so every epoch still sees fresh augmentation.
- `pil`: the paper's notebook path, ImageFolder-style decoding with PIL transforms in DataLoader
  workers every epoch. Kept for comparison (`animalcls bench`) and for data too large to cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from animalcls.errors import AnimalclsError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """The scanned data set: image paths relative to root, their class index, and class names."""
    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[str]


def scan(root: str | os.PathLike) -> Dataset:
    """Find <root>/<class>/<image> files; classes are sorted by name, as torchvision's ImageFolder."""
    root = Path(root)
    if not root.is_dir():
        raise AnimalclsError(f"data root {root} does not exist. Put an ImageFolder tree there "
                             f"(<root>/<class>/<image>.jpg) or point data.root=... at one; "
                             f"`data=demo` uses the embedded demo set.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise AnimalclsError(f"data root {root} has no class folders: expected <root>/<class>/<image>.jpg.")
    paths, labels, empty = [], [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            empty.append(name)
        paths += [str(p.relative_to(root)) for p in files]
        labels += [index] * len(files)
    if empty:
        raise AnimalclsError(f"class folder(s) with no images under {root}: {', '.join(empty[:10])}. "
                             f"Remove them or add images ({', '.join(IMAGE_EXTENSIONS)}).")
    return Dataset(root, paths, np.asarray(labels, dtype=np.int64), classes)


def split_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Val and test sizes are rounded down, train takes the rest: 6,270 -> 5,330 / 313 / 627."""
    n_val = int(n * fractions[1] + 1e-9)
    n_test = int(n * fractions[2] + 1e-9)
    return n - n_val - n_test, n_val, n_test


def split_indices(n: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """A seeded random split; the same n, fractions and seed always give the same indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val, _ = split_sizes(n, fractions)
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
            "test": np.sort(order[n_train + n_val:])}


def manifest(data: Dataset, split: dict[str, np.ndarray]):
    """The split as a table (path, label, label_idx, split), saved in every run dir."""
    import pandas as pd

    rows = [(data.paths[i], data.classes[data.labels[i]], int(data.labels[i]), name)
            for name in SPLITS for i in split[name]]
    return pd.DataFrame(rows, columns=["path", "label", "label_idx", "split"])


# ---------------------------------------------------------------- decoding

def decode(path: Path, resize: int, crop: int):
    """Open as RGB (grayscale and palette images are converted), Resize(short side) + CenterCrop.

    Images smaller than the crop are resized up, as torchvision's Resize does.
    """
    from PIL import Image
    import torchvision.transforms.functional as TF

    with Image.open(path) as image:
        image = image.convert("RGB")
    image = TF.resize(image, resize, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(image, crop)


def decode_uint8(path: Path, resize: int, crop: int) -> torch.Tensor:
    array = np.asarray(decode(path, resize, crop), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _try_decode(path: Path, resize: int, crop: int) -> torch.Tensor | str:
    try:
        return decode_uint8(path, resize, crop)
    except Exception as exc:  # truncated, zero-byte, not an image: reported, not fatal
        return f"{type(exc).__name__}: {exc}"


def cache_key(data: Dataset, resize: int, crop: int) -> str:
    """Changes whenever a file is added, removed or modified, or the decode settings change."""
    digest = hashlib.sha1(json.dumps([CACHE_VERSION, resize, crop]).encode())
    for rel in data.paths:
        stat = (data.root / rel).stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_cache(data: Dataset, resize: int, crop: int, cache_dir: str | os.PathLike,
               workers: int = 2) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """All images as uint8 [N,3,crop,crop], decoded once per file list and settings.

    Returns the tensor and the (path, reason) of unreadable images (their slot is zeros). Parallel
    jobs share one cache file: the first builds it under a lock, the others wait and read it.
    """
    from filelock import FileLock

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    file = cache_dir / f"{cache_key(data, resize, crop)}.pt"
    with FileLock(str(file) + ".lock", timeout=3600):
        if not file.exists():
            _build_cache(data, resize, crop, file, workers)
        blob = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    bad = [(data.paths[i], reason) for i, reason in zip(blob["bad_index"].tolist(), blob["bad_reason"])]
    return blob["images"], bad


def _build_cache(data: Dataset, resize: int, crop: int, file: Path, workers: int) -> None:
    from tqdm.auto import tqdm

    log.info("decoding %d images once into %s (%dpx)", len(data.paths), file, crop)
    images = torch.zeros((len(data.paths), 3, crop, crop), dtype=torch.uint8)
    bad_index, bad_reason = [], []
    paths = [data.root / rel for rel in data.paths]
    # PIL releases the GIL while decoding and resizing, so threads scale across cores.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda p: _try_decode(p, resize, crop), paths, chunksize=16)
        for i, result in enumerate(tqdm(results, total=len(paths), desc="decode", leave=False,
                                        disable=None, unit="img")):
            if isinstance(result, str):
                bad_index.append(i)
                bad_reason.append(result)
            else:
                images[i] = result
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    torch.save({"images": images, "bad_index": torch.tensor(bad_index, dtype=torch.long),
                "bad_reason": bad_reason}, tmp)
    os.replace(tmp, file)   # readers never see a half-written cache


def find_unreadable(data: Dataset, workers: int = 2) -> list[tuple[str, str]]:
    """For the PIL pipeline: fully decode each file once to find the ones that would crash later."""
    def check(rel: str) -> tuple[str, str] | None:
        from PIL import Image
        try:
            with Image.open(data.root / rel) as image:
                image.load()
            return None
        except Exception as exc:
            return rel, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [r for r in pool.map(check, data.paths) if r is not None]


# ---------------------------------------------------------------- loaders

class TensorBatches:
    """Batches of a uint8 image tensor: a shuffled, seeded order per epoch; optional rank sharding.

    When the images live on the host and the device is CUDA, each batch is gathered into pinned
    memory and copied asynchronously, so the copy overlaps with the previous step's compute.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device,
                 shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.device, self.shuffle = batch_size, device, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.pin = device.type == "cuda" and images.device.type == "cpu"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = self.labels.shape[0]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(range(self.rank, self.labels.shape[0], self.world_size))
        return (n + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return len(range(self.rank, self.labels.shape[0], self.world_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the epoch's order goes to the images' device once: a blocking copy per batch would
        # synchronise CUDA every step
        order = self._order().to(self.images.device)
        labels_order = order.to(self.labels.device)
        for start in range(0, order.shape[0], self.batch_size):
            x = self.images.index_select(0, order[start:start + self.batch_size])
            y = self.labels.index_select(0, labels_order[start:start + self.batch_size])
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, root: Path, paths: list[str], labels: np.ndarray, transform) -> None:
        self.root, self.paths, self.labels, self.transform = root, paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image
        with Image.open(self.root / self.paths[i]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[i])


def pil_transform(aug, train: bool):
    """The paper's torchvision transform chain, ending in uint8 (normalised later, on the device)."""
    from torchvision import transforms as T

    steps = [T.Resize(aug.resize)]
    if train and aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if train and aug.rotation > 0:
        steps.append(T.RandomRotation(aug.rotation))
    steps += [T.CenterCrop(aug.crop), T.PILToTensor()]
    return T.Compose(steps)


class PILBatches:
    """DataLoader over PIL-decoded images, yielding device tensors like TensorBatches."""

    def __init__(self, data: Dataset, index: np.ndarray, aug, train: bool, batch_size: int,
                 device: torch.device, workers: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        index = index[rank::world_size]
        dataset = _PILDataset(data.root, [data.paths[i] for i in index], data.labels[index],
                              pil_transform(aug, train))
        generator = torch.Generator().manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=train, num_workers=workers, generator=generator,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.device = device
        self.num_samples = len(dataset)

    def set_epoch(self, epoch: int) -> None:
        self.loader.generator.manual_seed(epoch + 1_000_003)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
