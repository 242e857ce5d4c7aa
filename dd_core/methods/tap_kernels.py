"""Hand-written forward and backward passes for the batch-norm taps (bn_taps.py): the per-image pixel
sums the statistics come from, fused with the ReLU (and residual add) or the ReLU and 2x2 average
pool that follow a folded conv + BN, so that each backward writes its statistics' gradient into the
one full-size gradient it returns, where autograd would allocate and add several; and a Winograd
convolution for the widest 3x3 layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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




# -- Winograd F(2x2, 3x3) for the widest 3x3 convolutions (Lavin & Gray, CVPR 2016) ----------------
# Each 2x2 output tile is A^T [(G w G^T) * (B^T d B)] A over its 4x4 input tile d: 16 products per
# tile and channel pair instead of 36, as one batched matrix product; the transforms are adds of
# strided slices. The same sums as the direct convolution, in another order (float32 rounding only;
# against float64 its error was below oneDNN's direct one). On one thread at batch 100 it took
# 52-58 ms against oneDNN's 81-103 ms for 512 -> 512 channels at 4x4, and lost at 256 channels
# (8x8), where the transforms cost more than the products save.
WINOGRAD_MIN_CHANNELS = 512  # in and out channels from which a 3x3 conv takes it (measured above)
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_weight(w: torch.Tensor) -> torch.Tensor:
    """(k, c, 3, 3) weights -> (16, c, k): G w G^T per channel pair, the 16 tile positions first."""
    g = torch.tensor(_G, dtype=w.dtype, device=w.device)
    return (g @ w @ g.t()).reshape(w.shape[0], w.shape[1], 16).permute(2, 1, 0).contiguous()


def _input_transform(a, b, c, d):  # B^T over four rows (or columns) of 4x4 tiles
    return a - c, b + c, c - b, b - d


def winograd_conv(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A 3x3, stride 1, padding 1 convolution of x (n, c, h, w; h and w even; fastest channels-last)
    with winograd_weight's u (16, c, k), without bias -> (n, k, h, w), channels-last."""
    n, c, h, w = x.shape
    th, tw, k = h // 2, w // 2, u.shape[2]
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (n, h + 2, w + 2, c)
    v = torch.empty(4, 4, n, th, tw, c, dtype=x.dtype, device=x.device)
    for i, rows in enumerate(_input_transform(*(padded[:, r:r + h - 1:2] for r in range(4)))):
        for j, tile in enumerate(_input_transform(*(rows[:, :, q:q + w - 1:2] for q in range(4)))):
            v[i, j] = tile  # (n, th, tw, c)
    m = torch.bmm(v.view(16, n * th * tw, c), u).view(4, 4, n, th, tw, k)
    out = torch.empty(n, th, 2, tw, 2, k, dtype=x.dtype, device=x.device)
    for i, rows in enumerate((m[0] + m[1] + m[2], m[1] - m[2] - m[3])):  # A^T over the rows, then the columns
        out[:, :, i, :, 0] = rows[0] + rows[1] + rows[2]
        out[:, :, i, :, 1] = rows[1] - rows[2] - rows[3]
    return out.view(n, h, w, k).permute(0, 3, 1, 2)


class WinogradConv(torch.autograd.Function):
    """conv2d(x, w, bias, padding=1) by winograd_conv, for a frozen w: the input's gradient is the
    same convolution of the output's gradient with w's channels swapped and kernel flipped."""

    @staticmethod
    def forward(ctx, x, u, u_back, bias):
        ctx.save_for_backward(u_back)
        y = winograd_conv(x, u)
        return y if bias is None else y.add_(bias.view(1, -1, 1, 1))

    @staticmethod
    def backward(ctx, g):
        u_back, = ctx.saved_tensors
        return winograd_conv(g, u_back), None, None, None
