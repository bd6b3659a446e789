"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Write a temp file beside the target, fsync it, rename it over the target, fsync the folder. A
symlink is written through: the rename lands on the link's target, so the link stays a link (a
shared results table is often one). On any failure (a full disk, a read-only folder) the temp
file is removed and the OSError raised, so nothing half-written is left behind and the previous
file is untouched; a full disk or quota is raised as `errors.DiskFull`, naming the path and the
space left there. Temp files are named `.<name>.<pid>.<random>.tmp`: `resume.tidy` removes those
whose writer is dead (a kill between open and rename).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from animalcls.errors import DiskFull

FULL = (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`write(file)` into a temp file (what it returns is ignored), then make it `path` in one rename."""
    path = Path(os.path.realpath(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        code = full_disk_errno(exc)
        if code is not None:
            raise disk_full(path, code) from exc
        raise
    _fsync_dir(path.parent)


def full_disk_errno(exc: BaseException) -> int | None:
    """ENOSPC or EDQUOT when `exc` (or what caused it) is a full disk or quota; torch reports one
    as a RuntimeError that only names it in its text."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL:
            return seen.errno
        if "no space left on device" in str(seen).lower():
            return errno.ENOSPC
        seen = seen.__cause__ or seen.__context__
    return None


def disk_full(path: Path, code: int = errno.ENOSPC) -> DiskFull:
    """The error for a write to `path` that ran out of space, with the space left there now."""
    try:
        free = f"{human_size(shutil.disk_usage(path.parent).free)} free"
    except OSError:
        free = "free space unknown"
    what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the disk"
    return DiskFull(code, f"{what} while writing {path} ({free} in {path.parent}); free some space", str(path))


def human_size(size: float) -> str:
    """`size` bytes for a message: "512 B", "3.2 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda file: file.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def torch_save_atomic(obj: object, path: Path) -> None:
    """torch.save, atomically; torch's own write errors (RuntimeError) become OSError."""
    import torch

    def save(file: IO[bytes]) -> None:
        try:
            torch.save(obj, file)
        except RuntimeError as exc:  # e.g. "basic_ios::clear: iostream error" on a full disk
            raise OSError(f"could not write {path}: {exc}") from exc

    write_atomic(path, save)
