"""Hand-written forward and backward passes for the batch-norm taps (bn_taps.py): the per-image pixel
sums the statistics come from, fused with the ReLU (and residual add) or the ReLU and 2x2 average
pool that follow a folded conv + BN, so that each backward writes its statistics' gradient into the
one full-size gradient it returns, where autograd would allocate and add several.
"""
from __future__ import annotations

import torch

class PixelSums(torch.autograd.Function):
    """A (groups, n/groups, ...) view of y with the pixels on axis `dim` (pixel_view) -> the sums of
    y and of y^2 over the pixels, (g, n/g, c) each; the backward is one fused g1 + 2 g2 y."""

    @staticmethod
    def forward(ctx, flat, dim):
        ctx.save_for_backward(flat)
        ctx.dim = dim
        return flat.sum(dim), square_sums(flat, dim)

    @staticmethod
    def backward(ctx, g1, g2):
        flat, = ctx.saved_tensors
        g1, g2 = g1.unsqueeze(ctx.dim), g2.unsqueeze(ctx.dim)
        return torch.addcmul(g1.expand_as(flat), flat, g2, value=2.0), None


def pixel_view(y: torch.Tensor, groups: int) -> tuple[torch.Tensor, int]:
    """(n, c, h, w) -> a view of it with the images split into `groups` and the pixels on one axis,
    in the order y lies in memory, and that axis: (g, n/g, c, h*w) and -1 for plain NCHW;
    (g, n/g, h*w, c) and -2 for channels-last (summing over an outer axis reads each pixel's
    channels as one contiguous row). Anything else is copied to NCHW first."""
    n, c = y.shape[:2]
    if y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
        return y.permute(0, 2, 3, 1).view(groups, n // groups, -1, c), -2
    return y.reshape(groups, n // groups, c, -1), -1


def square_sums(flat: torch.Tensor, dim: int) -> torch.Tensor:
    """The sums of y^2 over axis `dim` of a (g, n/g, ...) view. Over the inner axis (NCHW) the norm
    kernel takes them in one read and no temporary; over an outer axis (channels-last) it is 2-9x
    slower than squaring and summing (one thread), done a few images at a time so the squares stay
    in cache."""
    if dim == -1:
        return torch.linalg.vector_norm(flat, dim=-1).square()
    step = max(1, (1 << 19) // max(1, flat[0, 0].numel()))  # images per chunk: 2 MiB of float32 squares
    return torch.cat([(part * part).sum(dim) for part in flat.split(step, 1)], 1)


class StatsRelu(torch.autograd.Function):
    """y (n, c, h, w) and an optional residual r -> (the sums of y and y^2 over each image's pixels,
    (g, n/g, c) each, as PixelSums; relu(y + r)). In either memory layout. The backward takes the
    ReLU's mask once and adds the statistics' gradient (g1 + 2 g2 y) into it in place; with a
    residual, r's gradient is the masked one and y's one more tensor."""

    @staticmethod
    def forward(ctx, y, residual, groups):
        flat, dim = pixel_view(y, groups)
        total, squares = flat.sum(dim), square_sums(flat, dim)
        out = y.relu() if residual is None else (y + residual).relu_()
        ctx.save_for_backward(y, out)
        ctx.has_residual = residual is not None
        return total, squares, out

    @staticmethod
    def backward(ctx, g1, g2, g_out):
        y, out = ctx.saved_tensors
        n, c = y.shape[:2]
        masked = torch.ops.aten.threshold_backward(g_out, out, 0)  # out > 0 exactly where y (+ r) > 0
        g1, g2 = g1.reshape(n, c, 1, 1), g2.reshape(n, c, 1, 1) * 2.0  # (g, n/g, c) -> broadcast over pixels
        if ctx.has_residual:
            return torch.addcmul(masked, y, g2).add_(g1), masked, None
        return masked.addcmul_(y, g2).add_(g1), None, None


def relu_pool2(y: torch.Tensor) -> torch.Tensor:
    """avg_pool2d(relu(y), 2) of an even, contiguous (n, c, h, w) y, without autograd: the ReLU of each
    pair of rows added (contiguous reads), then each pair of columns (a quarter to a half of
    relu + avg_pool2d's CPU time on NCHW in a one-thread microbenchmark)."""
    n, c, h, w = y.shape
    rows = y.view(n, c, h // 2, 2, w)
    pairs = rows[:, :, :, 0].clamp_min(0).add_(rows[:, :, :, 1].clamp_min(0))
    return (pairs[..., 0::2] + pairs[..., 1::2]).mul_(0.25)


def relu_pool2_grad(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient of relu_pool2 at y given the pooled gradient g: g / 4 spread over each 2x2 window,
    kept where y > 0. One full-size write (autograd's backward of strided slices zero-fills a
    full-size gradient per slice and adds the four)."""
    n, c, h, w = y.shape
    if w < 16:  # narrow rows: the pooling kernel's own backward, then the ReLU's mask
        spread = torch.ops.aten.avg_pool2d_backward(g, y, [2, 2], [2, 2], [0, 0], False, True, None)
        return torch.ops.aten.threshold_backward(spread, y, 0)
    # wide rows: each pooled value repeated along its two columns, then broadcast over its two rows
    rows = (g * 0.25)[..., None].expand(n, c, h // 2, w // 2, 2).reshape(n, c, h // 2, 1, w).expand(n, c, h // 2, 2, w)
    return torch.ops.aten.threshold_backward(rows, y.view(n, c, h // 2, 2, w), 0).view(n, c, h, w)


def poolable(y: torch.Tensor) -> bool:
    return y.dim() == 4 and y.shape[-2] % 2 == 0 and y.shape[-1] % 2 == 0 and y.is_contiguous()


class ReluPool2Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return relu_pool2(y)

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return relu_pool2_grad(g, y)


class StatsReluPool2(torch.autograd.Function):
    """y (n, c, h, w) -> (the sums of y and y^2 over each image's channel pixels, (g, n/g, c) each, as
    PixelSums; avg_pool2d(relu(y), 2)). The backward writes the two paths' gradient into one
    tensor in place, where autograd would add two full-size gradients."""

    @staticmethod
    def forward(ctx, y, groups):
        ctx.save_for_backward(y)
        n, c = y.shape[:2]
        flat = y.view(groups, n // groups, c, -1)
        return flat.sum(-1), torch.linalg.vector_norm(flat, dim=-1).square(), relu_pool2(y)

    @staticmethod
    def backward(ctx, g1, g2, gp):
        y, = ctx.saved_tensors
        grad = relu_pool2_grad(gp, y).contiguous()
        flat = grad.view(*g1.shape, -1)
        flat.add_(g1.unsqueeze(-1)).addcmul_(y.view_as(flat), g2.unsqueeze(-1), value=2.0)
        return grad, None


