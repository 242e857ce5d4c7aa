"""The label-first baseline's selection rule: prune real images by a difficulty score (Xiao, Liu, He
& Wang, "Rethinking Large-scale Dataset Compression: Shifting Focus From Labels to Images", 2025).

Their framework, PCA (prune, combine, augment), keeps real images chosen by a pruning score and
trains on them with hard labels; its benchmark shows that a random real subset with a teacher's
soft labels already rivals most distilled sets. Only the prune step is here: per class, score every
training image by how hard the network trained on the real data finds it, and keep the easiest
(or the hardest) IPC. The combine step (several images stitched into one) and the scaling-law
aware augmentation are not implemented; see assets/pca.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..teacher import get_teacher, logits
from .base import METHODS, hp
from .coresets import _Coreset


def difficulty(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """(n, classes) logits and (n,) labels -> (n,) difficulty, higher = harder.
    'el2n': the L2 norm of softmax - one-hot (Paul et al., NeurIPS 2021); 'loss': cross-entropy."""
    if kind == "el2n":
        return (F.softmax(scores, dim=1) - F.one_hot(labels, scores.shape[1]).float()).norm(dim=1)
    if kind == "loss":
        return F.cross_entropy(scores, labels, reduction="none")
    raise ValueError(f"unknown score {kind!r}; valid scores are: el2n, loss")


def keep_by_difficulty(net, dataset, c: int, k: int, *, score: str = "el2n", keep: str = "easy", device=None) -> torch.Tensor:
    """Indices into dataset.x_train of the k easiest (or hardest) images of class c, scored by `net`."""
    idx = dataset.indices_of(c)  # (n_c,)
    hard = difficulty(logits(net, dataset.x_train[idx], device), dataset.y_train[idx], score)  # (n_c,)
    # stable order, so ties (e.g. several images scored exactly 0) resolve the same way every run
    return idx[torch.argsort(hard, descending=keep == "hard", stable=True)[:k]]


@METHODS.register("pca")
@dataclass
class PruneByDifficulty(_Coreset):
    """Label-first baseline (Xiao et al. 2025): the prune step of PCA, real images kept by a difficulty score."""

    paper = ("Xiao, Liu, He & Wang, Rethinking Large-scale Dataset Compression: Shifting Focus From Labels "
             "to Images, 2025 (the prune step of PCA)")
    score: str = hp("el2n", "difficulty score from the network trained on the real data: 'el2n' (error L2 "
                            "norm) or 'loss' (cross-entropy)", choices=("el2n", "loss"))
    keep: str = hp("easy", "which end to keep: 'easy' (lowest scores; what works when very few images are "
                           "kept) or 'hard' (highest; what works when most are kept)", choices=("easy", "hard"))
    score_model: str = hp("auto", "network whose predictions score the images; 'auto' = the dataset's teacher")
    score_epochs: int = hp(0, "epochs that network is trained on the whole training set; 0 = the dataset's "
                              "default", range=(0, 1000))

    def setup(self, real, syn, *, seed, device):
        super().setup(real, syn, seed=seed, device=device)
        syn.extra_meta["features"] = self.scored_by_

    def select(self, real, c, ipc, device):
        teacher = get_teacher(real, arch=None if self.score_model in ("", "auto") else self.score_model,
                              epochs=self.score_epochs or None, device=device, stop=self.stop_)
        self.scored_by_ = f"{self.score} of {teacher.describe()}"
        return keep_by_difficulty(teacher.net, real, c, ipc, score=self.score, keep=self.keep, device=device)
