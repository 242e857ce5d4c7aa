"""An image-to-label projector, in the spirit of HeLlO (Zhong et al., "Heavy Labels Out!", 2025):
labels are generated online from each augmented synthetic view by a network whose backbone costs
nothing to store, plus a small learned head and low-rank weight updates fitted to mimic the teacher
on the real training data.

HeLlO's backbone is a public pretrained encoder (CLIP). None is available offline for 8x8 digits or
MNIST, so here the backbone is a ConvNet regenerated from a seed (random features): only the seed
(8 B) is counted, the backbone's own size is reported separately. What is counted: for every conv
layer a rank-r update A (out x r) @ B (r x in*k*k), and the linear head (C x d + C), all float16.
"""
from __future__ import annotations

import hashlib
import threading

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from ..augment import dsa_for
from ..labels import LABEL_STORES, SEED_BYTES, LabelStore, soft_cross_entropy
from ..models import num_parameters, resolve_model
from ..teacher import cache_dir, probabilities
from .online import network_for
from .soft import SOFTEN, teacher_device, teacher_temperature

_fitted: dict[tuple, dict[str, torch.Tensor]] = {}  # one fit per (dataset, teacher, options), shared by sets
_lock = threading.Lock()


class LowRankUpdate(nn.Module):
    """weight -> weight + (A @ B) reshaped, the LoRA update (Hu et al. 2022) of a frozen conv layer."""

    def __init__(self, out: int, fan_in: int, rank: int, generator: torch.Generator):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(out, rank))  # zero: the fit starts from the backbone as it is
        self.b = nn.Parameter(torch.randn(rank, fan_in, generator=generator) / fan_in ** 0.5)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.a @ self.b).view_as(weight)


def projector_net(syn, arch: str, seed: int, rank: int) -> tuple[nn.Module, list[LowRankUpdate]]:
    """The seeded backbone with a low-rank update on every conv layer; only updates and head learn."""
    net = network_for(syn, arch, seed=seed)
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    updates = []
    for conv in [m for m in net.modules() if isinstance(m, nn.Conv2d)]:
        update = LowRankUpdate(conv.out_channels, conv.weight[0].numel(), rank, g)
        parametrize.register_parametrization(conv, "weight", update)
        updates.append(update)
    for p in net.classifier.parameters():
        p.requires_grad_(True)
    return net.eval(), updates  # eval: a batch-norm backbone keeps its (seeded) statistics


def learned(net: nn.Module, updates: list[LowRankUpdate]) -> dict[str, torch.Tensor]:
    tensors = {"head.weight": net.classifier.weight, "head.bias": net.classifier.bias}
    for i, u in enumerate(updates):
        tensors[f"lora{i}.a"], tensors[f"lora{i}.b"] = u.a, u.b
    return {k: v.detach().cpu().half() for k, v in tensors.items()}  # stored as float16


def load_learned(net: nn.Module, updates: list[LowRankUpdate], tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        net.classifier.weight.copy_(tensors["head.weight"].float())
        net.classifier.bias.copy_(tensors["head.bias"].float())
        for i, u in enumerate(updates):
            u.a.copy_(tensors[f"lora{i}.a"].float())
            u.b.copy_(tensors[f"lora{i}.b"].float())


def fit(net, updates, dataset, teacher, *, steps: int, batch: int, lr: float, temperature: float, seed: int) -> None:
    """Soft cross-entropy to the teacher on DSA-augmented real training images (what evaluation will show it)."""
    device = teacher_device(teacher)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    augment = dsa_for(dataset.name)
    g = torch.Generator().manual_seed(seed + 2)
    for _ in range(steps):
        idx = torch.randint(len(dataset.x_train), (batch,), generator=g)
        x = dataset.x_train[idx].to(device)
        x = augment.apply(x, augment.sample(batch, g), torch.arange(batch))  # (batch, c, h, w)
        target = probabilities(teacher.net, x, device, temperature).to(device)
        loss = soft_cross_entropy(net(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.cpu()


@LABEL_STORES.register("projector")
class ProjectorLabels(LabelStore):
    """Targets from a seeded backbone + low-rank updates + head, fitted to mimic the teacher (HeLlO-style)."""

    name = "projector"
    needs_teacher = True
    OPTIONS = {"arch": ("auto", "backbone network, regenerated from its seed ('auto': the teacher's architecture)"),
               "rank": (4, "rank of the update of every conv layer"),
               "seed": (0, "seed the backbone is regenerated from"),
               "steps": (300, "Adam steps of the fit on augmented real images"),
               "batch": (256, "real images per fitting step"),
               "lr": (0.01, "Adam learning rate of the fit"),
               "soften": SOFTEN}

    def __init__(self, syn, tensors: dict[str, torch.Tensor], *, arch: str, seed: int, rank: int):
        super().__init__(syn.num_classes)
        self.arch, self.seed, self.rank = arch, seed, rank
        self.net, updates = projector_net(syn, arch, seed, rank)
        self.tensors = tensors
        load_learned(self.net, updates, tensors)
        plain = network_for(syn, arch)
        self.backbone_parameters = num_parameters(plain) - num_parameters(plain.classifier)

    @torch.no_grad()
    def targets(self, idx, views, epoch=0):
        if next(self.net.parameters()).device != views.device:
            self.net.to(views.device)
        return F.softmax(self.net(views), dim=1)

    def nbytes(self):
        return sum(v.numel() * v.element_size() for v in self.tensors.values()) + SEED_BYTES

    def formula(self):
        lora = sum(v.numel() for k, v in self.tensors.items() if k.startswith("lora"))
        head = sum(v.numel() for k, v in self.tensors.items() if k.startswith("head"))
        return (f"({lora:,} low-rank numbers: sum over conv layers of r x (out + in x k x k), r = {self.rank}; "
                f"+ {head:,} head numbers: C x d + C) x 2 B float16 + {SEED_BYTES} B backbone seed")

    def uncounted(self):
        p = self.backbone_parameters
        return (f"backbone {self.arch}: {p:,} parameters ({4 * p:,} B at float32) not counted: regenerated "
                f"from seed {self.seed} (no public pretrained encoder is available offline for these datasets)")

    def state(self):
        return dict(self.tensors), {"arch": self.arch, "seed": str(self.seed), "rank": str(self.rank)}

    @classmethod
    def from_state(cls, tensors, meta, syn):
        return cls(syn, tensors, arch=meta["arch"], seed=int(meta["seed"]), rank=int(meta["rank"]))

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, arch="auto", rank=4, seed=0, steps=300, batch=256,
              lr=0.01, soften=1.0):
        temperature = teacher_temperature(teacher, dataset, soften)
        if rank < 1:
            raise ValueError(f"the projector's rank must be at least 1; got {rank}")
        arch = teacher.arch if arch == "auto" else resolve_model(arch, dataset)
        key = (dataset.name, len(dataset.x_train), teacher.describe(), arch, rank, seed, steps, batch, lr, temperature)
        path = cache_dir() / "projectors" / f"{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}.safetensors"
        with _lock:  # one fit per key, in memory and on disk, like the teacher
            if key not in _fitted and path.is_file():
                _fitted[key] = load_file(path)
            if key not in _fitted:
                net, updates = projector_net(syn, arch, seed, rank)
                fit(net, updates, dataset, teacher, steps=steps, batch=batch, lr=lr, temperature=temperature, seed=seed)
                _fitted[key] = learned(net, updates)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file(_fitted[key], str(path.with_suffix(".tmp")))
                path.with_suffix(".tmp").replace(path)
        return cls(syn, _fitted[key], arch=arch, seed=seed, rank=rank)

