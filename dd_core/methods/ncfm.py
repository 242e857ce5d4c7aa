"""NCFM: matching neural characteristic functions (Wang et al., CVPR 2025).

Instead of comparing mean embeddings (DM), compare the whole distribution of each class's
L2-normalised embeddings through its characteristic function phi(t) = E[exp(i t.f)], at random
frequencies t: a difference in amplitude |phi| and a difference in phase arg(phi) both count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import METHODS, hp, is_small
from .dm import DM
from .sampling import class_means, embed_chunked

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

    Partial, on purpose: the paper's min-max *sampling network* that learns the frequencies
    adversarially is not implemented (frequencies are drawn from N(0, I) each step, the paper's
    setting without it); neither are its pool of briefly pre-trained networks (we draw a fresh
    random network per step, as DM), its calibration loss, its multi-formation of several small
    images per stored image, or its per-class image updates (one update per step here, all
    classes at once). Evaluation in the paper also differs (AdamW, CutMix, 2000+ epochs).
    """

    family = "distribution matching"
    paper = ("Wang et al., Dataset Distillation with Neural Characteristic Function: A Minmax "
             "Perspective, CVPR 2025")

    optimizer: str = hp("adam", "optimizer of the synthetic pixels: 'adam' (the paper's code) or 'sgd' (with momentum)")
    lr_img: float = hp(0.001, "learning rate of the synthetic pixels (Adam 0.001 = the paper's 0.01 x 0.1 Adam scale)")
    batch_real: int = hp(1024, "real images per class per step (1024 in the paper's CIFAR configs)")
    num_freqs: int = hp(4096, "frequencies t ~ N(0, I) at which the characteristic functions are compared")
    alpha: float = hp(0.5, "weight of the amplitude difference")
    beta: float = hp(0.5, "weight of the phase difference")

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        if name == "paper":
            return {}
        # Fast CPU: a quarter of the frequencies, 64 real images per class, a 50x larger Adam step
        # so the images move within a few hundred steps (on digits 0.001 barely moved them).
        return {"num_freqs": 1024, "batch_real": 64, "lr_img": 0.05}

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 20000 if name == "paper" else (200 if is_small(dataset) else 1000)

    def setup(self, real, syn, *, seed, device):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid optimizers are: adam, sgd")
        super().setup(real, syn, seed=seed, device=device)
        if self.optimizer == "adam":
            self.opt_ = torch.optim.Adam([self.images_], lr=self.lr_img)

    def sample(self):
        """DM's draws (network, real batch, augmentation), then this step's frequencies (k, d)."""
        net, x_real, g_real, params = super().sample()
        t = torch.randn(self.num_freqs, net.feat_dim, generator=self.gen_).to(self.device_)
        return net, x_real, g_real, params, t

    def loss(self, net, x_real, g_real, params, t) -> torch.Tensor:
        """CF distance between each class's real and synthetic normalised embeddings, summed over
        classes; all classes share one batched call (each class's CF is a mean over its rows)."""
        x_real, x_syn, g_syn = self.views(x_real, g_real, params)
        c = self.shape_["num_classes"]
        f_real = F.normalize(embed_chunked(net, x_real), dim=1)  # (n_real, d)
        f_syn = F.normalize(net.embed(x_syn), dim=1)  # (n_syn, d)
        return cf_distance(class_cf(f_real, g_real, t, c), class_cf(f_syn, g_syn, t, c), alpha=self.alpha, beta=self.beta)
