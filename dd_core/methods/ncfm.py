"""NCFM: matching neural characteristic functions (Wang et al., CVPR 2025).

Instead of comparing mean embeddings (DM), compare the whole distribution of each class's
L2-normalised embeddings through its characteristic function phi(t) = E[exp(i t.f)], at random
frequencies t: a difference in amplitude |phi| and a difference in phase arg(phi) both count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import METHODS, hp, is_small
from .dm import DM
from .sampling import class_means, embed_chunked, embed_in_chunks

SQRT_EPS = 1e-12  # keeps the square root differentiable where real and synthetic CFs coincide


def class_cf(features: torch.Tensor, groups: torch.Tensor, t: torch.Tensor, num_classes: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical characteristic function of each class's features at frequencies t (k, d):
    real and imaginary parts, (classes, k) each: the class means of cos(t.f) and sin(t.f)."""
    proj = features @ t.T  # (n, k)
    return class_means(torch.cos(proj), groups, num_classes), class_means(torch.sin(proj), groups, num_classes)


def cf_distance(real: tuple[torch.Tensor, torch.Tensor], syn: tuple[torch.Tensor, torch.Tensor], *,
                alpha: float, beta: float) -> torch.Tensor:
    """Sum over classes of the mean over frequencies of
    sqrt(alpha (|phi_r| - |phi_s|)^2 + beta 2 |phi_r| |phi_s| (1 - cos(arg phi_r - arg phi_s)) + eps).
    The phase term is computed as 2 (|phi_r| |phi_s| - Re(phi_r conj(phi_s))), the same number
    without an arctangent."""
    (re_r, im_r), (re_s, im_s) = real, syn  # (classes, k) each
    amp_r, amp_s = torch.sqrt(re_r ** 2 + im_r ** 2), torch.sqrt(re_s ** 2 + im_s ** 2)
    amplitude = (amp_r - amp_s) ** 2
    phase = (2 * (amp_r * amp_s - (re_r * re_s + im_r * im_s))).clamp(min=0)  # rounding can dip below 0
    return torch.sqrt(alpha * amplitude + beta * phase + SQRT_EPS).mean(dim=1).sum()


@METHODS.register("ncfm")
@dataclass
class NCFM(DM):
    """Characteristic-function matching (Wang et al., CVPR 2025), on fresh random networks.

    With `sampler` on, the frequencies come from a small sampling network that is trained to
    *maximise* the CF distance while the images minimise it: the paper's min-max game, in our
    own form (a residual MLP from Gaussian noise to frequencies, starting at N(0, I); one Adam
    ascent step every `sampler_every` image steps). Still partial: not the paper's pool of briefly
    pre-trained networks (we draw a fresh random network per step, as DM), its calibration loss,
    its multi-formation of several small images per stored image, or its per-class image updates
    (one update per step here, all classes at once). Evaluation in the paper also differs
    (AdamW, CutMix, 2000+ epochs).
    """

    family = "distribution matching"
    paper = ("Wang et al., Dataset Distillation with Neural Characteristic Function: A Minmax "
             "Perspective, CVPR 2025")

    optimizer: str = hp("adam", "optimizer of the synthetic pixels: 'adam' (the paper's code) or 'sgd' (with momentum)",
                        choices=("adam", "sgd"))
    lr_img: float = hp(0.001, "learning rate of the synthetic pixels (Adam 0.001 = the paper's 0.01 x 0.1 Adam scale)")
    batch_real: int = hp(1024, "real images per class per step (1024 in the paper's CIFAR configs)")
    num_freqs: int = hp(4096, "frequencies t ~ N(0, I) at which the characteristic functions are compared")
    alpha: float = hp(0.5, "weight of the amplitude difference")
    beta: float = hp(0.5, "weight of the phase difference")
    sampler: bool = hp(False, "min-max: learn the frequencies with a sampling network that maximises the distance")
    sampler_lr: float = hp(1e-4, "Adam learning rate of the sampling network (gradient ascent; 1e-3 turned the "
                                 "frequencies nearly orthogonal to their draws within 200 steps on digits)")
    sampler_every: int = hp(1, "one ascent step of the sampling network every this many image steps")
    sampler_hidden: int = hp(256, "hidden width of the sampling network")

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        if name == "paper":
            return {"sampler": True}
        # Fast CPU: a quarter of the frequencies, 64 real images per class, a 50x larger Adam step
        # so the images move within a few hundred steps (on digits 0.001 barely moved them).
        return {"num_freqs": 1024, "batch_real": 64, "lr_img": 0.05}

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 20000 if name == "paper" else (200 if is_small(dataset) else 1000)

    def setup(self, real, syn, *, seed, device):
        super().setup(real, syn, seed=seed, device=device)
        if self.optimizer == "adam":
            self.opt_ = torch.optim.Adam([self.images_], lr=self.lr_img)
        if self.sampler_every < 1:
            raise ValueError(f"sampler_every must be at least 1 (got {self.sampler_every})")
        self.sampler_ = None  # built at the first step, when the feature size is known
        self.steps_ = 0

    def sample(self):
        """DM's draws (network, real batch, augmentation), then this step's noise (k, d): the
        frequencies themselves, or the sampling network's input when `sampler` is on."""
        net, x_real, g_real, params = super().sample()
        z = torch.randn(self.num_freqs, net.feat_dim, generator=self.gen_).to(self.device_)
        if self.sampler and self.sampler_ is None:
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen_))
            self.sampler_ = FrequencySampler(net.feat_dim, self.sampler_hidden, seed=seed).to(self.device_)
            self.sampler_opt_ = torch.optim.Adam(self.sampler_.parameters(), lr=self.sampler_lr)
        return net, x_real, g_real, params, z

    def features(self, net, x_real, g_real, params):
        """L2-normalised embeddings of the real (no gradient) and synthetic views, with their classes."""
        x_real, x_syn, g_syn = self.views(x_real, g_real, params)
        f_real = F.normalize(embed_chunked(net, x_real), dim=1)  # (n_real, d)
        f_syn = F.normalize(embed_in_chunks(net, x_syn), dim=1)  # (n_syn, d)
        return f_real, g_real, f_syn, g_syn

    def cf_loss(self, feats, t) -> torch.Tensor:
        f_real, g_real, f_syn, g_syn = feats
        c = self.shape_["num_classes"]
        return cf_distance(class_cf(f_real, g_real, t, c), class_cf(f_syn, g_syn, t, c), alpha=self.alpha, beta=self.beta)

    def loss(self, net, x_real, g_real, params, t) -> torch.Tensor:
        """CF distance between each class's real and synthetic normalised embeddings at frequencies
        t, summed over classes; all classes share one batched call (a class's CF is a mean over its rows)."""
        return self.cf_loss(self.features(net, x_real, g_real, params), t)

    def step(self):
        net, x_real, g_real, params, z = self.sample()
        feats = self.features(net, x_real, g_real, params)
        t = z if self.sampler_ is None else self.sampler_(z).detach()
        loss = self.cf_loss(feats, t)  # the images minimise...
        self.opt_.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_.step()
        self.steps_ += 1
        stats = {"loss": loss.item()}
        if self.sampler_ is not None and self.steps_ % self.sampler_every == 0:
            f_real, g_real, f_syn, g_syn = feats  # ...the sampler maximises, on the same features
            t = self.sampler_(z)
            adversary = -self.cf_loss((f_real, g_real, f_syn.detach(), g_syn), t)
            self.sampler_opt_.zero_grad(set_to_none=True)
            adversary.backward()
            self.sampler_opt_.step()
            stats["freq_shift"] = (1 - F.cosine_similarity(t.detach(), z, dim=1)).mean().item()
        return stats


class FrequencySampler(nn.Module):
    """Noise z ~ N(0, I) to frequencies t = |z| (z + g(z)) / |z + g(z)|, g a two-layer MLP whose last
    layer starts at zero: the sampler starts as the plain Gaussian draw and learns *directions* where
    real and synthetic differ, while each frequency keeps its Gaussian length (an unbounded adversary
    would push every frequency to infinity, where all characteristic functions look alike)."""

    def __init__(self, dim: int, hidden: int, *, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        with torch.no_grad():
            bound = 1 / math.sqrt(dim)
            self.body[0].weight.uniform_(-bound, bound, generator=g)
            self.body[0].bias.uniform_(-bound, bound, generator=g)
            self.body[2].weight.zero_()
            self.body[2].bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z + self.body(z), dim=1) * z.norm(dim=1, keepdim=True)
