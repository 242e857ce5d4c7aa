"""ResNet-18 for small images (He et al., CVPR 2016), as the CIFAR versions of the decoupled
papers (SRe2L, RDED, CV-DD, INFER) train their teachers: torchvision's ResNet-18 with a 3x3
stride-1 stem and no max-pool, so a 32x32 image keeps its resolution through the first stage."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .models import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm, and a 1x1 projection on the skip path when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place, as torchvision's block (and so the public recover scripts' teachers) does it
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet18(nn.Module):
    """Four stages of two basic blocks (64, 128, 256, 512 channels); 3x3 stem, no max-pool."""

    def __init__(self, *, channels: int, num_classes: int, image_size: tuple[int, int], width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        blocks, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*blocks)
        self.feat_dim = c_in
        self.classifier = nn.Linear(c_in, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)  # (n, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@MODELS.register("resnet18")
def resnet18(**kw) -> nn.Module:
    """ResNet-18 for small images (3x3 stem, no max-pool): the CIFAR teacher of SRe2L and RDED."""
    return ResNet18(**kw)


@MODELS.register("resnet18_w16")
def resnet18_w16(**kw) -> nn.Module:
    """ResNet-18 at a quarter of the width (16..128 channels): the same shape, for CPU presets and tests."""
    return ResNet18(width=16, **kw)
