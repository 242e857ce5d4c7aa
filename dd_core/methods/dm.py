"""DM: distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..augment import dsa_for, fyi_flip
from ..models import build_model, resolve_model
from .base import METHODS, Method, hp, is_small
from .sampling import RealSampler, class_means, embed_chunked, embed_in_chunks, frozen


@METHODS.register("dm")
@dataclass
class DM(Method):
    """Distribution matching: mean embeddings of real and synthetic images under random networks."""

    family = "distribution matching"
    paper = "Zhao & Bilen, Dataset Condensation with Distribution Matching, WACV 2023"

    model: str = hp("auto", "network whose random embeddings are matched; auto = the DD ConvNet for the "
                            "resolution (ConvNet-3 width 128 at 28-32 px, as in the paper)")
    lr_img: float = hp(1.0, "SGD learning rate of the synthetic pixels (1; 10 when IPC >= 100)", range=(0.0, 1000.0))
    momentum: float = hp(0.5, "SGD momentum of the synthetic pixels", range=(0.0, 0.99))
    batch_real: int = hp(256, "real images per class per step", range=(1, 1024))
    dsa: bool = hp(True, "differentiable Siamese augmentation on both sides")
    fyi: bool = hp(False, "FYI plug-in: also match the horizontally flipped synthetic images")

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        lr = 10.0 if ipc >= 100 else 1.0
        if name == "paper" or is_small(dataset):
            return {"lr_img": lr}
        # Fast CPU: a quarter of the real batch and the width-32 ConvNet-3 (about 8x cheaper per step
        # than width 128 on MNIST). On MNIST IPC 1 its 3000 steps reached the paper's accuracy
        # under the paper's evaluation (BENCHMARKS.md, section 2).
        return {"lr_img": lr, "batch_real": 64, "model": "convnet_w32"}

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 20000 if name == "paper" else (500 if is_small(dataset) else 3000)

    def setup(self, real, syn, *, seed, device):
        self.gen_ = torch.Generator().manual_seed(seed)
        self.real_ = RealSampler(real, device)
        self.dsa_ = dsa_for(real) if self.dsa else None
        self.net_name_ = resolve_model(self.model, real)
        self.shape_ = dict(channels=real.channels, num_classes=real.num_classes, image_size=real.image_size)
        self.device_ = device
        self.images_ = syn.images.detach().to(device).requires_grad_(True)
        self.labels_ = syn.labels.to(device)
        self.opt_ = torch.optim.SGD([self.images_], lr=self.lr_img, momentum=self.momentum)

    def sample(self):
        """Draw what one step needs, in a fixed order: the network, the real batch, the augmentation."""
        net_seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen_))
        net = frozen(build_model(self.net_name_, **self.shape_, seed=net_seed, device=self.device_))
        x_real, g_real = self.real_.all_classes(self.batch_real, self.gen_)
        params = self.dsa_.sample(self.shape_["num_classes"], self.gen_) if self.dsa_ else None
        return net, x_real, g_real, params

    def views(self, x_real, g_real, params):
        """The real and synthetic batches as the network sees them: the FYI flips appended to the
        synthetic side, then each class's DSA parameters applied to both. Returns the augmented real
        images, the augmented synthetic images and the synthetic class ids."""
        x_syn, g_syn = self.images_, self.labels_
        if self.fyi:
            x_syn, g_syn = fyi_flip(x_syn), torch.cat([g_syn, g_syn])
        if params is not None:
            x_real = self.dsa_.apply(x_real, params, g_real)
            x_syn = self.dsa_.apply(x_syn, params, g_syn)
        return x_real, x_syn, g_syn

    def loss(self, net, x_real, g_real, params) -> torch.Tensor:
        """Sum over classes of the squared distance between mean real and mean synthetic embeddings.
        All classes go through one batched call; class c's images use augmentation group c, which is
        exactly the per-class loop of the reference code."""
        x_real, x_syn, g_syn = self.views(x_real, g_real, params)
        c = self.shape_["num_classes"]
        mean_real = class_means(embed_chunked(net, x_real), g_real, c)  # (classes, d)
        mean_syn = class_means(embed_in_chunks(net, x_syn), g_syn, c)  # (classes, d)
        return ((mean_real - mean_syn) ** 2).sum()

    def step(self):
        loss = self.loss(*self.sample())
        self.opt_.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_.step()
        return {"loss": loss.item()}
