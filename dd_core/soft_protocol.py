"""The soft-label evaluation recipe of the decoupled papers (SRe2L, RDED, CV-DD, INFER): AdamW,
a cosine schedule, KL divergence to the set's soft labels at a temperature, and random-resized
crops + flips + CutMix as the views. `evaluate.PROTOCOLS["soft"]` names it; this module holds
its views (replayable from a seed, so a dynamic label store labels the very same views) and its
training loop.

Where the set's labels label each view (a teacher, or labels recorded for the replayed views) the
target of a CutMix view is the label *of that view*; where the labels are one per image (hard,
static soft: INFER), the two images' labels are mixed by the area each covers."""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .label_stores.base import LabelStore
from .models import fast_forward, model_for


@dataclass(frozen=True)
class Mix:
    """How a CutMix batch was made: view i shows image idx[perm[i]] inside the box, its own outside;
    `lam` is the area fraction of its own image."""

    perm: torch.Tensor  # (n,) positions in the batch
    lam: float


SOFT_CROP_MIN = "soft.crop_min"  # a set's metadata key: its own smallest crop area under this recipe (RDED: 1/factor)


def batch_size_for(n: int, batch_size: int) -> int:
    """0 means RDED's choice by set size: 10 images at IPC 1, 50 at IPC 10 and 100 at IPC 50 on 10
    classes, that is half the set, between 10 and 100 (never more than the set)."""
    return batch_size if batch_size > 0 else min(n, max(10, min(100, n // 2)))


def random_resized_crops(x: torch.Tensor, scale_min: float, g: torch.Generator) -> torch.Tensor:
    """A random-resized crop per image (area fraction in [scale_min, 1], aspect 3/4-4/3), bilinear,
    back to the input size: torchvision's RandomResizedCrop, batched through one affine grid."""
    n, c, h, w = x.shape
    area = torch.empty(n).uniform_(scale_min, 1.0, generator=g)
    ratio = torch.exp(torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
    cw = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the side
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * (1 - cw) + cw / 2) * 2 - 1  # centre in [-1, 1]
    cy = (torch.rand(n, generator=g) * (1 - ch) + ch / 2) * 2 - 1
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = cw, ch, cx, cy
    grid = F.affine_grid(theta.to(x.device), [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def cutmix(views: torch.Tensor, alpha: float, g: torch.Generator) -> tuple[torch.Tensor, Mix]:
    """CutMix (Yun et al. 2019): paste a box of a shuffled partner into each view; lam ~ Beta(alpha, alpha),
    corrected to the box actually pasted."""
    n, _, h, w = views.shape
    rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=g)))
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(n, generator=g)
    cut = math.sqrt(1 - lam)
    bh, bw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
    y1, y2 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x1, x2 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    out = views.clone()
    out[:, :, y1:y2, x1:x2] = views[perm.to(views.device), :, y1:y2, x1:x2]
    return out, Mix(perm, 1 - (y2 - y1) * (x2 - x1) / (h * w))


def soft_views(images: torch.Tensor, *, epochs: int, batch_size: int, seed: int, crop_min: float, flips: bool,
               cutmix_alpha: float) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, Mix | None]]:
    """The exact (epoch, indices, views, mix) sequence a soft-protocol network trains on; the same
    for a seed, so a label store can replay it."""
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    batch = batch_size_for(n, batch_size)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            views = random_resized_crops(images[idx.to(images.device)], crop_min, g)
            if flips:
                do = (torch.rand(len(idx), generator=g) < 0.5).view(-1, 1, 1, 1).to(views.device)
                views = torch.where(do, views.flip(3), views)
            mix = None
            if cutmix_alpha > 0 and len(idx) > 1:
                views, mix = cutmix(views, cutmix_alpha, g)
            yield epoch, idx, views, mix


def soften(targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Targets p at temperature T: softmax(log p / T), the teacher's softmax(z / T_p) seen at T_p x T
    (one-hot rows stay one-hot). The papers divide teacher and student logits by the same T; a
    store keeps probabilities at its own (calibrated) temperature, so T applies on top of it."""
    if temperature == 1.0:
        return targets
    return F.softmax(targets.clamp_min(1e-12).log() / temperature, dim=1)


def kl_to_targets(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of KL(soften(targets, T) || softmax(logits / T)): what SRe2L's and RDED's
    students minimise, both sides at temperature T."""
    return F.kl_div(F.log_softmax(logits / temperature, dim=1), soften(targets, temperature), reduction="batchmean")


def mixed_targets(labels: LabelStore, idx: torch.Tensor, views: torch.Tensor, epoch: int, mix: Mix | None):
    """The targets of a batch: the store's rows, mixed by area under CutMix when they are per image."""
    targets = labels.targets(idx, views, epoch).to(views.device)
    if mix is not None and not labels.labels_views():
        targets = mix.lam * targets + (1 - mix.lam) * targets[mix.perm.to(targets.device)]
    return targets


def train_soft(images: torch.Tensor, labels: LabelStore, dataset, config, *, seed: int, device,
               on_epoch: Callable[[int], None] | None = None, stop: threading.Event | None = None,
               test: Callable | None = None) -> tuple[torch.nn.Module, float | None]:
    """Train one fresh network on (images, labels) with the soft recipe of `config` (an EvalConfig);
    returns it and the best test accuracy if asked for (`test(net)` measures it)."""
    net = model_for(dataset, config.model, seed=seed, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)  # per epoch, as the papers
    images = images.to(device)
    forward, best, epoch_now = fast_forward(net), (0.0 if config.report == "best" else None), 0
    net.train()
    views_seq = soft_views(images, epochs=config.epochs, batch_size=config.batch_size, seed=labels.view_seed(seed + 1),
                           crop_min=config.crop_min, flips=getattr(dataset, "flips", True), cutmix_alpha=config.cutmix)
    for epoch, idx, views, mix in views_seq:
        if epoch != epoch_now:
            sched.step()
            if best is not None and test is not None:
                best = max(best, test(net))
            if on_epoch:
                on_epoch(epoch_now + 1)
            epoch_now = epoch
            if stop is not None and stop.is_set():
                return net, best
        views = labels.inputs(idx, views, epoch)
        loss = kl_to_targets(forward(views), mixed_targets(labels, idx.to(device), views, epoch, mix),
                             config.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sched.step()
    if on_epoch:
        on_epoch(config.epochs)
    return net, best
