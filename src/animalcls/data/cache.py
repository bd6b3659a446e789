"""The decode-once cache: every image of a data set as one uint8 array file on disk, keyed, locked,
streamed, resumable, checked.

Each image is decoded and resized once (animalcls.data.decode) into a uint8 [N,3,crop,crop] array
kept on disk as a plain .npy file, keyed by the file list and decode settings, and read back
memory-mapped: the page cache, not the process, holds the pixels, so a data set larger than RAM
trains too (at disk speed once it no longer fits in the page cache).

Files in the cache dir, for a key K:

    K.npy           the images, uint8 [N,3,crop,crop] (NCHW, as the loaders' tensors), complete
    K.json          its sidecar: format, shape, and the unreadable images (bad_index, bad_reason)
    K.partial.npy   a build in progress: the same array, filled in order up to ...
    K.partial.json  ... its progress record: how many images are written and flushed (fsync)
    K.lock          one build per machine (a file lock; other jobs wait, then read)

The build streams: each decoded image is written straight into K.partial.npy at its offset, and
every chunk of images the file is flushed and the progress record rewritten, so memory stays flat
for any N and a build killed at any point resumes from its last flushed chunk. Only the final
rename makes K.npy, so a reader sees a whole cache or none, and a partial file is never taken for
a complete one. Before decoding, the free space of the cache dir is checked against what is left
to write.

Limits: 3*crop*crop bytes per image on disk (37.6 KB at 112 px, 150.5 KB at 224 px), plus 128
bytes of header; the process's own memory stays flat (a few decodes per thread in flight).
Caches of older versions (the single-file `.pt` of version 1) have other keys: they are ignored
and left alone (the first build in a dir that holds some logs how much space they take).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from animalcls.data.decode import decode_or_reason
from animalcls.data.scan import Dataset
from animalcls.errors import AnimalclsError, Interrupted

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: a streamed .npy + .json sidecar (1: one torch.save'd .pt)
FORMAT = "animalcls-decode-cache"
CHUNK_BYTES = 256 << 20  # flush (fsync) and record progress after about this many bytes of images
LOCK_POLL_S = 30.0  # a job waiting for another's build says so this often


def cache_key(data: Dataset, resize: int, crop: int) -> str:
    """Changes whenever a file is added, removed or modified, or the decode settings change."""
    digest = hashlib.sha1(json.dumps([CACHE_VERSION, resize, crop]).encode())
    for rel in data.paths:
        stat = (data.root / rel).stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class CacheFiles(NamedTuple):
    """The files of one cache, all in one dir (see the module's docstring)."""

    images: Path
    sidecar: Path
    partial: Path
    progress: Path
    lock: Path

    @classmethod
    def of(cls, cache_dir: str | os.PathLike[str], key: str) -> CacheFiles:
        base = Path(cache_dir) / key
        return cls(
            Path(f"{base}.npy"),
            Path(f"{base}.json"),
            Path(f"{base}.partial.npy"),
            Path(f"{base}.partial.json"),
            Path(f"{base}.lock"),
        )


class _Cache(NamedTuple):
    images: torch.Tensor
    bad_index: list[int]
    bad_reason: list[str]


def load_cache(
    data: Dataset,
    resize: int,
    crop: int,
    cache_dir: str | os.PathLike[str],
    workers: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """All images as uint8 [N,3,crop,crop], decoded once per file list and settings.

    Returns the tensor (memory-mapped from the cache file: index it per batch rather than copying
    it whole) and the (path, reason) of unreadable images (their slot is zeros). Parallel jobs share
    one cache file: the first builds it under a lock, the others wait and read it. A damaged cache
    is rebuilt, a partial one resumed. `workers` decode threads (None: every usable core);
    `should_stop()` is polled while decoding (raises Interrupted, keeping what was decoded).
    """
    files = CacheFiles.of(cache_dir, cache_key(data, resize, crop))
    shape = (len(data.paths), 3, crop, crop)
    # Reading without the lock is safe: K.npy only ever appears through os.replace of a complete
    # file, after its sidecar. It also lets a read-only cache dir (a prebuilt, shared cache) serve
    # runs, as nothing is written on this path.
    cache, _ = _read_cache(files, shape)
    if cache is None:
        cache = _build_locked(data, resize, files, shape, workers or usable_cores(), should_stop)
    bad = [(data.paths[i], reason) for i, reason in zip(cache.bad_index, cache.bad_reason)]
    return cache.images, bad


# ---------------------------------------------------------------- reading


def _read_cache(files: CacheFiles, shape: tuple[int, ...]) -> tuple[_Cache | None, str]:
    """The cache if its files are there and well formed; otherwise None and what is wrong ("" if absent)."""
    if not files.images.exists():
        return None, ""
    try:
        meta = json.loads(files.sidecar.read_text())
    except FileNotFoundError:
        return None, f"its sidecar {files.sidecar.name} is missing"
    except (OSError, ValueError) as exc:
        return None, f"its sidecar {files.sidecar.name} is unreadable ({type(exc).__name__}: {_first_line(exc)})"
    problem = _sidecar_problem(meta, shape)
    if problem:
        return None, problem
    array, problem = _open_array(files.images, shape)
    if array is None:
        return None, problem
    # copy-on-write (MAP_PRIVATE), as torch.load(mmap=True) did: writable for torch, never written
    return _Cache(torch.from_numpy(array), list(meta["bad_index"]), list(meta["bad_reason"])), ""


Mapped = np.memmap[Any, np.dtype[np.uint8]]


def _open_array(file: Path, shape: tuple[int, ...], mode: Literal["r", "c"] = "c") -> tuple[Mapped | None, str]:
    """The .npy file memory-mapped, if it holds exactly a uint8 array of this shape; else why not."""
    try:
        array = np.load(file, mmap_mode=mode, allow_pickle=False)
    except Exception as exc:  # truncated, empty, garbage, not an .npy: numpy raises many kinds
        return None, f"{type(exc).__name__}: {_first_line(exc)}"
    if not isinstance(array, np.memmap) or array.dtype != np.uint8 or tuple(array.shape) != shape:
        got = f"{array.dtype} {list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
        return None, f"images are {got}, expected uint8 {list(shape)}"
    size = file.stat().st_size
    if size != array.offset + array.nbytes:
        return None, f"the file has {size} bytes, expected {array.offset + array.nbytes}"
    return array, ""


def _sidecar_problem(meta: Any, shape: tuple[int, ...]) -> str:
    """What makes a sidecar unusable for this data set's cache ("" if nothing)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != CACHE_VERSION:
        return "its sidecar is not a version-2 decode cache's"
    if meta.get("shape") != list(shape):
        return f"its sidecar says shape {meta.get('shape')}, expected {list(shape)}"
    index, reason = meta.get("bad_index"), meta.get("bad_reason")
    if (
        not isinstance(index, list)
        or not isinstance(reason, list)
        or len(index) != len(reason)
        or not all(isinstance(i, int) and 0 <= i < shape[0] for i in index)
        or not all(isinstance(r, str) for r in reason)
    ):
        return "malformed list of unreadable images"
    return ""


# ---------------------------------------------------------------- listing and cleaning


class CacheEntry(NamedTuple):
    """One cache (or leftover) in a cache dir, for `animalcls cache list|clean`."""

    key: str
    state: str  # complete | partial | building | old-format | leftover
    images: int  # the cache's image count (0 if unknown)
    done: int  # images decoded (= images when complete)
    side: int  # crop side in pixels (0 if unknown)
    bytes: int  # on disk, all of its files
    modified: float  # newest mtime of its files
    files: tuple[Path, ...]


def cache_entries(cache_dir: str | os.PathLike[str]) -> list[CacheEntry]:
    """Every cache in the dir: complete ones, partial builds (`building` while a job holds the lock),
    version-1 `.pt` caches, and leftovers (a temp file of a killed write, a sidecar without its images)."""
    folder = Path(cache_dir)
    if not folder.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            groups.setdefault(path.name.split(".", 1)[0], []).append(path)
    entries = [_entry(key, sorted(paths)) for key, paths in sorted(groups.items())]
    return [e for e in entries if e is not None]


def _entry(key: str, paths: list[Path]) -> CacheEntry | None:
    names = {p.name for p in paths}
    stats = [p.stat() for p in paths]
    size, modified = sum(st.st_size for st in stats), max(st.st_mtime for st in stats)
    files = CacheFiles.of(paths[0].parent, key)
    if names == {files.lock.name}:
        return None  # a lock alone: nothing to report (jobs keep it; it is empty)
    state, images, done, side = "leftover", 0, 0, 0
    if f"{key}.pt" in names and len(names - {f"{key}.pt", f"{key}.pt.lock"}) == 0:
        state = "old-format"
    elif files.images.name in names:
        try:
            meta = json.loads(files.sidecar.read_text())
            images, side = int(meta["shape"][0]), int(meta["shape"][2])
            state, done = "complete", images
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            state = "leftover"
    elif files.partial.name in names:
        try:
            record = json.loads(files.progress.read_text())
            images, side, done = int(record["shape"][0]), int(record["shape"][2]), int(record["done"])
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
        state = "building" if _lock_held(files.lock) else "partial"
    return CacheEntry(key, state, images, done, side, size, modified, tuple(paths))


def _lock_held(lock: Path) -> bool:
    from filelock import FileLock, Timeout

    if not lock.exists():
        return False
    try:
        with FileLock(str(lock), timeout=0):
            return False
    except Timeout:
        return True
    except OSError:  # a read-only dir: no job can be building there
        return False


def clean_caches(cache_dir: str | os.PathLike[str], everything: bool = False) -> list[CacheEntry]:
    """Remove what no job will read again: old-format `.pt` caches, partial builds no job is running
    (a rerun would resume them: remove them only to take the space back) and leftovers; with
    `everything`, complete caches too (a job that has one mapped keeps reading it until it ends).
    A build in progress is never touched. Returns what was removed."""
    stale = {"old-format", "partial", "leftover"} | ({"complete"} if everything else set())
    removed = []
    for entry in cache_entries(cache_dir):
        if entry.state in stale:
            for path in entry.files:
                path.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# ---------------------------------------------------------------- building


def _build_locked(
    data: Dataset,
    resize: int,
    files: CacheFiles,
    shape: tuple[int, ...],
    workers: int,
    should_stop: Callable[[], bool] | None,
) -> _Cache:
    """Build (resume, or repair) the cache under its lock; the lock file needs a writable dir."""
    from filelock import FileLock, Timeout

    _require_writable(files.images.parent)
    lock = FileLock(str(files.lock))
    while True:
        try:
            lock.acquire(timeout=LOCK_POLL_S)
            break
        except Timeout:
            if should_stop is not None and should_stop():
                raise Interrupted() from None
            log.info("waiting for another job building the decode cache %s (%s)", files.images, _progress_of(files))
    try:
        # another job may have built or repaired it while this one waited for the lock
        cache, damage = _read_cache(files, shape)
        if cache is not None:
            return cache
        if damage:
            log.warning("the decode cache %s is damaged (%s); deleting and rebuilding it", files.images, damage)
            files.images.unlink(missing_ok=True)
            files.sidecar.unlink(missing_ok=True)
        _build_cache(data, resize, files, shape, workers, should_stop)
        cache, damage = _read_cache(files, shape)
    finally:
        lock.release()
    if cache is None:
        raise AnimalclsError(
            f"the decode cache {files.images} was just written but cannot be read back "
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


class _Progress(NamedTuple):
    done: int  # images 0..done-1 are written and flushed
    bad_index: list[int]
    bad_reason: list[str]


def _progress_of(files: CacheFiles) -> str:
    try:
        record = json.loads(files.progress.read_text())
        return f"{int(record['done'])}/{int(record['shape'][0])} images done"
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "progress unknown"


def _resume_point(files: CacheFiles, shape: tuple[int, ...]) -> _Progress:
    """Where a previous build of this cache stopped: its progress record, if it and the partial
    file agree with this build; else 0 (the partial files are removed, with a line saying why)."""
    start = _Progress(0, [], [])
    if not files.partial.exists() and not files.progress.exists():
        return start
    problem = ""
    try:
        record = json.loads(files.progress.read_text())
        done, index, reason = int(record["done"]), list(record["bad_index"]), list(record["bad_reason"])
        if record.get("version") != CACHE_VERSION or record.get("shape") != list(shape):
            problem = "its progress record is for another cache"
        elif not (0 <= done <= shape[0] and len(index) == len(reason) and all(0 <= int(i) < done for i in index)):
            problem = "its progress record is malformed"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"its progress record is unreadable ({type(exc).__name__})"
    if not problem:
        array, problem = _open_array(files.partial, shape, mode="r")
        del array
    if problem:
        log.warning("discarding the partial decode cache %s (%s); starting it over", files.partial, problem)
        files.partial.unlink(missing_ok=True)
        files.progress.unlink(missing_ok=True)
        return start
    return _Progress(done, [int(i) for i in index], [str(r) for r in reason])


def _create_partial(file: Path, shape: tuple[int, ...]) -> None:
    """An .npy header for a uint8 array of this shape, then the file extended (sparse) to its size."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with open(file, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, header)
        stream.truncate(stream.tell() + int(np.prod(shape)))


def _data_offset(file: Path) -> int:
    """Where the pixels start in the .npy file (after its header)."""
    array = np.load(file, mmap_mode="r", allow_pickle=False)
    offset = int(array.offset)
    del array
    return offset


def _check_space(files: CacheFiles, shape: tuple[int, ...], done: int) -> None:
    """Refuse to start decoding what the cache dir's disk cannot hold."""
    per_image = int(np.prod(shape[1:]))
    needed = (shape[0] - done) * per_image + (64 << 10)  # images left + header, sidecars, slack
    free = shutil.disk_usage(files.images.parent).free
    if needed > free:
        raise AnimalclsError(
            f"No space left on device for the decode cache {files.images}: it needs {_size(needed)} "
            f"({shape[0] - done} images x {per_image} bytes = 3 x {shape[2]} x {shape[3]}) but "
            f"{files.images.parent} has {_size(free)} free. Ways out: data.cache_dir=... on another disk, "
            f"a smaller crop (aug.resize=/aug.crop=, or a smaller aug.cache_size=), or data.pipeline=pil "
            f"(no cache: decodes every epoch)."
        )


def _size(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.2f} MB"


def _note_old_caches(cache_dir: Path) -> None:
    old = list(cache_dir.glob("*.pt"))
    if old:
        total = sum(p.stat().st_size for p in old if p.is_file())
        log.info(
            "%s holds %d decode cache(s) of the old .pt format (%s), no longer used; delete them to free the space",
            cache_dir,
            len(old),
            _size(total),
        )


def chunk_written(done: int) -> None:
    """Called after each flushed chunk with the count of images now safe on disk (a hook for tests)."""


def _build_cache(
    data: Dataset,
    resize: int,
    files: CacheFiles,
    shape: tuple[int, ...],
    workers: int,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    from tqdm.auto import tqdm

    count, crop = shape[0], shape[2]
    start = _resume_point(files, shape)
    _check_space(files, shape, start.done)
    _note_old_caches(files.images.parent)
    if start.done == 0:
        _create_partial(files.partial, shape)
        log.info("decoding %d images once into %s (%dpx, %d threads)", count, files.images, crop, workers)
    else:
        log.info(
            "resuming the decode cache %s at image %d of %d (%d threads)", files.images, start.done, count, workers
        )
    per_image = 3 * crop * crop
    chunk = max(1, CHUNK_BYTES // per_image)
    bad_index, bad_reason = start.bad_index, start.bad_reason
    done = start.done
    # made one at a time: a list of N Paths is ~0.5 KB an image (25 MiB at 50k, 640 MiB at 1.28M)
    paths = (data.root / rel for rel in itertools.islice(data.paths, done, None))
    offset = _data_offset(files.partial)
    fd = os.open(files.partial, os.O_WRONLY)
    try:
        slots = (offset + index * per_image for index in itertools.count(done))
        with (
            closing(_decoded_into(fd, zip(paths, slots), resize, crop, workers)) as results,
            tqdm(total=count, initial=done, desc="decode", leave=False, disable=None, unit="img") as bar,
        ):
            for reason in results:
                if reason is not None:
                    bad_index.append(done)
                    bad_reason.append(reason)
                done += 1
                bar.update(1)
                if done % chunk == 0:
                    _flush(fd, files, shape, _Progress(done, bad_index, bad_reason))
                if should_stop is not None and should_stop():
                    _flush(fd, files, shape, _Progress(done, bad_index, bad_reason))
                    raise Interrupted()  # closing() cancels the queued decodes; the next start resumes
        _flush(fd, files, shape, _Progress(done, bad_index, bad_reason))
    except OSError as exc:
        raise AnimalclsError(
            f"could not write the decode cache {files.images}: {_reason(exc)}. Free some space there "
            f"(the build resumes from its last flushed chunk) or point data.cache_dir=... at another disk."
        ) from None
    finally:
        os.close(fd)
    _finish(files, shape, bad_index, bad_reason)


def _pwrite_all(fd: int, view: memoryview, where: int) -> None:
    view = view.cast("B")
    while view:
        written = os.pwrite(fd, view, where)
        view, where = view[written:], where + written


def _flush(fd: int, files: CacheFiles, shape: tuple[int, ...], progress: _Progress) -> None:
    """Make the images written so far durable, then say so in the progress record (in that order:
    the record never counts an image the disk may not hold)."""
    os.fsync(fd)
    record = {"version": CACHE_VERSION, "shape": list(shape), **progress._asdict()}
    _write_json(files.progress, record)
    chunk_written(progress.done)


def _finish(files: CacheFiles, shape: tuple[int, ...], bad_index: list[int], bad_reason: list[str]) -> None:
    """The sidecar first, then the rename that makes the cache complete, then the progress record goes."""
    meta = {
        "format": FORMAT,
        "version": CACHE_VERSION,
        "shape": list(shape),
        "dtype": "uint8",
        "layout": "NCHW",
        "bad_index": bad_index,
        "bad_reason": bad_reason,
    }
    try:
        _write_json(files.sidecar, meta)
        os.replace(files.partial, files.images)
    except OSError as exc:
        raise AnimalclsError(
            f"could not write the decode cache {files.images}: {_reason(exc)}. Free some space "
            f"there or point data.cache_dir=... at another disk."
        ) from None
    files.progress.unlink(missing_ok=True)


def _write_json(file: Path, blob: dict[str, Any]) -> None:
    """Write to a temp file, fsync, then os.replace: readers never see a half-written record."""
    tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as stream:
            json.dump(blob, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, file)
    except BaseException:  # a full disk, or Ctrl-C mid-write: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise


def _decoded_into(
    fd: int, jobs: Iterable[tuple[Path, int]], resize: int, crop: int, workers: int
) -> Generator[str | None, None, None]:
    """Decode each (path, byte offset) into the cache file `fd` at that offset, and yield, in
    order, why it could not be decoded (or None). The decode threads write their own images: PIL
    releases the GIL while decoding and resizing, and os.pwrite while writing, so threads scale
    across cores (and measured faster than processes, which must ship the pixels back); the
    loop that orders the results then does next to nothing. Only a few decodes per thread are
    queued at a time: memory stays flat for any data set, and closing the iterator (a stop) waits
    for at most one decode per thread instead of all the remaining ones."""
    window = 4 * max(1, workers)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque[Future[str | None]] = deque()
        try:
            for path, where in jobs:
                pending.append(pool.submit(_decode_into, fd, where, path, resize, crop))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _decode_into(fd: int, where: int, path: Path, resize: int, crop: int) -> str | None:
    """One image into the cache file at byte `where` (zeros when it cannot be decoded: a resumed
    slot keeps nothing of an earlier attempt); why it could not be decoded, or None."""
    pixels = decode_or_reason(path, resize, crop)
    if isinstance(pixels, str):
        _pwrite_all(fd, memoryview(bytes(3 * crop * crop)), where)
        return pixels
    _pwrite_all(fd, pixels.data, where)
    return None


def _reason(exc: BaseException) -> str:
    """The OS error behind a failure, else the first line."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return _first_line(exc) or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else ""
