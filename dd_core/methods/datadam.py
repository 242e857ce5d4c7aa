"""DataDAM: dataset distillation with attention matching (Sajedi et al., ICCV 2023).

DM's recipe (a fresh random network per step, DSA on both sides, per-class means) with a
richer target: besides the final embedding, every intermediate block's *spatial attention map*
is matched, so the synthetic images put their activation where real images of the class do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import build_model, chunk_size, resolve_model
from .base import METHODS, hp, is_small
from .dm import DM
from .sampling import class_means

# The public code scales the whole loss by 100; we keep it, so that lr_img = 1 (SGD) means the
# step size it meant there.
LOSS_SCALE = 100.0


def block_activations(net: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The ReLU output of every block of a ConvNet-family network, (n, c, h, w) each, and the final
    embedding (n, d), in one pass through `net.features` (no change to the network)."""
    acts = []
    for layer in net.features:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            acts.append(x)
    return acts, x.flatten(1)


def spatial_attention(activation: torch.Tensor, power: float) -> torch.Tensor:
    """(n, c, *pixels) -> (n, pixels): channel-pooled |a|^p, L2-normalised per image. Summing or
    averaging over channels gives the same map after the normalisation. p = 4 (the paper's) is
    two squarings: 6x faster than abs and pow on this CPU, and the same values."""
    if power == 4:
        att = activation.square().square()
    elif power == 2:
        att = activation.square()
    else:
        att = activation.abs().pow(power)
    return F.normalize(att.mean(dim=1).flatten(1), dim=1)


def attention_features(net: nn.Module, x: torch.Tensor, power: float) -> list[torch.Tensor]:
    """What DataDAM compares: the attention maps of all blocks but the last (the public code's
    choice; the last block is represented by the embedding), then the embedding itself. Through
    ConvNet.embed_fast where the network has it (each map made as its block runs)."""
    if hasattr(net, "embed_fast"):
        maps: list[torch.Tensor] = []

        def keep_map(activation, columns):
            att = spatial_attention(activation, power)  # (n, pixels), in the activation's column order
            maps.append(att if columns is None else att[:, columns])

        embedding = net.embed_fast(x, relu_hook=keep_map)
        return maps[:-1] + [embedding]
    acts, embedding = block_activations(net, x)
    return [spatial_attention(a, power) for a in acts[:-1]] + [embedding]


def attention_in_chunks(net: nn.Module, x: torch.Tensor, power: float) -> list[torch.Tensor]:
    """attention_features in cache-sized chunks (models.chunk_size), concatenated."""
    step = chunk_size(net, x)
    chunks = [attention_features(net, x[i:i + step], power) for i in range(0, len(x), step)]
    return [torch.cat(parts) for parts in zip(*chunks)]


@METHODS.register("datadam")
@dataclass
class DataDAM(DM):
    """Attention matching (Sajedi et al., ICCV 2023): DM plus per-layer spatial attention maps."""

    family = "distribution matching"
    paper = "Sajedi et al., DataDAM: Efficient Dataset Distillation with Attention Matching, ICCV 2023"

    lr_img: float = hp(1.0, "SGD learning rate of the synthetic pixels (1; 10 when IPC >= 100)", range=(0.0, 1000.0))
    batch_real: int = hp(64, "real images per class per step", range=(1, 1024))
    power: float = hp(4.0, "exponent p of the attention map sum_c |a_c|^p (4 in the paper; the public code uses 1)",
                       range=(0.5, 8.0))
    task_balance: float = hp(0.01, "weight of the final-embedding mean-matching term relative to attention",
                              range=(0.0, 100.0))

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        return {"lr_img": 10.0 if ipc >= 100 else 1.0}  # fast = paper: batch_real 64 is already CPU-sized

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 20000 if name == "paper" else (300 if is_small(dataset) else 1000)

    def setup(self, real, syn, *, seed, device):
        probe = build_model(resolve_model(self.model, real), channels=real.channels, num_classes=real.num_classes,
                            image_size=real.image_size, seed=0)  # seeded: the global RNG is left alone
        if not isinstance(getattr(probe, "features", None), nn.Sequential):
            raise ValueError(f"datadam matches per-block attention and needs a ConvNet-family model "
                             f"(auto, convnet, convnet_d2, convnet_w32, convnet_bn), not {self.model!r}")
        super().setup(real, syn, seed=seed, device=device)

    def loss(self, net, x_real, g_real, params) -> torch.Tensor:
        """Sum over classes of the squared distances between mean real and mean synthetic attention
        maps, layer by layer, plus task_balance x the same for the final embedding. All classes go
        through one batched call: attention maps and embeddings are per image, so the class means
        are exactly the per-class loop of the reference code."""
        x_real, x_syn, g_syn = self.views(x_real, g_real, params)
        c = self.shape_["num_classes"]
        with torch.no_grad():
            real = attention_in_chunks(net, x_real, self.power)
        syn = attention_in_chunks(net, x_syn, self.power)
        terms = [((class_means(r, g_real, c) - class_means(s, g_syn, c)) ** 2).sum() for r, s in zip(real, syn)]
        return LOSS_SCALE * (sum(terms[:-1], torch.zeros((), device=x_syn.device)) + self.task_balance * terms[-1])
