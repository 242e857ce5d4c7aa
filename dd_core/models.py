"""Networks: the DD ConvNet family, an MLP and a small ResNet, one builder each, registered.

Every network has `embed(x) -> (n, feat_dim)` (the features before the classifier, what
distribution matching compares) and `forward(x) -> (n, classes)` logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

MODELS: Registry = Registry("model")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":
        # The reference "instance norm" is GroupNorm with one group per channel, affine.
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid norms are: batchnorm, instancenorm, none")


def _plain_conv(conv: nn.Conv2d) -> bool:
    return (conv.groups == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple))


def _pool2(layer: nn.Module) -> bool:
    return isinstance(layer, nn.AvgPool2d) and layer.kernel_size == 2 and layer.stride == 2 and layer.padding == 0


def _conv_out_size(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """(h, w) of a stride-1 conv's output on x."""
    h, w = (size + 2 * pad - k + 1 for size, pad, k in zip(x.shape[-2:], conv.padding, conv.kernel_size))
    return h, w


# On a CPU, a forward pass runs fastest when its widest activation (the first conv's output) stays
# in the last-level cache: chunks are sized so that one chunk's is about this many bytes. Measured
# on MNIST, ConvNet-3 width 128 (512 KiB a 32x32 image): 16 images a chunk embedded 2,560 real
# images 1.2-1.6x faster than 64 and 1.5-1.8x faster than 256, on 1 and 2 threads (BENCHMARKS.md, 3).
CHUNK_ACTIVATION_BYTES = 8 * 2**20


def chunk_size(net: nn.Module, x: torch.Tensor) -> int:
    """Images per chunk for `net` on `x`: all of them on a GPU, or where a batch norm in training
    mode makes each image's output depend on its batch (the reference DM code embeds such networks
    in one batch); on a CPU, as many as keep the first conv's output near CHUNK_ACTIVATION_BYTES
    (64 for a network without convolutions)."""
    batch_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())
    if x.device.type != "cpu" or batch_stats:
        return max(1, len(x))
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return 64
    h, w = _conv_out_size(conv, x)
    per_image = conv.out_channels * max(1, h) * max(1, w) * x.element_size()
    return int(max(1, min(256, CHUNK_ACTIVATION_BYTES // per_image)))


def _foldable_first_block(layers: list[nn.Module], x: torch.Tensor) -> bool:
    """conv -> GroupNorm with one group per channel -> ReLU -> 2x2 pool, with an even conv output."""
    if len(layers) < 4 or not isinstance(layers[0], nn.Conv2d) or not _plain_conv(layers[0]):
        return False
    conv, norm = layers[0], layers[1]
    if not (isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels == conv.out_channels and norm.affine):
        return False
    ho, wo = _conv_out_size(conv, x)
    return isinstance(layers[2], nn.ReLU) and _pool2(layers[3]) and ho % 2 == 0 and wo % 2 == 0


def _window_patches(x: torch.Tensor, kernel: tuple[int, int], padding: tuple[int, int], ho: int, wo: int) -> torch.Tensor:
    """The conv's patches of x, (n, c*kh*kw, ho*wo), columns ordered (row in window, column in
    window, window row, window column) for 2x2 windows. Without gradients, one strided copy (6x
    faster than unfold and reorder on MNIST); with them, unfold, whose backward is the faster one."""
    n, c = x.shape[:2]
    if torch.is_grad_enabled() and x.requires_grad:
        cols = F.unfold(x, kernel, padding=padding)
        return cols.view(n, -1, ho // 2, 2, wo // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, -1, ho * wo)
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    windows = padded.unfold(2, kernel[0], 1).unfold(3, kernel[1], 1)  # (n, c, ho, wo, kh, kw), a view
    windows = windows.view(n, c, ho // 2, 2, wo // 2, 2, *kernel).permute(0, 1, 6, 7, 3, 5, 2, 4)
    return windows.reshape(n, c * kernel[0] * kernel[1], ho * wo)


def _first_block(conv: nn.Conv2d, norm: nn.GroupNorm, x: torch.Tensor, relu_hook=None) -> torch.Tensor:
    """avgpool2(relu(instance_norm(conv(x)))) as one matrix product per image (`relu_hook`: see
    ConvNet.embed_fast).

    Each output channel of the conv is w_c . p + b over the image's patches p, so its mean over the
    image is w_c . mean(p) + b and its variance w_c^T S w_c, with S the patches' (k x k) covariance
    (k = in_channels * 9). The norm therefore folds into per-image weights: out_c = (gamma_c / sd_c)
    w_c . (p - mean(p)) + beta_c (the conv's bias cancels). The patches are ordered so that the four
    pixels of each pooling window lie in four contiguous rows, and the pool becomes their sum. On
    MNIST this replaces five passes over the widest activation (conv, two of the norm, ReLU, pool)
    with three (product, ReLU, sum)."""
    n = x.shape[0]
    ho, wo = _conv_out_size(conv, x)
    patches = _window_patches(x, conv.kernel_size, conv.padding, ho, wo)  # (n, k, ho * wo)
    k = patches.shape[1]
    mean = patches.mean(2)  # (n, k)
    centred = patches - mean[:, :, None]
    cov = centred @ centred.transpose(1, 2) / (ho * wo)  # (n, k, k)
    w = conv.weight.reshape(conv.out_channels, k)  # (C, k)
    var = ((w @ cov) * w).sum(-1)  # (n, C): each channel's variance over the image
    scale = norm.weight * torch.rsqrt(var + norm.eps)  # (n, C)
    out = torch.baddbmm(norm.bias[None, :, None].expand(n, -1, 1), w * scale[:, :, None], centred)  # (n, C, ho*wo)
    out = out.relu_().view(n, conv.out_channels, 4, ho * wo // 4)
    if relu_hook is not None:  # pixel (2u + a, 2v + b) is in column (a, b, u, v)
        i, j = torch.arange(ho, device=x.device)[:, None], torch.arange(wo, device=x.device)
        columns = ((i % 2) * 2 + j % 2) * (ho * wo // 4) + (i // 2) * (wo // 2) + j // 2
        relu_hook(out.view(n, conv.out_channels, ho * wo), columns.reshape(-1))
    return out.sum(2).mul_(0.25).view(n, -1, ho // 2, wo // 2)  # 5x faster than adding the four rows, both ways


def on_cpu(net: nn.Module) -> bool:
    """Whether the network's weights are on the CPU (a network without any counts as on the CPU)."""
    first = next(net.parameters(), None)
    return first is None or first.device.type == "cpu"


def inference_layout(net: nn.Module, device) -> nn.Module:
    """Move a frozen network to `device` with its weights in the layout its inference runs fastest in:
    channels-last on a CPU, where oneDNN's convolutions then skip their NCHW reorders (a teacher's
    forward on 50 views: 1.5-1.7x for a BN ConvNet-3 width 128 at 32 px, about 2x for width 32 on
    28 px, 1.15x for ResNet-18 width 16; BENCHMARKS 15i), NCHW elsewhere (not measured on a GPU).
    The same function: only the memory order of the weights changes."""
    device = torch.device(device)
    return net.to(device, memory_format=torch.channels_last if device.type == "cpu" else torch.contiguous_format)


def fast_forward(net: nn.Module):
    """The network's forward through its faster CPU path where it has one (ConvNet.forward_fast), for
    training and testing; not for anything differentiated twice. On a GPU the plain forward: the
    folded block and the strided pools are CPU cache tricks, and cuDNN's kernels beat them there."""
    return getattr(net, "forward_fast", net) if on_cpu(net) else net


def fast_embed(net: nn.Module):
    """`embed` through ConvNet's faster CPU path (embed_fast) on the CPU; the plain one elsewhere."""
    return getattr(net, "embed_fast", net.embed) if on_cpu(net) else net.embed


class ConvNet(nn.Module):
    """The ConvNet of the DC/DSA/DM papers: depth x [conv3x3 -> norm -> ReLU -> avgpool2]."""

    def __init__(self, *, channels: int, num_classes: int, image_size: tuple[int, int],
                 width: int = 128, depth: int = 3, norm: str = "instancenorm"):
        super().__init__()
        h, w = image_size
        # The reference code pads the first conv by 3 for 28x28 input (28 -> 32), so three
        # poolings end at 4x4 and the feature is 2048-d, as for CIFAR.
        first_pad = 3 if (h, w) == (28, 28) else 1
        h, w = h + 2 * (first_pad - 1), w + 2 * (first_pad - 1)
        layers: list[nn.Module] = []
        c_in = channels
        for d in range(depth):
            layers += [nn.Conv2d(c_in, width, 3, padding=first_pad if d == 0 else 1), _norm(norm, width), nn.ReLU(inplace=True)]
            if min(h, w) >= 2:  # tiny inputs (8x8 digits) stop pooling at 1x1
                layers.append(nn.AvgPool2d(2, 2))
                h, w = h // 2, w // 2
            c_in = width
        self.features = nn.Sequential(*layers)
        self.feat_dim = width * h * w
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)  # (n, feat_dim)

    def embed_fast(self, x: torch.Tensor, relu_hook=None) -> torch.Tensor:
        """`embed` through faster CPU kernels (the same function to float rounding, gradients
        included). The first block (conv -> instance norm -> ReLU -> 2x2 average pool) runs as one
        matrix product per image (`_first_block`); otherwise a first conv with one input channel
        goes through the plain im2col kernel (oneDNN took about 9x longer on 1-channel 28x28 input),
        and each 2x2 average pool is the mean of four strided slices (about 4x faster than
        avg_pool2d on NCHW here). Measured on MNIST, ConvNet-3 width 128 (BENCHMARKS.md, section 3).

        `relu_hook(a, columns)`, if given, sees every block's ReLU output in turn: `a` is (n, c, pixels)
        and `a[..., columns]` puts them in row-major order (columns is None when they are already;
        the folded first block keeps each pooling window's pixels together)."""
        cpu, layers = x.device.type == "cpu", list(self.features)
        if cpu and _foldable_first_block(layers, x):
            x, layers = _first_block(layers[0], layers[1], x, relu_hook), layers[4:]
        for layer in layers:
            if cpu and isinstance(layer, nn.Conv2d) and layer.in_channels == 1 and _plain_conv(layer):
                x = torch.ops.aten._slow_conv2d_forward(x, layer.weight, list(layer.kernel_size), layer.bias,
                                                        [1, 1], list(layer.padding))
            elif cpu and _pool2(layer):
                h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
                x = (x[..., 0:h:2, 0:w:2] + x[..., 1:h:2, 0:w:2] + x[..., 0:h:2, 1:w:2] + x[..., 1:h:2, 1:w:2]) * 0.25
            else:
                x = layer(x)
                if relu_hook is not None and isinstance(layer, nn.ReLU):
                    relu_hook(x.flatten(2), None)
        return x.flatten(1)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` through `embed_fast` (first derivatives only: the evaluator trains with it;
        gradient matching, which differentiates twice, keeps `forward`)."""
        return self.classifier(self.embed_fast(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """A 3-layer perceptron on flattened pixels (the DC papers' MLP baseline)."""

    def __init__(self, *, channels: int, num_classes: int, image_size: tuple[int, int], width: int = 128):
        super().__init__()
        d_in = channels * image_size[0] * image_size[1]
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d_in, width), nn.ReLU(inplace=True),
                                  nn.Linear(width, width), nn.ReLU(inplace=True))
        self.feat_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out))

    def forward(self, x):
        out = F.relu(self.n1(self.conv1(x)))
        return F.relu(self.n2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    """A small ResNet (three stages of one basic block) for cross-architecture evaluation."""

    def __init__(self, *, channels: int, num_classes: int, image_size: tuple[int, int],
                 width: int = 64, norm: str = "batchnorm"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), _norm(norm, width), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(_Block(width, width, 1, norm), _Block(width, 2 * width, 2, norm),
                                    _Block(2 * width, 4 * width, 2, norm))
        self.feat_dim = 4 * width
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@MODELS.register("convnet")
def convnet(**kw) -> nn.Module:
    """ConvNet-3, width 128, instance norm: the standard DD network."""
    return ConvNet(**kw)


@MODELS.register("convnet_d2")
def convnet_d2(**kw) -> nn.Module:
    """ConvNet-2: two blocks, for 8x8 inputs where a third pooling has nothing left to pool."""
    return ConvNet(depth=2, **kw)


@MODELS.register("convnet_d4")
def convnet_d4(**kw) -> nn.Module:
    """ConvNet-4: four blocks, the DD papers' choice for 64x64 inputs (Tiny ImageNet)."""
    return ConvNet(depth=4, **kw)


@MODELS.register("convnet_w32")
def convnet_w32(**kw) -> nn.Module:
    """ConvNet-3 at width 32: a quarter of the channels, for fast CPU presets."""
    return ConvNet(width=32, **kw)


@MODELS.register("convnet_bn")
def convnet_bn(**kw) -> nn.Module:
    """ConvNet-3 with batch norm, as a cross-architecture check."""
    return ConvNet(norm="batchnorm", **kw)


@MODELS.register("convnet_bn_d2")
def convnet_bn_d2(**kw) -> nn.Module:
    """ConvNet-2 with batch norm: a teacher for 8x8 digits whose statistics recovery can match."""
    return ConvNet(depth=2, norm="batchnorm", **kw)


@MODELS.register("convnet_bn_w32")
def convnet_bn_w32(**kw) -> nn.Module:
    """ConvNet-3 with batch norm at width 32: a CPU-sized teacher for 28-32 px images."""
    return ConvNet(width=32, norm="batchnorm", **kw)


@MODELS.register("mlp")
def mlp(**kw) -> nn.Module:
    return MLP(**kw)


@MODELS.register("resnet")
def resnet(**kw) -> nn.Module:
    return ResNet(**kw)


def build_model(name: str, *, channels: int, num_classes: int, image_size, seed: int | None = None,
                device: str | torch.device = "cpu") -> nn.Module:
    """Build a registered network; with a seed, its initial weights are reproducible."""
    builder = MODELS.get(name)
    if seed is None:
        net = builder(channels=channels, num_classes=num_classes, image_size=tuple(image_size))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = builder(channels=channels, num_classes=num_classes, image_size=tuple(image_size))
    return net.to(device)


def default_model(image_size) -> str:
    """The DD convention: ConvNet depth follows resolution so the last feature map is about 4x4
    (depth 3 for 28-32 px, 4 for 64 px); 8x8 digits get depth 2 (2x2), since a third pooling
    would leave a single pixel."""
    side = min(image_size)
    if side <= 16:
        return "convnet_d2"
    return "convnet" if side <= 32 else "convnet_d4"


def resolve_model(name: str, dataset) -> str:
    """'auto' -> the default network for the dataset's resolution; any other name is checked."""
    if name == "auto":
        return default_model(dataset.image_size)
    MODELS.get(name)  # raises with the valid names
    return name


def model_for(dataset, name: str | None = None, **kw) -> nn.Module:
    """Build a network for a dataset's shape; name None means the default for its resolution."""
    return build_model(name or default_model(dataset.image_size), channels=dataset.channels, num_classes=dataset.num_classes,
                       image_size=dataset.image_size, **kw)


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


from . import resnet  # noqa: E402,F401  registers resnet18 (its own file; it builds on MODELS above)
