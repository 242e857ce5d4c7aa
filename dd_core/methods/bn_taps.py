"""The teacher's batch-norm statistics, taken from its own forward pass: what recover-and-relabel
(recover.py) matches, and what CV-DD and DWA reuse.

`tapped(net)` returns a copy of the teacher in which a conv followed by its BatchNorm2d becomes one
convolution with the norm folded in (`FoldedConvBN`), which takes the sums of its output and of its
square over each image's pixels (two reads, a hand-written backward) and maps them back to the norm's
input statistics, for every batch group at once; any other BN layer becomes a `BNTap` that does the
same before normalising as in eval mode. In a ConvNet block the ReLU and 2x2 average pool after the
norm join the fold: the forward pools by strided slices, and one backward writes the pooled, masked
gradient and the statistics' gradient into one tensor (autograd would zero-fill a full-size gradient
per slice and add them). In a ResNet block the ReLUs, and the residual add before the second, join
the folds the same way (`FoldedBasicBlock`). On the CPU a net without fused pools runs channels-last
(oneDNN skips its layout reorders; `prefers_channels_last`), and its 3x3 convs of 512 channels by
Winograd (tap_kernels). SRe2L's script instead hooks every BN layer and copies each input into
channel-major order to take its variance (benchmarks/recover_speed.py times the two side by side; a
test checks loss and gradient against it). `recover_loss` is SRe2L's loss over those statistics.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .. import teachers as teacher_registry
from ..models import _plain_conv, _pool2, fast_forward, on_cpu
from ..resnet import BasicBlock
from . import tap_kernels
from .tap_kernels import PixelSums, ReluPool2Fn, StatsRelu, StatsReluPool2, WinogradConv, pixel_view, poolable, winograd_weight


class StatSink:
    """Where the taps of one forward pass put their losses; `groups` batches share one pass."""

    def __init__(self):
        self.groups = 1
        self.terms: list[torch.Tensor] = []
        self.memory_format = torch.contiguous_format  # the layout the tapped net's input is given in


class BNTap(nn.Module):
    """A frozen BatchNorm2d (eval mode) that also scores its input's batch statistics per group:
    ||mean - running_mean||_2 + ||var - running_var||_2, summed over the groups."""

    def __init__(self, bn: nn.BatchNorm2d, sink: StatSink):
        super().__init__()
        self.bn, self.sink = bn, sink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = channel_stats(x, self.sink.groups)  # (g, c) each
        bn = self.bn
        self.sink.terms.append(((mean - bn.running_mean).norm(dim=1) + (var - bn.running_var).norm(dim=1)).sum())
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def channel_stats(y: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group and channel: the mean and (biased) variance over the group's images and pixels, (g, c) each.

    Sums of y and y^2 per image and channel over the pixels, then over each group's images;
    var = E[y^2] - E[y]^2. On a (100, 32, 32, 32) input, forward + backward on one thread,
    this took a tenth of the CPU time of var_mean over (batch, pixels) at once, and less than a tenth
    of SRe2L's channel-major copy (benchmarks/recover_speed.py measures whole steps)."""
    total, squares = PixelSums.apply(*pixel_view(y, groups))  # (g, n/g, c) each
    return stats_of_sums(total, squares, y[0, 0].numel())


def stats_of_sums(total: torch.Tensor, squares: torch.Tensor, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, n/g, c) sums of y and y^2 over `pixels` pixels -> each group's mean and variance, (g, c) each."""
    mean = total.mean(1) / pixels
    return mean, squares.mean(1) / pixels - mean ** 2


class FoldedConvBN(nn.Module):
    """conv -> frozen BatchNorm2d as one convolution with the norm folded into its weights, which
    still reports the statistics of the norm's input: those of the folded output mapped back
    through the norm's per-channel affine map (mean_in = (mean_out - shift) / scale + running_mean,
    var_in = var_out / scale^2). One pass over the activation instead of two, both ways."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, sink: StatSink, pool: bool = False, relu: bool = False):
        super().__init__()
        self.pool = pool  # also the ReLU and 2x2 average pool that follow (a ConvNet block), in the same pass
        self.relu = relu and not pool  # also the ReLU that follows (after a residual, if one is given), in the same pass
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (c,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        self.conv = copy.deepcopy(conv)
        with torch.no_grad():
            self.conv.weight.mul_(scale.view(-1, 1, 1, 1))
            self.conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", bn.bias.detach().clone())
        self.bn, self.sink = bn, sink
        # a wide 3x3 conv: its forward and input gradient by Winograd on the CPU (tap_kernels), from
        # the folded weights transformed once (u) and with channels swapped and kernel flipped (u_back)
        c, u, u_back = self.conv, None, None
        if (c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) and c.dilation == (1, 1) and c.groups == 1
                and min(c.in_channels, c.out_channels) >= tap_kernels.WINOGRAD_MIN_CHANNELS):
            w = c.weight.detach()
            u, u_back = winograd_weight(w), winograd_weight(w.transpose(0, 1).flip(2, 3))
        self.register_buffer("winograd_u", u)
        self.register_buffer("winograd_u_back", u_back)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        conv = self.conv
        if x.device.type == "cpu" and conv.in_channels == 1 and _plain_conv(conv) and x.is_contiguous():  # as ConvNet.embed_fast: im2col
            y = torch.ops.aten._slow_conv2d_forward(x, conv.weight, list(conv.kernel_size), conv.bias, [1, 1],
                                                    list(conv.padding))  # beats oneDNN on one input channel
        elif (self.winograd_u is not None and x.device.type == "cpu" and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0
              and x.is_contiguous(memory_format=torch.channels_last)):
            y = WinogradConv.apply(x, self.winograd_u, self.winograd_u_back, conv.bias)
        else:
            y = conv(x)
        groups = self.sink.groups
        if self.pool and poolable(y):
            total, squares, out = StatsReluPool2.apply(y, groups)
        elif self.relu:
            total, squares, out = StatsRelu.apply(y, residual, groups)
        elif residual is not None:
            raise ValueError("a residual is added before a fused ReLU; this fold has none (relu=False)")
        else:
            total, squares = PixelSums.apply(*pixel_view(y, groups))
            out = F.avg_pool2d(F.relu(y), 2) if self.pool else y
        mean_out, var_out = stats_of_sums(total, squares, y[0, 0].numel())
        bn = self.bn
        mean = (mean_out - self.shift) / self.scale + bn.running_mean
        var = var_out / self.scale ** 2
        self.sink.terms.append(((mean - bn.running_mean).norm(dim=1) + (var - bn.running_var).norm(dim=1)).sum())
        return out


class FoldedBasicBlock(nn.Module):
    """A ResNet BasicBlock (resnet.py) with both conv + BN pairs folded and each ReLU, the second
    after the residual add, joined to its fold's pass: relu(fold2(relu(fold1(x))) + shortcut(x)).
    Its statistics' terms come in the order bn1, shortcut's BN, bn2 (the block's own: bn2 first;
    only the first term of a network is weighted apart)."""

    def __init__(self, block: BasicBlock, sink: StatSink):
        super().__init__()
        self.conv1 = FoldedConvBN(block.conv1, block.bn1, sink, relu=True)
        self.conv2 = FoldedConvBN(block.conv2, block.bn2, sink, relu=True)
        self.shortcut = block.shortcut  # empty, or a 1x1 conv + BN that tapped() folds as any Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x), residual=self.shortcut(x))


class ReluPool2(nn.Module):
    """nn.ReLU followed by nn.AvgPool2d(2, 2) in one step with a cheap backward; odd sizes take the
    plain ReLU and pooling."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return ReluPool2Fn.apply(y) if poolable(y) else F.avg_pool2d(F.relu(y), 2)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    # a near-zero scale would divide the statistics by ~0: leave such a layer to BNTap
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.affine and
            conv.out_channels == bn.num_features and
            bool((bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps) > 1e-3).all()))


def prefers_channels_last(net: nn.Module) -> bool:
    """The layout rule for a tapped network: channels-last on the CPU unless a fused ReLU + 2x2 pool
    is in it (a ConvNet block's; those kernels read NCHW rows, and without them a ConvNet step is
    slower). oneDNN's convolutions skip their NCHW reorders on channels-last input: on the
    full-width ResNet-18 at 32 px the convolutions take about a quarter less CPU time (one thread;
    BENCHMARKS 15g). Elsewhere (a GPU) NCHW as before: not measured there."""
    if not on_cpu(net):
        return False
    return not any(isinstance(m, ReluPool2) or (isinstance(m, FoldedConvBN) and m.pool) for m in net.modules())


def tapped(net: nn.Module, fold: bool = True, channels_last: bool | None = None) -> tuple[nn.Module, StatSink]:
    """A copy of `net` (eval mode, frozen) whose BatchNorm2d layers report their input statistics.
    With `fold`, a conv directly followed by a BN inside an nn.Sequential (where the order of the
    children is the order of the data) or a ResNet BasicBlock's conv1/bn1 and conv2/bn2 become one
    FoldedConvBN (with the ReLU, or ReLU and pool, that follows; a block whose two pairs fold becomes
    a FoldedBasicBlock); every other BN a BNTap. `channels_last` (None: `prefers_channels_last`) puts the
    conv weights, and recover_loss the input, in channels-last memory order."""
    net = copy.deepcopy(net).eval()
    sink = StatSink()
    for m in net.modules():  # a folded conv's output is also the statistics' input: nothing may overwrite it
        if isinstance(m, nn.ReLU):
            m.inplace = False
    for parent in list(net.modules()):
        for name, block in parent.named_children():
            if fold and isinstance(block, BasicBlock) and _foldable(block.conv1, block.bn1) and _foldable(block.conv2, block.bn2):
                setattr(parent, name, FoldedBasicBlock(block, sink))
    for parent in list(net.modules()):
        if isinstance(parent, FoldedConvBN):  # its conv and BN are already folded
            continue
        children = list(parent.named_children())
        if fold and isinstance(parent, nn.Sequential):
            for i, ((name, conv), (bn_name, bn)) in enumerate(zip(children, children[1:])):
                if _foldable(conv, bn):
                    after = [m for _, m in children[i + 2:i + 4]]  # a ConvNet block's ReLU and pool join the fold
                    pool = len(after) == 2 and isinstance(after[0], nn.ReLU) and _pool2(after[1])
                    relu = not pool and len(after) >= 1 and isinstance(after[0], nn.ReLU)  # so does a lone ReLU (a stem's)
                    setattr(parent, name, FoldedConvBN(conv, bn, sink, pool=pool, relu=relu))
                    for dropped in [bn_name] + [n for n, _ in children[i + 2:i + 2 + 2 * pool + relu]]:
                        setattr(parent, dropped, nn.Identity())
            children = list(parent.named_children())
        if fold and isinstance(parent, BasicBlock):  # its forward applies bn1 to conv1's output, bn2 to conv2's
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2")):
                if _foldable(getattr(parent, conv_name), getattr(parent, bn_name)):
                    setattr(parent, conv_name, FoldedConvBN(getattr(parent, conv_name), getattr(parent, bn_name), sink))
                    setattr(parent, bn_name, nn.Identity())
            children = list(parent.named_children())
        if isinstance(parent, nn.Sequential):  # the other ReLU -> 2x2 average pool pairs, as one step
            for (name, relu), (pool_name, pool) in zip(children, children[1:]):
                if isinstance(relu, nn.ReLU) and _pool2(pool):
                    setattr(parent, name, ReluPool2())
                    setattr(parent, pool_name, nn.Identity())
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, BNTap(child, sink))
    if not any(isinstance(m, (BNTap, FoldedConvBN)) for m in net.modules()):
        raise ValueError("recovery matches batch-norm statistics, and this teacher has no BatchNorm2d layer; "
                         f"use a batch-norm teacher recipe ({', '.join(teacher_registry.TEACHERS.names())})")
    for p in net.parameters():
        p.requires_grad_(False)
    if channels_last is None:
        channels_last = prefers_channels_last(net)
    if channels_last:
        net.to(memory_format=torch.channels_last)
        sink.memory_format = torch.channels_last
    return net, sink


def recover_loss(net: nn.Module, sink: StatSink, x: torch.Tensor, y: torch.Tensor, *, groups: int,
                 bn_weight: float, first_bn_multiplier: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over `groups` equal batches (contiguous in x) of CE(teacher(x), y) + bn_weight x BN loss,
    the first BN layer's term weighted `first_bn_multiplier` times (SRe2L: 10)."""
    sink.groups, sink.terms = groups, []
    x = x.contiguous(memory_format=sink.memory_format)
    logits = fast_forward(net)(x)  # (n, classes); ConvNets take their faster CPU kernels
    ce = F.cross_entropy(logits, y) * groups  # each group's mean CE, summed
    bn = sink.terms[0] * first_bn_multiplier + sum(sink.terms[1:])
    loss = ce + bn_weight * bn
    acc = (logits.argmax(1) == y).float().mean()
    return loss, {"ce": ce.item() / groups, "bn": bn.item() / groups, "teacher_acc": acc.item()}
