"""SeT (its arXiv v2 calls it AST): trajectory matching with smooth, high-quality experts (Shen, Yang &
Lam, "Efficient Dataset Distillation through Alignment with Smooth and High-Quality Expert
Trajectories", arXiv 2310.10541, 2023)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .base import METHODS, hp
from .trajectory import TrajectoryMethod, backward_to, matching_loss, unroll_autograd


@METHODS.register("set")
@dataclass
class SeT(TrajectoryMethod):
    """MTT over smoothed experts (clipped updates and a gradient penalty), from representative
    initial images, with an intermediate matching loss and a perturbed starting point."""

    paper = ("Shen, Yang & Lam, Efficient Dataset Distillation through Alignment with Smooth and "
             "High-Quality Expert Trajectories, arXiv 2310.10541, 2023")

    expert_clip: float = hp(1.0, "experts: largest gradient norm per SGD step (0 = off); our reading of the "
                                 "paper's clipping, value ours", range=(0.0, 100.0))
    grad_penalty: float = hp(0.01, "experts: weight of the squared gradient norm added to their loss (value ours)",
                             range=(0.0, 10.0))
    mid_weight: float = hp(0.5, "weight of the intermediate matching loss: the student halfway through its "
                                "steps against the expert halfway to the target (needs expert_epochs >= 2)",
                           range=(0.0, 10.0))
    perturb: float = hp(0.01, "weight perturbation: Gaussian noise on the student's start, as a fraction of "
                              "each parameter tensor's RMS", range=(0.0, 1.0))

    def recipe(self, dataset):
        return dataclasses.replace(super().recipe(dataset), clip=self.expert_clip, grad_penalty=self.grad_penalty)

    def init_images(self, real, syn):
        """Representative initialisation: per class, the real images nearest the class mean in the
        first expert's features (last stored epoch)."""
        net = self.flat_.module_at(self.experts_.checkpoint(0, self.experts_.epochs).to(self.device_))
        picks = []
        for c in range(real.num_classes):
            idx = real.indices_of(c)
            with torch.no_grad():
                feats = torch.cat([net.embed(real.x_train[idx[i:i + 512]].to(self.device_))
                                   for i in range(0, len(idx), 512)])  # (n_c, d)
            picks.append(idx[(feats - feats.mean(0)).norm(dim=1).argsort()[:syn.ipc].cpu()])
        syn.images = real.x_train[torch.cat(picks)].clone()

    def start_and_target(self, expert, start):
        begin, target = super().start_and_target(expert, start)
        if self.perturb:
            noise, offset = torch.empty_like(begin), 0
            for n in self.flat_.numels:  # per parameter tensor, noise at `perturb` x its RMS
                part = begin[offset:offset + n]
                noise[offset:offset + n] = torch.randn(n, generator=self.gen_).to(begin) * part.pow(2).mean().sqrt()
                offset += n
            self.perturbed_ = begin + self.perturb * noise
        else:
            self.perturbed_ = begin
        self.expert_ = (expert, start)
        return begin, target

    def match(self, start, target, draws):
        half = self.expert_epochs // 2
        if not self.mid_weight or half < 1:
            loss, dist = unroll_autograd(self.flat_, self.perturbed_, target, self.images_, self.current_targets(),
                                         self.syn_lr_, draws, self.augmenter_)
        else:
            expert, epoch = self.expert_
            mid_target = self.experts_.checkpoint(expert, epoch + half).to(self.device_)
            k = max(1, round(self.syn_steps * half / self.expert_epochs))
            loss, dist, seen = unroll_autograd(self.flat_, self.perturbed_, target, self.images_,
                                               self.current_targets(), self.syn_lr_, draws, self.augmenter_,
                                               checkpoints={k: mid_target})
            loss = loss + self.mid_weight * matching_loss(seen[k], start, mid_target)
        backward_to(loss, self.learned())
        return loss.detach(), dist
