"""What an evaluation network trains on and how it is scored: the replayable sequence of augmented
training views, and test accuracy. Shared by the evaluator, the teachers and the label stores that
replay the evaluator's views, so none of them needs to import another."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterator

import torch

from .data import Dataset
from .models import chunk_size, fast_forward

DSA_OPS = ("batch", "image")


@dataclass
class Accuracies:
    """Test accuracies (fractions) of several networks trained one way; the evaluator's and the
    transfer protocol's results both extend it."""

    accuracies: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def summary(self) -> dict:
        return {"accuracy_mean": self.mean, "accuracy_std": self.std, "accuracies": self.accuracies}


def training_views(images: torch.Tensor, *, epochs: int, batch_size: int, augment, seed: int,
                   dsa_ops: str = "batch") -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """The exact sequence of (epoch, indices, augmented views) an evaluation network trains on.
    Deterministic for a seed, so a label store can replay it and label the very same views.
    Every image gets its own augmentation numbers; `dsa_ops` says whether the op itself is drawn
    once per batch (the reference evaluation) or once per image."""
    if dsa_ops not in DSA_OPS:
        raise ValueError(f"unknown dsa_ops {dsa_ops!r}; valid values are: {', '.join(DSA_OPS)}")
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            views = images[idx.to(images.device)]
            if augment is not None:
                params = augment.sample_batch(len(idx), g) if dsa_ops == "batch" else augment.sample(len(idx), g)
                views = augment.apply(views, params, torch.arange(len(idx)))
            yield epoch, idx, views


@torch.no_grad()
def test_accuracy(net: torch.nn.Module, dataset: Dataset, device, chunk: int | None = None) -> float:
    """Accuracy on the test set, in cache-sized chunks on a CPU (models.chunk_size), 1000 on a GPU.
    The network is left in the mode it came in (a frozen teacher stays in eval mode, so its
    batch-norm statistics are never updated by a later forward)."""
    was_training = net.training
    net.eval()
    forward = fast_forward(net)
    chunk = chunk or (1000 if torch.device(device).type != "cpu" else chunk_size(net, dataset.x_test[:1]))
    correct = 0
    for i in range(0, len(dataset.x_test), chunk):
        x = dataset.x_test[i:i + chunk].to(device)
        correct += (forward(x).argmax(1).cpu() == dataset.y_test[i:i + chunk]).sum().item()
    net.train(was_training)
    return correct / len(dataset.x_test)
