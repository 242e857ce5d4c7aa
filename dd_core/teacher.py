"""Networks trained on the whole real training set ("squeeze"): the teacher for soft labels, the
feature extractor for coresets and the feature-space map. Cached per dataset and architecture,
in memory and on disk (cache.py: a .safetensors file with the recipe and test accuracy, written
atomically, rebuilt with a logged note when it fails validation), and always reported with
their test accuracy."""
from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import progress
from .augment import dsa_for
from .cache import cache_path, load_or_build, lock_for
from .data import Dataset
from .device import default_device
from .interrupt import check
from .models import model_for
from .training import test_accuracy

_memory: dict[str, "Teacher"] = {}


@dataclass
class Teacher:
    """A trained network and how good it is."""

    net: torch.nn.Module
    arch: str
    epochs: int
    test_accuracy: float  # fraction in [0, 1]
    seconds: float

    temperature_: float | None = field(default=None, repr=False)  # set by calibrated_temperature()

    def describe(self) -> str:
        return (f"{self.arch} trained {self.epochs} epochs on the whole training set "
                f"(test accuracy {self.test_accuracy:.3f})")

    def calibrated_temperature(self, dataset: Dataset, *, images: int = 2000, seed: int = 0) -> float:
        """Temperature scaling (Guo et al., ICML 2017): the T minimising the NLL of softmax(logits / T)
        on DSA-augmented real *training* images (the test set is never used). A short-trained teacher
        can be far from calibrated (nearly uniform or nearly one-hot soft labels); label stores
        start from this T, and label the augmented views the student trains on."""
        if self.temperature_ is None:
            device = next(self.net.parameters()).device
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(dataset.x_train), generator=g)[:images]
            augment = dsa_for(dataset)
            x = augment.apply(dataset.x_train[idx], augment.sample(len(idx), g), torch.arange(len(idx)))
            with torch.no_grad():
                logits = torch.cat([self.net(x[i:i + 512].to(device)).cpu() for i in range(0, len(x), 512)])
            grid = torch.logspace(-2, 1.3, 200)  # T from 0.01 to 20
            nll = torch.stack([F.cross_entropy(logits / t, dataset.y_train[idx]) for t in grid])
            self.temperature_ = round(float(grid[nll.argmin()]), 4)
        return self.temperature_


def _key(dataset: Dataset, arch: str, epochs: int, seed: int) -> str:
    # Folder datasets share names across users' folders: key on the data itself as well.
    digest = hashlib.sha1(dataset.x_train[:: max(1, len(dataset.x_train) // 512)].numpy().tobytes()).hexdigest()[:10]
    return f"{dataset.name.replace(':', '_').replace('/', '_')}-{arch}-e{epochs}-s{seed}-{digest}"


BATCH = 128  # the feature network's batch


def train_on_real(dataset: Dataset, arch: str, epochs: int, seed: int, device, batch_size: int = BATCH,
                  stop: threading.Event | None = None) -> torch.nn.Module:
    """Plain supervised training: SGD lr 0.01 (x0.1 at half), momentum 0.9, wd 5e-4, batch 128.
    Raises `Interrupted` between batches once `stop` is set."""
    net = model_for(dataset, arch, seed=seed, device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    n = len(dataset.x_train)
    net.train()
    for epoch in range(epochs):
        if epoch == epochs // 2 and epochs > 1:
            for group in opt.param_groups:
                group["lr"] = 0.001
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            check(stop)
            progress.advance()
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(net(dataset.x_train[idx].to(device)), dataset.y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    return net


def _save(value: tuple[torch.nn.Module, float], path: Path, meta: dict[str, str]) -> None:
    net, accuracy = value
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={**meta, "test_accuracy": repr(accuracy)})


def _load(path: Path, dataset: Dataset, meta: dict[str, str], device) -> tuple[torch.nn.Module, float]:
    """A cached teacher, validated: the metadata must name this key and recipe, and the weights
    must fit the network exactly (load_state_dict is strict); anything else raises."""
    with safe_open(str(path), framework="pt") as f:
        stored = f.metadata() or {}
    for name, value in meta.items():
        if stored.get(name) != value:
            raise ValueError(f"metadata {name!r} is {stored.get(name)!r}, expected {value!r}")
    net = model_for(dataset, meta["arch"], seed=int(meta["seed"]), device=device)
    net.load_state_dict(load_file(str(path), device=str(device)))
    return net.eval(), float(stored["test_accuracy"])


def get_teacher(dataset: Dataset, *, arch: str | None = None, epochs: int | None = None, seed: int = 0,
                device=None, stop: threading.Event | None = None) -> Teacher:
    """The cached trained network for a dataset (trained now if not cached). Training stops with
    `Interrupted` once `stop` is set; nothing is cached then."""
    device = device or default_device()
    arch, epochs = arch or dataset.teacher_arch, epochs or dataset.teacher_epochs  # the dataset's recipe
    key = _key(dataset, arch, epochs, seed)
    path = cache_path("teachers", key, ".safetensors")
    with lock_for(path):  # one training per key, even with several users asking at once
        if key in _memory:
            return _memory[key]
        t0 = time.perf_counter()
        meta = {"key": key, "arch": arch, "epochs": str(epochs), "seed": str(seed)}

        def build() -> tuple[torch.nn.Module, float]:
            # a run's set-up (herding, k-center, ...): its watcher sees the steps go by
            with progress.task(f"training the feature network on {dataset.name} ({arch}, {epochs} epochs; once, "
                               "cached afterwards)", epochs * math.ceil(len(dataset.x_train) / BATCH)):
                net = train_on_real(dataset, arch, epochs, seed, device, stop=stop)
            return net, test_accuracy(net, dataset, device)

        (net, accuracy), _ = load_or_build(path,
                                           load=lambda path: _load(path, dataset, meta, device), build=build,
                                           save=lambda value, tmp: _save(value, tmp, meta))
        for p in net.parameters():
            p.requires_grad_(False)
        teacher = Teacher(net, arch, epochs, accuracy, time.perf_counter() - t0)
        net.eval()
        _memory[key] = teacher
        return teacher


@torch.no_grad()
def features(net: torch.nn.Module, x: torch.Tensor, device, chunk: int = 512) -> torch.Tensor:
    """(n, c, h, w) -> (n, d) embeddings on the CPU."""
    net.eval()
    return torch.cat([net.embed(x[i:i + chunk].to(device)).cpu() for i in range(0, len(x), chunk)])


@torch.no_grad()
def logits(net: torch.nn.Module, x: torch.Tensor, device, chunk: int = 512) -> torch.Tensor:
    """(n, c, h, w) -> (n, classes) class scores on the CPU."""
    net.eval()
    return torch.cat([net(x[i:i + chunk].to(device)).cpu() for i in range(0, len(x), chunk)])


@torch.no_grad()
def probabilities(net: torch.nn.Module, x: torch.Tensor, device, temperature: float = 1.0,
                  chunk: int = 512) -> torch.Tensor:
    """(n, c, h, w) -> (n, classes) softmax(logits / temperature) on the CPU: a teacher's soft labels."""
    return F.softmax(logits(net, x, device, chunk) / temperature, dim=1)


def whole_reference(dataset: Dataset, stop: threading.Event | None = None) -> tuple[float, str]:
    """The whole-dataset reference: test accuracy (fraction) of the cached network trained on the
    whole training set (trained now if not cached), and a line saying what it is."""
    teacher = get_teacher(dataset, stop=stop)
    note = teacher.describe()
    if dataset.published_whole is not None:
        note += f"; the papers report {dataset.published_whole:.3f} for ConvNet-3 trained to convergence"
    return teacher.test_accuracy, note
