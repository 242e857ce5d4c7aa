"""SeT (its arXiv v2 calls it AST): trajectory matching with smooth, high-quality experts (Shen, Yang &
Lam, "Efficient Dataset Distillation through Alignment with Smooth and High-Quality Expert
Trajectories", arXiv 2310.10541, 2023)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .base import METHODS, hp
from .trajectory import TrajectoryMethod
from .unroll import backward_to, matching_loss, unroll_autograd


@METHODS.register("set")
@dataclass
class SeT(TrajectoryMethod):
    """MTT over smoothed experts (clipped updates and a gradient penalty), from representative
    initial images, with a balanced inner loss, an intermediate matching loss and a perturbed start."""

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
    balanced_inner: bool = hp(True, "balanced inner-loop loss: the student's loss is scaled by a weight that grows "
                                    "with the start epoch (inner_weight), so late, flat starts are not under-trained")

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

    def inner_weight(self, start_epoch: int) -> float:
        """The balanced inner loss's weight for a student starting at `start_epoch` of [0, T+): with h =
        T+ // 2, log_5(start - h + 8) from the middle of the window on, 1 / log_5(h - start + 8) before
        it, so it rises with the start epoch (0.73 just before the middle, 1.29 at it). An expert's
        loss, and so the student's gradients, shrink along its trajectory; the weight evens out how
        far a student moves from early and from late starts. The form is the one in the authors'
        public code (commented out there); the paper's text available to us names the loss only."""
        if not self.balanced_inner:
            return 1.0
        h = self.max_start_epoch // 2
        if start_epoch >= h:
            return math.log(start_epoch - h + 8, 5)
        return 1.0 / math.log(h - start_epoch + 8, 5)

    def match(self, start, target, draws):
        half = self.expert_epochs // 2
        expert, epoch = self.expert_
        # Scaling the student's loss by w scales each of its gradients by w: the same as stepping at lr x w.
        lr = self.syn_lr_ * self.inner_weight(epoch)
        if not self.mid_weight or half < 1:
            loss, dist = unroll_autograd(self.flat_, self.perturbed_, target, self.images_, self.current_targets(),
                                         lr, draws, self.augmenter_)
        else:
            mid_target = self.experts_.checkpoint(expert, epoch + half).to(self.device_)
            k = max(1, round(self.syn_steps * half / self.expert_epochs))
            loss, dist, seen = unroll_autograd(self.flat_, self.perturbed_, target, self.images_,
                                               self.current_targets(), lr, draws, self.augmenter_,
                                               checkpoints={k: mid_target})
            loss = loss + self.mid_weight * matching_loss(seen[k], start, mid_target)
        backward_to(loss, self.learned())
        return loss.detach(), dist
