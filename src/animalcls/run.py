"""One training run's lifecycle: claim it, skip or resume it, train, test, and record it.

Leaves in the run dir: split.csv, history.csv, last.pt, best.pt, predictions.csv, metrics.json and
record.json (the run's record; Hydra adds the resolved config and the log), and appends one row to
the results table. Every part is built by `animalcls.build`; the row's schema is `animalcls.record`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from animalcls import checkpoint, distributed, results, resume, tracking, warmstart
from animalcls.atomic import write_text_atomic
from animalcls.augment import DeviceAugment
from animalcls.build import (
    Prepared,
    build_criterion,
    build_model,
    build_optimizer,
    build_recipe,
    choose_channels_last,
    choose_precision,
    make_batches,
    prepare_data,
    resolve_device,
    scan_data,
    seed_everything,
)
from animalcls.config import validate
from animalcls.data import data_identity, manifest
from animalcls.engine import evaluate, fit
from animalcls.errors import AnimalclsError, DiskFull, Interrupted, Pruned, RunBusy
from animalcls.machine import cpu_features, cpu_model, gpu_name
from animalcls.record import Resolved, legacy_run_id, lineage_id, settings_row, write_record
from animalcls.steps import EpochBatches, Recipe, StepSettings

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- signals


class StopRequest(threading.Event):
    """Set by Ctrl-C or SIGTERM; remembers which, for the log."""

    signal_name = ""


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """Ctrl-C and SIGTERM set `stop`; decoding and training end at the next image or batch, and
    the run records itself. The handler does not log: logging from a signal handler can re-enter
    a stream that is being written and print a traceback of its own."""

    def handler(signum: int, _frame: Any) -> None:
        stop.signal_name = signal.Signals(signum).name
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- files of the run dir


def versions() -> str:
    import torchvision  # deferred: only its version is needed here, and the models import it anyway

    return f"torch={torch.__version__};torchvision={torchvision.__version__}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def write_csv(path: Path, frame: Any) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_csv(run_dir / "history.csv", pd.DataFrame(history))


def write_predictions(run_dir: Path, prepared: Prepared, logits: torch.Tensor, targets: torch.Tensor) -> None:
    classes = prepared.data.classes
    probs = logits.float().softmax(dim=1)
    top = probs.topk(min(5, probs.shape[1]), dim=1)
    paths = [prepared.data.paths[i] for i in prepared.split["test"]]
    write_csv(
        run_dir / "predictions.csv",
        pd.DataFrame(
            {
                "path": [str(prepared.data.root / p) for p in paths],
                "label": [classes[t] for t in targets.tolist()],
                "predicted": [classes[i[0]] for i in top.indices.tolist()],
                "top5": [";".join(classes[j] for j in i) for i in top.indices.tolist()],
                "probability": top.values[:, 0].tolist(),
            }
        ),
    )


def split_digest(frame: Any) -> str:
    return hashlib.sha1(frame.to_csv(index=False).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the record


def done_row(cfg: DictConfig, run_id: str) -> dict[str, Any] | None:
    """The latest ok row of this run: by its run id, or by the animalcls 0.1 id for older rows.
    A deleted table is first rebuilt from the run dirs' records, so their runs count as done."""
    results.rebuild_if_missing(cfg.results)
    return results.ok_row_in_table(cfg.results, run_id, legacy_run_id(cfg))


def record(cfg: DictConfig, run_dir: Path, row: dict[str, Any]) -> None:
    """The run's record.json first (the truth), then its row in the table (the index)."""
    # to the microsecond: it tells two attempts of one run dir apart (force=true in a fixed run dir)
    row.setdefault("timestamp", datetime.now().isoformat(timespec="microseconds"))
    try:
        write_record(run_dir, row, cfg.results)
    except OSError as exc:
        raise AnimalclsError(
            f"could not write the run's record into {run_dir}: {exc.strerror or exc}; free space and run it again."
        ) from None
    try:
        results.append_row(cfg.results, row)
    except results.TableError as exc:
        raise AnimalclsError(
            f"the run ended {row['status']} and its record is safe in {run_dir / 'record.json'}, but {exc}"
        ) from None


# ---------------------------------------------------------------- the run


EpochHook = Callable[[int, dict[str, Any]], None]  # (epoch, its history row); may raise Pruned


def run_training(cfg: DictConfig, run_dir: Path, epoch_hook: EpochHook | None = None) -> dict[str, Any]:
    """Train, validate and test one configuration; returns its results row, or the done row (with
    `skipped`) when it was done before. Raises RunBusy when another process is running it now.

    `epoch_hook(epoch, history_row)` runs after every epoch (a search reports the val top-1 there
    and may raise `errors.Pruned`, which ends the run as `pruned`).

    Under torchrun every rank calls this; rank 0 decides and writes (see animalcls.distributed).
    """
    validate(cfg)
    ctx = distributed.setup(resolve_device(cfg.device), cfg.device)
    if ctx.enabled and cfg.batch_size % ctx.world_size:
        raise AnimalclsError(
            f"batch_size={cfg.batch_size} is the images per optimizer step over all "
            f"{ctx.world_size} processes and must divide evenly among them; e.g. "
            f"batch_size={ctx.world_size * max(1, cfg.batch_size // ctx.world_size)}."
        )
    run_dir = Path(ctx.from_main(lambda: str(run_dir)))  # every rank agrees on rank 0's run dir
    if ctx.is_main:
        results.check_writable(cfg.results)
    stop = StopRequest()
    with stop_on_signals(stop):
        data = scan_data(cfg)
        # init_from's checkpoint: read (and checked) before anything is claimed; its identity is in the id
        source = warmstart.read_source(cfg, data.classes) if cfg.init_from else None
        resolved = Resolved(
            choose_precision(cfg.amp, ctx.device, cfg.model.name, cfg.batch_size),
            data_identity(data),
            source.identity if source is not None else "",
        )
        row = settings_row(cfg, resolved)
        if source is not None:
            row["init_from"] = source.describe()
        claim = resume.Claim(cfg.results, row["run_id"], run_dir)
        try:
            ctx.from_main(lambda: _take_run_id(claim))
            done = ctx.from_main(lambda: None if cfg.force else done_row(cfg, row["run_id"]))
            if done is not None:
                log.info(
                    "skipping: run %s already has an ok row in %s (force=true re-runs it)", row["run_id"], cfg.results
                )
                if ctx.is_main:  # logger=... is no part of the run id: send the done run instead
                    tracking.send_done(cfg, done)
                return {**done, "skipped": True}
            ctx.from_main(claim.take_run_dir)
            if ctx.is_main:  # owning both, no live writer's file can be touched
                resume.tidy(run_dir, resume.pointer_path(cfg.results, row["run_id"]))
            return _run_claimed(cfg, run_dir, ctx, stop, data, resolved, row, epoch_hook, source)
        finally:
            claim.release()


def _take_run_id(claim: resume.Claim) -> None:
    """Own the run id, or stop naming its holder: a stopped or hung holder would otherwise make
    every identical run skip silently, with nothing trained."""
    if not claim.take_run_id():
        raise RunBusy(resume.busy_message(claim.run_id, claim.holder(wait_s=2.0)))


def _run_claimed(
    cfg: DictConfig,
    run_dir: Path,
    ctx: distributed.Context,
    stop: StopRequest,
    data: Any,
    resolved: Resolved,
    row: dict[str, Any],
    epoch_hook: EpochHook | None,
    source: warmstart.Source | None = None,
) -> dict[str, Any]:
    """The run with its tracker (logger=...): every epoch logged, the final row whatever the status."""
    tracker = tracking.make_tracker(cfg, run_dir) if ctx.is_main else tracking.NoTracker()

    def hook(epoch: int, history_row: dict[str, Any]) -> None:
        tracker.log_epoch(epoch, history_row)
        if epoch_hook is not None:
            epoch_hook(epoch, history_row)

    try:
        result = _run_and_record(cfg, run_dir, ctx, stop, data, resolved, row, hook, source)
    except AnimalclsError:  # bad input found late: no row, nothing to track
        raise
    except Exception:
        tracker.finish(row, run_dir)  # the failed row
        raise
    else:
        tracker.finish(result, run_dir)
        return result
    finally:
        tracker.close()


def _run_and_record(
    cfg: DictConfig,
    run_dir: Path,
    ctx: distributed.Context,
    stop: StopRequest,
    data: Any,
    resolved: Resolved,
    row: dict[str, Any],
    epoch_hook: EpochHook,
    source: warmstart.Source | None = None,
) -> dict[str, Any]:
    seed_everything(cfg.seed)
    row.update(device=ctx.describe(), versions=versions(), git_commit=git_commit(), run_dir=str(run_dir))
    row.update(cpu_model=cpu_model(), cpu_features=cpu_features(), gpu=gpu_name(ctx.device))
    model = build_model(cfg, len(data.classes))  # before decoding: missing weights fail fast
    if source is not None:  # the weights only: this run's optimizer and schedule start anew
        warmstart.load_into(model, source, cfg, list(data.classes))
    if ctx.is_main:
        row.update(_profile(model, cfg.aug.crop))
    progress: dict[str, Any] = {"epochs_done": 0, "history": []}
    try:
        prepared = prepare_data(cfg, data, should_stop=stop.is_set)
        row["skipped_files"] = len(prepared.skipped)
        if ctx.enabled and len(prepared.split["test"]) < ctx.world_size:
            raise AnimalclsError(
                f"{len(prepared.split['test'])} test image(s) for {ctx.world_size} processes: "
                f"every process needs at least one; use fewer processes or more data."
            )
        split = manifest(prepared.data, prepared.split)
        digest = split_digest(split)
        state = ctx.from_main(
            lambda: resume.find_state(
                cfg.results, row["run_id"], lineage_id(cfg, resolved), resolved.data_id, digest, str(cfg.resume).lower()
            )
        )
        if ctx.is_main:
            write_csv(run_dir / "split.csv", split)
            _leave_pointer(cfg, resume.Pointer(run_dir, row["run_id"], lineage_id(cfg, resolved), resolved.data_id))
        meta = {
            "config": OmegaConf.to_container(cfg, resolve=True),
            "classes": prepared.data.classes,
            "run_id": row["run_id"],
            "data_id": resolved.data_id,
            "split_digest": digest,
            **({"init_from": source.identity} if source is not None else {}),
        }
        outcome, details = _train_and_test(
            cfg, run_dir, prepared, model, ctx, stop, state, meta, progress, epoch_hook, source
        )
    except Pruned:
        log.info("pruned after epoch %d by the search", progress["epochs_done"])
        row.update(status="pruned", **_pruned_outcome(progress["history"]))
        if ctx.is_main:
            record(cfg, run_dir, row)
            resume.remove_pointer(cfg.results, row["run_id"])
        return row
    except Interrupted:
        log.warning(_interrupted_note(stop.signal_name or "stop", run_dir, progress["epochs_done"]))
        row.update(status="interrupted", epochs_done=progress["epochs_done"])
        if ctx.is_main:  # the other ranks train and evaluate, and record nothing
            record(cfg, run_dir, row)
        return row
    except DiskFull as exc:
        raise _disk_full(cfg, run_dir, row, progress["epochs_done"], exc, ctx.is_main) from None
    except AnimalclsError:  # bad input found late (e.g. weights): a message, no row
        if ctx.is_main:
            resume.remove_pointer(cfg.results, row["run_id"])
        raise
    except Exception as exc:
        row.update(status="failed", epochs_done=progress["epochs_done"], error=f"{type(exc).__name__}: {exc}"[:500])
        if ctx.is_main:
            record(cfg, run_dir, row)
            resume.remove_pointer(cfg.results, row["run_id"])
        raise
    row.update(outcome)
    if ctx.is_main:
        try:
            _finish(cfg, run_dir, row, details)
        except DiskFull as exc:
            raise _disk_full(cfg, run_dir, row, progress["epochs_done"], exc, True) from None
    return row


def _interrupted_note(signal_name: str, run_dir: Path, epochs_done: int) -> str:
    """What a re-run does after an interruption: resume from last.pt, or start over without one."""
    last = run_dir / "last.pt"
    if last.is_file():
        return (
            f"interrupted ({signal_name}): the state of the last complete epoch is in {last}; "
            f"run the same command again to resume"
        )
    when = "before the first epoch ended (while decoding the images or training)" if not epochs_done else "early"
    return (
        f"interrupted ({signal_name}) {when}: no checkpoint was saved in {run_dir}, so running the "
        f"same command again starts this run from the beginning"
    )


def _disk_full(
    cfg: DictConfig, run_dir: Path, row: dict[str, Any], epochs_done: int, exc: DiskFull, is_main: bool
) -> DiskFull:
    """Record a failed row naming the full disk (when there is room for it), keep last.pt and the
    resume pointer (the last good state), and return the error to raise: what, where, what next."""
    row.update(status="failed", epochs_done=epochs_done, error=f"DiskFull: {exc}"[:500])
    if is_main:
        try:
            record(cfg, run_dir, row)
        except AnimalclsError as also:
            log.error("the failed row could not be recorded either: %s", also)
    last = run_dir / "last.pt"
    then = f"it resumes from {last}" if last.is_file() else "it starts over"
    return DiskFull(exc.errno or 0, f"{exc}, then run the same command again: {then}.", str(exc.filename))


def _pruned_outcome(history: list[dict[str, Any]]) -> dict[str, Any]:
    """A pruned run's columns: its epochs and its best epoch's validation accuracy so far (the
    search saw these); it was never tested."""
    if not history:
        return {"epochs_done": 0}
    best = max(history, key=lambda h: h["val_top1"])
    return {
        "epochs_done": len(history),
        **{f"val_top{k}": round(best[f"val_top{k}"], 2) for k in (1, 3, 5)},
        "train_seconds": round(sum(h["seconds"] for h in history), 2),
        "images_per_s": round(sum(h["images_per_s"] for h in history) / len(history), 1),
    }


def _leave_pointer(cfg: DictConfig, pointer: resume.Pointer) -> None:
    try:
        resume.write_pointer(cfg.results, pointer)
    except OSError as exc:  # e.g. a full disk: the run can still finish and record itself
        log.warning(
            "could not leave a resume pointer beside %s (%s): if this run is interrupted, it will start over",
            cfg.results,
            exc.strerror or exc,
        )


def _finish(cfg: DictConfig, run_dir: Path, row: dict[str, Any], details: dict[str, Any]) -> None:
    write_text_atomic(run_dir / "metrics.json", json.dumps({**row, **details}, indent=2, default=str))
    record(cfg, run_dir, row)
    resume.remove_pointer(cfg.results, row["run_id"])
    log.info("run dir: %s", run_dir)
    log.info(
        "results: row %s (%s, test top-1 %.2f%%) appended to %s",
        row["run_id"],
        row["status"],
        row.get("test_top1", float("nan")),
        cfg.results,
    )


def _profile(model: torch.nn.Module, input_size: int) -> dict[str, float]:
    from animalcls.profile import profile_model  # deferred: fvcore's import is slow and noisy

    stats = profile_model(model, input_size)
    return {
        "params": stats["params"],
        "gmacs_fvcore": round(stats["gmacs_fvcore"], 4),
        "gflops": round(stats["gflops"], 4),
    }


def _restore(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    state: dict[str, Any],
    device: torch.device,
    run_dir: Path,
    is_main: bool,
) -> tuple[int, list[dict[str, Any]], float]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if recipe.scheduler is not None:
        recipe.scheduler.load_state_dict(state["scheduler"])
    if recipe.ema is not None:
        recipe.ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"], device)
    if is_main:
        write_history(run_dir, state["history"])
        best = Path(state["resumed_from"]) / "best.pt"
        if best.exists() and best.resolve() != (run_dir / "best.pt").resolve():
            shutil.copyfile(best, run_dir / "best.pt")
    return state["epoch"], state["history"], state["best_val_top1"]


def _train_and_test(
    cfg: DictConfig,
    run_dir: Path,
    prepared: Prepared,
    model: torch.nn.Module,
    ctx: distributed.Context,
    stop: threading.Event,
    state: dict[str, Any] | None,
    meta: dict[str, Any],
    progress: dict[str, Any],
    epoch_hook: EpochHook | None = None,
    source: warmstart.Source | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns the row's outcome columns and the details metrics.json adds to them."""
    device = ctx.device
    precision = choose_precision(cfg.amp, device, cfg.model.name, cfg.batch_size)
    channels_last = choose_channels_last(cfg.channels_last)
    # torch's stubs list device and memory_format in separate overloads; Module.to takes both at once
    model = model.to(  # type: ignore[call-overload]
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    optimizer = build_optimizer(cfg, model)
    criterion = build_criterion(cfg)
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
    train: EpochBatches = make_batches(cfg, prepared, "train", device, train=True, **shard)
    train = ctx.even_steps(train, len(prepared.split["train"]), cfg.batch_size // ctx.world_size)
    recipe = build_recipe(cfg, model, optimizer, len(train), len(prepared.data.classes))
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, -1.0
    if source is not None and recipe.ema is not None:
        warmstart.load_ema(recipe.ema, source, list(prepared.data.classes))
    if state is not None:
        start_epoch, history, best = _restore(model, optimizer, recipe, state, device, run_dir, ctx.is_main)
    progress["epochs_done"] = start_epoch
    weights = recipe.ema.module if recipe.ema is not None else model  # what is validated, kept and tested
    if ctx.rank > 0:  # own augmentation draws per rank; the weights come from rank 0 (DDP broadcast)
        torch.manual_seed(cfg.seed + 7919 * ctx.rank + start_epoch)
    trained = ctx.wrap(model)  # DDP across ranks; checkpoints save the unwrapped `model`
    # torch.compile of a Module is an OptimizedModule, a Module (its stubs only say Callable)
    trained = cast(torch.nn.Module, torch.compile(trained)) if cfg.compile else trained
    settings = StepSettings(device, precision, stop, progress=ctx.is_main, log_every=int(cfg.log_every))
    val = make_batches(cfg, prepared, "val", device, train=False, **shard)
    test = make_batches(cfg, prepared, "test", device, train=False, **shard)
    reduce = ctx.sum if ctx.enabled else None
    cached = cfg.data.pipeline == "cached"  # the PIL pipeline's batches are augmented already
    train_aug = DeviceAugment(cfg.aug, train=cached, channels_last=channels_last, cached=cached)
    eval_aug = DeviceAugment(cfg.aug, train=False, channels_last=channels_last, cached=cached)

    def on_epoch_end(epoch: int, hist: list[dict[str, Any]], is_best: bool) -> None:
        best_val = max(h["val_top1"] for h in hist)
        last = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history": hist,
            "best_val_top1": best_val,
            "rng_cpu": torch.get_rng_state(),
            "meta": meta,
        }
        if device.type == "cuda":
            last["rng_cuda"] = torch.cuda.get_rng_state(device)
        if recipe.scheduler is not None:
            last["scheduler"] = recipe.scheduler.state_dict()
        if recipe.ema is not None:
            last["ema"] = recipe.ema.state_dict()
        checkpoint.write(run_dir / "last.pt", last)
        if is_best:
            checkpoint.write(run_dir / "best.pt", {"model": weights.state_dict(), "epoch": epoch, "meta": meta})
        write_history(run_dir, hist)
        progress["epochs_done"], progress["history"] = epoch, hist
        if epoch_hook is not None:
            epoch_hook(epoch, hist[-1])

    result = fit(
        trained,
        train,
        val,
        train_aug,
        eval_aug,
        criterion,
        optimizer,
        settings,
        cfg.epochs,
        start_epoch,
        history,
        best,
        on_epoch_end if ctx.is_main else None,
        reduce=reduce,
        eval_model=weights if (ctx.enabled or recipe.ema is not None) else None,
        recipe=recipe,
    )
    progress["epochs_done"] = len(result.history)
    if cfg.test_on == "best" and ctx.is_main and (run_dir / "best.pt").exists():
        weights.load_state_dict(checkpoint.read(run_dir / "best.pt")["model"])
    ctx.broadcast_module(weights)  # the other ranks test rank 0's weights too
    test_metrics, logits, targets = evaluate(
        weights,
        test,
        eval_aug,
        criterion,
        settings,
        keep_outputs=True,
        reduce=reduce,
        tta=recipe.tta,
        graphs=recipe.graphs,
    )
    all_logits, all_targets = ctx.gather_shards(logits), ctx.gather_shards(targets)  # None on ranks > 0
    if ctx.is_main:
        assert all_logits is not None and all_targets is not None  # rank 0 gathers every shard
        write_predictions(run_dir, prepared, all_logits, all_targets)
    details = {
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "test_loss": test_metrics["loss"],
        "classes": prepared.data.classes,
        "skipped": [list(s) for s in prepared.skipped],
    }
    return _outcome(cfg, result, test_metrics), details


def _outcome(cfg: DictConfig, result: Any, test_metrics: dict[str, float]) -> dict[str, Any]:
    last = result.history[-1]
    best_row = next((h for h in result.history if h["epoch"] == result.best_epoch), last)
    val_row = best_row if cfg.test_on == "best" else last
    return {
        "status": result.status,
        "epochs_done": len(result.history),
        **{f"val_top{k}": round(val_row[f"val_top{k}"], 2) for k in (1, 3, 5)},
        **{f"test_top{k}": round(test_metrics[f"top{k}"], 2) for k in (1, 3, 5)},
        "train_seconds": round(result.train_seconds, 2),
        "images_per_s": round(sum(h["images_per_s"] for h in result.history) / len(result.history), 1),
    }
