"""KRR-ST: self-supervised dataset distillation for transfer learning (Lee et al., "Self-Supervised
Dataset Distillation for Transfer Learning", ICLR 2024).

The synthetic set is unlabelled images X_s (m, c, h, w) plus a learned target representation Y_s
(m, d) each, instead of a class. The targets come from an encoder trained without labels on the
real data (Barlow Twins, dd_core/ssl.py). Each step takes a network f from a small pool, fits
kernel ridge regression from f's features of X_s to Y_s, predicts the target representations of a
batch of real images, and moves X_s and Y_s to lower that error:

    L = || Y_t - K_ts (K_ss + lam I)^-1 Y_s ||^2,  K_ts = f(X_t) f(X_s)^T,  K_ss = f(X_s) f(X_s)^T.

The pool's networks are themselves trained, one step each time they are drawn, to regress Y_s from
X_s, and start again from random weights after `online_steps` steps (the paper's model pool).

The labels the file keeps are the classes of the real images the synthetic ones started from; the
method never reads them. The targets live in the file as the tensor `krr_st.targets`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import build_model, resolve_model
from ..ssl import get_encoder
from .base import METHODS, Method, hp

TARGETS = "krr_st.targets"  # the name of the (m, d) target representations in the saved set


def krr_predict(f_s: torch.Tensor, y_s: torch.Tensor, f_t: torch.Tensor, ridge: float) -> torch.Tensor:
    """Kernel ridge regression with the linear kernel on features: (m, k) support features and (m, d)
    targets, (b, k) query features -> (b, d) predictions. The ridge is relative to the kernel's mean
    diagonal, so it means the same at any feature scale."""
    k_ss = f_s @ f_s.T  # (m, m)
    lam = ridge * k_ss.diagonal().mean().detach() + 1e-8
    alpha = torch.linalg.solve(k_ss + lam * torch.eye(len(f_s), dtype=f_s.dtype, device=f_s.device), y_s)  # (m, d)
    return (f_t @ f_s.T) @ alpha


@METHODS.register("krr_st")
@dataclass
class KRRST(Method):
    """KRR-ST (Lee et al., ICLR 2024): unlabelled images and target representations, matched by kernel ridge regression."""

    family = "self-supervised (transfer)"
    paper = "Lee et al., Self-Supervised Dataset Distillation for Transfer Learning, ICLR 2024"

    target_model: str = hp("auto", "network of the self-supervised target encoder; auto = convnet_d2 on digits, "
                                   "convnet_w32 otherwise")
    target_epochs: int = hp(0, "Barlow Twins epochs of the target encoder on the unlabelled real images; 0 = "
                               "the dataset's default (10 on digits, 5 otherwise)", range=(0, 1000))
    model: str = hp("auto", "network of the model pool whose features feed the kernel; auto = the DD ConvNet "
                            "for the resolution")
    pool_size: int = hp(4, "networks in the model pool (the paper: 10)", range=(1, 100))
    online_steps: int = hp(100, "steps a pool network is trained on the synthetic set before it starts again "
                                "from random weights", range=(1, 100000))
    model_lr: float = hp(0.01, "SGD learning rate of the pool networks (momentum 0.9)", range=(1e-6, 10.0))
    batch_real: int = hp(256, "real images per step (any class: no labels are used)", range=(1, 4096))
    lr_img: float = hp(1e-3, "Adam learning rate of the synthetic pixels (the paper: 1e-3)", range=(1e-6, 10.0))
    lr_target: float = hp(1e-3, "Adam learning rate of the target representations (the paper: 1e-3)",
                          range=(1e-6, 10.0))
    ridge: float = hp(1e-6, "kernel ridge, relative to the kernel's mean diagonal (the paper: 1e-6)",
                      range=(0.0, 1.0))

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        if name == "paper":
            return {"pool_size": 10, "online_steps": 1000}
        # Fast CPU: hundreds of steps instead of tens of thousands, so steps 10x the paper's size
        # (on digits, 40 steps then lower the loss by about a quarter instead of 5%).
        fast = {"lr_img": 1e-2, "lr_target": 1e-2}
        if dataset == "digits":
            return fast
        return {**fast, "model": "convnet_w32", "batch_real": 128}  # a CPU-sized pool on 28-32 px images

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 30000 if name == "paper" else (200 if dataset == "digits" else 500)

    def setup(self, real, syn, *, seed, device):
        self.gen_ = torch.Generator().manual_seed(seed)
        self.device_ = device
        encoder = get_encoder(real, arch=None if self.target_model in ("", "auto") else self.target_model,
                              epochs=self.target_epochs or None, device=device, stop=self.stop_)
        self.check_stop()
        self.y_real_ = encoder.targets(real, real.x_train, device).to(device)  # (n, d), standardized
        self.x_real_ = real.x_train
        self.images_ = syn.images.detach().to(device).requires_grad_(True)
        # the targets start at the encoder's view of the starting images
        self.targets_ = encoder.targets(real, syn.images, device).to(device).requires_grad_(True)
        self.opt_ = torch.optim.Adam([{"params": [self.images_], "lr": self.lr_img},
                                      {"params": [self.targets_], "lr": self.lr_target}])
        self.net_name_ = resolve_model(self.model, real)
        self.shape_ = dict(channels=real.channels, num_classes=real.num_classes, image_size=real.image_size)
        self.pool_ = [self.fresh_member() for _ in range(self.pool_size)]
        syn.extra[TARGETS] = self.targets_.detach().cpu().clone()
        syn.extra_meta["target_encoder"] = encoder.describe()
        syn.extra_meta["labels_meaning"] = ("the class of the real image each synthetic image started from; "
                                            "KRR-ST never uses it: the training targets are krr_st.targets")
        self.syn_ = syn

    def fresh_member(self) -> dict:
        """A pool network with random weights, a linear head to the targets, and its optimizer."""
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen_))
        net = build_model(self.net_name_, **self.shape_, seed=seed, device=self.device_)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dim = net.embed(self.x_real_[:1].to(self.device_)).shape[1]
            head = nn.Linear(dim, self.targets_.shape[1]).to(self.device_)
        params = list(net.parameters()) + list(head.parameters())
        return {"net": net, "head": head, "age": 0,
                "opt": torch.optim.SGD(params, lr=self.model_lr, momentum=0.9)}

    def step(self):
        k = int(torch.randint(len(self.pool_), (1,), generator=self.gen_))
        member = self.pool_[k]
        net = member["net"]
        idx = torch.randint(len(self.x_real_), (self.batch_real,), generator=self.gen_)
        net.requires_grad_(False)  # the KRR loss moves the synthetic set only
        with torch.no_grad():
            f_t = net.embed(self.x_real_[idx].to(self.device_))  # (b, k)
        f_s = net.embed(self.images_)  # (m, k)
        pred = krr_predict(f_s, self.targets_, f_t, self.ridge)  # (b, d)
        loss = F.mse_loss(pred, self.y_real_[idx.to(self.device_)])
        self.opt_.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_.step()
        net.requires_grad_(True)
        # then the drawn pool network takes one step of regressing the targets from the synthetic images
        fit = F.mse_loss(member["head"](net.embed(self.images_.detach())), self.targets_.detach())
        member["opt"].zero_grad(set_to_none=True)
        fit.backward()
        member["opt"].step()
        member["age"] += 1
        if member["age"] >= self.online_steps:
            self.pool_[k] = self.fresh_member()
        self.syn_.extra[TARGETS] = self.targets_.detach().cpu().clone()
        return {"loss": loss.item(), "pool_fit": fit.item()}
