"""A committee as the online teacher (CV-DD, Cui et al. 2025): no stored labels; each view is
labelled by the vote-weighted mean of several teachers' logits, so what must be kept is every
member's weights and the votes."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..models import inference_layout, num_parameters
from ..committee import Committee
from .base import LABEL_STORES, LabelStore
from .online import network_for


@LABEL_STORES.register("committee")
class CommitteeLabels(LabelStore):
    """softmax(sum_m vote_m x logits_m / T) for each view, computed while the student trains."""

    name = "committee"
    needs_teacher = True
    LABELS_VIEWS = True
    OPTIONS = {"temperature": (4.0, "the labels' temperature")}

    def __init__(self, net: Committee, *, archs: list[str], temperature: float):
        super().__init__(net.members[0].classifier.out_features)
        self.net, self.archs, self.temperature = net.eval(), archs, temperature
        inference_layout(self.net, next(net.parameters()).device)

    @torch.no_grad()
    def targets(self, idx, views, epoch=0):
        if next(self.net.parameters()).device != views.device:
            inference_layout(self.net, views.device)
        return F.softmax(self.net(views) / self.temperature, dim=1)

    def nbytes(self):
        return sum(v.numel() * v.element_size() for v in self.net.state_dict().values()) + 4

    def formula(self):
        sizes = " + ".join(f"{num_parameters(m):,}" for m in self.net.members)
        return (f"sum over members of P x 4 B float32 weights (+ buffers, votes) + 4 B temperature; "
                f"P = {sizes} parameters of {', '.join(self.archs)}, T = {self.temperature:g}; nothing per image")

    def state(self):
        tensors = {f"net.{k}": v.cpu() for k, v in self.net.state_dict().items()}
        return tensors, {"archs": json.dumps(self.archs), "temperature": str(self.temperature)}

    @classmethod
    def from_state(cls, tensors, meta, syn):
        archs = json.loads(meta["archs"])
        votes = tensors["net.weights"]
        net = Committee([network_for(syn, a) for a in archs], votes.clone())
        net.load_state_dict({k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")})
        return cls(net, archs=archs, temperature=float(meta["temperature"]))

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, temperature=4.0):
        if not isinstance(teacher.net, Committee):
            raise ValueError("the 'committee' label store needs a committee of teachers (as CV-DD makes); "
                             "for one teacher use the 'teacher' store")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        archs = list(teacher.member_archs_)  # set by teachers.committee_teacher
        net = Committee([network_for(syn, a) for a in archs], teacher.net.weights.detach().cpu().clone())
        net.load_state_dict({k: v.detach().cpu() for k, v in teacher.net.state_dict().items()})
        for p in net.parameters():
            p.requires_grad_(False)
        return cls(net, archs=archs, temperature=temperature)
