"""DC and DSA: dataset condensation by gradient matching.

DC (Zhao, Mopuri & Bilen, ICLR 2021) learns synthetic images whose training gradients, on a
fresh random network that is itself trained on the synthetic set along the way, point the same
way as the gradients of real images of the same class. DSA (Zhao & Bilen, ICML 2021) adds
differentiable Siamese augmentation: each class's real and synthetic batch get the same random
augmentation, and the inner training of the network is augmented too.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import DSA, dsa_for, fyi_flip
from ..interrupt import check
from ..models import build_model, fast_forward, resolve_model
from .base import METHODS, Method, hp, is_small
from .sampling import RealSampler

# IPC -> (outer_loop, inner_loop), as in the DC paper; other IPCs use the nearest listed one.
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
BN_IMAGES_PER_CLASS = 16  # real images per class that set batch-norm statistics before matching
COS_EPS = 1e-6  # keeps 1 - cos finite for an all-zero gradient row, as in the reference code


def loops_for(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) of the listed IPC nearest to `ipc` (the smaller one on a tie)."""
    return LOOPS[min(LOOPS, key=lambda k: (abs(k - ipc), k))]


def matched_weights(net: nn.Module) -> list[torch.Tensor]:
    """Conv and linear weights: the tensors whose gradients DC compares; biases and norm
    parameters (all 1-d) are left out, as in the paper."""
    return [p for p in net.parameters() if p.dim() > 1]


def gradient_distance(g_real: list[torch.Tensor], g_syn: list[torch.Tensor]) -> torch.Tensor:
    """Sum over weight tensors, and over each tensor's output units, of 1 - cos(real, synthetic)."""
    total = g_syn[0].new_zeros(())
    for gr, gs in zip(g_real, g_syn):
        gr, gs = gr.flatten(1), gs.flatten(1)  # (out, in * kh * kw): one row per output unit
        cos = (gr * gs).sum(1) / (gr.norm(dim=1) * gs.norm(dim=1) + COS_EPS)  # (out,)
        total = total + (1 - cos).sum()
    return total


def matching_loss(net: nn.Module, x_real: torch.Tensor, y_real: torch.Tensor, x_syn: torch.Tensor,
                  y_syn: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sum over classes of the distance between the CE-loss gradients of the class's real batch and
    of its synthetic images. The loss is differentiable in x_syn (create_graph); computing it changes
    no weight and no .grad (give batch-norm layers in eval mode, as the method does), and
    `backward(inputs=[x_syn])` keeps the network's .grad untouched as well.
    Each class is its own forward pass because each class needs its own gradient."""
    weights = matched_weights(net)
    loss = x_syn.new_zeros(())
    for c in range(num_classes):
        real_c, syn_c = y_real == c, y_syn == c
        if not bool(syn_c.any()) or not bool(real_c.any()):
            continue
        # The real side is differentiated once: the fast CPU path (the synthetic side, twice: forward).
        g_real = torch.autograd.grad(F.cross_entropy(fast_forward(net)(x_real[real_c]), y_real[real_c]), weights)
        g_real = [g.detach() for g in g_real]
        g_syn = torch.autograd.grad(F.cross_entropy(net(x_syn[syn_c]), y_syn[syn_c]), weights, create_graph=True)
        loss = loss + gradient_distance(g_real, g_syn)
    return loss


def train_on_synthetic(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
                       batch_size: int, generator: torch.Generator, augment: DSA | None = None,
                       stop=None) -> nn.Module:
    """A trained copy of `net`: `epochs` passes of plain SGD (no momentum, as in DC) over the synthetic
    set, shuffled by `generator`. The network passed in and the images are left unchanged."""
    net = copy.deepcopy(net)
    net.train()
    forward = fast_forward(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    images = images.detach()
    n = len(images)
    for _ in range(epochs):
        check(stop)
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size].to(images.device)
            x = images[idx]
            if augment is not None:  # one op per batch, its numbers per image: as the reference, and the evaluator
                x = augment.apply(x, augment.sample_batch(len(idx), generator), torch.arange(len(idx)))
            loss = F.cross_entropy(forward(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net


@METHODS.register("dc")
@dataclass
class DC(Method):
    """Dataset condensation with gradient matching (Zhao, Mopuri & Bilen, ICLR 2021)."""

    family = "gradient matching"
    paper = "Zhao, Mopuri & Bilen, Dataset Condensation with Gradient Matching, ICLR 2021"

    model: str = hp("auto", "network whose gradients are matched; auto = the DD ConvNet for the resolution "
                            "(ConvNet-3 width 128 at 28-32 px, as in the paper)")
    lr_img: float = hp(0.1, "SGD learning rate of the synthetic pixels", range=(0.0, 1000.0))
    momentum: float = hp(0.5, "SGD momentum of the synthetic pixels", range=(0.0, 0.99))
    lr_net: float = hp(0.01, "SGD learning rate of the network's inner training on the synthetic set (no momentum)",
                        range=(0.0, 10.0))
    batch_real: int = hp(256, "real images per class per matching update", range=(1, 1024))
    batch_train: int = hp(256, "synthetic images per inner training batch", range=(1, 4096))
    outer_loop: int = hp(0, "matching updates per step, each on a further-trained network (0 = by IPC, as in the paper)",
                         range=(0, 100))
    inner_loop: int = hp(0, "epochs of network training on the synthetic set between matching updates (0 = by IPC)",
                         range=(0, 200))
    dsa: bool = hp(False, "differentiable Siamese augmentation (on in DSA)")
    fyi: bool = hp(False, "FYI plug-in: also match the horizontally flipped synthetic images")

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        outer, inner = loops_for(ipc)
        if name == "paper":
            return {"outer_loop": outer, "inner_loop": inner}
        # Fast CPU: at most 10 matching updates a step (the paper's outer loop up to IPC 10), a
        # tenth of the inner epochs, a quarter of the real batch; above 8x8 digits (where auto is
        # ConvNet-2) the width-32 ConvNet, since per-class gradients at width 128 take seconds each.
        fast = {"outer_loop": min(outer, 10), "inner_loop": max(1, inner // 10), "batch_real": 64}
        if not is_small(dataset):
            fast["model"] = "convnet_w32"
        return fast

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        if name == "paper":
            return 1000
        outer = min(loops_for(ipc)[0], 10)
        return max(20, 100 // outer)  # 100 to 200 matching updates

    def memory_images(self, num_classes, ipc):
        """One class at a time: its real batch's graph, or its synthetic images' graph kept for the
        second derivative (about three passes' worth), or one inner training batch."""
        flips = 2 if self.fyi else 1
        peak = max(self.batch_real, 3 * ipc * flips, min(self.batch_train, num_classes * ipc * flips))
        return peak, num_classes * self.batch_real

    def setup(self, real, syn, *, seed, device):
        self.gen_ = torch.Generator().manual_seed(seed)
        self.real_ = RealSampler(real, device)
        self.dsa_ = dsa_for(real) if self.dsa else None
        self.shape_ = dict(channels=real.channels, num_classes=real.num_classes, image_size=real.image_size)
        self.device_ = device
        self.net_name_ = resolve_model(self.model, real)
        auto = loops_for(syn.ipc)
        self.loops_ = (self.outer_loop or auto[0], self.inner_loop or auto[1])
        self.images_ = syn.images.detach().to(device).requires_grad_(True)
        self.labels_ = syn.labels.to(device)
        self.opt_ = torch.optim.SGD([self.images_], lr=self.lr_img, momentum=self.momentum)

    def synthetic_views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The synthetic images as matched and trained on: with FYI, each also flipped."""
        if self.fyi:
            return fyi_flip(self.images_), torch.cat([self.labels_, self.labels_])
        return self.images_, self.labels_

    def set_batchnorm_statistics(self, net: nn.Module) -> None:
        """Batch-norm networks: set running statistics from real images of every class, then freeze
        them, so that each class's gradient is taken under the same normalisation (as the reference)."""
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        x, _ = self.real_.all_classes(BN_IMAGES_PER_CLASS, self.gen_)
        net.train()
        with torch.no_grad():
            net(x)
        for m in norms:
            m.eval()

    def step(self):
        net_seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen_))
        net = build_model(self.net_name_, **self.shape_, seed=net_seed, device=self.device_)
        outer, inner = self.loops_
        classes = self.shape_["num_classes"]
        total = 0.0
        for ol in range(outer):
            self.check_stop()
            self.set_batchnorm_statistics(net)
            x_real, g_real = self.real_.all_classes(self.batch_real, self.gen_)
            x_syn, g_syn = self.synthetic_views()
            if self.dsa_ is not None:  # one parameter set per class, shared by its real and synthetic batch
                params = self.dsa_.sample(classes, self.gen_)
                x_real, x_syn = self.dsa_.apply(x_real, params, g_real), self.dsa_.apply(x_syn, params, g_syn)
            loss = matching_loss(net, x_real, g_real, x_syn, g_syn, classes)
            self.opt_.zero_grad(set_to_none=True)
            loss.backward(inputs=[self.images_])  # only the pixels learn here
            self.opt_.step()
            total += loss.item()
            if ol < outer - 1:
                x_syn, g_syn = self.synthetic_views()
                net = train_on_synthetic(net, x_syn, g_syn, epochs=inner, lr=self.lr_net,
                                         batch_size=self.batch_train, generator=self.gen_, augment=self.dsa_,
                                         stop=self.stop_)
        return {"loss": total / (outer * classes)}  # mean distance per class and matching update


@METHODS.register("dsa")
@dataclass
class DSAMatching(DC):
    """Gradient matching with differentiable Siamese augmentation (Zhao & Bilen, ICML 2021)."""

    paper = "Zhao & Bilen, Dataset Condensation with Differentiable Siamese Augmentation, ICML 2021"

    dsa: bool = hp(True, "differentiable Siamese augmentation: the same random op for a class's real and synthetic batch")
