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
DIGIT_OPS = ("color", "crop", "cutout", "scale", "rotate")  # no flip for digits: a flipped 2 is not a 2


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
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x, u):
    lo = 1.0 / SCALE
    sx = u[:, 0] * (SCALE - lo) + lo
    sy = u[:, 1] * (SCALE - lo) + lo
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)  # (n, 2, 3)
    return _affine(x, theta)


def _rotate(x, u):
    a = (u[:, 0] - 0.5) * 2 * ROTATE / 180 * math.pi
    c, s, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)
    return _affine(x, theta)


_OP_FUNCS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def dsa_for(dataset_name: str) -> DSA:
    """The DSA op set for a dataset: flips are dropped for digits (MNIST, SVHN, digits)."""
    digit_like = dataset_name in ("digits", "mnist", "svhn")
    return DSA(DIGIT_OPS if digit_like else OPS)


def fyi_flip(images: torch.Tensor) -> torch.Tensor:
    """FYI plug-in: append the horizontally flipped synthetic images, so one stored image
    stands for two (the flip is a free view of what was learned)."""
    return torch.cat([images, images.flip(3)], 0)
