"""INFER: inter-class feature compensators (Zhang et al., "Breaking Class Barriers: Efficient
Dataset Distillation via Inter-Class Feature Compensator", ICLR 2025)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..labels import attach
from ..label_stores.soft import RowCodec, SoftLabels
from ..teacher import probabilities
from .base import METHODS, hp
from .recover import Recover, refresh_digest, temperature_of_labels


@METHODS.register("infer")
@dataclass
class INFER(Recover):
    """Instead of one image per class at a time, INFER learns universal feature compensators (UFCs):
    one perturbation per slot, shared by every class. Image j of class c is base(c, j) + u_j, with
    the bases real images; u_j is recovered (batch-norm statistics + cross-entropy) on the batch of
    all classes at once, so it carries features that serve every class. The set's labels are
    static: one soft vector per image, which the soft protocol mixes by area under CutMix instead
    of asking a teacher about every view (INFER's interpolated labels: N x C numbers in all)."""

    paper = ("Zhang et al., Breaking Class Barriers: Efficient Dataset Distillation via Inter-Class "
             "Feature Compensator, ICLR 2025")

    init: str = hp("real", "bases the compensators are added to: real images (INFER) or noise", choices=("real", "noise"))
    lr: float = hp(0.1, "Adam learning rate of the compensators (INFER's script: 0.1), cosine to 0", range=(1e-4, 10.0))
    bn_weight: float = hp(0.05, "weight of the batch-norm statistics loss (INFER's script: 0.05)", range=(0.0, 100.0))

    def setup(self, real, syn, *, seed, device):
        self.classes_ = real.num_classes
        super().setup(real, syn, seed=seed, device=device)

    def start(self, images: torch.Tensor) -> None:
        self.bases_ = images.detach().clone()  # (n, c, h, w), class-major
        self.ufc_ = torch.zeros(self.ipc_, *images.shape[1:], device=images.device, requires_grad=True)

    def parameters(self):
        return [self.ufc_]

    def batch(self):
        return self.bases_ + self.ufc_.repeat(self.classes_, 1, 1, 1)  # image c*ipc + j gets u_j

    def clip(self) -> None:
        pass  # a compensator is shared by all classes; the images it makes are clipped only for display

    def restore(self, images):
        with torch.no_grad():
            self.ufc_.copy_(images[:self.ipc_].to(self.ufc_.device) - self.bases_[:self.ipc_])  # class 0's row
        self.opt_.state.clear()
        self.relabel()

    def relabel(self) -> None:
        """Static soft labels of the current images, at the label temperature, stored as float16."""
        codec = RowCodec(self.classes_, "float16", 0)
        t, option = temperature_of_labels(self.teacher_, self.real_, self.label_temperature)
        values, _ = codec.encode(probabilities(self.teacher_.net, self.images(), self.device_, t))
        store = SoftLabels(values, None, codec=codec, temperature=t)
        store.spec, store.teacher_note = "soft" + option, self.teacher_.describe()
        syn = self.syn_
        syn.images = self.images().cpu()  # the digest in attach() is taken of these
        attach(syn, store)
        refresh_digest(syn, self.images())

    def step(self):
        stats = super().step()
        self.relabel()
        stats["ufc_norm"] = self.ufc_.detach().norm().item() / self.ipc_
        return stats
