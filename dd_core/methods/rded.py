"""RDED: realistic and diverse dataset distillation by selecting and stitching real crops (Sun,
Shi, Yu & Zhu, "On the Diversity and Realism of Distilled Dataset: An Efficient Dataset
Distillation Paradigm", CVPR 2024)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import teachers as teacher_registry
from ..soft_protocol import SOFT_CROP_MIN
from .base import METHODS, Method, hp, is_small
from .recover import attach_teacher_labels, label_temperature_field, refresh_digest, teacher_field


def square_crops(x: torch.Tensor, k: int, size: tuple[int, int], scale_min: float, g: torch.Generator) -> torch.Tensor:
    """(n, c, h, w) -> (k, n, c, *size): k random square crops of each image (area fraction in
    [scale_min, 1]), each resized to `size` (RDED's random-resized crops with aspect ratio 1)."""
    n, _, h, w = x.shape
    side = (torch.empty(k, n).uniform_(scale_min, 1.0, generator=g).sqrt() * min(h, w)).clamp(min=1)  # (k, n)
    top = torch.rand(k, n, generator=g) * (h - side)
    left = torch.rand(k, n, generator=g) * (w - side)
    # affine grids in [-1, 1] coordinates: scale and translate the unit square onto each crop
    theta = torch.zeros(k * n, 2, 3)
    theta[:, 0, 0] = (side / w).flatten()
    theta[:, 1, 1] = (side / h).flatten()
    theta[:, 0, 2] = ((left + side / 2) / w * 2 - 1).flatten()
    theta[:, 1, 2] = ((top + side / 2) / h * 2 - 1).flatten()
    grid = F.affine_grid(theta.to(x.device), [k * n, x.shape[1], *size], align_corners=False)
    out = F.grid_sample(x.repeat(k, 1, 1, 1), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(k, n, x.shape[1], *size)


def pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (the dataset mean, in normalized space) a batch of patches to the full input size, centred."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def stitch(patches: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """(m * factor^2, c, ph, pw) patches -> (m, c, h, w) images: image i takes patches i, i + m,
    i + 2m, ... (best first) in reading order, each resized to its cell."""
    m = len(patches) // factor ** 2
    rows = [size[0] // factor + (1 if r < size[0] % factor else 0) for r in range(factor)]
    cols = [size[1] // factor + (1 if r < size[1] % factor else 0) for r in range(factor)]
    out = torch.empty(m, patches.shape[1], *size, device=patches.device)
    k, top = 0, 0
    for r, ph in enumerate(rows):
        left = 0
        for q, pw in enumerate(cols):
            part = patches[k * m:(k + 1) * m]
            if part.shape[-2:] != (ph, pw):
                part = F.interpolate(part, size=(ph, pw), mode="bilinear", align_corners=False)
            out[:, :, top:top + ph, left:left + pw] = part
            left, k = left + pw, k + 1
        top += ph
    return out


def start_sources(start: torch.Tensor, real, by_class: list[torch.Tensor]) -> torch.Tensor:
    """(classes, ipc, c, h, w) starting images -> (classes, ipc): the index of the training image each
    one is (init "real"), or -1 - slot where it is none (noise): all distinct either way."""
    classes, ipc = start.shape[:2]
    out = -1 - torch.arange(ipc).repeat(classes, 1)
    for c, idx in enumerate(by_class):
        same = (start[c].flatten(1).cpu()[:, None] == real.x_train[idx].flatten(1)[None]).all(-1)  # (ipc, n_c)
        found = same.any(1)
        out[c, found] = idx[same[found].float().argmax(1)]
    return out


def distinct_first(order: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """`order` (best first) with each source image's best entry ahead of every second crop of an image
    already in it: RDED keeps one crop per real image (its selector takes each image's best crop, then
    the best images), and a class with fewer images than the rounds draw would otherwise fill the
    pool with several crops of its most confident images. Repeats come last, best first, for a class
    with fewer images than the pool holds."""
    ranked = sources[order]
    _, which = torch.unique(ranked, return_inverse=True)
    first = torch.full((int(which.max()) + 1,), len(order), dtype=torch.long, device=order.device)
    first.scatter_reduce_(0, which, torch.arange(len(order), device=order.device), reduce="amin")
    is_first = torch.zeros(len(order), dtype=torch.bool, device=order.device)
    is_first[first] = True
    return torch.cat([order[is_first], order[~is_first]])


@METHODS.register("rded")
@dataclass
class RDED(Method):
    """No optimisation: score random crops of real images with the teacher (cross-entropy to their
    class: low means realistic for the teacher and confidently of the class), keep each image's
    best crop, keep the best crops of the class, stitch factor x factor of them into one image,
    and let the teacher label every view the student later trains on. Each step scores a fresh
    draw of candidates for the next classes and keeps the best of old and new."""

    family = "decoupled (select and relabel)"
    paper = ("Sun et al., On the Diversity and Realism of Distilled Dataset: An Efficient Dataset Distillation "
             "Paradigm, CVPR 2024")

    teacher: str = teacher_field()
    candidates: int = hp(300, "real images drawn per class per step (RDED: 300)", range=(1, 10000))
    crops: int = hp(5, "random crops scored per candidate image; its most confident one competes (RDED: 5)",
                    range=(1, 64))
    factor: int = hp(1, "crops per side stitched into one image, factor^2 in all (RDED: 1 on CIFAR with "
                        "Conv3, 2 on ImageNet)", range=(1, 4))
    crop_min: float = hp(0.08, "smallest crop area fraction (RDED: RandomResizedCrop's 0.08)", range=(0.01, 1.0))
    classes_per_step: int = hp(1000, "classes handled per step (1: watch one class at a time)", range=(1, 1000))
    label_temperature: float = label_temperature_field()

    # The observer RDED's paper uses where it names one: its Conv3 at 82.2 % on CIFAR-10. The _cpu recipe
    # trains that network to that accuracy (82.5 %) in a third of the 50 epochs (BENCHMARKS 15h). Elsewhere
    # the paper preset keeps the CPU-sized default teacher.
    PAPER_OBSERVER = {"cifar10": "convnet_bn_128_cpu", "cifar100": "convnet_bn_128_cpu"}

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        if name == "paper":
            return {"teacher": cls.PAPER_OBSERVER[dataset]} if dataset in cls.PAPER_OBSERVER else {}
        # a CPU visitor watches one class a step, 30 candidates at a time (10 rounds = RDED's 300)
        return {"candidates": 30, "classes_per_step": 1, "crop_min": 0.5 if is_small(dataset) else 0.25}

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 1 if name == "paper" else 100

    def setup(self, real, syn, *, seed, device):
        self.gen_ = torch.Generator().manual_seed(seed)
        self.device_, self.real_ = device, real
        self.teacher_ = teacher_registry.get_bn_teacher(real, self.teacher, device=device, stop=self.stop_)
        self.size_ = tuple(real.image_size)
        self.patch_ = tuple(max(1, s // self.factor) for s in self.size_)
        self.ipc_ = len(syn.labels) // real.num_classes
        self.by_class_ = [real.indices_of(c) for c in range(real.num_classes)]
        keep = self.ipc_ * self.factor ** 2
        # The starting pool: each initial image shrunk to a patch, repeated to fill the grid.
        start = syn.images.to(device).view(real.num_classes, self.ipc_, *syn.images.shape[1:])
        small = F.interpolate(start.flatten(0, 1), size=self.patch_, mode="bilinear", align_corners=False)
        small = small.view(real.num_classes, self.ipc_, *small.shape[1:]).repeat(1, self.factor ** 2, 1, 1, 1)
        self.pool_ = small[:, :keep].clone()  # (classes, keep, c, ph, pw)
        # The training image each kept crop came from (a starting image found among them), else -1 - slot.
        sources = start_sources(start, real, self.by_class_).to(device)  # beside the scores that order them
        self.sources_ = sources.repeat(1, self.factor ** 2)[:, :keep]  # (classes, keep)
        self.scores_ = torch.stack([self.score(self.pool_[c], c) for c in range(real.num_classes)])  # (classes, keep)
        self.images_ = torch.cat([stitch(self.pool_[c], self.factor, self.size_) for c in range(real.num_classes)])
        self.next_class_ = 0
        self.last_ = None
        self.syn_ = syn
        teacher_registry.record(syn, [self.teacher_])
        # RDED's own student views crop no less than one stitched patch (area 1/factor), not SRe2L's 0.08
        syn.extra_meta[SOFT_CROP_MIN] = repr(1.0 / self.factor)
        attach_teacher_labels(syn, self.teacher_, real, self.label_temperature)
        refresh_digest(syn, self.images_)

    @torch.no_grad()
    def score(self, patches: torch.Tensor, c: int) -> torch.Tensor:
        """Cross-entropy of class c for each patch (n, c, ph, pw), padded to the input size: lower is better."""
        logits = self.teacher_.net(pad_to(patches, self.size_))
        return F.cross_entropy(logits, torch.full((len(patches),), c, device=patches.device), reduction="none")

    @torch.no_grad()
    def select_class(self, c: int) -> dict:
        pool = self.by_class_[c]
        pick = pool[torch.randperm(len(pool), generator=self.gen_)[:self.candidates]]
        x = self.real_.x_train[pick].to(self.device_)
        crops = square_crops(x, self.crops, self.patch_, self.crop_min, self.gen_)  # (crops, n, c, ph, pw)
        ce = self.score(crops.flatten(0, 1), c).view(self.crops, len(pick))  # (crops, n)
        best = ce.argmin(0)
        cand = crops[best, torch.arange(len(pick))]  # (n, c, ph, pw): each image's most confident crop
        cand_ce = ce[best, torch.arange(len(pick))]
        merged, merged_ce = torch.cat([self.pool_[c], cand]), torch.cat([self.scores_[c], cand_ce])
        merged_src = torch.cat([self.sources_[c], pick.to(self.sources_.device)])
        order = distinct_first(merged_ce.argsort(), merged_src)[: self.pool_.shape[1]]
        self.pool_[c], self.scores_[c], self.sources_[c] = merged[order], merged_ce[order], merged_src[order]
        images = stitch(self.pool_[c], self.factor, self.size_)
        self.images_[c * self.ipc_:(c + 1) * self.ipc_] = images
        kept_new = order[order >= self.pool_.shape[1]] - self.pool_.shape[1]
        self.last_ = {"class": c, "candidates": cand.cpu(), "scores": cand_ce.cpu(), "sources": pick.cpu(),
                      "chosen": torch.zeros(len(pick), dtype=torch.bool).index_fill_(0, kept_new.cpu(), True),
                      "pool": self.pool_[c].cpu().clone(), "pool_scores": self.scores_[c].cpu().clone(),
                      "pool_sources": self.sources_[c].cpu().clone()}
        return self.last_

    def step(self):
        n_classes = len(self.by_class_)
        kept = 0
        for _ in range(min(self.classes_per_step, n_classes)):
            self.check_stop()
            kept += int(self.select_class(self.next_class_)["chosen"].sum())
            self.next_class_ = (self.next_class_ + 1) % n_classes
        refresh_digest(self.syn_, self.images_)
        return {"loss": self.scores_.mean().item(), "worst_kept_ce": self.scores_.max().item(), "new_crops_kept": kept,
                "class": float(self.last_["class"])}

    def selection(self) -> dict | None:
        """The last class's candidates (each image's best crop), their scores, which ones were kept,
        and the class's pool of kept crops (best first), for the app to show; None before step 1."""
        return getattr(self, "last_", None)  # None too when a run ends before its set-up finished

    def restore(self, images):
        with torch.no_grad():
            self.images_.copy_(images.to(self.images_.device))
        refresh_digest(self.syn_, self.images_)
