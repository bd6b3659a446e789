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
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from animalcls.errors import AnimalclsError, Interrupted

if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
CACHE_VERSION = 1
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
    if not root.is_dir():
        raise AnimalclsError(
            f"data root {root} does not exist. Put an ImageFolder tree there "
            f"(<root>/<class>/<image>.jpg) or point data.root=... at one; "
            f"`data=demo` uses the embedded demo set."
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise AnimalclsError(f"data root {root} has no class folders: expected <root>/<class>/<image>.jpg.")
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    ignored: list[Path] = []
    for index, name in enumerate(classes):
        files, others = _class_files(root / name)
        ignored += others
        if not files:
            empty.append(name)
        paths += [str(p.relative_to(root)) for p in files]
        labels += [index] * len(files)
    if empty:
        raise AnimalclsError(
            f"class folder(s) with no images under {root}: {', '.join(empty[:10])}. "
            f"Remove them or add images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    if ignored:
        examples = ", ".join(str(p.relative_to(root)) for p in sorted(ignored)[:3])
        log.info(
            "ignored %d non-image file(s) under %s (e.g. %s); images are %s",
            len(ignored),
            root,
            examples,
            " ".join(IMAGE_EXTENSIONS),
        )
    return Dataset(root, paths, np.asarray(labels, dtype=np.int64), classes)


def _class_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files under one class folder, sorted, and its other (non-hidden) files."""
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # os.walk then skips them
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            is_image = path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
            (images if is_image else others).append(path)
    # sorted as Paths (by parts), as before: the split by seed depends on this order
    return sorted(images), others


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


# ---------------------------------------------------------------- decoding


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode. 16-bit and float images are scaled to 8 bit first, because PIL's own
    convert("RGB") clips them: a 16-bit 30000 becomes 255, a float 0.5 becomes 0."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_eight_bit(image))  # uint8 2-D array: mode "L"
    return image.convert("RGB")


def _eight_bit(image: Image.Image) -> npt.NDArray[np.uint8]:
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    peak = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        values = values / 257  # 65535 -> 255
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255  # a float image in [0, 1]
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def decode(path: Path, resize: int, crop: int) -> Image.Image:
    """Open as RGB (grayscale, palette, 16-bit and float images are converted), Resize(short side) +
    CenterCrop. Images smaller than the crop are resized up, as torchvision's Resize does.
    """
    import torchvision.transforms.functional as TF

    with Image.open(path) as image:
        rgb = _to_rgb(image)
    rgb = TF.resize(rgb, resize, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    cropped: Image.Image = TF.center_crop(rgb, crop)
    return cropped


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


class _Cache(NamedTuple):
    images: torch.Tensor
    bad_index: list[int]
    bad_reason: list[str]


def load_cache(
    data: Dataset,
    resize: int,
    crop: int,
    cache_dir: str | os.PathLike[str],
    workers: int = 2,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """All images as uint8 [N,3,crop,crop], decoded once per file list and settings.

    Returns the tensor and the (path, reason) of unreadable images (their slot is zeros). Parallel
    jobs share one cache file: the first builds it under a lock, the others wait and read it. A
    damaged cache file is rebuilt; `should_stop()` is polled while decoding (raises Interrupted).
    """
    file = Path(cache_dir) / f"{cache_key(data, resize, crop)}.pt"
    # Reading without the lock is safe: the cache file only ever appears through os.replace of a
    # complete file, so a reader sees it whole or not at all. It also lets a read-only cache dir
    # (a prebuilt, shared cache) serve runs, as nothing is written on this path.
    cache, _ = _read_cache(file, len(data.paths), crop)
    if cache is None:
        cache = _build_locked(data, resize, crop, file, workers, should_stop)
    bad = [(data.paths[i], reason) for i, reason in zip(cache.bad_index, cache.bad_reason)]
    return cache.images, bad


def _read_cache(file: Path, count: int, crop: int) -> tuple[_Cache | None, str]:
    """The cache if the file is there and well formed; otherwise None and what is wrong ("" if absent)."""
    if not file.exists():
        return None, ""
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated, empty, garbage: torch raises many kinds, none name the file
        return None, f"{type(exc).__name__}: {_first_line(exc)}"
    problem = _cache_problem(blob, count, crop)
    if problem:
        return None, problem
    return _Cache(blob["images"], blob["bad_index"].tolist(), list(blob["bad_reason"])), ""


def _cache_problem(blob: Any, count: int, crop: int) -> str:
    """What makes a loaded blob unusable as this data set's cache ("" if nothing)."""
    if not isinstance(blob, dict) or not {"images", "bad_index", "bad_reason"} <= blob.keys():
        return "not a decode cache (missing keys)"
    images, index, reason = blob["images"], blob["bad_index"], blob["bad_reason"]
    want = (count, 3, crop, crop)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != want:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        return f"images are {got}, expected torch.uint8 {list(want)}"
    if (
        not isinstance(index, torch.Tensor)
        or index.dim() != 1
        or not isinstance(reason, list)
        or len(reason) != index.numel()
        or bool(((index < 0) | (index >= count)).any())
    ):
        return "malformed list of unreadable images"
    return ""


def _build_locked(
    data: Dataset, resize: int, crop: int, file: Path, workers: int, should_stop: Callable[[], bool] | None
) -> _Cache:
    """Build (or repair) the cache file under its lock; the lock file needs a writable dir."""
    from filelock import FileLock

    _require_writable(file.parent)
    with FileLock(str(file) + ".lock", timeout=3600):
        # another job may have built or repaired it while this one waited for the lock
        cache, damage = _read_cache(file, len(data.paths), crop)
        if cache is not None:
            return cache
        if damage:
            log.warning("the decode cache %s is damaged (%s); deleting and rebuilding it", file, damage)
            file.unlink(missing_ok=True)
        _build_cache(data, resize, crop, file, workers, should_stop)
        cache, damage = _read_cache(file, len(data.paths), crop)
    if cache is None:
        raise AnimalclsError(
            f"the decode cache {file} was just written but cannot be read back "
            f"({damage or 'missing'}); check that disk or set data.cache_dir=... elsewhere."
        )
    return cache


def _require_writable(cache_dir: Path) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache_dir, os.W_OK)  # also False on a read-only mount, even for root
    except OSError:
        writable = False
    if not writable:
        raise AnimalclsError(
            f"the decode cache must be built but its dir {cache_dir} is not writable; "
            f"point data.cache_dir=... at a writable directory."
        )


def _build_cache(
    data: Dataset, resize: int, crop: int, file: Path, workers: int, should_stop: Callable[[], bool] | None = None
) -> None:
    from tqdm.auto import tqdm

    log.info("decoding %d images once into %s (%dpx)", len(data.paths), file, crop)
    images = torch.zeros((len(data.paths), 3, crop, crop), dtype=torch.uint8)
    bad_index: list[int] = []
    bad_reason: list[str] = []
    paths = [data.root / rel for rel in data.paths]
    with (
        closing(_decoded(paths, resize, crop, workers)) as results,
        tqdm(total=len(paths), desc="decode", leave=False, disable=None, unit="img") as bar,
    ):
        for i, result in enumerate(results):
            if isinstance(result, str):
                bad_index.append(i)
                bad_reason.append(result)
            else:
                images[i] = result
            bar.update(1)
            if should_stop is not None and should_stop():
                raise Interrupted()  # closing() cancels the queued decodes; nothing was written
    _save_atomically(
        {"images": images, "bad_index": torch.tensor(bad_index, dtype=torch.long), "bad_reason": bad_reason}, file
    )


def _decoded(paths: list[Path], resize: int, crop: int, workers: int) -> Generator[torch.Tensor | str, None, None]:
    """Each path decoded (or the reason it failed), in order. PIL releases the GIL while decoding
    and resizing, so threads scale across cores. Only a few decodes per thread are queued at a
    time: memory stays flat for any data set, and closing the iterator (a stop) waits for at most
    one decode per thread instead of all the remaining ones."""
    window = 4 * max(1, workers)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque[Future[torch.Tensor | str]] = deque()
        try:
            for path in paths:
                pending.append(pool.submit(_try_decode, path, resize, crop))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _save_atomically(blob: dict[str, Any], file: Path) -> None:
    """Write to a temp file, then os.replace: readers never see a half-written cache."""
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    try:
        # through a Python file object, so a full disk surfaces as OSError(ENOSPC) rather than
        # torch's bare "basic_ios::clear"; fsync makes a late write error (NFS) show here too
        with open(tmp, "wb") as stream:
            torch.save(blob, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, file)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise AnimalclsError(
            f"could not write the decode cache {file}: {_reason(exc)}. Free some space "
            f"there or point data.cache_dir=... at another disk."
        ) from None
    except BaseException:  # Ctrl-C mid-write: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise


def _reason(exc: BaseException) -> str:
    """The OS error behind a failure (torch wraps it in a RuntimeError), else the first line."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return _first_line(exc) or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else ""


def find_unreadable(data: Dataset, workers: int = 2) -> list[tuple[str, str]]:
    """For the PIL pipeline: fully decode each file once to find the ones that would crash later."""

    def check(rel: str) -> tuple[str, str] | None:
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

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
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
        return order[self.rank :: self.world_size]

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
            x = self.images.index_select(0, order[start : start + self.batch_size])
            y = self.labels.index_select(0, labels_order[start : start + self.batch_size])
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


Transform = Callable[[Image.Image], torch.Tensor]


class _PILDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, root: Path, paths: list[str], labels: Indices, transform: Transform) -> None:
        self.root, self.paths, self.labels, self.transform = root, paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.root / self.paths[i]) as image:
            return self.transform(_to_rgb(image)), int(self.labels[i])


def pil_transform(aug: DictConfig, train: bool) -> Transform:
    """The paper's torchvision transform chain, ending in uint8 (normalised later, on the device)."""
    from torchvision import transforms as T

    steps: list[Any] = [T.Resize(aug.resize)]
    if train and aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if train and aug.rotation > 0:
        steps.append(T.RandomRotation(aug.rotation))
    steps += [T.CenterCrop(aug.crop), T.PILToTensor()]
    transform: Transform = T.Compose(steps)
    return transform


class PILBatches:
    """DataLoader over PIL-decoded images, yielding device tensors like TensorBatches."""

    def __init__(
        self,
        data: Dataset,
        index: Indices,
        aug: DictConfig,
        train: bool,
        batch_size: int,
        device: torch.device,
        workers: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        index = index[rank::world_size]
        dataset = _PILDataset(data.root, [data.paths[i] for i in index], data.labels[index], pil_transform(aug, train))
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            num_workers=workers,
            generator=self.generator,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        self.device = device
        self.num_samples = len(dataset)

    def set_epoch(self, epoch: int) -> None:
        # both the run's seed and the epoch: runs with different seeds must see different orders
        self.generator.manual_seed((self.seed * 1_000_003 + epoch) % 2**63)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
