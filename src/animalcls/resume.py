"""Who owns a run, and where an unfinished one continues.

- A run owns its run dir (`<run dir>/.owner.lock`) and its run id (`<results dir>/.locks/<run
  id>.lock`) while it runs: a second process with the same configuration skips it instead of
  training it twice or resuming from a checkpoint that is still being written.
- An unfinished run leaves a pointer `<results dir>/unfinished/<run id>` (JSON: its run dir, run id,
  lineage and data id). A later run of the same id resumes from that run dir's `last.pt` only when
  the checkpoint is readable and was made on the same data and split; otherwise it says why and
  starts over. Pointers are never trusted blindly: an empty, garbled or foreign one is ignored.
- `tidy` removes what killed runs leave behind: temp files of dead writers, unusable pointers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from animalcls import checkpoint
from animalcls.atomic import write_text_atomic
from animalcls.errors import AnimalclsError
from animalcls.record import RECORD_FILE, read_record

log = logging.getLogger(__name__)


def unfinished_dir(results: str) -> Path:
    return Path(results).parent / "unfinished"


class Claim:
    """The locks a run holds while it runs: its run dir, and its run id."""

    def __init__(self, results: str, run_id: str, run_dir: Path) -> None:
        self.run_dir, self.run_id = run_dir, run_id
        self.dir_lock = FileLock(str(run_dir / ".owner.lock"), timeout=0)
        # kept after release: deleting a lock file races with a process about to lock it
        self.id_lock = FileLock(str(Path(results).parent / ".locks" / f"{run_id}.lock"), timeout=0)

    def take_run_dir(self) -> None:
        """Own the run dir, or fail: two runs never share one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.dir_lock.acquire()
        except Timeout:
            raise AnimalclsError(
                f"run dir {self.run_dir} is in use by another run; give this one its own (hydra.run.dir=...)."
            ) from None
        previous = self.run_dir / RECORD_FILE
        if not previous.exists():
            return
        record = read_record(previous)
        if record is None or record.get("run_id") != self.run_id:
            self.dir_lock.release()
            raise AnimalclsError(
                f"run dir {self.run_dir} already holds another run ({RECORD_FILE}); "
                f"give this run its own (hydra.run.dir=...)."
            )
        # the same run again in a fixed dir (a re-run sweep with hydra.sweep.dir set): its earlier
        # record is kept beside the new one, not overwritten
        previous.rename(self.run_dir / f"record.{time.strftime('%Y%m%dT%H%M%S')}.json")

    @property
    def owner_file(self) -> Path:
        return Path(self.id_lock.lock_file + ".owner")

    def take_run_id(self) -> bool:
        """Own the run id; False when another process is running it right now."""
        Path(self.id_lock.lock_file).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.id_lock.acquire()
        except Timeout:
            return False
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:  # who holds it, for the message a second process prints; the lock itself is what counts
            write_text_atomic(self.owner_file, json.dumps(owner))
        except OSError as exc:
            log.warning("could not note this process as the holder of run %s (%s)", self.run_id, exc)
        return True

    def holder(self, wait_s: float = 0.0) -> dict[str, Any] | None:
        """The holder's note (pid, host, started), or None when it has not written one within
        `wait_s` (a holder notes itself just after it takes the lock)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                value = json.loads(self.owner_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                value = None
            if isinstance(value, dict) and isinstance(value.get("pid"), int):
                return value
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def live_holder(self) -> dict[str, Any] | None:
        """Who holds the run id now, read from its note without touching the lock (taking the lock
        to test it would make a run starting that instant fail as busy): None without a note, or
        when the note names a dead process of this host."""
        if not Path(self.id_lock.lock_file).exists():
            return None
        holder = self.holder()
        if holder is None or (holder.get("host") == socket.gethostname() and not _alive(int(holder["pid"]))):
            return None
        return holder

    def release(self) -> None:
        if self.id_lock.is_locked:  # the note goes first: once released, the next holder writes its own
            self.owner_file.unlink(missing_ok=True)
        for lock in (self.id_lock, self.dir_lock):
            if lock.is_locked:
                lock.release()


def busy_message(run_id: str, holder: dict[str, Any] | None) -> str:
    """What a second process of a running run says: who holds it and what to do."""
    if holder is None:
        return (
            f"run {run_id} is held by another process that has not noted its pid: wait for it to "
            f"finish, then run this again (it will skip the run as done)."
        )
    pid, host = holder["pid"], holder.get("host", "?")
    here = host == socket.gethostname()
    stopped = f" It is stopped (SIGSTOP): `kill -CONT {pid}` lets it go on." if here and _is_stopped(pid) else ""
    return (
        f"run {run_id} is held by process {pid} on {host} (since {holder.get('started', '?')}).{stopped} "
        f"Wait for it to finish (this command then skips the run as done), or stop it "
        f"(`kill {pid}`{'' if here else f' on {host}'}) and run this again to resume it."
    )


def _is_stopped(pid: int) -> bool:
    """Whether process `pid` of this host is stopped (state T); False where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["T"]  # the name in (...) may hold spaces


@dataclass(frozen=True)
class Pointer:
    run_dir: Path
    run_id: str
    lineage: str = ""
    data_id: str = ""


def _pointer_path(results: str, run_id: str) -> Path:
    return unfinished_dir(results) / run_id


def pointer_path(results: str, run_id: str) -> Path:
    return _pointer_path(results, run_id)


def write_pointer(results: str, pointer: Pointer) -> None:
    path = _pointer_path(results, pointer.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        path,
        json.dumps(
            {
                "run_dir": str(pointer.run_dir.resolve()),
                "run_id": pointer.run_id,
                "lineage": pointer.lineage,
                "data_id": pointer.data_id,
            }
        ),
    )


def remove_pointer(results: str, run_id: str) -> None:
    _pointer_path(results, run_id).unlink(missing_ok=True)


def read_pointer(path: Path) -> Pointer | None:
    """A pointer file, or None (with a warning) when it is empty, garbled or not ours."""
    try:
        text = path.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("ignoring the resume pointer %s: unreadable (%s)", path, exc)
        return None
    if not text:
        log.warning("ignoring the resume pointer %s: it is empty", path)
        return None
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = {"run_dir": text, "run_id": path.name}  # animalcls 0.1 wrote the run dir alone
    if not isinstance(value, dict) or not value.get("run_dir") or not Path(value["run_dir"]).is_absolute():
        log.warning("ignoring the resume pointer %s: it does not name an absolute run dir", path)
        return None
    return Pointer(
        Path(value["run_dir"]),
        str(value.get("run_id", path.name)),
        str(value.get("lineage", "")),
        str(value.get("data_id", "")),
    )


def _changed_data_note(results: str, run_id: str, lineage: str, data_id: str) -> None:
    """Say so when an interrupted run of this configuration was on other data, and drop it."""
    folder = unfinished_dir(results)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name == run_id or path.suffix == ".lock":  # lock files of an earlier 0.2 build lived here
            continue
        other = read_pointer(path)
        if other is not None and other.lineage == lineage and other.data_id != data_id:
            log.warning(
                "the interrupted run of this configuration in %s was on other data (the files or "
                "their sizes changed since): starting over, not resuming it",
                other.run_dir,
            )
            path.unlink(missing_ok=True)


def find_state(
    results: str, run_id: str, lineage: str, data_id: str, split_digest: str, mode: str
) -> dict[str, Any] | None:
    """The `last.pt` state to resume this run from, or None to start over (saying why)."""
    if mode == "false":
        return None
    _changed_data_note(results, run_id, lineage, data_id)
    path = _pointer_path(results, run_id)
    pointer = read_pointer(path) if path.exists() else None
    if pointer is None:
        if mode == "true":
            log.warning("resume=true but no unfinished run of this configuration was found; starting fresh")
        return None
    last = pointer.run_dir / "last.pt"
    if not last.is_file():
        log.warning("the unfinished run in %s left no last.pt: starting over", pointer.run_dir)
        return None
    try:
        state = checkpoint.read(last)
    except AnimalclsError as exc:
        log.warning("cannot resume from %s (%s): starting over", last, exc)
        return None
    meta = state["meta"]
    if meta.get("run_id") != run_id or meta.get("split_digest") != split_digest or "optimizer" not in state:
        log.warning("%s was made with other settings, data or split than this run: starting over", last)
        return None
    log.info("resuming from %s after epoch %d", last, state["epoch"])
    state["resumed_from"] = str(pointer.run_dir)
    return state


# ---------------------------------------------------------------- leftovers of killed runs

# atomic.write_atomic's temp names: .<name>.<pid>.<8 hex>.tmp
_TMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _dead_writers_tmp(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _TMP.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            found.append(path)
    return found


def tidy(run_dir: Path, pointer: Path | None = None) -> list[Path]:
    """Remove what killed runs left: temp files of dead writers in `run_dir` and in the run dir
    the pointer names, and the pointer itself when nothing can resume from it (garbled, or its
    run dir has no last.pt). Call it holding the run id and run dir (no live writer is touched:
    a temp file's name carries its writer's pid). Returns the paths removed, each logged."""
    removed = _dead_writers_tmp(run_dir)
    target = read_pointer(pointer) if pointer is not None and pointer.exists() else None
    if target is not None and target.run_dir.resolve() != run_dir.resolve():
        removed += _dead_writers_tmp(target.run_dir)
    if pointer is not None and pointer.exists() and (target is None or not (target.run_dir / "last.pt").is_file()):
        removed.append(pointer)
    for path in removed:
        path.unlink(missing_ok=True)
        log.info("removed %s (left behind by a run that was killed)", path)
    return removed
