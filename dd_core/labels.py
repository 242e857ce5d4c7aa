"""Label stores: every way of giving a training target to a synthetic image, in one currency.

A store answers `targets(idx, views, epoch) -> (n, classes)` probability rows for the synthetic
images `idx` seen as the (possibly augmented) `views` in evaluation epoch `epoch`, and reports
the exact bytes needed to reproduce those targets. One soft cross-entropy trains on all of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Registry

LABEL_STORES: Registry = Registry("label store")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k targets_k log softmax(logits)_k; equals F.cross_entropy for one-hot targets."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class LabelStore:
    """Base: class-probability targets for a batch plus the bytes they cost."""

    name = "base"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def targets(self, idx: torch.Tensor, views: torch.Tensor, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def nbytes(self) -> int:
        raise NotImplementedError

    def formula(self) -> str:
        """How nbytes() is computed, in words and symbols, for the trade-off table."""
        raise NotImplementedError


@LABEL_STORES.register("hard")
class HardLabels(LabelStore):
    """One class index per image, stored as the smallest unsigned integer that holds it."""

    name = "hard"

    def __init__(self, labels: torch.Tensor, num_classes: int):
        super().__init__(num_classes)
        self.labels = labels.long()  # (n,)

    def targets(self, idx, views=None, epoch=0):
        return F.one_hot(self.labels[idx].to(idx.device), self.num_classes).float()

    def bytes_per_label(self) -> int:
        return 1 if self.num_classes <= 256 else 2

    def nbytes(self) -> int:
        return len(self.labels) * self.bytes_per_label()

    def formula(self) -> str:
        return f"N x {self.bytes_per_label()} B (one class index per image)"
