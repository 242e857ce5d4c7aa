"""Coresets: choose real images instead of learning new ones (random, herding, k-center).

Herding and k-center work in the feature space of a network trained on the whole real training
set (see teacher.py), as in the published coreset figures; the features used are recorded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..teacher import features, get_teacher, logits
from .base import METHODS, Method, hp


class _Coreset(Method):
    family = "coreset"
    learns_images = False

    def setup(self, real, syn, *, seed, device):
        self.gen_ = torch.Generator().manual_seed(seed)
        ipc = syn.ipc
        picks = [self.select(real, c, ipc, device) for c in range(real.num_classes)]
        self.chosen_ = torch.cat(picks)  # (classes * ipc,) indices into the training set
        self.images_ = real.x_train[self.chosen_].clone().to(device)
        syn.images = self.images_.detach().cpu().clone()

    def step(self):
        return {"selected": float(len(self.chosen_))}

    def memory_images(self, num_classes, ipc):
        return 128, 512  # a feature network's training batch; features are taken 512 images at a time

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 1

    def select(self, real, c: int, ipc: int, device) -> torch.Tensor:
        raise NotImplementedError



@dataclass
class _FeatureCoreset(_Coreset):
    """A coreset chosen in the feature space of a network trained on the whole training set.

    Which network, and how long it is trained, moves the published coreset numbers (REFERENCE.md):
    both are hyperparameters, and the one used is written into the set's metadata (`features`)."""

    feature_model: str = hp("auto", "network whose features are used; 'auto' = the dataset's teacher "
                                    "(convnet_w32 on MNIST-sized data)")
    feature_epochs: int = hp(0, "epochs that network is trained on the whole training set; 0 = the "
                                "dataset's default (2 on MNIST)", range=(0, 1000))
    feature_layer: str = hp("embedding", "which output is the feature: 'embedding' (the penultimate "
                                         "layer) or 'logits' (the class scores)", choices=("embedding", "logits"))

    def setup(self, real, syn, *, seed, device):
        super().setup(real, syn, seed=seed, device=device)
        syn.extra_meta["features"] = self.features_from_

    def class_features(self, real, c, device):
        if self.feature_epochs < 0:
            raise ValueError(f"feature_epochs must be 0 (the default) or more, got {self.feature_epochs}")
        teacher = get_teacher(real, arch=None if self.feature_model in ("", "auto") else self.feature_model,
                              epochs=self.feature_epochs or None, device=device, stop=self.stop_)
        layer = "" if self.feature_layer == "embedding" else f", its {self.feature_layer}"
        self.features_from_ = teacher.describe() + layer
        idx = real.indices_of(c)
        if self.feature_layer == "logits":
            return idx, logits(teacher.net, real.x_train[idx], device)  # (n_c,), (n_c, classes)
        return idx, features(teacher.net, real.x_train[idx], device)  # (n_c,), (n_c, d)


@METHODS.register("random")
@dataclass
class RandomSubset(_Coreset):
    """Random real images of each class: the baseline every method must beat."""

    paper = "the random-subset baseline of the DC/DSA/DM papers"

    def select(self, real, c, ipc, device):
        idx = real.indices_of(c)
        return idx[torch.randperm(len(idx), generator=self.gen_)[:ipc]]


@METHODS.register("herding")
@dataclass
class Herding(_FeatureCoreset):
    """Herding (Welling, ICML 2009): greedily keep the running mean of chosen features closest to the class mean."""

    paper = "Welling, Herding Dynamical Weights to Learn, ICML 2009"
    rule: str = hp("argmin", "'argmin': herding (each pick brings the running mean closest to the class "
                             "mean); 'nearest-mean': the ipc images nearest the class mean, a common "
                             "shortcut kept to compare against published figures", choices=("argmin", "nearest-mean"))

    def select(self, real, c, ipc, device):
        idx, f = self.class_features(real, c, device)
        target = f.mean(0)  # (d,)
        if self.rule == "nearest-mean":
            return idx[(f - target).norm(dim=1).argsort()[:ipc]]
        chosen: list[int] = []
        total = torch.zeros_like(target)
        available = torch.ones(len(f), dtype=torch.bool)
        for k in range(ipc):
            # mean of the chosen set if each candidate were added; pick the *closest* (argmin)
            dist = ((total + f) / (k + 1) - target).norm(dim=1)
            dist[~available] = float("inf")
            i = int(dist.argmin())
            chosen.append(i)
            available[i] = False
            total += f[i]
        return idx[torch.tensor(chosen)]


@METHODS.register("kcenter")
@dataclass
class KCenter(_FeatureCoreset):
    """k-center greedy (Sener & Savarese, ICLR 2018): repeatedly add the point farthest from the chosen set."""

    paper = "Sener & Savarese, Active Learning for CNNs: A Core-Set Approach, ICLR 2018"
    start: str = hp("mean", "first point: 'mean' (closest to the class mean) or 'random'", choices=("mean", "random"))

    def select(self, real, c, ipc, device):
        idx, f = self.class_features(real, c, device)
        if self.start == "random":
            first = int(torch.randint(len(f), (1,), generator=self.gen_))
        else:
            first = int((f - f.mean(0)).norm(dim=1).argmin())
        chosen = [first]
        nearest = (f - f[first]).norm(dim=1)  # distance of every point to the chosen set
        for _ in range(ipc - 1):
            i = int(nearest.argmax())
            chosen.append(i)
            nearest = torch.minimum(nearest, (f - f[i]).norm(dim=1))
        return idx[torch.tensor(chosen)]
