"""Accuracy arithmetic: top-k hits, confusion matrix, per-class accuracy."""

from __future__ import annotations

from collections.abc import Iterable

import torch

TOPK = (1, 3, 5)


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int] = TOPK) -> torch.Tensor:
    """Per k, the number of samples whose label is among the k highest scores (a tensor on the
    logits' device, so that accumulating it does not synchronise with an accelerator).

    k is clipped to the class count, so top-5 of a 3-class problem is top-3 (always a hit).
    """
    ks = tuple(ks)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target.view(-1, 1)).cumsum(dim=1).clamp(max=1).sum(dim=0)
    return torch.stack([hits[min(k, kmax) - 1] for k in ks])


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int] = TOPK) -> dict[int, int]:
    ks = tuple(ks)
    return dict(zip(ks, topk_hits(logits, target, ks).tolist()))


class TopKMeter:
    """Accumulates loss and top-k hits over batches on the device; reports percentages.

    `update` only keeps the batch's (detached) tensors; every FOLD_EVERY batches they are folded
    into the sums with a handful of kernels, instead of a dozen tiny ones per batch, and never a
    host-device synchronisation (on CUDA, the engine's step is otherwise launch-bound at small
    batch sizes).
    """

    FOLD_EVERY = 32

    def __init__(self, ks: Iterable[int] = TOPK) -> None:
        self.ks = tuple(ks)
        self._sums: torch.Tensor | None = None  # [count, loss_sum, hits_k...]
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        self._pending.append((logits.detach(), target.detach(), loss.detach().reshape(())))
        if len(self._pending) >= self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        logits = torch.cat([p[0] for p in self._pending])
        target = torch.cat([p[1] for p in self._pending])
        sizes = [p[1].shape[0] for p in self._pending]
        losses = torch.stack([p[2].to(logits.device) for p in self._pending]).double()
        # non_blocking: a small pageable copy that does not wait for the device
        weights = torch.tensor(sizes, dtype=torch.float64).to(logits.device, non_blocking=True)
        row = torch.cat(
            [
                torch.full((1,), float(sum(sizes)), dtype=torch.float64, device=logits.device),
                (losses * weights).sum().view(1),
                topk_hits(logits, target, self.ks).double(),
            ]
        )
        self._sums = row if self._sums is None else self._sums + row
        self._pending.clear()

    def state(self) -> torch.Tensor:
        """Raw sums [count, loss_sum, hits...], for reduction across processes."""
        self._fold()
        return self._sums if self._sums is not None else torch.zeros(2 + len(self.ks), dtype=torch.float64)

    def load_state(self, sums: torch.Tensor) -> None:
        self._pending.clear()
        self._sums = sums

    def _values(self) -> list[float]:
        return self.state().tolist()

    @property
    def count(self) -> int:
        return int(round(self._values()[0]))

    @property
    def loss(self) -> float:
        values = self._values()
        return values[1] / max(values[0], 1)

    def accuracy(self, k: int) -> float:
        values = self._values()
        return 100.0 * values[2 + self.ks.index(k)] / max(values[0], 1)


def confusion_matrix(target: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    index = target.long() * num_classes + predicted.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Percent correct per true class; NaN for a class with no samples."""
    totals = confusion.sum(dim=1).double()
    return 100.0 * confusion.diagonal().double() / totals.where(totals > 0, torch.tensor(float("nan")).double())
