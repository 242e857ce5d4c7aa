"""NCFM: matching neural characteristic functions (Wang et al., CVPR 2025).

Instead of comparing mean embeddings (DM), compare the whole distribution of each class's
L2-normalised embeddings through its characteristic function phi(t) = E[exp(i t.f)], at random
frequencies t: a difference in amplitude |phi| and a difference in phase arg(phi) both count.
What the public code adds around that distance, and this file does too: a pool of networks
trained on the real data (ncfm_pool.py), a calibration loss, one image update per class, a
plateau schedule on the pixels' learning rate, and (off in the headline configs) a sampling
network that picks the frequencies adversarially.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import dsa_for
from ..data import dataset_facts
from ..models import build_model, resolve_model
from . import ncfm_pool
from .base import METHODS, Method, hp
from .sampling import RealSampler, class_means, embed_chunked, embed_in_chunks, frozen

SQRT_EPS = 1e-12  # keeps the square root differentiable where real and synthetic CFs coincide
MATCH_SCALE = 300.0  # the public code multiplies the CF distance by 300: it sets its weight against calibration
LR_FACTOR = 0.5  # ReduceLROnPlateau's factor on the pixels' (and the sampler's) learning rate, as the code
SAMPLER_MOMENTUM, SAMPLER_DECAY = 0.5, 0.01  # the sampler's SGD, from the configs' mom_img and weight_decay


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
class NCFM(Method):
    """Characteristic-function matching (Wang et al., CVPR 2025), as the public code runs it.

    Each outer iteration draws one network of the pool and blends its initial and trained weights
    at a random l; then, class by class, it matches the CFs of real and synthetic features under
    the blend and takes one optimizer step on the pixels; then, class by class again, it takes one
    step on the cross-entropy of the trained network on the synthetic images (calibration). Not
    done here: the code's 'multi-formation' (factor 2: four half-size images in each stored one,
    which the evaluation must decode too), and its evaluation (AdamW, CutMix, 2000+ epochs).
    """

    family = "distribution matching"
    paper = ("Wang et al., Dataset Distillation with Neural Characteristic Function: A Minmax "
             "Perspective, CVPR 2025")

    model: str = hp("auto", "network of the pool; auto = the DD ConvNet for the resolution (ConvNet-3 width 128 "
                            "at 28-32 px, as the configs)")
    optimizer: str = hp("adamw", "optimizer of the synthetic pixels ('adamw' in the configs)",
                        choices=("adamw", "adam", "sgd"))
    lr_img: float = hp(0.001, "learning rate of the pixels, per class step (the configs' 0.01 x lr_scale_adam 0.1)",
                       range=(1e-6, 10.0))
    momentum: float = hp(0.5, "SGD momentum of the pixels (with optimizer sgd)", range=(0.0, 0.999))
    # The code's pixels live in [0, 1] and decay towards black; ours are normalized and decay towards
    # the mean. At lr 0.001 x 0.01 a step, either is a 1e-5 pull.
    weight_decay: float = hp(0.01, "AdamW weight decay of the pixels (the configs' 0.01)", range=(0.0, 1.0))
    lr_patience: int = hp(500, "outer iterations without a new lowest loss before lr_img halves "
                               "(ReduceLROnPlateau, as the code)", range=(1, 1_000_000))
    batch_real: int = hp(1024, "real images per class per step (1024 in the configs)", range=(1, 10_000))
    dsa: bool = hp(True, "differentiable Siamese augmentation: one draw per class, on its real and synthetic images")
    num_freqs: int = hp(4096, "frequencies t at which the characteristic functions are compared (4096 in the "
                              "configs; at most 16384, which bounds memory)", range=(1, 16_384))
    alpha: float = hp(0.5, "weight of the amplitude difference", range=(0.0, 1.0))
    beta: float = hp(0.5, "weight of the phase difference", range=(0.0, 1.0))
    pool_size: int = hp(20, "networks pre-trained on the real data that each step draws from (20 in the configs); "
                            "0 = a fresh random network every step, as DM", range=(0, 100))
    pool_epochs: int = hp(60, "epochs each pool network trains on the real data (60 in the configs)", range=(1, 300))
    calib_iters: int = hp(1, "calibration passes per step, each one step per class on the cross-entropy of the "
                             "trained pool network on the synthetic images (1 in the configs; 0 = off)", range=(0, 10))
    calib_weight: float = hp(1.0, "weight of the calibration loss (1 in the configs)", range=(0.0, 100.0))
    sampler: bool = hp(False, "min-max: frequencies from a sampling network that maximises the distance "
                              "(off in the headline configs, on in config/sampling_net)")
    sampler_lr: float = hp(0.001, "SGD learning rate of the sampling network's ascent (1e-3 in the configs)",
                           range=(0.0, 1.0))
    sampler_repeat: int = hp(16, "each frequency the sampling network makes is used this many times "
                                 "(num_freqs / 16 distinct ones in the code)", range=(1, 16_384))

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        if name == "paper":
            return {}  # the defaults are the headline configs (config/ipc*/)
        # Fast CPU: a quarter of the frequencies, 64 real images a class, a small pool trained
        # briefly (about a minute on digits; two networks of 2 epochs at width 32 on MNIST-sized data,
        # a few minutes, once), and a larger step so the images move within a few hundred steps.
        fast = {"num_freqs": 1024, "batch_real": 64, "lr_img": 0.01}
        if dataset_facts(dataset).small:
            return {**fast, "pool_size": 4, "pool_epochs": 10}
        return {**fast, "pool_size": 2, "pool_epochs": 2, "model": "convnet_w32"}

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 20000 if name == "paper" else (200 if dataset_facts(dataset).small else 1000)

    def memory_images(self, num_classes, ipc):
        """One class at a time: its synthetic images' graph, and its real batch."""
        return ipc, self.batch_real

    def memory_extra_bytes(self, num_classes, ipc):
        """Upper estimates, with the widest DD ConvNet feature (2048) and a ConvNet-3's weights: each
        class's projections (real batch x frequencies: angles, cosines, sines), the frequencies, the
        pool (initial and trained weights of every member, two live networks) and the sampler
        (three square layers: weights, gradients, momentum)."""
        feat, weights = 2048, 4 * 600_000  # features per image; bytes of one network's weights
        projections = 3 * (self.batch_real + ipc) * self.num_freqs * 4
        pool = (2 * self.pool_size + 2) * weights
        sampler = 9 * feat * feat * 4 if self.sampler else 0
        return projections + self.num_freqs * feat * 4 + pool + sampler

    def setup(self, real, syn, *, seed, device):
        if self.calib_iters > 0 and self.pool_size == 0:
            raise ValueError("calibration classifies with a trained network of the pool: set pool_size to 1 or "
                             "more, or calib_iters to 0")
        if self.sampler and self.num_freqs < 2 * self.sampler_repeat:
            raise ValueError(f"the sampling network needs at least 2 distinct frequencies for its batch norm: "
                             f"num_freqs ({self.num_freqs}) must be at least 2 x sampler_repeat ({self.sampler_repeat})")
        self.gen_ = torch.Generator().manual_seed(seed)
        self.real_ = RealSampler(real, device)
        self.dsa_ = dsa_for(real) if self.dsa else None
        self.arch_ = resolve_model(self.model, real)
        self.shape_ = dict(channels=real.channels, num_classes=real.num_classes, image_size=real.image_size)
        self.device_ = device
        self.images_ = syn.images.detach().to(device).requires_grad_(True)
        self.labels_ = syn.labels.to(device)
        self.rows_ = [torch.nonzero(self.labels_ == c).flatten() for c in range(real.num_classes)]
        # The code keeps pixels in [0, 1]: here the same bounds in normalized units, per channel.
        mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (real.mean, real.std))
        self.low_, self.high_ = -mean / std, (1 - mean) / std
        self.opt_ = self._optimizer([self.images_], self.optimizer, self.lr_img)
        self.schedule_ = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt_, factor=LR_FACTOR, patience=self.lr_patience)
        self.pool_ = ncfm_pool.load_pool(real, self.arch_, self.pool_size, self.pool_epochs, device, self.check_stop)
        if self.pool_:
            syn.extra_meta["ncfm_pool"] = ncfm_pool.describe(self.pool_, self.arch_, self.pool_epochs)
        # The two networks whose weights each step overwrites (seed 0: placeholders, never used as drawn).
        self.match_net_ = frozen(build_model(self.arch_, **self.shape_, seed=0, device=device))
        self.calib_net_ = frozen(build_model(self.arch_, **self.shape_, seed=0, device=device))
        self.sampler_ = None
        if self.sampler:
            net_seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen_))
            self.sampler_ = SampleNet(self.match_net_.feat_dim, self.num_freqs, self.sampler_repeat, seed=net_seed).to(device)
            self.sampler_opt_ = torch.optim.SGD(self.sampler_.parameters(), lr=self.sampler_lr,
                                                momentum=SAMPLER_MOMENTUM, weight_decay=SAMPLER_DECAY)
            self.sampler_schedule_ = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.sampler_opt_, factor=LR_FACTOR, patience=self.lr_patience)

    def _optimizer(self, params, kind: str, lr: float) -> torch.optim.Optimizer:
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        if kind == "adam":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum)

    def draw_networks(self) -> None:
        """This iteration's networks, as the code's update_feature_extractor: a pool member at random,
        the matching network at l * initial + (1 - l) * trained (l uniform in [0, 1)), the trained
        one for calibration. Without a pool: a fresh random matching network."""
        if not self.pool_:
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen_))
            self.match_net_ = frozen(build_model(self.arch_, **self.shape_, seed=seed, device=self.device_))
            return
        member = self.pool_[int(torch.randint(len(self.pool_), (1,), generator=self.gen_))]
        l = float(torch.rand(1, generator=self.gen_))
        ncfm_pool.blend(self.match_net_, member, l)
        ncfm_pool.blend(self.calib_net_, member, 0.0)

    def frequencies(self, dim: int) -> torch.Tensor:
        """(num_freqs, dim) frequencies: a fresh N(0, I) draw, or the sampling network's output."""
        if self.sampler_ is not None:
            return self.sampler_(torch.randn(self.sampler_.distinct, dim, generator=self.gen_).to(self.device_))
        return torch.randn(self.num_freqs, dim, generator=self.gen_).to(self.device_)

    def match_loss(self, c: int) -> torch.Tensor:
        """300 x the CF distance between class c's real and synthetic normalised features, both
        through one DSA draw (the code augments the two batches together)."""
        x_real, x_syn = self.real_.batch(c, self.batch_real, self.gen_), self.images_[self.rows_[c]]
        if self.dsa_ is not None:
            params = self.dsa_.sample(1, self.gen_)
            x_real, x_syn = self.dsa_.apply(x_real, params), self.dsa_.apply(x_syn, params)
        f_real = F.normalize(embed_chunked(self.match_net_, x_real), dim=1)  # (batch_real, d)
        f_syn = F.normalize(embed_in_chunks(self.match_net_, x_syn), dim=1)  # (ipc, d)
        t = self.frequencies(f_syn.shape[1])  # (num_freqs, d)
        cf_real = class_cf(f_real, f_real.new_zeros(len(f_real), dtype=torch.long), t, 1)  # one class: (1, k) each
        cf_syn = class_cf(f_syn, f_syn.new_zeros(len(f_syn), dtype=torch.long), t, 1)
        return MATCH_SCALE * cf_distance(cf_real, cf_syn, alpha=self.alpha, beta=self.beta)

    def calib_loss(self, c: int) -> torch.Tensor:
        """Cross-entropy of the trained pool network on class c's augmented synthetic images."""
        x_syn = self.images_[self.rows_[c]]
        if self.dsa_ is not None:
            x_syn = self.dsa_.apply(x_syn, self.dsa_.sample(1, self.gen_))
        return self.calib_weight * F.cross_entropy(self.calib_net_(x_syn), self.labels_[self.rows_[c]])

    def update(self, loss: torch.Tensor, *, ascend: bool = False) -> float:
        """One optimizer step of the pixels down `loss`; with `ascend` and the sampler on, one step
        of the sampling network up the same loss, as the code's `sampling_net_ascent_scale` path does
        (its default path adds the sampler's gradient and its negative, which cancel). Returns the loss."""
        self.opt_.zero_grad(set_to_none=True)
        ascending = ascend and self.sampler_ is not None
        if ascending:
            self.sampler_opt_.zero_grad(set_to_none=True)
        loss.backward()
        if ascending:
            for p in self.sampler_.parameters():
                p.grad.neg_()
            self.sampler_opt_.step()
        self.opt_.step()
        return loss.item()

    def step(self):
        with torch.no_grad():
            self.images_.copy_(torch.maximum(torch.minimum(self.images_, self.high_), self.low_))
        self.draw_networks()
        classes = range(self.shape_["num_classes"])
        match = sum(self.update(self.match_loss(c), ascend=True) for c in classes)  # one update per class
        calib = sum(self.update(self.calib_loss(c)) for _ in range(self.calib_iters) for c in classes)
        n = len(classes)
        total = (match + calib) / n  # what the code's plateau schedule watches
        self.schedule_.step(total)
        if self.sampler_ is not None:
            self.sampler_schedule_.step(total)
        stats = {"loss": total, "match_loss": match / n, "lr_img": self.opt_.param_groups[0]["lr"]}
        if self.calib_iters:
            stats["calib_loss"] = calib / n
        return stats


class SampleNet(nn.Module):
    """The public code's sampling network: noise rows z ~ N(0, I), `dim` wide, through three
    Linear(dim, dim) -> BatchNorm1d layers (LeakyReLU 0.2, LeakyReLU 0.2, then Tanh), so every
    coordinate of a frequency lies in (-1, 1); num_freqs / repeat rows are made, and each is used
    `repeat` times. Batch norm always uses the batch's statistics (the code never switches to eval)."""

    def __init__(self, dim: int, num_freqs: int, repeat: int, *, seed: int):
        super().__init__()
        self.num_freqs, self.repeat = num_freqs, max(1, repeat)
        self.distinct = max(1, math.ceil(num_freqs / self.repeat))
        acts = [nn.LeakyReLU(0.2), nn.LeakyReLU(0.2), nn.Tanh()]
        self.layers = nn.Sequential(*[m for act in acts for m in (nn.Linear(dim, dim), nn.BatchNorm1d(dim), act)])
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # PyTorch's default Linear init, drawn from our generator
            for layer in self.layers:
                if isinstance(layer, nn.Linear):
                    bound = 1 / math.sqrt(dim)
                    layer.weight.uniform_(-bound, bound, generator=g)
                    layer.bias.uniform_(-bound, bound, generator=g)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(distinct, dim) noise -> (num_freqs, dim) frequencies."""
        self.train()
        return self.layers(z).repeat(self.repeat, 1)[: self.num_freqs]
