"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Write a temp file beside the target, fsync it, rename it over the target, fsync the folder. A
symlink is written through: the rename lands on the link's target, so the link stays a link (a
shared results table is often one). On any failure (a full disk, a read-only folder) the temp
file is removed and the OSError raised, so nothing half-written is left behind and the previous
file is untouched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO


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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
