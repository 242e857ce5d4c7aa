"""FTD: flat trajectory distillation (Du et al., "Minimizing the Accumulated Trajectory Error to
Improve Dataset Distillation", CVPR 2023)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .base import METHODS, hp
from .trajectory import TrajectoryMethod


@METHODS.register("ftd")
@dataclass
class FTD(TrajectoryMethod):
    """MTT over experts trained with sharpness-aware minimisation (flat trajectories), keeping an
    exponential moving average of the images, which is the set that is saved and evaluated."""

    paper = "Du et al., Minimizing the Accumulated Trajectory Error to Improve Dataset Distillation, CVPR 2023"

    rho: float = hp(0.01, "SAM radius of the experts' training (FTD's buffers use 0.01)", range=(0.0, 1.0))
    ema_decay: float = hp(0.9995, "decay of the images' moving average per step (FTD: 0.9995)", range=(0.0, 0.99999))

    @classmethod
    def fast_preset(cls, dataset, ipc):
        # A few hundred steps: with 0.9995 the average would still be mostly the initial images.
        return {**super().fast_preset(dataset, ipc), "ema_decay": 0.9}

    def recipe(self, dataset):
        return dataclasses.replace(super().recipe(dataset), rho=self.rho)

    def setup(self, real, syn, *, seed, device):
        super().setup(real, syn, seed=seed, device=device)
        self.ema_ = self.images_.detach().clone()  # (n, c, h, w)

    def after_step(self):
        with torch.no_grad():
            self.ema_.mul_(self.ema_decay).add_(self.images_.detach(), alpha=1 - self.ema_decay)

    def images(self):
        return self.ema_.clone()

    def restore(self, images):
        super().restore(images)
        self.ema_.copy_(images.to(self.ema_.device))
