"""DQ: Dataset Quantization (Zhou et al., "Dataset Quantization", ICCV 2023), bins and sampling.

Per class, the images are split into `bins` non-overlapping bins, one after another: each bin is
grown greedily by GraphCut submodular gain over the images not yet binned, in the features of a
network trained on the real data (the same features herding and k-center use). A budget is then
met by drawing uniformly at random from every bin. The bins do not depend on the budget, so they
are cached (dd_core/cache.py) and a new IPC is a new draw, not a new partition.

Left out: the paper's patch dropping (GradCAM++ scores, masked-autoencoder reconstruction at
training time); see assets/dq.md.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..cache import cache_path, load_or_build
from .base import METHODS, hp
from .coresets import _FeatureCoreset


def cosine_similarity01(f: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, n) cosine similarity mapped to [0, 1], as DQ's GraphCut uses: 0.5 + 0.5 cos."""
    unit = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return 0.5 + 0.5 * unit @ unit.T


def graphcut_bins(sim: torch.Tensor, bins: int, lam: float = 1.0) -> torch.Tensor:
    """Split n items into `bins` non-overlapping bins (sizes differ by at most one); returns (n,) bin ids.

    Bin k is grown greedily over the items no earlier bin took (its ground set V): the next item is
    the one of largest GraphCut gain  lam * sum_{i in V} s(i, x) - 2 * sum_{j in bin} s(j, x),
    i.e. close to what is left (representative) and far from what the bin holds (diverse)."""
    n = len(sim)
    bins = min(bins, n)
    sizes = [n // bins + (1 if k < n % bins else 0) for k in range(bins)]
    assign = torch.full((n,), -1, dtype=torch.long)
    free = torch.ones(n, dtype=torch.bool)  # not yet in any bin
    for k, size in enumerate(sizes):
        coverage = lam * (sim @ free.to(sim.dtype))  # (n,) similarity to the ground set V of this bin
        penalty = torch.zeros(n, dtype=sim.dtype)  # (n,) similarity to this bin so far
        for _ in range(size):
            gain = coverage - 2.0 * penalty
            gain[~free] = float("-inf")
            i = int(gain.argmax())
            assign[i], free[i] = k, False
            penalty += sim[i]
    return assign


def sample_bins(assign: torch.Tensor, ipc: int, gen: torch.Generator) -> torch.Tensor:
    """Positions of `ipc` items drawn uniformly from every bin: ipc // bins from each, and one more
    from (ipc % bins) bins chosen at random, since a budget below the number of bins cannot reach all."""
    bins = int(assign.max()) + 1
    extra = set(torch.randperm(bins, generator=gen)[: ipc % bins].tolist())
    picks = []
    for k in range(bins):
        members = torch.nonzero(assign == k).flatten()
        take = min(len(members), ipc // bins + (k in extra))
        picks.append(members[torch.randperm(len(members), generator=gen)[:take]])
    chosen = torch.cat(picks)
    if len(chosen) < ipc:  # a bin ran short (tiny classes): top up from the rest, still at random
        rest = torch.ones(len(assign), dtype=torch.bool)
        rest[chosen] = False
        others = torch.nonzero(rest).flatten()
        chosen = torch.cat([chosen, others[torch.randperm(len(others), generator=gen)[: ipc - len(chosen)]]])
    return chosen


@METHODS.register("dq")
@dataclass
class DatasetQuantization(_FeatureCoreset):
    """Dataset Quantization (Zhou et al., ICCV 2023): GraphCut bins per class, then uniform draws from every bin."""

    paper = "Zhou et al., Dataset Quantization, ICCV 2023"
    bins: int = hp(10, "non-overlapping bins per class (the paper: 10)", range=(1, 1000))
    lam: float = hp(1.0, "GraphCut weight of the coverage term against the diversity term (the paper: 1)",
                    range=(0.0, 10.0))

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        # The bins are the paper's (10, GraphCut lam 1). The fast preset only differs in the feature
        # network's training, which is the coresets' own default either way.
        return {}

    def select(self, real, c, ipc, device):
        idx, f = self.class_features(real, c, device)  # (n_c,), (n_c, d)
        assign = self.class_bins(f)
        return idx[sample_bins(assign, ipc, self.gen_)]

    def class_bins(self, f: torch.Tensor) -> torch.Tensor:
        """(n_c, d) features -> (n_c,) bin ids, cached on disk per features and settings."""
        digest = hashlib.sha1(f.contiguous().numpy().tobytes()).hexdigest()[:16]
        path = cache_path("dq_bins", f"{digest}-b{self.bins}-l{self.lam:g}", ".safetensors")

        def load(p):
            from safetensors.torch import load_file

            assign = load_file(str(p))["assign"]
            if assign.shape != (len(f),) or int(assign.min()) < 0 or int(assign.max()) >= min(self.bins, len(f)):
                raise ValueError(f"bin ids of shape {tuple(assign.shape)} do not fit {len(f)} images in {self.bins} bins")
            return assign

        def save(assign, p):
            from safetensors.torch import save_file

            save_file({"assign": assign.contiguous()}, str(p))

        def build():
            self.check_stop()
            return graphcut_bins(cosine_similarity01(f.float()), self.bins, self.lam)

        assign, self.bins_cached_ = load_or_build(path, load=load, build=build, save=save)
        return assign

    def step(self):
        n, c, h, w = self.images_.shape
        # bytes of the chosen images stored as 8-bit pixels; no patches are dropped here
        return {"selected": float(n), "bins": float(self.bins), "image_bytes": float(n * c * h * w)}
