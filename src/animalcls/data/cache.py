"""The decode-once cache: every image of a data set as one uint8 tensor file, keyed, locked, checked.

Each image is decoded and resized once (animalcls.data.decode) into a uint8 [N,3,crop,crop] tensor
kept on disk, keyed by the file list and decode settings. Parallel jobs share one cache file: the
first builds it under a lock, the others wait and read it; a damaged file is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import torch

from animalcls.data.decode import decode_or_reason
from animalcls.data.scan import Dataset
from animalcls.errors import AnimalclsError, Interrupted

log = logging.getLogger(__name__)

CACHE_VERSION = 1


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
                pending.append(pool.submit(decode_or_reason, path, resize, crop))
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
