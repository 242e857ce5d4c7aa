"""A small self-supervised encoder of the real training images, without their labels: the target
model of KRR-ST. Trained with Barlow Twins (Zbontar et al., ICML 2021) on two augmented views of
each image, and cached (dd_core/cache.py) per dataset, network, epochs and seed.

Its representation of an image is the network's embedding (`embed()`, the layer before the
classifier); the projector used by the Barlow Twins loss is dropped after training, as usual.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .augment import dsa_for
from .cache import cache_path, load_or_build
from .data import Dataset
from .interrupt import check
from .models import model_for
from .teacher import features

# Per dataset: (network, epochs). Sized for a CPU: digits in seconds, 32 px data in minutes.
RECIPES = {"digits": ("convnet_d2", 10)}
DEFAULT_RECIPE = ("convnet_w32", 5)


@dataclass
class Encoder:
    """A self-supervised encoder and how it was made."""

    net: nn.Module
    arch: str
    epochs: int
    seconds: float
    cached: bool

    stats_: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # set by targets()

    def describe(self) -> str:
        return f"{self.arch} trained {self.epochs} epochs with Barlow Twins on the unlabelled training images"

    def targets(self, dataset: Dataset, images: torch.Tensor, device) -> torch.Tensor:
        """(n, c, h, w) -> (n, d) representations, standardized per dimension with the mean and std
        over the whole training set, so every dimension weighs alike in a squared error."""
        if self.stats_ is None:
            y = features(self.net, dataset.x_train, device)  # (N, d)
            self.stats_ = (y.mean(0), y.std(0) + 1e-6)
        mean, std = self.stats_
        return (features(self.net, images, device) - mean) / std


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, off_diagonal: float = 5e-3) -> torch.Tensor:
    """(n, k) projections of two views -> the Barlow Twins loss: the cross-correlation of the
    standardized projections pushed to the identity (invariance on the diagonal, redundancy
    reduction off it, weighted by `off_diagonal`)."""
    n = len(z1)
    a = (z1 - z1.mean(0)) / (z1.std(0) + 1e-5)
    b = (z2 - z2.mean(0)) / (z2.std(0) + 1e-5)
    c = a.T @ b / n  # (k, k)
    diag = torch.diagonal(c)
    return (diag - 1).pow(2).sum() + off_diagonal * (c.pow(2).sum() - diag.pow(2).sum())


def train_encoder(dataset: Dataset, arch: str, epochs: int, *, seed: int, device, batch_size: int = 256,
                  lr: float = 1e-3, stop: threading.Event | None = None) -> nn.Module:
    """Barlow Twins on the training images (labels unused): Adam lr 1e-3, batches of 256, a
    2-layer projector to 256 dimensions; views are DSA augmentations drawn per image."""
    net = model_for(dataset, arch, seed=seed, device=device)
    dim = net.embed(dataset.x_train[:2].to(device)).shape[1]
    with torch.random.fork_rng(devices=[]):  # the projector's initial weights from the seed, the global RNG untouched
        torch.manual_seed(seed)
        projector = nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 256)).to(device)
    opt = torch.optim.Adam(list(net.parameters()) + list(projector.parameters()), lr=lr)
    augment = dsa_for(dataset)
    g = torch.Generator().manual_seed(seed)
    n = len(dataset.x_train)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - 1, batch_size):
            check(stop)
            x = dataset.x_train[perm[i:i + batch_size]].to(device)  # (b, c, h, w)
            if len(x) < 2:
                continue
            views = [augment.apply(x, augment.sample(len(x), g), torch.arange(len(x))) for _ in range(2)]
            loss = barlow_twins_loss(projector(net.embed(views[0])), projector(net.embed(views[1])))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    return net


def _key(dataset: Dataset, arch: str, epochs: int, seed: int) -> str:
    # Folder datasets share names across users' folders: key on the data itself as well.
    digest = hashlib.sha1(dataset.x_train[:: max(1, len(dataset.x_train) // 512)].numpy().tobytes()).hexdigest()[:10]
    return f"{dataset.name}-{arch}-e{epochs}-s{seed}-{digest}"


def get_encoder(dataset: Dataset, *, arch: str | None = None, epochs: int | None = None, seed: int = 0,
                device=None, stop: threading.Event | None = None) -> Encoder:
    """The cached self-supervised encoder for a dataset (trained now if not cached)."""
    from safetensors.torch import load_file, save_file

    device = device or torch.device("cpu")
    default_arch, default_epochs = RECIPES.get(dataset.name, DEFAULT_RECIPE)
    arch, epochs = arch or default_arch, epochs or default_epochs
    t0 = time.perf_counter()

    def load(path):
        net = model_for(dataset, arch, seed=seed, device=device)
        net.load_state_dict(load_file(str(path), device=str(device)))
        return net

    def save(net, path):
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path))

    net, cached = load_or_build(cache_path("ssl_encoders", _key(dataset, arch, epochs, seed), ".safetensors"),
                                load=load, save=save,
                                build=lambda: train_encoder(dataset, arch, epochs, seed=seed, device=device, stop=stop))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Encoder(net, arch, epochs, time.perf_counter() - t0, cached)
