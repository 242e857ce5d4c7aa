"""DATM: difficulty-aligned trajectory matching (Guo et al., "Towards Lossless Dataset Distillation
via Difficulty-Aligned Trajectory Matching", ICLR 2024)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import dataset_facts
from .base import METHODS, hp
from .trajectory import TrajectoryMethod


@METHODS.register("datm")
@dataclass
class DATM(TrajectoryMethod):
    """MTT whose start window grows over the run (from easy, early patterns to harder, later ones),
    started from real images the experts classify correctly, with soft labels from the experts'
    logits learned alongside the images."""

    paper = "Guo et al., Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory Matching, ICLR 2024"

    max_start_epoch_final: int = hp(0, "the start window's upper end at the end of the growth; 0 = no growth "
                                       "(DATM CIFAR-10: IPC 10 grows 10 -> 20, IPC 50 20 -> 40)", range=(0, 400))
    grow_steps: int = hp(1000, "outer iterations over which the window grows linearly", range=(1, 100000))
    lr_y: float = hp(5.0, "SGD lr (momentum 0.9) of the learned label logits (DATM CIFAR-10 IPC 1: 5)", range=(0.0, 1000.0))
    label_epochs: int = hp(0, "epochs the first expert is trained to: its last checkpoint picks the initial images "
                              "and gives the labels' starting logits (DATM's buffers: 100 epochs); 0 = as far as "
                              "the start window reads", range=(0, 400))

    @classmethod
    def fast_preset(cls, dataset, ipc):
        out = super().fast_preset(dataset, ipc)
        # on digits the window's 3 epochs are 18 SGD steps, a labeller at about 75 %; 30 epochs reach about 94 %
        labeller = 30 if dataset_facts(dataset).small else 0
        return {**out, "max_start_epoch": 1, "max_start_epoch_final": 2, "grow_steps": 100, "lr_y": 2.0,
                "label_epochs": labeller}

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        out = super().preset(name, dataset=dataset, ipc=ipc)
        if name == "paper":  # DATM's CIFAR-10 configs (REFERENCE.md)
            if ipc <= 1:
                out.update(syn_steps=80, expert_epochs=2, max_start_epoch=4, lr_img=100.0, lr_y=5.0)
            elif ipc <= 10:
                out.update(max_start_epoch=10, max_start_epoch_final=20)
            else:
                out.update(max_start_epoch=20, max_start_epoch_final=40, lr_img=1000.0, batch_syn=500)
            out["num_experts"] = 100
            out["label_epochs"] = 100
        return out

    def labeller_epochs(self) -> int:
        return self.label_epochs

    def window_end(self) -> int:
        return max(self.max_start_epoch, self.max_start_epoch_final)

    def window_field(self) -> str:
        return "max_start_epoch_final" if self.max_start_epoch_final > self.max_start_epoch else "max_start_epoch"

    def setup(self, real, syn, *, seed, device):
        self.steps_done_ = 0
        super().setup(real, syn, seed=seed, device=device)
        self.learn_labels(self.lr_y)

    def init_images(self, real, syn):
        """Per class, random real images that the labelling checkpoint (the first expert's last) classifies
        correctly."""
        net = self.flat_.module_at(self.labeller_.to(self.device_))
        picks = []
        for c in range(real.num_classes):
            idx = real.indices_of(c)
            idx = idx[torch.randperm(len(idx), generator=self.gen_)]
            with torch.no_grad():
                pred = torch.cat([net(real.x_train[idx[i:i + 512]].to(self.device_)).argmax(1).cpu()
                                  for i in range(0, len(idx), 512)])
            right = idx[pred == c]
            chosen = right if len(right) >= syn.ipc else torch.cat([right, idx[pred != c]])  # too few: fill up
            picks.append(chosen[:syn.ipc])
        syn.images = real.x_train[torch.cat(picks)].clone()

    def window(self) -> int:
        """The current upper end of the start window."""
        if self.max_start_epoch_final <= self.max_start_epoch:
            return self.max_start_epoch
        grown = (self.max_start_epoch_final - self.max_start_epoch) * min(1.0, self.steps_done_ / self.grow_steps)
        return self.max_start_epoch + int(grown)

    def draw_start(self):
        expert = int(torch.randint(self.experts_.num_experts, (1,), generator=self.gen_))
        start = int(torch.randint(self.window(), (1,), generator=self.gen_))
        return expert, start

    def after_step(self):
        self.steps_done_ += 1
