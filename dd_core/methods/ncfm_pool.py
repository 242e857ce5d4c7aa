"""NCFM's pool of pretrained networks (Wang et al., CVPR 2025).

The public code trains a few networks on the real data before distilling and keeps each one's
initial and final weights. Every outer iteration then picks one member at random and a number l
in [0, 1): the CF matching embeds through the blend l * initial + (1 - l) * trained, and the
calibration loss classifies through the trained network itself. Members are cached on disk, one
.safetensors file each with its test accuracy, and member i always starts from seed i, so every
distillation seed shares the same pool.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..augment import dsa_for
from ..cache import cache_path, load_or_build
from ..training import test_accuracy
from ..models import build_model

# The public pre-training recipe (pretrain_script.py, train_epoch and the configs): SGD lr 0.01,
# momentum 0.9, weight decay 0.01, batch 256, lr x0.2 at 2/3 and at 5/6 of the epochs, the DSA
# ops on every batch, and CutMix (Beta(1, 1) box, partner loss weighted by its area) on half the
# batches. CutMix partners here are a random permutation of the batch.
LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.01, 0.9, 0.01, 256
GAMMA = 0.2
CUTMIX_P = 0.5
RECIPE = "ncfm-r1"  # part of the cache key: change it when the recipe changes


@dataclass
class Member:
    """One pool network: its starting weights, its trained weights and how good the latter is."""

    init: dict[str, torch.Tensor]
    trained: dict[str, torch.Tensor]
    test_accuracy: float  # fraction of the test set, after training


def _milestones(epochs: int) -> tuple[int, int]:
    return 2 * epochs // 3, 5 * epochs // 6


def _cutmix(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a box of a partner image into each image; returns the mixed batch, the partners'
    indices, and the fraction of each image that is still its own."""
    n, _, h, w = x.shape
    lam = float(torch.rand(1, generator=g))  # Beta(1, 1) is uniform
    cut = (1 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    partner = torch.randperm(n, generator=g).to(x.device)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[partner, :, y0:y1, x0:x1]
    return x, partner, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def train_member(dataset, arch: str, epochs: int, index: int, device,
                 check_stop: Callable[[], None] = lambda: None) -> Member:
    """Train pool network `index` from seed `index` with the public recipe; `check_stop` runs
    between batches (it raises to stop)."""
    net = build_model(arch, channels=dataset.channels, num_classes=dataset.num_classes,
                      image_size=dataset.image_size, seed=index, device=device)
    init = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    augment, g = dsa_for(dataset), torch.Generator().manual_seed(index)
    n = len(dataset.x_train)
    net.train()
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = LR * GAMMA ** sum(epoch >= m for m in _milestones(epochs))
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            check_stop()
            idx = perm[i:i + BATCH]
            x = augment.apply(dataset.x_train[idx], augment.sample_batch(len(idx), g), torch.arange(len(idx)))
            x, y = x.to(device), dataset.y_train[idx].to(device)
            if float(torch.rand(1, generator=g)) < CUTMIX_P:
                x, partner, own = _cutmix(x, g)
                out = net(x)
                loss = own * F.cross_entropy(out, y) + (1 - own) * F.cross_entropy(out, y[partner])
            else:
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    trained = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return Member(init, trained, test_accuracy(net, dataset, device))


def member_path(dataset, arch: str, epochs: int, index: int):
    # A folder dataset's name is not unique across users' folders: key on the data as well.
    digest = hashlib.sha1(dataset.x_train[:: max(1, len(dataset.x_train) // 512)].numpy().tobytes()).hexdigest()[:10]
    return cache_path("ncfm_pool", f"{dataset.name}-{arch}-e{epochs}-m{index}-{RECIPE}-{digest}", ".safetensors")


def _save(member: Member, path) -> None:
    tensors = {**{f"init.{k}": v.contiguous() for k, v in member.init.items()},
               **{f"trained.{k}": v.contiguous() for k, v in member.trained.items()}}
    save_file(tensors, str(path), metadata={"test_accuracy": json.dumps(member.test_accuracy), "recipe": RECIPE})


def _loader(expected: set[str]):
    def load(path) -> Member:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != {f"init.{k}" for k in expected} | {f"trained.{k}" for k in expected}:
                raise ValueError("its tensors do not fit the network")
            accuracy = float(json.loads(f.metadata()["test_accuracy"]))
            part = {p: {k[len(p) + 1:]: f.get_tensor(k) for k in keys if k.startswith(p + ".")} for p in ("init", "trained")}
        return Member(part["init"], part["trained"], accuracy)
    return load


def load_pool(dataset, arch: str, size: int, epochs: int, device,
              check_stop: Callable[[], None] = lambda: None) -> list[Member]:
    """The pool's `size` members, trained now where not cached."""
    expected = set(build_model(arch, channels=dataset.channels, num_classes=dataset.num_classes,
                               image_size=dataset.image_size).state_dict())
    return [load_or_build(member_path(dataset, arch, epochs, i), load=_loader(expected), save=_save,
                          build=lambda i=i: train_member(dataset, arch, epochs, i, device, check_stop))[0]
            for i in range(size)]


def describe(pool: list[Member], arch: str, epochs: int) -> str:
    """One line for the set's metadata: what the pool is and how good its networks are."""
    acc = [m.test_accuracy for m in pool]
    return (f"{len(pool)} {arch} trained {epochs} epochs on the training set (NCFM recipe); test accuracy "
            f"{min(acc):.3f}-{max(acc):.3f}, mean {sum(acc) / len(acc):.3f}")


@torch.no_grad()
def blend(net: torch.nn.Module, member: Member, l: float) -> torch.nn.Module:
    """Load l * initial + (1 - l) * trained weights into `net` (floating tensors; others as trained)."""
    for name, value in net.state_dict().items():
        a, b = member.init[name], member.trained[name]
        value.copy_(l * a + (1 - l) * b if value.is_floating_point() else b)
    return net
