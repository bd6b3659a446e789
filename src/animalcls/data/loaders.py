"""Batches on the device: TensorBatches over a decoded uint8 tensor, PILBatches over PIL-decoded files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from animalcls.data.decode import to_rgb
from animalcls.data.scan import Dataset, Indices

if TYPE_CHECKING:
    from omegaconf import DictConfig


ORDERS = ("random", "block")  # data.order


def block_order(n: int, generator: torch.Generator, block: int, window: int) -> torch.Tensor:
    """A quasi-random permutation of 0..n-1 that reads a memory-mapped cache in long runs.

    The positions are cut into consecutive blocks of `block` (the last may be short); the blocks
    are shuffled; the shuffled list is taken `window` blocks at a time and the positions within
    each window are shuffled together. Every `window * block` consecutive outputs of a window are
    thus the positions of `window` blocks: reading them touches `window` contiguous runs of cache
    rows (a split's rows are sorted, so a run of positions is a run of rows with the other splits'
    rows in its gaps), not `window * block` scattered rows. FFCV's QUASI_RANDOM order, the same
    idea. block=1 window=1 is a plain shuffle of the positions (not `torch.randperm`'s: a
    different order for the same seed).

    DDP: every rank draws this global order with the same generator state (seed and epoch) and
    takes `order[rank::world_size]`, exactly as for the random order; on one node the ranks share
    the page cache, so each window is read from disk once per node, by the ranks concurrently.
    """
    if n < 0 or block < 1 or window < 1:
        raise ValueError(f"block_order(n={n}, block={block}, window={window}): n >= 0, block >= 1, window >= 1")
    starts = torch.arange(0, n, block)
    starts = starts[torch.randperm(starts.numel(), generator=generator)]
    pieces = []
    for first in range(0, starts.numel(), window):
        positions = torch.cat([torch.arange(s, min(s + block, n)) for s in starts[first : first + window].tolist()])
        pieces.append(positions[torch.randperm(positions.numel(), generator=generator)])
    return torch.cat(pieces) if pieces else torch.arange(0)


class TensorBatches:
    """Batches of a uint8 image tensor: a shuffled, seeded order per epoch; optional rank sharding.

    `order`: "random" (a full permutation per epoch) or "block" (`block_order` with `block_images`
    and `block_window`: fewer, longer reads from a cache larger than RAM). Unshuffled batches
    (evaluation) are in row order either way.

    When the images live on the host and the device is CUDA, each batch is gathered into pinned
    memory and copied asynchronously, so the copy overlaps with the previous step's compute.

    `rows` (optional): the rows of `images` this loader serves, `labels` being theirs. With it a
    split reads its batches straight from the whole (memory-mapped) decode cache, and only a batch
    at a time is ever copied; without it every row of `images` is served.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        rows: torch.Tensor | None = None,
        order: str = "random",
        block_images: int = 256,
        block_window: int = 8,
    ) -> None:
        if rows is not None and rows.shape[0] != labels.shape[0]:
            raise ValueError(f"{rows.shape[0]} rows for {labels.shape[0]} labels")
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: one of {', '.join(ORDERS)}")
        self.order, self.block_images, self.block_window = order, block_images, block_window
        self.images, self.labels, self.rows = images, labels, rows
        self.batch_size, self.device, self.shuffle = batch_size, device, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.pin = device.type == "cuda" and images.device.type == "cpu"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = self.labels.shape[0]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            if self.order == "block":
                order = block_order(n, generator, self.block_images, self.block_window)
            else:
                order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(range(self.rank, self.labels.shape[0], self.world_size))
        return (n + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return len(range(self.rank, self.labels.shape[0], self.world_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the epoch's order goes to the images' device once: a blocking copy per batch would
        # synchronise CUDA every step
        positions = self._order()
        order = (positions if self.rows is None else self.rows[positions]).to(self.images.device)
        labels_order = positions.to(self.labels.device)
        for start in range(0, order.shape[0], self.batch_size):
            x = self.images.index_select(0, order[start : start + self.batch_size])
            y = self.labels.index_select(0, labels_order[start : start + self.batch_size])
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


Transform = Callable[[Image.Image], torch.Tensor]


class _PILDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, root: Path, paths: list[str], labels: Indices, transform: Transform) -> None:
        self.root, self.paths, self.labels, self.transform = root, paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.root / self.paths[i]) as image:
            return self.transform(to_rgb(image)), int(self.labels[i])


def pil_transform(aug: DictConfig, train: bool) -> Transform:
    """The paper's torchvision transform chain, ending in uint8 (normalised later, on the device)."""
    from torchvision import transforms as T

    steps: list[Any] = [T.Resize(aug.resize)]
    if train and aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if train and aug.rotation > 0:
        steps.append(T.RandomRotation(aug.rotation))
    steps += [T.CenterCrop(aug.crop), T.PILToTensor()]
    transform: Transform = T.Compose(steps)
    return transform


class PILBatches:
    """DataLoader over PIL-decoded images, yielding device tensors like TensorBatches."""

    def __init__(
        self,
        data: Dataset,
        index: Indices,
        aug: DictConfig,
        train: bool,
        batch_size: int,
        device: torch.device,
        workers: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        index = index[rank::world_size]
        dataset = _PILDataset(data.root, [data.paths[i] for i in index], data.labels[index], pil_transform(aug, train))
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            num_workers=workers,
            generator=self.generator,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        self.device = device
        self.num_samples = len(dataset)

    def set_epoch(self, epoch: int) -> None:
        # both the run's seed and the epoch: runs with different seeds must see different orders
        self.generator.manual_seed((self.seed * 1_000_003 + epoch) % 2**63)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
