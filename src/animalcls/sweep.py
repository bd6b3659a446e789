"""A sweep's exit status: the highest exit status of its jobs, wherever they ran.

`@hydra.main` returns nothing for a multirun, and a job that runs in a joblib worker process
(hydra/launcher=pack, local_parallel, joblib) or on another node (slurm) sets that process's exit
status, never this one's. So every job that ends with a nonzero status leaves it in the sweep dir
(`<sweep dir>/.job_exit/<job number>`, `note_job_exit`), a Hydra callback (`SweepStatus`) notes
the sweep dir when the multirun starts in this process, and after the sweep `animalcls train`
exits with the highest status its jobs left (`exit_code_of_this_sweep`).

Why notes of the jobs' own statuses rather than their record.json or return values: the
launchers' return values never reach a callback or `hydra.main`'s caller; record.json says how a
run ended (failed, diverged), but a job that stops on bad input before it is a run (a bad value in
one job of a sweep, a reused sweep dir) leaves no record, and would then exit 0 with nothing
trained. A note from an earlier sweep into the same dir is older than this sweep's start, and is
not counted.

Only the standard library at import time (Hydra inside functions): the CLI imports this on start.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

JOB_EXIT_DIR = ".job_exit"

# the multirun started in this process, as SweepStatus noted it: {"dir": Path, "start": float}
_sweep: dict[str, Any] = {}


def status_callback_override() -> str:
    """The Hydra override that registers SweepStatus for a multirun."""
    return f"+hydra.callbacks.animalcls_sweep_status._target_={__name__}.SweepStatus"


def forget_sweep() -> None:
    """Drop a previous multirun's note, so an in-process second `train` starts clean."""
    _sweep.clear()


def exit_code_of_this_sweep() -> int:
    """The highest status the jobs of this process's multirun noted; 0 if no multirun started."""
    if "dir" not in _sweep:
        return 0
    return sweep_exit_code(_sweep["dir"], _sweep["start"])


def note_job_exit(code: int) -> None:
    """In a multirun, leave this job's nonzero exit status as a note in the sweep dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    note = Path(hydra_cfg.sweep.dir) / JOB_EXIT_DIR / str(hydra_cfg.job.num)
    try:
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(f"{code} {hydra_cfg.runtime.output_dir}\n")
    except OSError as exc:
        logging.getLogger("animalcls").warning("could not note this job's exit status %d in %s: %s", code, note, exc)


class SweepStatus:
    """The Hydra callback (hydra.experimental.callback.Callback's hooks, without importing Hydra
    here) that notes a multirun's sweep dir and start time in this process."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _sweep.update(dir=Path(str(config.hydra.sweep.dir)), start=time.time())

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None: ...

    def on_run_start(self, config: Any, **kwargs: Any) -> None: ...

    def on_run_end(self, config: Any, **kwargs: Any) -> None: ...

    def on_job_start(self, config: Any, **kwargs: Any) -> None: ...

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None: ...


def sweep_exit_code(sweep_dir: Path, started: float) -> int:
    """The highest exit status the jobs of a sweep noted under `sweep_dir` since `started` (0: none)."""
    code = 0
    for note in sorted((Path(sweep_dir) / JOB_EXIT_DIR).glob("*")):
        try:
            if note.stat().st_mtime < started - 1.0:  # from an earlier sweep into the same dir
                continue
            job_code, _, where = note.read_text().strip().partition(" ")
            code = max(code, int(job_code))
        except (OSError, ValueError):
            continue
        logging.getLogger("animalcls").error("sweep job %s: exit status %s (%s)", note.name, job_code, where)
    return code
