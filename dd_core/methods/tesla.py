"""TESLA: trajectory matching with constant memory (Cui et al., "Scaling Up Dataset Distillation to
ImageNet-1K with Constant Memory", ICML 2023)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import METHODS, hp
from .trajectory import TrajectoryMethod


@METHODS.register("tesla")
@dataclass
class TESLA(TrajectoryMethod):
    """MTT's gradient computed one student step at a time, so memory does not grow with syn_steps;
    optionally with soft labels started from the experts and learned."""

    paper = "Cui et al., Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory, ICML 2023"
    constant_memory = True

    soft_labels: bool = hp(False, "learn soft labels, started from the experts' logits; saved as the set's label store")
    lr_y: float = hp(2.0, "SGD lr (momentum 0.9) of the learned label logits", range=(0.0, 1000.0))
    hessian_chain: bool = hp(True, "True: MTT's exact gradient (each batch also reaches the loss through the later "
                                   "student steps it moves); False: the gradient of TESLA's public code, which drops "
                                   "that chain (cheaper per step, a different gradient)")

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        out = super().preset(name, dataset=dataset, ipc=ipc)
        if name == "paper" and ipc == 1:  # TESLA's CIFAR-10 IPC 1 row (REFERENCE.md): N 50, M 2, T+ 5, lr_img 1000
            out.update(syn_steps=50, expert_epochs=2, max_start_epoch=5, lr_img=1000.0, lr_lr=1e-7)
        return out

    def setup(self, real, syn, *, seed, device):
        super().setup(real, syn, seed=seed, device=device)
        if self.soft_labels:
            self.learn_labels(self.lr_y)
