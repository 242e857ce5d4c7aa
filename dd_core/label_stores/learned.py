"""Labels learned together with the images (TESLA, DATM): one probability row per synthetic image,
initialised from the experts' logits and trained by the distillation itself."""
from __future__ import annotations

import torch

from ..teacher import probabilities
from .base import LABEL_STORES, LabelStore
from .soft import teacher_device

DTYPES = {"float32": (torch.float32, 4), "float16": (torch.float16, 2)}


@LABEL_STORES.register("learned")
class LearnedLabels(LabelStore):
    """Probability rows learned with the images, stored as float32 (or float16)."""

    name = "learned"
    # Only a distillation makes these; for another set (the random subset beside it, for IOR) the
    # teacher's probabilities stand in, so both sides train on soft rows of the same size.
    needs_teacher = True
    OPTIONS = {"dtype": ("float32", "value type: float32 or float16")}

    def __init__(self, probs: torch.Tensor, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"unknown label dtype {dtype!r}; valid dtypes are: {', '.join(DTYPES)}")
        super().__init__(probs.shape[1])
        self.dtype = dtype
        self.probs = probs.detach().cpu().to(DTYPES[dtype][0])  # (N, C)

    def targets(self, idx, views=None, epoch=0):
        p = self.probs[idx.cpu()].float()
        return p / p.sum(1, keepdim=True)

    def nbytes(self):
        return self.probs.numel() * DTYPES[self.dtype][1]

    def formula(self):
        return f"N x C x {DTYPES[self.dtype][1]} B {self.dtype} (one learned probability row per image)"

    def state(self):
        return {"probs": self.probs}, {"dtype": self.dtype}

    @classmethod
    def from_state(cls, tensors, meta, syn):
        return cls(tensors["probs"], meta.get("dtype", "float32"))

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, dtype="float32"):
        return cls(probabilities(teacher.net, syn.images, teacher_device(teacher)), dtype)
