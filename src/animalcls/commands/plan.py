"""`animalcls plan [-m] <train's overrides, sweeps included>`

Lists what `animalcls train -m <the same overrides>` would do, without training or launching
anything: the sweep is expanded as Hydra's basic sweeper expands it (the experiment's
hydra.sweeper.params first, then the command line's, in Hydra's order), and each job's run id is
computed as its run computes it (the precision chosen for this machine's device, the data set's
identity; each data root is scanned once). Per job, one line:

  RUN_ID  STATUS  OVERRIDES
  train     it would train (no ok row for its run id; with force=true always)
  done      the results table has an ok row for its run id: train skips it
  running   another process holds its run id now (pid and host, from its lock's note): train
            would refuse it

then a count of each. Writes nothing: no run dir, no SLURM job, no results table, no lock (the
demo and stand-in data sets are generated on first use, as train would). A job whose config is
invalid is listed as `invalid` with the reason; the exit status is then 2.

  animalcls plan lr=0.1,0.01 seed=0,1,2 data.root=data/animals
  animalcls plan +experiment=paper/table_2_1_1 seed=0,1,2
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from animalcls.errors import AnimalclsError

log = logging.getLogger(__name__)

HYDRA_FLAGS = ("-m", "--multirun")


@dataclass(frozen=True)
class Job:
    overrides: list[str]
    run_id: str
    status: str  # train | done | running | invalid
    note: str = ""


def main(args: list[str]) -> int:
    overrides = [a for a in args if a not in HYDRA_FLAGS]
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        raise AnimalclsError(f"plan takes train's key=value overrides, not {' '.join(flags)}.")
    jobs = plan(overrides)
    print(render(jobs))
    return 2 if any(job.status == "invalid" for job in jobs) else 0


def expand(overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, as Hydra's BasicSweeper would launch them (nothing is launched)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from animalcls.config import check_group_choices, check_overrides

    check_group_choices(overrides)
    check_overrides(overrides)
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    params = _sweeper_params([o for o in fixed if o is not None])
    parsed = parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides])
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for job in batch]


def _sweeper_params(fixed: list[str]) -> dict[str, str]:
    """hydra.sweeper.params of the config the fixed overrides compose (an experiment's rows)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from animalcls.config import register_schema

    register_schema()
    try:
        with initialize_config_module(config_module="animalcls.conf", version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=fixed, return_hydra_config=True)
    except Exception as exc:
        raise AnimalclsError(str(exc).strip()) from None
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    if not params:
        return {}
    return {str(k): str(v) for k, v in params.items()}


def plan(overrides: list[str]) -> list[Job]:
    from animalcls.config import compose, validate

    data_ids: dict[tuple[str, str], str] = {}
    jobs = []
    for job in expand(overrides):
        try:
            cfg = compose([o for o in job if not o.lstrip("+~").startswith("hydra")])
            validate(cfg)
            run_id = _run_id(cfg, data_ids)
        except AnimalclsError as exc:
            jobs.append(Job(job, "-", "invalid", str(exc)))
            continue
        jobs.append(_status(cfg, run_id, job))
    return jobs


def _run_id(cfg: DictConfig, data_ids: dict[tuple[str, str], str]) -> str:
    """The run id the run computes: the precision for this machine, the data set's identity."""
    from animalcls.build import choose_precision, resolve_device, scan_data
    from animalcls.data import data_identity
    from animalcls.record import Resolved, run_id

    key = (str(cfg.data.name), str(Path(cfg.data.root).expanduser().resolve()))
    if key not in data_ids:
        data_ids[key] = data_identity(scan_data(cfg))
    precision = choose_precision(cfg.amp, resolve_device(cfg.device), cfg.model.name, cfg.batch_size)
    return run_id(cfg, Resolved(precision, data_ids[key]))


def _status(cfg: DictConfig, run_id: str, overrides: list[str]) -> Job:
    from animalcls.record import legacy_run_id
    from animalcls.results import ok_row_in_table
    from animalcls.resume import Claim

    holder = Claim(cfg.results, run_id, Path(".")).live_holder()
    if holder is not None:
        return Job(overrides, run_id, "running", f"pid {holder['pid']} on {holder.get('host', '?')}")
    if cfg.force:
        return Job(overrides, run_id, "train", "force=true")
    done = ok_row_in_table(cfg.results, run_id, legacy_run_id(cfg))
    if done is not None:
        return Job(overrides, run_id, "done", str(done.get("run_dir", "")))
    if not Path(cfg.results).exists():  # train first rebuilds a missing table from the run dirs
        return Job(overrides, run_id, "train", f"no results table at {cfg.results} yet")
    return Job(overrides, run_id, "train")


def render(jobs: list[Job]) -> str:
    width = max([len(job.run_id) for job in jobs] + [6])
    lines = [f"{'run id':<{width}}  {'status':<8}  overrides"]
    for job in jobs:
        note = f"  ({job.note})" if job.note else ""
        lines.append(f"{job.run_id:<{width}}  {job.status:<8}  {' '.join(job.overrides)}{note}")
    counts = {s: sum(job.status == s for job in jobs) for s in ("train", "done", "running", "invalid")}
    summary = (
        f"{len(jobs)} job(s): {counts['train']} would train, {counts['done']} done (skipped), "
        f"{counts['running']} running elsewhere"
    )
    if counts["invalid"]:
        summary += f", {counts['invalid']} invalid"
    return "\n".join([*lines, summary])
