"""Distance labels, our reading of NRR-DD's distance-based representative transfer (Tran et al.,
"Enhancing Dataset Distillation via Non-Critical Region Refinement", arXiv 2503.18267), written from the
paper's description: per image (or per augmented view) only two distances between the teacher's
prediction p and the one-hot label e_y are stored, and the student is trained towards a target
that has exactly those two distances to e_y.

The exact construction:
  stored   d1 = 1 - p_y = ||p - e_y||_1 / 2     (total-variation distance: mass moved off the label)
           d2 = ||p - e_y||_2                    (Euclidean distance: how concentrated that mass is)
  shared   R (C x C): R[y] = the teacher's mean prediction over real training images of class y
  target   t = (1 - d1) e_y + d1 q,  q_c = R[y, c]^b / sum_{c' != y} R[y, c']^b for c != y, q_y = 0,
           with b >= 0 chosen by bisection so that ||q||^2 = (d2^2 - d1^2) / d1^2 (clamped to [1/(C-1), 1]);
           then ||t - e_y||_1 / 2 = d1 and ||t - e_y||_2 = d2, which is what "reproduce the distances" asks.
  loss     the soft cross-entropy -sum_c t_c log softmax(student logits)_c, as for every store; it is
           minimised exactly when the student's prediction equals t, i.e. has the stored distances.
Which other classes receive the moved mass comes from R (the class's typical confusions), not from
the instance: that is what two numbers cannot carry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..teacher import probabilities
from .base import AUG_RECORD_BYTES, LABEL_STORES, LabelStore, index_bytes
from .dynamic import AugRecord, schedule_probabilities
from .soft import SOFTEN, teacher_device, teacher_temperature

RELATION_PER_CLASS = 500  # real training images per class averaged into R (the first ones of each class)
DTYPES = {"float32": (torch.float32, 4), "float16": (torch.float16, 2)}


def distances(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(..., C) predictions, (...,) labels -> (..., 2): total-variation and Euclidean distance to e_y."""
    onehot = F.one_hot(y, p.shape[-1]).to(p.dtype)
    return torch.stack([(1 - (p * onehot).sum(-1)).clamp(0, 1), (p - onehot).norm(dim=-1)], -1)


def reconstruct(y: torch.Tensor, d: torch.Tensor, relation: torch.Tensor, iterations: int = 40) -> torch.Tensor:
    """Labels (n,), distances (n, 2), R (C, C) -> (n, C) targets with those distances to e_y."""
    c = relation.shape[1]
    onehot = F.one_hot(y, c).float()
    mass = d[:, 0].float().clamp(0, 1)  # (n,)
    if c == 1:
        return onehot
    kappa = ((d[:, 1].float() ** 2 - mass ** 2) / mass.clamp(min=1e-6) ** 2).clamp(1 / (c - 1), 1)
    log_r = relation.float()[y].clamp(min=1e-8).log().masked_fill(onehot.bool(), float("-inf"))  # (n, C)
    lo, hi = torch.zeros_like(mass), torch.full_like(mass, 64.0)  # b = 0 spreads evenly, b = 64 ~ one class
    for _ in range(iterations):  # ||q(b)||^2 grows with b: bisect for the stored concentration
        mid = (lo + hi) / 2
        flat = (F.softmax(mid[:, None] * log_r, 1) ** 2).sum(1) < kappa
        lo, hi = torch.where(flat, mid, lo), torch.where(flat, hi, mid)
    q = F.softmax(((lo + hi) / 2)[:, None] * log_r, 1)
    return (1 - mass)[:, None] * onehot + mass[:, None] * q


def class_relation(dataset, teacher, temperature: float) -> torch.Tensor:
    """(C, C): the teacher's mean prediction over (up to RELATION_PER_CLASS) real images of each class."""
    rows = []
    for k in range(dataset.num_classes):
        idx = dataset.indices_of(k)[:RELATION_PER_CLASS]
        rows.append(probabilities(teacher.net, dataset.x_train[idx], teacher_device(teacher), temperature).mean(0))
    return torch.stack(rows)


@LABEL_STORES.register("distance")
class DistanceLabels(LabelStore):
    """Two distances per image (or per view) to the one-hot label, after NRR-DD's DBR transfer."""

    name = "distance"
    needs_teacher = True
    OPTIONS = {"per_view": (False, "two distances for every augmented view of every epoch (replayed), not per image"),
               "dtype": ("float16", "value type of the distances: float32 or float16"),
               "soften": SOFTEN}

    def __init__(self, labels, dist, relation, *, record: AugRecord | None, dtype: str, temperature: float):
        super().__init__(relation.shape[0])
        if dtype not in DTYPES:
            raise ValueError(f"unknown distance dtype {dtype!r}; valid dtypes are: {', '.join(DTYPES)}")
        self.labels = labels.long()  # (N,) the hard labels the distances are measured from
        self.dist = dist  # (N, 2) or (E, N, 2)
        self.relation = relation  # (C, C) float16
        self.record, self.dtype, self.temperature = record, dtype, temperature

    def targets(self, idx, views=None, epoch=0):
        i = idx.cpu()
        d = self.dist[epoch, i] if self.record is not None else self.dist[i]
        return reconstruct(self.labels[i], d, self.relation)

    def view_seed(self, default):
        return self.record.seed if self.record is not None else default

    def labels_views(self):
        return self.record is not None  # per_view: made for the replayed views; else one pair per image

    def check_config(self, config, dataset):
        if self.record is not None:
            self.record.check(config, self.name)

    def nbytes(self):
        c = self.num_classes
        total = self.dist.numel() * DTYPES[self.dtype][1] + c * c * 2 + len(self.labels) * index_bytes(c)
        return total + (AUG_RECORD_BYTES if self.record is not None else 0)

    def formula(self):
        b, c, ib = DTYPES[self.dtype][1], self.num_classes, index_bytes(self.num_classes)
        if self.record is None:
            return (f"N x 2 x {b} B distances + N x {ib} B hard labels + C x C x 2 B class relation; "
                    f"C = {c}, T = {self.temperature:g}")
        return (f"E x N x 2 x {b} B distances + N x {ib} B hard labels + C x C x 2 B class relation + "
                f"{AUG_RECORD_BYTES} B augmentation record; E = {self.record.epochs}, C = {c}, T = {self.temperature:g}")

    def state(self):
        meta = {"dtype": self.dtype, "temperature": str(self.temperature), "per_view": str(int(self.record is not None))}
        if self.record is not None:
            meta.update(self.record.meta())
        return {"distances": self.dist, "relation": self.relation}, meta

    @classmethod
    def from_state(cls, tensors, meta, syn):
        record = AugRecord.from_meta(meta) if meta["per_view"] == "1" else None
        return cls(syn.labels, tensors["distances"], tensors["relation"], record=record, dtype=meta["dtype"],
                   temperature=float(meta["temperature"]))

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, per_view=False, dtype="float16", soften=1.0):
        temperature = teacher_temperature(teacher, dataset, soften)
        if dtype not in DTYPES:
            raise ValueError(f"unknown distance dtype {dtype!r}; valid dtypes are: {', '.join(DTYPES)}")
        record = AugRecord.for_config(config) if per_view else None
        if record is not None:
            p = schedule_probabilities(syn, teacher, record, temperature)  # (E, N, C)
            y = syn.labels.expand(record.epochs, -1)
        else:
            p, y = probabilities(teacher.net, syn.images, teacher_device(teacher), temperature), syn.labels
        relation = class_relation(dataset, teacher, temperature).half()
        return cls(syn.labels, distances(p, y).to(DTYPES[dtype][0]), relation, record=record, dtype=dtype,
                   temperature=temperature)
