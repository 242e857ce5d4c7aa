"""DWA: directed weight adjustment of the teacher during recovery (Du, Zhang, Hu, Huang & Zhou,
"Diversity-Driven Synthesis: Enhancing Dataset Distillation through Directed Weight Adjustment",
NeurIPS 2024)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import METHODS, hp
from .bn_taps import recover_loss, tapped
from .recover import Recover


@METHODS.register("dwa")
@dataclass
class DWA(Recover):
    """SRe2L where each batch (one image per class) is recovered against its own copy of the
    teacher, nudged towards a different random subset of the real data: `adjust_steps` normalised
    gradient steps of total length `rho` that lower the teacher's loss on that subset. Batches
    then match different views of the data, which spreads the images of a class apart."""

    paper = ("Du et al., Diversity-Driven Synthesis: Enhancing Dataset Distillation through Directed "
             "Weight Adjustment, NeurIPS 2024")

    rho: float = hp(0.015, "length of the weight adjustment (L2 norm over all weights, per batch)", range=(0.0, 1.0))
    adjust_steps: int = hp(2, "normalised gradient steps the adjustment is split into", range=(1, 20))
    subset: int = hp(100, "real images in the random subset each batch's teacher is adjusted towards",
                     range=(1, 10000))

    def setup(self, real, syn, *, seed, device):
        super().setup(real, syn, seed=seed, device=device)
        self.nets_ = []
        for _ in range(self.ipc_):  # one adjusted teacher per batch (slot), each from its own subset
            self.check_stop()
            idx = torch.randint(len(real.x_train), (self.subset,), generator=self.gen_)
            net = self.adjusted(real.x_train[idx].to(device), real.y_train[idx].to(device))
            self.nets_.append(tapped(net))

    def adjusted(self, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
        """A copy of the teacher moved `rho` along the directions that lower its loss on (x, y)."""
        net = copy.deepcopy(self.teacher_.net).eval()
        params = [p for p in net.parameters()]
        for p in params:
            p.requires_grad_(True)
        for _ in range(self.adjust_steps):
            grads = torch.autograd.grad(F.cross_entropy(net(x), y), params)
            norm = torch.sqrt(sum((g ** 2).sum() for g in grads)) + 1e-12
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(self.rho / self.adjust_steps * g / norm)
        return net

    def loss(self, x, y):
        n = len(x) // self.ipc_
        total, stats = 0.0, {"ce": 0.0, "bn": 0.0, "teacher_acc": 0.0}
        for j, (net, sink) in enumerate(self.nets_):  # slot-major: batch j is rows j*n .. (j+1)*n
            loss, part = recover_loss(net, sink, x[j * n:(j + 1) * n], y[j * n:(j + 1) * n], groups=1,
                                      bn_weight=self.bn_weight, first_bn_multiplier=self.first_bn_multiplier)
            total = total + loss
            stats = {k: stats[k] + part[k] / self.ipc_ for k in stats}
        return total, stats
