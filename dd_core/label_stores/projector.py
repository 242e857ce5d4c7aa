"""An image-to-label projector, in the spirit of HeLlO (dataset distillation with a lightened
label space): labels are generated online from each augmented synthetic view by a network whose
backbone costs nothing to store, plus a small head and low-rank weight updates fitted to mimic the
teacher on the real training data.

HeLlO's backbone is a public pretrained encoder (CLIP). None is available offline for 8x8 digits or
MNIST, so here the backbone is a ConvNet regenerated from a seed (random features): only the seed
(8 B) is counted, the backbone's own size is reported separately. What is counted, all float16: for
every conv layer a rank-r update A (out x r) @ B (r x in*k*k), and the head: either learned whole
(C x d + C) or, with head_rank r_h > 0, the seeded head plus a rank-r_h update (r_h x (C + d) + C).
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
from ..cache import cache_path, load_or_build
from ..models import num_parameters, resolve_model
from ..teacher import probabilities
from .base import LABEL_STORES, SEED_BYTES, LabelStore, soft_cross_entropy
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


def projector_net(syn, arch: str, seed: int, rank: int, head_rank: int = 0
                  ) -> tuple[nn.Module, dict[str, LowRankUpdate]]:
    """The seeded backbone with a low-rank update on every conv layer ("lora<i>"), and a head that
    is learned whole (head_rank 0) or is the seeded head plus a low-rank update ("head")."""
    net = network_for(syn, arch, seed=seed)
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    updates = {}
    for i, conv in enumerate(m for m in net.modules() if isinstance(m, nn.Conv2d)):
        updates[f"lora{i}"] = LowRankUpdate(conv.out_channels, conv.weight[0].numel(), rank, g)
        parametrize.register_parametrization(conv, "weight", updates[f"lora{i}"])
    head = net.classifier
    if head_rank:
        updates["head"] = LowRankUpdate(head.out_features, head.in_features, head_rank, g)
        parametrize.register_parametrization(head, "weight", updates["head"])
    else:
        head.weight.requires_grad_(True)
    head.bias.requires_grad_(True)
    return net.eval(), updates  # eval: a batch-norm backbone keeps its (seeded) statistics


def learned(net: nn.Module, updates: dict[str, LowRankUpdate]) -> dict[str, torch.Tensor]:
    """The numbers a projector stores (float16): the low-rank factors, the head's bias, and its
    weight when that is learned whole."""
    tensors = {"head.bias": net.classifier.bias}
    if "head" not in updates:
        tensors["head.weight"] = net.classifier.weight
    for name, u in updates.items():
        tensors[f"{name}.a"], tensors[f"{name}.b"] = u.a, u.b
    return {k: v.detach().cpu().half() for k, v in tensors.items()}


def load_learned(net: nn.Module, updates: dict[str, LowRankUpdate], tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        if "head" not in updates:
            net.classifier.weight.copy_(tensors["head.weight"].float())
        net.classifier.bias.copy_(tensors["head.bias"].float())
        for name, u in updates.items():
            u.a.copy_(tensors[f"{name}.a"].float())
            u.b.copy_(tensors[f"{name}.b"].float())


def fit(net, dataset, teacher, *, steps: int, batch: int, lr: float, temperature: float, seed: int) -> None:
    """Soft cross-entropy to the teacher on DSA-augmented real training images (what evaluation will show it)."""
    device = teacher_device(teacher)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    augment = dsa_for(dataset)
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
    LABELS_VIEWS = True  # the projector labels each (cropped, mixed) view itself
    OPTIONS = {"arch": ("auto", "backbone network, regenerated from its seed ('auto': the teacher's architecture)"),
               "rank": (4, "rank of the update of every conv layer"),
               "head_rank": (0, "0: learn the whole head (C x d); r > 0: the seeded head + a rank-r update"),
               "seed": (0, "seed the backbone is regenerated from"),
               "steps": (300, "Adam steps of the fit on augmented real images"),
               "batch": (256, "real images per fitting step"),
               "lr": (0.01, "Adam learning rate of the fit"),
               "soften": SOFTEN}

    def __init__(self, syn, tensors: dict[str, torch.Tensor], *, arch: str, seed: int, rank: int, head_rank: int):
        super().__init__(syn.num_classes)
        self.arch, self.seed, self.rank, self.head_rank = arch, seed, rank, head_rank
        self.net, updates = projector_net(syn, arch, seed, rank, head_rank)
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
        shape = f"r_h x (C + d) + C, r_h = {self.head_rank}" if self.head_rank else "C x d + C"
        return (f"({lora:,} low-rank numbers: sum over conv layers of r x (out + in x k x k), r = {self.rank}; "
                f"+ {head:,} head numbers: {shape}) x 2 B float16 + {SEED_BYTES} B backbone seed")

    def uncounted(self):
        p = self.backbone_parameters
        return (f"backbone {self.arch}: {p:,} parameters ({4 * p:,} B at float32) not counted: regenerated "
                f"from seed {self.seed} (no public pretrained encoder is available offline for these datasets)")

    def state(self):
        return dict(self.tensors), {"arch": self.arch, "seed": str(self.seed), "rank": str(self.rank),
                                    "head_rank": str(self.head_rank)}

    @classmethod
    def from_state(cls, tensors, meta, syn):
        return cls(syn, tensors, arch=meta["arch"], seed=int(meta["seed"]), rank=int(meta["rank"]),
                   head_rank=int(meta["head_rank"]))

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, arch="auto", rank=4, head_rank=0, seed=0, steps=300,
              batch=256, lr=0.01, soften=1.0):
        temperature = teacher_temperature(teacher, dataset, soften)
        if rank < 1 or head_rank < 0:
            raise ValueError(f"the projector's rank must be at least 1 and its head rank at least 0; "
                             f"got {rank} and {head_rank}")
        arch = teacher.arch if arch == "auto" else resolve_model(arch, dataset)
        key = (dataset.name, len(dataset.x_train), teacher.describe(), arch, rank, seed, steps, batch, lr, temperature)
        key += (head_rank,) if head_rank else ()  # fits cached before head_rank existed stay valid
        path = cache_path("projectors", hashlib.sha1(repr(key).encode()).hexdigest()[:16], ".safetensors")

        def build() -> dict[str, torch.Tensor]:
            net, updates = projector_net(syn, arch, seed, rank, head_rank)
            fit(net, dataset, teacher, steps=steps, batch=batch, lr=lr, temperature=temperature, seed=seed)
            return learned(net, updates)

        with _lock:  # one fit per key, in memory and on disk, like the teacher
            if key not in _fitted:
                _fitted[key], _ = load_or_build(path, load=lambda p: load_file(str(p)), build=build,
                                                save=lambda tensors, tmp: save_file(tensors, str(tmp)))
        return cls(syn, _fitted[key], arch=arch, seed=seed, rank=rank, head_rank=head_rank)

