"""Differentiable Siamese augmentation (DSA, Zhao & Bilen 2021) and the FYI flip plug-in.

DSA draws one augmentation op per call and one set of its random parameters, and applies the
same parameters to the real and the synthetic batch (the "Siamese" part), so gradients flow
into the synthetic pixels through the augmentation. Here the parameters are drawn explicitly
(`sample`) and applied per image (`apply`), which lets a method draw one parameter set per class
and still push every class through a single batched call: image i uses the set `groups[i]`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import DatasetFacts

# The published DSA settings.
BRIGHTNESS = 1.0  # brightness shift range, in normalized units
SATURATION = 2.0  # saturation multiplier range
CONTRAST = 0.5  # contrast multiplier offset
CROP_PAD = 0.125  # translation up to this fraction of the side
CUTOUT = 0.5  # cut-out square side as a fraction of the image side
FLIP_P = 0.5
SCALE = 1.2  # scale factor range [1/1.2, 1.2]
ROTATE = 15.0  # degrees

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
NO_FLIP_OPS = ("color", "crop", "cutout", "scale", "rotate")  # for datasets whose facts forbid flips (digits)


@dataclass
class DSAParams:
    """Random parameters for `g` groups: one op and its numbers per group."""

    op: list[str]  # (g,) the op of each group
    u: torch.Tensor  # (g, 4) uniform numbers in [0, 1) the op turns into its parameters


class DSA:
    """Samples Siamese augmentation parameters and applies them, differentiably."""

    def __init__(self, ops: tuple[str, ...] = OPS):
        unknown = set(ops) - set(OPS)
        if unknown:
            raise ValueError(f"unknown DSA ops {sorted(unknown)}; valid ops are: {', '.join(OPS)}")
        self.ops = tuple(ops)

    def sample(self, groups: int, generator: torch.Generator) -> DSAParams:
        """An op and its numbers for each of `groups` groups."""
        choice = torch.randint(len(self.ops), (groups,), generator=generator).tolist()
        return DSAParams(op=[self.ops[i] for i in choice], u=torch.rand(groups, 4, generator=generator))

    def sample_batch(self, n: int, generator: torch.Generator) -> DSAParams:
        """One op for a whole batch of n images, each image with its own numbers: how the reference
        code augments a training batch when evaluating (not Siamese: nothing to pair it with)."""
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=generator))]
        return DSAParams(op=[op] * n, u=torch.rand(n, 4, generator=generator))

    def apply(self, x: torch.Tensor, params: DSAParams, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Augment x (n, c, h, w); image i uses parameter group groups[i] (all group 0 if None)."""
        if groups is None:
            groups = torch.zeros(len(x), dtype=torch.long)
        groups = groups.to(x.device)
        u = params.u.to(x.device, x.dtype)[groups]  # (n, 4) per image
        out = x
        for op in set(params.op):
            sel = [i for i, o in enumerate(params.op) if o == op]
            mask = torch.isin(groups, torch.tensor(sel, device=x.device))
            if mask.all():
                out = _OP_FUNCS[op](out, u)
            elif mask.any():
                idx = torch.nonzero(mask).flatten()
                out = out.index_copy(0, idx, _OP_FUNCS[op](out[idx], u[idx]))
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One op, one parameter set for the whole batch."""
        return self.apply(x, self.sample(1, generator))


def _color(x, u):
    # brightness, saturation and contrast, in that order, as one "color" op
    x = x + (u[:, 0].view(-1, 1, 1, 1) - 0.5) * BRIGHTNESS
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (u[:, 1].view(-1, 1, 1, 1) * SATURATION) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean_all) * (u[:, 2].view(-1, 1, 1, 1) + CONTRAST) + mean_all


def _crop(x, u):
    # Translate by whole pixels in [-shift, shift], padding with zeros (a padded random crop).
    n, _, h, w = x.shape
    sh, sw = int(h * CROP_PAD + 0.5), int(w * CROP_PAD + 0.5)
    dy = (u[:, 0] * (2 * sh + 1)).floor().long() - sh  # (n,)
    dx = (u[:, 1] * (2 * sw + 1)).floor().long() - sw
    padded = F.pad(x, (sw, sw, sh, sh))
    rows = (torch.arange(h, device=x.device).view(1, h) + sh + dy.view(n, 1))  # (n, h)
    cols = (torch.arange(w, device=x.device).view(1, w) + sw + dx.view(n, 1))  # (n, w)
    idx_r = rows.view(n, 1, h, 1).expand(n, x.shape[1], h, padded.shape[3])
    out = padded.gather(2, idx_r)
    idx_c = cols.view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, idx_c)


def _cutout(x, u):
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    cy = (u[:, 0] * (h + 1 - ch % 2)).floor().long()  # centre row
    cx = (u[:, 1] * (w + 1 - cw % 2)).floor().long()
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = (cy - ch // 2).view(n, 1, 1), (cx - cw // 2).view(n, 1, 1)
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # (n, h, w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _flip(x, u):
    do = (u[:, 0] < FLIP_P).view(-1, 1, 1, 1)
    return torch.where(do, x.flip(3), x)


def _affine(x, theta):
    # align_corners=False, the default the reference DSA code runs with (its affine_grid and
    # grid_sample calls pass none): corners of pixels, not their centres, map to -1 and 1.
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def _scale(x, u):
    lo = 1.0 / SCALE
    sx = u[:, 0] * (SCALE - lo) + lo
    sy = u[:, 1] * (SCALE - lo) + lo
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)  # (n, 2, 3)
    return _affine(x, theta)


def _rotation(a: torch.Tensor) -> torch.Tensor:
    """(n, 2, 3) affine matrices rotating by angles a (radians) about the centre."""
    c, s, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    return torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)


def _rotate(x, u):
    return _affine(x, _rotation((u[:, 0] - 0.5) * 2 * ROTATE / 180 * math.pi))


_OP_FUNCS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def dsa_for(dataset: DatasetFacts) -> DSA:
    """The DSA op set for a dataset (a `Dataset`, or `dataset_facts(name)`): no flips where its facts
    say a flipped image changes class."""
    if isinstance(dataset, str):
        raise TypeError(f"dsa_for takes a Dataset or dataset_facts({dataset!r}), not a name")
    return DSA(OPS if dataset.flips else NO_FLIP_OPS)


# The DC paper's evaluation augmentation (Zhao, Mopuri & Bilen, ICLR 2021). Its own figures and those
# of the coresets it compares against (random, herding, k-center) were measured with it: 300 epochs,
# and for MNIST each training image gets one of crop, scale or rotate, drawn per image; for the
# other datasets with a ConvNet, no augmentation at all.
DC_CROP = 4  # translation in whole pixels, padded with the batch's channel means: offsets in [-4, 3]
DC_SCALE = 0.2  # each side resized by a factor in [0.8, 1.2] (nearest), zero-padded or centre-cropped
DC_ROTATE = 45  # whole degrees in [-45, 45), filled with the batch's mean value
DC_OPS = ("crop", "scale", "rotate")


class DCAugment:
    """The DC evaluation augmentation, in the same sample/apply shape as DSA (so `training_views`
    and label stores can replay it). Not differentiable in the op choice, and never Siamese: it
    only ever augments training batches of an evaluation network."""

    ops = DC_OPS

    def sample(self, n: int, generator: torch.Generator) -> DSAParams:
        choice = torch.randint(len(self.ops), (n,), generator=generator).tolist()
        return DSAParams(op=[self.ops[i] for i in choice], u=torch.rand(n, 4, generator=generator))

    # The DC evaluation draws the op per image, whatever a caller asks for.
    sample_batch = sample

    def apply(self, x: torch.Tensor, params: DSAParams, groups: torch.Tensor | None = None) -> torch.Tensor:
        if groups is None:
            groups = torch.zeros(len(x), dtype=torch.long)
        groups = groups.to(x.device)
        u = params.u.to(x.device, x.dtype)[groups]
        channel_mean = x.detach().mean(dim=(0, 2, 3)).view(1, -1, 1, 1)  # of the batch, as the reference
        out = x
        for op in set(params.op):
            sel = torch.tensor([i for i, o in enumerate(params.op) if o == op], device=x.device)
            idx = torch.nonzero(torch.isin(groups, sel)).flatten()
            if len(idx):
                out = out.index_copy(0, idx, _DC_FUNCS[op](out[idx], u[idx], channel_mean))
        return out


def _dc_crop(x, u, fill):
    n, c, h, w = x.shape
    r = (u[:, 0] * 2 * DC_CROP).floor().long()  # offset into the padded image, 0 .. 2*crop-1
    q = (u[:, 1] * 2 * DC_CROP).floor().long()
    padded = F.pad(x - fill, (DC_CROP,) * 4) + fill
    rows = torch.arange(h, device=x.device).view(1, h) + r.view(n, 1)
    cols = torch.arange(w, device=x.device).view(1, w) + q.view(n, 1)
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def _dc_scale(x, u, fill):
    # The image resized to (int(f1 h), int(f2 w)) by nearest neighbour and centred on a zero canvas
    # (0 is the mean pixel in normalized space), then cut back to h x w around the centre.
    n, _, h, w = x.shape
    nh = ((1 - DC_SCALE + u[:, 0] * 2 * DC_SCALE) * h).floor()
    nw = ((1 - DC_SCALE + u[:, 1] * 2 * DC_SCALE) * w).floor()
    zero = torch.zeros_like(nh)
    theta = torch.stack([torch.stack([w / nw, zero, zero], 1), torch.stack([zero, h / nh, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _dc_rotate(x, u, fill):
    angle = (u[:, 0] * 2 * DC_ROTATE).floor() - DC_ROTATE  # whole degrees
    grid = F.affine_grid(_rotation(angle / 180 * math.pi), list(x.shape), align_corners=False)
    cval = fill.mean()
    return F.grid_sample(x - cval, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + cval


_DC_FUNCS = {"crop": _dc_crop, "scale": _dc_scale, "rotate": _dc_rotate}


def dc_augment_for(dataset: DatasetFacts) -> DCAugment | None:
    """The DC evaluation augmentation for a dataset: crop/scale/rotate where its facts say the DC
    code augments it (MNIST), none elsewhere."""
    return DCAugment() if dataset.dc_augment else None


def fyi_flip(images: torch.Tensor) -> torch.Tensor:
    """FYI plug-in: append the horizontally flipped synthetic images, so one stored image
    stands for two (the flip is a free view of what was learned)."""
    return torch.cat([images, images.flip(3)], 0)
