"""`animalcls bench`: images/s of the training engine against the compute limit, in one run.

Measures, with the same model, batch size, device, precision and memory format:
  limit      forward + backward + optimizer step on random tensors already on the device (fp32,
             and the engine's precision when that differs): what the hardware allows;
  engine     engine.train_one_epoch over the decode-once cache (from files on disk: scan, cache
             key, cache load, batches), with the cache warm and cold (decoded first into a
             temporary cache dir);
  old path   the same, with `data.pipeline=pil` (PIL transforms in DataLoader workers);
  eval       engine.evaluate over the test split at the evaluation batch size.
Each measurement runs `bench.warmup` untimed batches, then `bench.batches` timed ones (the batch
iterator restarts with a new epoch when it runs out); with `bench.rounds` > 1 limit, engine and old
path alternate and each pools its rounds. images/s is the median over batches on the CPU (a shared
host's other work stalls some batches for seconds) and images over total time on CUDA (where a
batch's launch returns before its work is done); the JSON has both. "epoch img/s" adds the setup
seconds (scan, decode or cache load, batches) to one full training epoch at the measured rate.
The engine and eval measurements use CUDA graphs as a run would (`cuda_graphs`, animalcls.graphs;
the JSON says whether they did); the limit is always the eager step.

    animalcls bench model=base data.root=/path/to/images device=cpu bench.batches=20

`bench.mode=sweep` times whole runs instead: each of a fixed list of paper configurations
(`SWEEP_CONFIGS`: the base CNN and MobileNetV3-large at batch 16 and 32, the classes of 30 of the
paper's 38 configurations) as `animalcls train` in a new process, from process start to exit
(start-up, data set scan and cache load, training, evaluation, the results row), with the old
settings (`cuda_graphs=off`, and on CUDA `amp=bf16`, the old amp=auto there) and the new ones
(`cuda_graphs=auto amp=auto`), taking turns (old first, then new first in the next round), into
results tables of its own in a temporary dir. The decode caches are built before the clock starts.
Other overrides go to every run (e.g. `epochs=1 data=standin`). The JSON has every run's seconds,
exit status and results row, and the ratio old seconds / new seconds (above 1: new is faster).

    animalcls bench bench.mode=sweep data=standin epochs=1 bench.rounds=2
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from animalcls.benchmark.measure import format_table, run_bench
from animalcls.benchmark.sweep import OWN_KEYS, format_sweep, run_sweep
from animalcls.commands import given_keys, parse_overrides
from animalcls.config import compose
from animalcls.errors import AnimalclsError


def main(args: list[str]) -> int:
    if "model.pretrained" not in given_keys(args, "bench"):
        args = [*args, "model.pretrained=false"]  # speed does not depend on the weights; no download
    cfg = compose(args)
    if cfg.bench.mode not in ("engine", "sweep"):
        raise AnimalclsError(f"bench.mode={cfg.bench.mode!r}: choose engine or sweep")
    if cfg.bench.mode == "sweep":
        return sweep_main(cfg, args)
    result = run_bench(cfg)
    result["command"] = "animalcls bench " + " ".join(args)
    out = Path(cfg.bench.out or f"outputs/bench/{cfg.model.name}-{torch.device(result['device']).type}.json")
    _write_json(out, result)
    print(format_table(result))
    print(f"written: {out}")
    return 0


def _write_json(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out)


def sweep_overrides(args: list[str]) -> list[str]:
    """The user's overrides that go to every run of the sweep: not bench's own keys, not OWN_KEYS."""
    return [
        a
        for a, o in zip(args, parse_overrides(args, "bench"))
        if not o.key_or_group.startswith("bench.") and o.key_or_group not in OWN_KEYS
    ]


def sweep_main(cfg: DictConfig, args: list[str]) -> int:
    result = run_sweep(cfg, sweep_overrides(args))
    result["command"] = "animalcls bench " + " ".join(args)
    out = Path(cfg.bench.out or f"outputs/bench/sweep-{torch.device(result['device']).type}.json")
    _write_json(out, result)
    print(format_sweep(result))
    print(f"written: {out}")
    return 0 if result["all_ok"] else 1
