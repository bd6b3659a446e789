"""Data-parallel training across processes: which process this is, the process group, and the few
collective steps a run needs. Launched the standard way, `torchrun --nproc_per_node=N -m animalcls
train ...` (or `srun torchrun ...` on a cluster); with one process nothing here does anything.

Who does what in a run of N processes:
- every rank trains on its shard [rank::N] of each epoch's seeded permutation of the train set, with
  batch_size/N images a step, so (cached pipeline) the N shards of step k together are exactly the
  single-process batch k, and batch_size keeps meaning images per optimizer step;
- validation and test run on shards [rank::N] (every image exactly once, no padding) and their
  metric sums are added across ranks, so they equal a one-process evaluation;
- rank 0 alone decides (skip-if-done, resume) and writes (run dir, checkpoints, results row); the
  other ranks send Hydra's run dir and log nowhere (see `hydra_overrides_for_rank`).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from animalcls.errors import AnimalclsError

if TYPE_CHECKING:
    from animalcls.steps import EpochBatches

log = logging.getLogger(__name__)


def env_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def hydra_overrides_for_rank() -> list[str]:
    """Hydra overrides that make a non-zero rank write nothing: no .hydra/ dir, the log to
    /dev/null, warnings only on the console (its own and Hydra's), and its (empty) run/sweep dir
    in a temp folder that is removed at exit. Rank 0 (and a plain process) gets no overrides."""
    rank, world_size, _ = env_ranks()
    if world_size <= 1 or rank == 0:
        return []
    scratch = tempfile.mkdtemp(prefix=f"animalcls-rank{rank}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [
        f"hydra.run.dir='{scratch}'",
        f"hydra.sweep.dir='{scratch}'",
        "hydra.sweep.subdir=.",
        "hydra.output_subdir=null",
        f"hydra.job_logging.handlers.file.filename='{os.devnull}'",
        "hydra.job_logging.root.level=WARNING",
        "hydra.hydra_logging.root.level=WARNING",
    ]


def with_rank_overrides(argv: list[str]) -> list[str]:
    """`argv` (Hydra's command line, argv[0] first) with `hydra_overrides_for_rank()` added where
    Hydra's argparse accepts them: right after the user's overrides (a second run of positional
    arguments after a flag such as `-m` or `--cfg job` would be refused), else at the end."""
    extra = hydra_overrides_for_rank()
    if not extra:
        return argv
    from hydra._internal.utils import get_args_parser

    args = argv[1:]
    overrides, _ = get_args_parser().parse_known_args(args)
    overrides = overrides.overrides
    end = len(args)
    for i in range(len(args) - len(overrides), -1, -1):
        if overrides and args[i : i + len(overrides)] == overrides:
            end = i + len(overrides)
            break
    return [argv[0], *args[:end], *extra, *args[end:]]


@dataclass
class Context:
    """This process's place in the run; world_size 1 means a plain single-process run."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _comm: torch.device = field(default=torch.device("cpu"), repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """The results table's device column: 'cpu', 'cuda:0', or 'cuda x8 (ddp)'."""
        return f"{self.device.type} x{self.world_size} (ddp)" if self.enabled else str(self.device)

    # ---------------------------------------------------------------- collectives

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """Rank 0's `compute()` on every rank (computed on rank 0 only). An exception on rank 0 is
        raised on every rank, so no rank waits forever for the others."""
        if not self.enabled:
            return compute()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", compute())
            except Exception as exc:  # re-raised below, on rank 0 and the others alike
                box[0] = ("error", exc)
        torch.distributed.broadcast_object_list(box, src=0, device=self._comm)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (the `reduce=` of engine.evaluate/fit)."""
        if not self.enabled:
            return tensor
        total = tensor.detach().to(self._comm, torch.float64).clone()
        torch.distributed.all_reduce(total)
        return total.to(tensor.device)

    def gather_shards(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """On rank 0, the rows of every rank's shard [rank::N] put back in their original order
        (None on the other ranks). Shards may differ in length by one."""
        if not self.enabled:
            return tensor
        parts: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(tensor.cpu(), parts, dst=0)
        if parts is None:  # not rank 0
            return None
        total = sum(p.shape[0] for p in parts)
        out = torch.empty((total, *parts[0].shape[1:]), dtype=parts[0].dtype)
        for rank, part in enumerate(parts):
            out[rank :: self.world_size] = part
        return out

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's module, in place."""
        if not self.enabled:
            return
        with torch.no_grad():
            for value in module.state_dict().values():
                staged = value.to(self._comm)  # the tensor itself when already there
                torch.distributed.broadcast(staged, src=0)
                if staged is not value:
                    value.copy_(staged)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train: DistributedDataParallel across ranks (which also starts every rank
        from rank 0's weights); the model itself when alone. Checkpoints keep saving `model`."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def even_steps(self, batches: EpochBatches, num_samples: int, per_rank_batch: int) -> EpochBatches:
        """Train batches cut to the step count every rank has, so DDP's gradient all-reduces pair
        up. Only when the last global batch holds fewer images than there are ranks does a rank
        have one step more; those < N images sit out that epoch (the next permutation differs)."""
        if not self.enabled:
            return batches
        steps = min(
            math.ceil(len(range(r, num_samples, self.world_size)) / per_rank_batch) for r in range(self.world_size)
        )
        return batches if len(batches) == steps else EvenSteps(batches, steps)


class EvenSteps:
    """The first `steps` batches of a batch iterator (TensorBatches or PILBatches)."""

    def __init__(self, batches: EpochBatches, steps: int) -> None:
        self.batches, self.steps = batches, steps

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step, batch in enumerate(self.batches):
            if step >= self.steps:
                return
            yield batch


_context: Context | None = None


def setup(device: torch.device, requested: str = "auto") -> Context:
    """This process's Context; under torchrun (WORLD_SIZE > 1) joins the process group once per
    process (nccl on CUDA, with device cuda:LOCAL_RANK; gloo on CPU) and keeps it for later runs of
    a sweep. `device` is what the config asked for, already resolved for a single process."""
    global _context
    rank, world_size, local_rank = env_ranks()
    if world_size <= 1:
        return Context(device)
    if device.type == "cuda":
        if requested not in ("auto", "cuda") and device.index not in (None, local_rank):
            log.warning(
                "device=%s ignored under torchrun: rank %d uses cuda:%d (LOCAL_RANK)", requested, rank, local_rank
            )
        if local_rank >= torch.cuda.device_count():
            raise AnimalclsError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA "
                f"device(s) are visible; use --nproc_per_node <= the GPUs per node."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if _context is not None:
        if _context.device != device:
            raise AnimalclsError(
                f"one torchrun process cannot switch devices between runs "
                f"({_context.device}, then {device}); sweep devices in separate launches."
            )
        return _context
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
        atexit.register(_shutdown)
    backend = torch.distributed.get_backend()  # the group's own, should someone else have made it
    log.info("data-parallel: rank %d of %d (%s, %s)", rank, world_size, device, backend)
    comm = device if backend == "nccl" else torch.device("cpu")  # where collectives' tensors live
    _context = Context(device, rank, world_size, local_rank, comm)
    return _context


def _shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
