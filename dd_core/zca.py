"""ZCA whitening, as MTT and its descendants use on CIFAR (the reference code fits kornia's
ZCAWhitening with eps 0.1 on the normalized training images).

A whitened run lives in the whitened space throughout: experts, student and the saved images. The
set records the transform (`zca.mean`, `zca.inverse` tensors and `extra_meta["zca"]`), so whatever
shows its images undoes it (SyntheticSet.denormalized), and the evaluator whitens the real data the
same way before training and testing on it (`evaluate.dataset_for`).
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import torch

EPS = 0.1  # MTT's value
_fitted: dict[tuple, "ZCA"] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class ZCA:
    """x -> (x - mean) W with W = U diag(1 / sqrt(s + eps)) U^T from the training images' covariance."""

    mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, D)
    inverse: torch.Tensor  # (D, D): U diag(sqrt(s + eps)) U^T
    eps: float

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float = EPS) -> "ZCA":
        flat = x.reshape(len(x), -1).double()  # (n, D)
        mean = flat.mean(0)
        centred = flat - mean
        cov = centred.T @ centred / (len(flat) - 1)  # (D, D), unbiased as kornia's default
        s, u = torch.linalg.eigh(cov)
        s = s.clamp(min=0)
        matrix = (u * (1 / torch.sqrt(s + eps))) @ u.T
        inverse = (u * torch.sqrt(s + eps)) @ u.T
        return cls(mean.float(), matrix.float(), inverse.float(), eps)

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        flat = (x.reshape(len(x), -1) - self.mean.to(x)) @ self.matrix.to(x)
        return flat.reshape(x.shape)

    def unwhiten(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1) @ self.inverse.to(x) + self.mean.to(x)
        return flat.reshape(x.shape)


def fitted(dataset, eps: float = EPS) -> ZCA:
    """The transform fitted on a dataset's training images (computed once per dataset and eps)."""
    # the shape too: a slice from the start (x_train[:k]) shares the full set's data pointer
    key = (dataset.name, dataset.x_train.data_ptr(), tuple(dataset.x_train.shape), eps)
    with _lock:
        if key not in _fitted:
            _fitted[key] = ZCA.fit(dataset.x_train, eps)
        return _fitted[key]


def whitened(dataset, eps: float = EPS):
    """The dataset with its training and test images whitened (a new frozen Dataset)."""
    zca = fitted(dataset, eps)
    return dataclasses.replace(dataset, x_train=zca.whiten(dataset.x_train), x_test=zca.whiten(dataset.x_test))


def record(syn, zca: ZCA) -> None:
    """Write the transform into a synthetic set, so its file can be shown and evaluated."""
    syn.extra["zca.mean"], syn.extra["zca.inverse"] = zca.mean.clone(), zca.inverse.clone()
    syn.extra_meta["zca"] = f"{zca.eps:g}"


def undo(syn, images: torch.Tensor) -> torch.Tensor:
    """Images of a set in its normalized space: unwhitened if the set records a ZCA transform."""
    if "zca.inverse" not in syn.extra:
        return images
    flat = images.reshape(len(images), -1) @ syn.extra["zca.inverse"].to(images) + syn.extra["zca.mean"].to(images)
    return flat.reshape(images.shape)
