"""`bench.mode=sweep`: whole runs timed from process start to exit. Each of a fixed list of paper
configurations (SWEEP_CONFIGS) runs as `animalcls train` in a new process under the old settings
and the new ones, taking turns, into results tables of its own; the result (seconds, rows, the
ratio old / new) as a dict and as the printed table."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from animalcls.benchmark.measure import device_name
from animalcls.build import prepare_data, resolve_device
from animalcls.config import compose, validate
from animalcls.errors import AnimalclsError
from animalcls.machine import cpu_features, cpu_model

log = logging.getLogger("animalcls.commands.bench")  # the name its log lines have always had

# The base CNN and MobileNetV3-large at the paper's batch sizes 16 and 32: 30 of its 38
# configurations are of one of these four kinds (lr, optimizer and loss barely change the time).
SWEEP_CONFIGS = [
    "base-adam-lr1e-3-bs16-e10-ce",
    "base-adam-lr1e-3-bs32-e10-ce",
    "mobilenet_v3_large-sgd-lr1e-2-bs16-e10-ce",
    "mobilenet_v3_large-sgd-lr1e-1-bs32-e10-ce",
]
# keys each run sets itself (the variants' and the run's bookkeeping): the user's are not passed on
OWN_KEYS = {"cuda_graphs", "amp", "results", "force", "resume", "hydra.run.dir"}


def sweep_variants(device: torch.device) -> dict[str, list[str]]:
    """The settings compared: before this issue (no graphs; amp=auto picked bf16 on CUDA at every
    batch size, so `amp=bf16` there; on the CPU its rule is unchanged) and now."""
    return {
        "old": ["cuda_graphs=off", "amp=bf16" if device.type == "cuda" else "amp=auto"],
        "new": ["cuda_graphs=auto", "amp=auto"],
    }


def _row(results_csv: Path) -> dict[str, Any]:
    from animalcls import results

    if not results_csv.exists():
        return {}
    table = results.load(results_csv, warn=False)
    if not len(table):
        return {}
    row = table.iloc[-1].to_dict()
    keys = ("status", "precision", "epochs_done", "train_seconds", "images_per_s", "val_top1", "test_top1", "run_id")
    return {k: row[k].item() if hasattr(row.get(k), "item") else row.get(k) for k in keys}  # numpy -> JSON


def run_sweep(cfg: DictConfig, passed: list[str]) -> dict[str, Any]:
    """Every configuration of SWEEP_CONFIGS under both variants, in turns, each run given the user's
    overrides `passed` (the command line less bench.* and OWN_KEYS); see the module doc."""
    if cfg.bench.rounds < 1:
        raise AnimalclsError("bench.rounds must be >= 1")
    device = resolve_device(cfg.device)
    variants = sweep_variants(device)
    configs = list(SWEEP_CONFIGS)
    for name in configs:  # compose and validate every run, and build its decode cache, before the clock
        run_cfg = compose([f"+paper_config={name}", *passed])
        validate(run_cfg)
        prepare_data(run_cfg)
    work = Path(tempfile.mkdtemp(prefix="animalcls-sweep-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs: list[dict[str, Any]] = []
    try:
        for round_ in range(cfg.bench.rounds):
            order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
            for name in configs:
                for variant in order:
                    results_csv = work / variant / f"{name}-r{round_}.csv"
                    command = [
                        sys.executable,
                        "-m",
                        "animalcls",
                        "train",
                        f"+paper_config={name}",
                        *passed,
                        *variants[variant],
                        f"results={results_csv}",
                        f"hydra.run.dir={work / variant / f'{name}-r{round_}'}",
                        "force=true",
                        "resume=false",
                    ]
                    log_file = work / variant / f"{name}-r{round_}.log"
                    log_file.parent.mkdir(parents=True, exist_ok=True)
                    log.info("bench sweep: round %d, %s, %s settings", round_ + 1, name, variant)
                    with log_file.open("w") as out:
                        start = time.perf_counter()
                        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
                        seconds = time.perf_counter() - start
                    row = _row(results_csv)
                    ok = code == 0 and row.get("status") == "ok"
                    if not ok:
                        tail = log_file.read_text(errors="replace").splitlines()[-15:]
                        log.error("bench sweep: %s (%s) exit %d:\n%s", name, variant, code, "\n".join(tail))
                    runs.append(
                        {"config": name, "variant": variant, "round": round_ + 1, "seconds": seconds, "exit": code}
                        | {"ok": ok, **row}
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _sweep_summary(cfg, device, variants, configs, runs, passed)


def _sweep_summary(
    cfg: DictConfig,
    device: torch.device,
    variants: dict[str, list[str]],
    configs: list[str],
    runs: list[dict[str, Any]],
    passed: list[str],
) -> dict[str, Any]:
    def total(variant: str, name: str | None = None) -> float:
        seconds: float = sum(r["seconds"] for r in runs if r["variant"] == variant and name in (None, r["config"]))
        return seconds

    per_config = {
        name: {
            "old_seconds": total("old", name) / cfg.bench.rounds,
            "new_seconds": total("new", name) / cfg.bench.rounds,
            "old_over_new": total("old", name) / max(total("new", name), 1e-9),
            "precision": {
                v: next((r.get("precision") for r in runs if r["config"] == name and r["variant"] == v), None)
                for v in variants
            },
        }
        for name in configs
    }
    return {
        "mode": "sweep",
        "configs": configs,
        "variants": variants,
        "overrides": passed,
        "rounds": cfg.bench.rounds,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "runs": runs,
        "all_ok": all(r["ok"] for r in runs),
        "seconds": {"old": total("old"), "new": total("new")},
        "per_config": per_config,
        "ratios": {"old_over_new": total("old") / max(total("new"), 1e-9)},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def format_sweep(result: dict[str, Any]) -> str:
    lines = [
        f"animalcls bench (sweep): {len(result['configs'])} configurations x {result['rounds']} round(s), "
        f"{result['device']} ({result['device_name']}); whole runs, process start to exit; "
        f"overrides: {' '.join(result['overrides']) or '(none)'}",
        f"old: {' '.join(result['variants']['old'])}   new: {' '.join(result['variants']['new'])}",
        "",
        f"{'configuration':<46} {'old s':>8} {'new s':>8} {'old/new':>8}  precision old -> new",
        "-" * 92,
    ]
    for name, c in result["per_config"].items():
        lines.append(
            f"{name:<46} {c['old_seconds']:8.1f} {c['new_seconds']:8.1f} {c['old_over_new']:8.2f}  "
            f"{c['precision']['old']} -> {c['precision']['new']}"
        )
    s = result["seconds"]
    lines += [
        "-" * 92,
        f"{'all (sum over rounds)':<46} {s['old']:8.1f} {s['new']:8.1f} {result['ratios']['old_over_new']:8.2f}",
    ]
    if not result["all_ok"]:
        lines.append("some runs failed: see the log above and 'runs' in the JSON")
    return "\n".join(lines)
