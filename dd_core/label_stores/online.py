"""The online teacher (RDED, Sun et al. CVPR 2024): no stored labels; the teacher network labels
every augmented view during evaluation, so what must be kept is the teacher's weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import build_model, inference_layout, num_parameters
from .base import LABEL_STORES, LabelStore
from .soft import SOFTEN, teacher_temperature

WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def network_for(syn, arch: str, seed: int | None = None) -> torch.nn.Module:
    """A registered network shaped for the synthetic set's images and classes."""
    return build_model(arch, channels=syn.images.shape[1], num_classes=syn.num_classes,
                       image_size=tuple(syn.images.shape[2:]), seed=seed)


@LABEL_STORES.register("teacher")
class OnlineTeacher(LabelStore):
    """The teacher's softmax(logits / T) for each view, computed while the student trains."""

    name = "teacher"
    needs_teacher = True
    LABELS_VIEWS = True  # the teacher labels each (cropped, mixed) view itself
    OPTIONS = {"dtype": ("float32", "type the weights are kept in (and counted at): float32 or float16"),
               "soften": SOFTEN,
               "temperature": (0.0, "the labels' temperature as given (0: the teacher's calibrated one x soften)")}

    def __init__(self, net: torch.nn.Module, *, arch: str, dtype: str, temperature: float):
        super().__init__(net.classifier.out_features)
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"unknown weight dtype {dtype!r}; valid dtypes are: {', '.join(WEIGHT_DTYPES)}")
        self.net, self.arch, self.dtype, self.temperature = net.eval(), arch, dtype, temperature
        inference_layout(self.net, next(net.parameters()).device)

    @torch.no_grad()
    def targets(self, idx, views, epoch=0):
        if next(self.net.parameters()).device != views.device:
            inference_layout(self.net, views.device)
        return F.softmax(self.net(views) / self.temperature, dim=1)

    def stored(self) -> dict[str, torch.Tensor]:
        """The state dict as kept: floating tensors in `dtype`, counters as they are."""
        return {k: v.to(WEIGHT_DTYPES[self.dtype]) if v.is_floating_point() else v
                for k, v in self.net.state_dict().items()}

    def nbytes(self):
        return sum(v.numel() * v.element_size() for v in self.stored().values()) + 4  # + float32 T

    def formula(self):
        size = WEIGHT_DTYPES[self.dtype].itemsize
        return (f"P x {size} B {self.dtype} teacher weights (+ any buffers) + 4 B temperature; "
                f"P = {num_parameters(self.net):,} parameters of {self.arch}, T = {self.temperature:g}; nothing per image")

    def state(self):
        tensors = {f"weight.{k}": v.cpu() for k, v in self.stored().items()}
        return tensors, {"arch": self.arch, "dtype": self.dtype, "temperature": str(self.temperature)}

    @classmethod
    def from_state(cls, tensors, meta, syn):
        net = network_for(syn, meta["arch"])
        net.load_state_dict({k[len("weight."):]: v.float() if v.is_floating_point() else v
                             for k, v in tensors.items() if k.startswith("weight.")})
        return cls(net, arch=meta["arch"], dtype=meta["dtype"], temperature=float(meta["temperature"]))

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, dtype="float32", soften=1.0, temperature=0.0):
        if temperature < 0:
            raise ValueError(f"temperature must be positive (or 0 for the calibrated one); got {temperature}")
        temperature = temperature or teacher_temperature(teacher, dataset, soften)
        store = cls(network_for(syn, teacher.arch), arch=teacher.arch, dtype=dtype, temperature=temperature)
        # Load the weights as they are kept, so a float16 teacher is evaluated as float16 would give.
        store.net.load_state_dict({k: v.to(WEIGHT_DTYPES[dtype]).to(v.dtype) for k, v in teacher.net.state_dict().items()})
        for p in store.net.parameters():
            p.requires_grad_(False)
        return store
