"""Drawing real images by class, and the per-class means that matching methods compare."""
from __future__ import annotations

import torch

from ..models import chunk_size, fast_embed


RESIDENT_BYTES = 4 * 2**30  # training sets up to this size stay on the GPU for a run (CIFAR-10: 0.6 GB)


class RealSampler:
    """Draws `n` real images of a class (or of every class at once) from the training tensors."""

    def __init__(self, real, device: torch.device):
        self.x = real.x_train  # (N, c, h, w): the dataset's own tensor, on the CPU
        self._x_device = None  # on a GPU, one copy of it there (see source)
        self.by_class = [real.indices_of(c) for c in range(real.num_classes)]
        self.device = device

    def indices(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        idx = self.by_class[c]
        if n >= len(idx):
            return idx[torch.randperm(len(idx), generator=generator)]
        return idx[torch.randperm(len(idx), generator=generator)[:n]]

    def batch(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        source = self.source()
        return source[self.indices(c, n, generator).to(source.device)].to(self.device)  # (n, c, h, w)

    def all_classes(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n images of every class, concatenated class by class, and their class ids."""
        idx = [self.indices(c, n, generator) for c in range(len(self.by_class))]
        groups = torch.cat([torch.full((len(i),), c, dtype=torch.long) for c, i in enumerate(idx)])
        source = self.source()
        return source[torch.cat(idx).to(source.device)].to(self.device), groups.to(self.device)

    def source(self) -> torch.Tensor:
        """The tensor batches are drawn from. On a GPU, a copy of the training images kept there for
        the run (up to RESIDENT_BYTES), so a draw indexes on the GPU and copies nothing from the host:
        DM's paper step draws 2,560 CIFAR images (31 MB) each time. On the CPU the dataset's own."""
        if torch.device(self.device).type == "cpu" or self.x.numel() * self.x.element_size() > RESIDENT_BYTES:
            return self.x
        if self._x_device is None:
            self._x_device = self.x.to(self.device)
        return self._x_device

    def __getstate__(self):  # a packed run (dd_core.run_state) leaves the device copy out; remade on use
        return {**self.__dict__, "_x_device": None}


def class_means(features: torch.Tensor, groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(n, d) features and (n,) class ids -> (classes, d) mean feature of each class."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, groups, features)
    counts = torch.bincount(groups, minlength=num_classes).clamp(min=1).to(features.dtype)
    return sums / counts[:, None]


def frozen(net: torch.nn.Module) -> torch.nn.Module:
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _in_chunks(embed, x: torch.Tensor, chunk: int) -> torch.Tensor:
    if chunk >= len(x):
        return embed(x)
    return torch.cat([embed(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def embed_chunked(net, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Embed without gradients, chunk by chunk (see chunk_size), through ConvNet's faster CPU path."""
    with torch.no_grad():
        return _in_chunks(fast_embed(net), x, chunk or chunk_size(net, x))


def embed_in_chunks(net, x: torch.Tensor) -> torch.Tensor:
    """Embed *with* gradients, chunk by chunk: the same cache effect for the synthetic side, whose
    chunks each keep their own graph for the backward pass; through the faster CPU path too."""
    return _in_chunks(fast_embed(net), x, chunk_size(net, x))
