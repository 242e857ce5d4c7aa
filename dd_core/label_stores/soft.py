"""Static soft labels (Hinton et al. 2015 knowledge distillation applied to a distilled set): one
teacher probability vector per image, stored as float32, float16, int8 or as its top-k entries."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..teacher import probabilities
from .base import LABEL_STORES, LabelStore, index_bytes

# Teacher probabilities are softmax(logits / T) with T = T_cal x soften: T_cal is the teacher's
# calibrated temperature (teacher.py), `soften` an optional extra softening (SRe2L and RDED use 4
# on both teacher and student; here the student's soft cross-entropy stays at T = 1, one loss for
# every store, so softening only the targets flattens what the student learns: default 1).
SOFTEN = (1.0, "multiplies the teacher's calibrated temperature (1 = calibrated; > 1 softens)")
VALUE_DTYPE = ("float16", "value type: float32, float16 or int8 (256 levels)")
DTYPES = {"float32": (torch.float32, 4), "float16": (torch.float16, 2), "int8": (torch.uint8, 1)}


@dataclass(frozen=True)
class RowCodec:
    """How one probability row is stored: value type, and all C entries or only the k largest."""

    num_classes: int
    dtype: str = "float16"
    topk: int = 0  # 0 keeps all C entries

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown label dtype {self.dtype!r}; valid dtypes are: {', '.join(DTYPES)}")
        if self.topk < 0 or self.topk > self.num_classes:
            raise ValueError(f"top-k {self.topk} is not possible with {self.num_classes} classes: the limit "
                             f"is k <= {self.num_classes} (and k = 0 keeps every class)")

    @property
    def k(self) -> int:
        return self.topk or self.num_classes

    def bytes_per_row(self) -> int:
        value = DTYPES[self.dtype][1]
        return self.k * (value + index_bytes(self.num_classes)) if self.topk else self.k * value

    def row_formula(self) -> str:
        value = DTYPES[self.dtype][1]
        if self.topk:
            return f"k x ({value} B {self.dtype} value + {index_bytes(self.num_classes)} B index), k = {self.k}"
        return f"C x {value} B {self.dtype}"

    def encode(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(..., C) probabilities -> stored values (..., k) and class indices (..., k) or None."""
        indices = None
        if self.topk:
            p, indices = p.topk(self.k, dim=-1)
            indices = indices.to(torch.uint8 if index_bytes(self.num_classes) == 1 else torch.int16)
        if self.dtype == "int8":  # 256 levels over [0, 1]
            return (p * 255).round().clamp(0, 255).to(torch.uint8), indices
        return p.to(DTYPES[self.dtype][0]), indices

    def decode(self, values: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """Stored rows -> (..., C) float32 rows that are valid probability distributions."""
        v = values.float() / 255 if self.dtype == "int8" else values.float()
        if indices is None:  # rounding moved the sum off 1: renormalise
            return v / v.sum(-1, keepdim=True)
        # Top-k: the mass the k entries leave is spread evenly over the other C - k classes.
        rest = (1 - v.sum(-1, keepdim=True)).clamp(min=0)
        others = self.num_classes - self.k
        out = (rest / others).expand(*v.shape[:-1], self.num_classes).clone() if others else \
            torch.zeros(*v.shape[:-1], self.num_classes)
        out.scatter_(-1, indices.long(), v)
        return out / out.sum(-1, keepdim=True)


def teacher_device(teacher) -> torch.device:
    return next(teacher.net.parameters()).device


def teacher_temperature(teacher, dataset, soften: float) -> float:
    if soften <= 0:
        raise ValueError(f"soften must be positive; got {soften}")
    return round(teacher.calibrated_temperature(dataset) * soften, 4)


@LABEL_STORES.register("soft")
class SoftLabels(LabelStore):
    """One teacher probability vector per (un-augmented) image, as in knowledge distillation."""

    name = "soft"
    needs_teacher = True
    OPTIONS = {"dtype": VALUE_DTYPE,
               "topk": (0, "keep only the k largest probabilities per image (0 keeps all)"),
               "soften": SOFTEN,
               "temperature": (0.0, "the labels' temperature as given (0: the teacher's calibrated one x soften)")}

    def __init__(self, values, indices, *, codec: RowCodec, temperature: float):
        super().__init__(codec.num_classes)
        self.values, self.indices = values, indices  # (N, k) stored type; (N, k) class ids or None
        self.codec, self.temperature = codec, temperature

    def targets(self, idx, views=None, epoch=0):
        i = idx.cpu()
        return self.codec.decode(self.values[i], None if self.indices is None else self.indices[i])

    def nbytes(self):
        return len(self.values) * self.codec.bytes_per_row()

    def formula(self):
        return f"N x {self.codec.row_formula()} (one teacher vector per image, T = {self.temperature:g})"

    def state(self):
        tensors = {"values": self.values}
        if self.indices is not None:
            tensors["indices"] = self.indices
        return tensors, {"dtype": self.codec.dtype, "topk": self.codec.topk, "temperature": self.temperature}

    @classmethod
    def from_state(cls, tensors, meta, syn):
        codec = RowCodec(syn.num_classes, meta["dtype"], int(meta["topk"]))
        return cls(tensors["values"], tensors.get("indices"), codec=codec, temperature=float(meta["temperature"]))

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, dtype="float16", topk=0, soften=1.0, temperature=0.0):
        if temperature < 0:
            raise ValueError(f"temperature must be positive (or 0 for the calibrated one); got {temperature}")
        temperature = temperature or teacher_temperature(teacher, dataset, soften)
        codec = RowCodec(syn.num_classes, dtype, topk)
        p = probabilities(teacher.net, syn.images, teacher_device(teacher), temperature)  # (N, C)
        values, indices = codec.encode(p)
        return cls(values, indices, codec=codec, temperature=temperature)
