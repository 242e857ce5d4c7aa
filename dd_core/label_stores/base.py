"""The base types of every label store: the `LabelStore` interface, its registry, hard labels, the
one soft cross-entropy, and the byte sizes stores count with. The stores themselves are the other
files of this package; building them from a spec and keeping them in a file is `dd_core/labels.py`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import Registry

LABEL_STORES: Registry = Registry("label store")

# What it takes to replay an augmentation schedule: its seed (int64), the number of epochs and
# the batch size (int32 each). The op set follows from the dataset's name and is not counted.
AUG_RECORD_BYTES = 8 + 4 + 4
SEED_BYTES = 8  # one int64 seed


class TeacherRequired(ValueError):
    """A label store that needs a trained teacher network was asked for without one."""


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k targets_k log softmax(logits)_k; equals F.cross_entropy for one-hot targets."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class LabelStore:
    """Base: class-probability targets for a batch plus the bytes they cost."""

    name = "base"
    needs_teacher = False
    LABELS_VIEWS = False  # targets() labels the given view itself (see labels_views())
    # option name -> (default, help); a spec such as "soft:dtype=int8,topk=2" sets them
    OPTIONS: dict[str, tuple[object, str]] = {}

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.teacher_note = ""  # the teacher behind the targets and its test accuracy, if any
        self.spec = self.name  # how it was built, e.g. "soft:dtype=int8,topk=2" (set by build())

    def targets(self, idx: torch.Tensor, views: torch.Tensor, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def nbytes(self) -> int:
        raise NotImplementedError

    def formula(self) -> str:
        """How nbytes() is computed, in words and symbols, for the trade-off table."""
        raise NotImplementedError

    def uncounted(self) -> str:
        """What the targets also depend on but nbytes() leaves out, and why ('' when nothing)."""
        return ""

    def inputs(self, idx: torch.Tensor, views: torch.Tensor, epoch: int) -> torch.Tensor:
        """What the student is shown for images `idx` in `epoch`: the scheduled views, unless the
        store only has labels for other views (pruned dynamic labels show their kept views)."""
        return views

    def labels_views(self) -> bool:
        """True when targets() labels the very view it is given (a teacher run on the view, or labels
        recorded for a replayed schedule). Per-image labels (hard, static soft) are False: when the
        soft-label protocol cuts two images into one view (CutMix), it mixes their labels by the same
        area, as INFER's static interpolated labels do."""
        return self.LABELS_VIEWS or type(self).view_seed is not LabelStore.view_seed

    def view_seed(self, default: int) -> int:
        """The seed of the augmentation schedule an evaluation network trains on. A store that
        labelled one recorded schedule returns that schedule's seed, so training sees those views."""
        return default

    def check_config(self, config, dataset) -> None:
        """Raise ValueError when this store cannot label an evaluation run with `config`."""

    # -- file round trip: tensors and strings under label_store.<key> ------------------------

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str], syn) -> "LabelStore":
        raise NotImplementedError

    @classmethod
    def build(cls, syn, dataset, teacher, config, **options) -> "LabelStore":
        raise NotImplementedError


@LABEL_STORES.register("hard")
class HardLabels(LabelStore):
    """One class index per image, stored as the smallest unsigned integer that holds it."""

    name = "hard"

    def __init__(self, labels: torch.Tensor, num_classes: int):
        super().__init__(num_classes)
        self.labels = labels.long()  # (n,)

    def targets(self, idx, views=None, epoch=0):
        return F.one_hot(self.labels[idx.cpu()].to(idx.device), self.num_classes).float()

    def bytes_per_label(self) -> int:
        return index_bytes(self.num_classes)

    def nbytes(self) -> int:
        return len(self.labels) * self.bytes_per_label()

    def formula(self) -> str:
        return f"N x {self.bytes_per_label()} B (one class index per image)"

    def state(self):
        return {}, {}  # the file's `labels` tensor already holds them

    @classmethod
    def from_state(cls, tensors, meta, syn):
        return cls(syn.labels, syn.num_classes)

    @classmethod
    def build(cls, syn, dataset, teacher, config, **options):
        return cls(syn.labels, syn.num_classes)


def index_bytes(num_classes: int) -> int:
    """Bytes of one class index: uint8 up to 256 classes, else uint16."""
    return 1 if num_classes <= 256 else 2
