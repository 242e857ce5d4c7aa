"""The recover-and-relabel core of the decoupled methods (SRe2L, Yin, Xing & Shen, NeurIPS 2023).

Squeeze: a teacher with batch norm is trained on the real data (teachers.py). Recover: synthetic
pixels are optimised so that, on the teacher, (a) each batch-norm layer's *input* has the batch
mean and variance the layer saw in training (its running statistics) and (b) the teacher calls
each image its class. Relabel: the set carries the teacher, which labels every view a student is
trained on (the soft-label protocol in evaluate.py replays them).

The statistics come from the teacher's forward pass itself (`tapped`): a conv followed by its
BatchNorm2d becomes one convolution with the norm folded in (`FoldedConvBN`), which takes the sums
of its output and of its square over each image's pixels (two reads, a hand-written backward) and
maps them back to the norm's input statistics, for every batch group at once; any other BN layer
becomes a `BNTap` that does the same before normalising as in eval mode. In a ConvNet block the
ReLU and 2x2 average pool after the norm join the fold: the forward pools by strided slices, and
one backward writes the pooled, masked gradient and the statistics' gradient into one tensor
(autograd would zero-fill a full-size gradient per slice and add them). SRe2L's script instead
hooks every BN layer and copies each input into channel-major order to take its variance
(benchmarks/recover_speed.py times the two side by side; a test checks loss and gradient against it).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import teachers as teacher_registry
from ..labels import attach, images_digest
from ..committee import Committee
from ..data import dataset_facts
from ..label_stores.committee import CommitteeLabels
from ..label_stores.online import OnlineTeacher
from ..models import _plain_conv, _pool2, fast_forward
from ..resnet import BasicBlock
from .base import Method, hp



class StatSink:
    """Where the taps of one forward pass put their losses; `groups` batches share one pass."""

    def __init__(self):
        self.groups = 1
        self.terms: list[torch.Tensor] = []


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


class _PixelSums(torch.autograd.Function):
    """(..., pixels) -> the sums of y and of y^2 over the last (contiguous) dimension, in two reads
    and no temporary; the backward is one fused g1 + 2 g2 y."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return y.sum(-1), torch.linalg.vector_norm(y, dim=-1).square()

    @staticmethod
    def backward(ctx, g1, g2):
        y, = ctx.saved_tensors
        return torch.addcmul(g1.unsqueeze(-1).expand_as(y), y, g2.unsqueeze(-1), value=2.0)


def channel_stats(y: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group and channel: the mean and (biased) variance over the group's images and pixels, (g, c) each.

    Sums of y and y^2 per image and channel over the pixels (contiguous), then over each group's
    images; var = E[y^2] - E[y]^2. On a (100, 32, 32, 32) input, forward + backward on one thread,
    this took a tenth of the CPU time of var_mean over (batch, pixels) at once, and less than a tenth
    of SRe2L's channel-major copy (benchmarks/recover_speed.py measures whole steps)."""
    n, c = y.shape[:2]
    total, squares = _PixelSums.apply(y.reshape(groups, n // groups, c, -1))  # (g, n/g, c) each
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

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, sink: StatSink, pool: bool = False):
        super().__init__()
        self.pool = pool  # also the ReLU and 2x2 average pool that follow (a ConvNet block), in the same pass
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (c,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        self.conv = copy.deepcopy(conv)
        with torch.no_grad():
            self.conv.weight.mul_(scale.view(-1, 1, 1, 1))
            self.conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", bn.bias.detach().clone())
        self.bn, self.sink = bn, sink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.device.type == "cpu" and conv.in_channels == 1 and _plain_conv(conv):  # as ConvNet.embed_fast: im2col
            y = torch.ops.aten._slow_conv2d_forward(x, conv.weight, list(conv.kernel_size), conv.bias, [1, 1],
                                                    list(conv.padding))  # beats oneDNN on one input channel
        else:
            y = conv(x)
        groups = self.sink.groups
        if self.pool and _poolable(y):
            total, squares, out = _StatsReluPool2.apply(y, groups)
        else:
            n, c = y.shape[:2]
            total, squares = _PixelSums.apply(y.reshape(groups, n // groups, c, -1))
            out = F.avg_pool2d(F.relu(y), 2) if self.pool else y
        mean_out, var_out = stats_of_sums(total, squares, y[0, 0].numel())
        bn = self.bn
        mean = (mean_out - self.shift) / self.scale + bn.running_mean
        var = var_out / self.scale ** 2
        self.sink.terms.append(((mean - bn.running_mean).norm(dim=1) + (var - bn.running_var).norm(dim=1)).sum())
        return out


def _relu_pool2(y: torch.Tensor) -> torch.Tensor:
    """avg_pool2d(relu(y), 2) of an even, contiguous (n, c, h, w) y, without autograd: the ReLU of each
    pair of rows added (contiguous reads), then each pair of columns (a quarter to a half of
    relu + avg_pool2d's CPU time on NCHW in a one-thread microbenchmark)."""
    n, c, h, w = y.shape
    rows = y.view(n, c, h // 2, 2, w)
    pairs = rows[:, :, :, 0].clamp_min(0).add_(rows[:, :, :, 1].clamp_min(0))
    return (pairs[..., 0::2] + pairs[..., 1::2]).mul_(0.25)


def _relu_pool2_grad(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient of _relu_pool2 at y given the pooled gradient g: g / 4 spread over each 2x2 window,
    kept where y > 0. One full-size write (autograd's backward of strided slices zero-fills a
    full-size gradient per slice and adds the four)."""
    n, c, h, w = y.shape
    if w < 16:  # narrow rows: the pooling kernel's own backward, then the ReLU's mask
        spread = torch.ops.aten.avg_pool2d_backward(g, y, [2, 2], [2, 2], [0, 0], False, True, None)
        return torch.ops.aten.threshold_backward(spread, y, 0)
    # wide rows: each pooled value repeated along its two columns, then broadcast over its two rows
    rows = (g * 0.25)[..., None].expand(n, c, h // 2, w // 2, 2).reshape(n, c, h // 2, 1, w).expand(n, c, h // 2, 2, w)
    return torch.ops.aten.threshold_backward(rows, y.view(n, c, h // 2, 2, w), 0).view(n, c, h, w)


def _poolable(y: torch.Tensor) -> bool:
    return y.dim() == 4 and y.shape[-2] % 2 == 0 and y.shape[-1] % 2 == 0 and y.is_contiguous()


class _ReluPool2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return _relu_pool2(y)

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return _relu_pool2_grad(g, y)


class _StatsReluPool2(torch.autograd.Function):
    """y (n, c, h, w) -> (the sums of y and y^2 over each image's channel pixels, (g, n/g, c) each, as
    _PixelSums; avg_pool2d(relu(y), 2)). The backward writes the two paths' gradient into one
    tensor in place, where autograd would add two full-size gradients."""

    @staticmethod
    def forward(ctx, y, groups):
        ctx.save_for_backward(y)
        n, c = y.shape[:2]
        flat = y.view(groups, n // groups, c, -1)
        return flat.sum(-1), torch.linalg.vector_norm(flat, dim=-1).square(), _relu_pool2(y)

    @staticmethod
    def backward(ctx, g1, g2, gp):
        y, = ctx.saved_tensors
        grad = _relu_pool2_grad(gp, y).contiguous()
        flat = grad.view(*g1.shape, -1)
        flat.add_(g1.unsqueeze(-1)).addcmul_(y.view_as(flat), g2.unsqueeze(-1), value=2.0)
        return grad, None


class ReluPool2(nn.Module):
    """nn.ReLU followed by nn.AvgPool2d(2, 2) in one step with a cheap backward; odd sizes take the
    plain ReLU and pooling."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return _ReluPool2.apply(y) if _poolable(y) else F.avg_pool2d(F.relu(y), 2)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    # a near-zero scale would divide the statistics by ~0: leave such a layer to BNTap
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.affine and
            conv.out_channels == bn.num_features and
            bool((bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps) > 1e-3).all()))


def tapped(net: nn.Module, fold: bool = True) -> tuple[nn.Module, StatSink]:
    """A copy of `net` (eval mode, frozen) whose BatchNorm2d layers report their input statistics.
    With `fold`, a conv directly followed by a BN inside an nn.Sequential (where the order of the
    children is the order of the data) or a ResNet BasicBlock's conv1/bn1 and conv2/bn2 become one
    FoldedConvBN; every other BN a BNTap."""
    net = copy.deepcopy(net).eval()
    sink = StatSink()
    for m in net.modules():  # a folded conv's output is also the statistics' input: nothing may overwrite it
        if isinstance(m, nn.ReLU):
            m.inplace = False
    for parent in list(net.modules()):
        children = list(parent.named_children())
        if fold and isinstance(parent, nn.Sequential):
            for i, ((name, conv), (bn_name, bn)) in enumerate(zip(children, children[1:])):
                if _foldable(conv, bn):
                    after = [m for _, m in children[i + 2:i + 4]]  # a ConvNet block's ReLU and pool join the fold
                    pool = len(after) == 2 and isinstance(after[0], nn.ReLU) and _pool2(after[1])
                    setattr(parent, name, FoldedConvBN(conv, bn, sink, pool=pool))
                    for dropped in [bn_name] + ([n for n, _ in children[i + 2:i + 4]] if pool else []):
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
    return net, sink


def recover_loss(net: nn.Module, sink: StatSink, x: torch.Tensor, y: torch.Tensor, *, groups: int,
                 bn_weight: float, first_bn_multiplier: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over `groups` equal batches (contiguous in x) of CE(teacher(x), y) + bn_weight x BN loss,
    the first BN layer's term weighted `first_bn_multiplier` times (SRe2L: 10)."""
    sink.groups, sink.terms = groups, []
    logits = fast_forward(net)(x)  # (n, classes); ConvNets take their faster CPU kernels
    ce = F.cross_entropy(logits, y) * groups  # each group's mean CE, summed
    bn = sink.terms[0] * first_bn_multiplier + sum(sink.terms[1:])
    loss = ce + bn_weight * bn
    acc = (logits.argmax(1) == y).float().mean()
    return loss, {"ce": ce.item() / groups, "bn": bn.item() / groups, "teacher_acc": acc.item()}


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], flip: bool, g: torch.Generator) -> torch.Tensor:
    """One random-resized crop (area fraction in `scale`, aspect 3/4-4/3) and, if `flip`, one coin
    for a horizontal flip, applied to the whole batch, as SRe2L's recover loop does."""
    _, _, h, w = x.shape
    area = float(torch.empty(1).uniform_(scale[0], scale[1], generator=g)) * h * w
    ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)))
    ch = max(1, min(h, round(math.sqrt(area / ratio))))
    cw = max(1, min(w, round(math.sqrt(area * ratio))))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
    out = x[:, :, top:top + ch, left:left + cw]
    if (ch, cw) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    if flip and float(torch.rand(1, generator=g)) < 0.5:
        out = out.flip(3)
    return out


def slot_order(num_classes: int, ipc: int) -> torch.Tensor:
    """Indices that put a class-sorted set (class-major) into slot-major order: group j holds image j
    of every class, as SRe2L recovers one image per class per batch."""
    return torch.arange(num_classes * ipc).view(num_classes, ipc).t().reshape(-1)


def pixel_bounds(real, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized values of pixel 0 and pixel 1 per channel, (1, c, 1, 1) each: recovered pixels are clipped to them."""
    mean = torch.tensor(real.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(real.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def cosine_lr(lr: float, step: int, horizon: int) -> float:
    """SRe2L's schedule: cosine from lr to 0 over `horizon` steps (no warm-up), then held at 0."""
    return 0.5 * lr * (1 + math.cos(math.pi * min(step, horizon) / horizon))


def teacher_field(default: str = "convnet_bn"):
    return hp(default, "teacher recipe (teachers.py): the batch-norm network trained once on the real data and cached; "
                       "convnet_bn_quick trains in seconds, resnet18 is the papers' CIFAR teacher (GPU scale)",
              choices=tuple(teacher_registry.TEACHERS.names()))


def label_temperature_field():
    return hp(0.0, "temperature of the teacher's labels the set carries; 0: the teacher's calibrated one, as every "
                   "label store (the soft protocol then softens labels and student alike by its own 20)",
              range=(0.0, 100.0))


def temperature_of_labels(teacher, real, temperature: float) -> tuple[float, str]:
    """The labels' temperature (0: the teacher's calibrated one) and the spec option that rebuilds it."""
    if temperature:
        return temperature, f":temperature={float(temperature)}"
    return round(teacher.calibrated_temperature(real), 4), ""


def attach_teacher_labels(syn, teacher, real, temperature: float) -> None:
    """Relabel: the set carries its teacher, which labels every view the student sees (FKD-style
    per-view soft labels, computed online instead of stored; the Labels & storage tab prices the
    stored alternatives)."""
    t, option = temperature_of_labels(teacher, real, temperature)
    if isinstance(teacher.net, Committee):
        store = CommitteeLabels.build(syn, None, teacher, None, temperature=t)
        store.spec = "committee" + (option or f":temperature={float(t)}")  # a committee has no calibrated default
    else:
        store = OnlineTeacher(copy.deepcopy(teacher.net).cpu().eval(), arch=teacher.arch, dtype="float32", temperature=t)
        store.spec = "teacher" + option
    store.teacher_note = teacher.describe()
    attach(syn, store)


def refresh_digest(syn, images: torch.Tensor) -> None:
    """The label store is tied to the images by a digest; keep it current as the images change."""
    if "label_store" in syn.extra_meta:
        syn.extra_meta["label_store.images"] = images_digest(images.detach().cpu())


@dataclass
class Recover(Method):
    """Shared fields and loop of SRe2L-style recovery; subclasses change the crop schedule, the
    teacher(s) or what is optimised."""

    family = "decoupled (recover and relabel)"

    teacher: str = teacher_field()
    lr: float = hp(0.25, "Adam learning rate of the pixels (betas 0.5, 0.9), cosine to 0 over `horizon` steps",
                   range=(1e-4, 10.0))
    horizon: int = hp(1000, "steps the cosine learning-rate schedule spans (the paper's 1000 iterations)",
                      range=(1, 100000))
    bn_weight: float = hp(0.01, "weight of the batch-norm statistics loss against the cross-entropy (SRe2L: 0.01)",
                          range=(0.0, 100.0))
    first_bn_multiplier: float = hp(10.0, "extra weight of the first BN layer's term (SRe2L: 10)", range=(0.0, 1000.0))
    crop_min: float = hp(0.08, "smallest random-resized-crop area fraction of the jitter (SRe2L: 0.08)",
                         range=(0.01, 1.0))
    flip: bool = hp(True, "random horizontal flip in the jitter (turned off where flips change the class)")
    init: str = hp("noise", "start from Gaussian noise (SRe2L) or from the real images the run starts with",
                   choices=("noise", "real"))
    label_temperature: float = label_temperature_field()

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        facts = dataset_facts(dataset)
        out = {"flip": facts.flips}
        if name == "fast":  # a CPU: a cheap teacher and a short schedule; bigger crops keep 8-32 px images legible
            out.update(horizon=cls.default_steps("fast", dataset=dataset, ipc=ipc), crop_min=0.5)
        return out

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 1000 if name == "paper" else 300

    # -- set-up ---------------------------------------------------------------------------------

    def load_teacher(self, real, device):
        return teacher_registry.get_bn_teacher(real, self.teacher, device=device, stop=self.stop_)

    def setup(self, real, syn, *, seed, device):
        self.gen_ = torch.Generator().manual_seed(seed)
        self.device_, self.real_ = device, real
        self.teacher_ = self.load_teacher(real, device)
        self.net_, self.sink_ = tapped(self.teacher_.net)
        self.ipc_ = len(syn.labels) // real.num_classes
        self.order_ = slot_order(real.num_classes, self.ipc_).to(device)  # class-major -> slot-major
        self.labels_ = syn.labels.to(device)
        self.low_, self.high_ = pixel_bounds(real, device)
        start = syn.images.to(device)
        if self.init == "noise":
            start = torch.randn(syn.images.shape, generator=self.gen_).to(device)
        self.start(start)
        self.opt_ = torch.optim.Adam(self.parameters(), lr=self.lr, betas=(0.5, 0.9), eps=1e-8)
        self.step_ = 0
        self.syn_ = syn
        teacher_registry.record(syn, [self.teacher_])
        self.relabel()

    def start(self, images: torch.Tensor) -> None:
        """Make the optimised variables from the starting images (n, c, h, w)."""
        self.images_ = images.clone().requires_grad_(True)

    def relabel(self) -> None:
        """Attach the set's labels: the teacher itself, labelling every view (INFER: static labels)."""
        attach_teacher_labels(self.syn_, self.teacher_, self.real_, self.label_temperature)
        refresh_digest(self.syn_, self.images())

    def parameters(self) -> list[torch.Tensor]:
        """What Adam optimises (the pixels; INFER optimises its compensators instead)."""
        return [self.images_]

    def batch(self) -> torch.Tensor:
        """The images as optimised, class-major (n, c, h, w)."""
        return self.images_

    # -- one step ---------------------------------------------------------------------------------

    def crop_scale(self) -> tuple[float, float]:
        return (self.crop_min, 1.0)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return recover_loss(self.net_, self.sink_, x, y, groups=self.ipc_, bn_weight=self.bn_weight,
                            first_bn_multiplier=self.first_bn_multiplier)

    def step(self):
        lr = cosine_lr(self.lr, self.step_, self.horizon)
        for group in self.opt_.param_groups:
            group["lr"] = lr
        x = random_resized_crop(self.batch()[self.order_], self.crop_scale(), self.flip, self.gen_)
        loss, stats = self.loss(x, self.labels_[self.order_])
        self.opt_.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_.step()
        self.clip()
        self.step_ += 1
        refresh_digest(self.syn_, self.images())
        return {"loss": loss.item() / self.ipc_, **stats, "lr": lr}

    def clip(self) -> None:
        with torch.no_grad():  # keep pixels displayable: SRe2L clips to [0, 1] after every step
            self.images_.copy_(torch.maximum(torch.minimum(self.images_, self.high_), self.low_))

    def images(self) -> torch.Tensor:
        return self.batch().detach()

    def restore(self, images: torch.Tensor) -> None:
        super().restore(images)
        refresh_digest(self.syn_, self.images())
