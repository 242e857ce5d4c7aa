"""Features and 2-D maps of real and synthetic images.

The map is fitted once per dataset and feature network on a class-balanced sample of at most
MAX_MAP_POINTS real images (UMAP switches to slow approximate neighbours above ~4096 rows), and
synthetic images are *placed* on it with `transform`: they never move the real points. PCA is
fitted at the same time and costs milliseconds, so it serves as the live view while UMAP fits.
UMAP itself runs in a separate worker process (umap_worker.py), so numba's compilation never
stalls the caller. UMAP's transform cannot extrapolate (it puts new points near their nearest real neighbours), so
`nearest` gives each synthetic image's distance to its closest real image in the same features.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .data import Dataset
from .interrupt import Interrupted
from .models import model_for
from .teacher import features, get_teacher
from .umap_worker import MissingMap, Stopped, UmapWorker  # noqa: F401 - Stopped: what a stopped fit raises

MAX_MAP_POINTS = 4000  # real points the map is fitted on
MAX_NEAREST_POOL = 20_000  # real images searched for each synthetic image's nearest neighbour
FEATURE_KINDS = ("trained", "random")


class TrainingStopped(Stopped):
    """The caller's stop ended the feature network's first training; nothing was cached."""

    def __init__(self):
        super().__init__(None, "the feature network's first training was stopped before it finished; nothing "
                               "was cached, so the next map with it trains it again")


_maps: dict[tuple, "RealMap"] = {}
_lock = threading.Lock()
WORKER = UmapWorker()  # one UMAP process for everybody; fitted maps are shared read-only


def feature_net(dataset: Dataset, kind: str, device=None, stop=None) -> tuple[torch.nn.Module, str]:
    """A frozen network and a sentence saying what it is: trained on the real data, or random as DM
    sees it. The trained one is trained on first use (then cached); `stop` set meanwhile ends that
    training and raises TrainingStopped."""
    if kind == "trained":
        try:
            teacher = get_teacher(dataset, device=device, stop=stop)
        except Interrupted:
            raise TrainingStopped() from None
        return teacher.net, f"features of a {teacher.describe()}"
    if kind == "random":
        net = model_for(dataset, "convnet", seed=0, device=device or "cpu").eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net, "features of a randomly initialised ConvNet-3 (seed 0), the kind of network DM matches with"
    raise ValueError(f"unknown feature network {kind!r}; valid ones are: {', '.join(FEATURE_KINDS)}")


def balanced_sample(labels: torch.Tensor, max_points: int, seed: int = 0) -> torch.Tensor:
    """Indices of up to max_points items, the same number from every class (fewer if a class is small)."""
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    per_class = max(1, max_points // max(1, num_classes))
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.sort(torch.cat(picks)).values if picks else torch.zeros(0, dtype=torch.long)


@dataclass
class RealMap:
    """Real features of one dataset under one feature network, with their fitted 2-D projections."""

    key: tuple
    note: str
    net: torch.nn.Module
    device: object
    idx: torch.Tensor  # (n,) training-set indices of the mapped real points
    labels: np.ndarray  # (n,)
    feats: np.ndarray  # (n, d) float32
    pca_mean: np.ndarray  # (d,)
    pca_axes: np.ndarray  # (d, 2)
    pool_idx: torch.Tensor  # (p,) training-set indices searched by nearest()
    pool_feats: torch.Tensor  # (p, d)
    umap_xy: np.ndarray | None = None  # (n, 2), once fit_umap() has run
    umap_seed: int = 0

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """(m, c, h, w) normalized images -> (m, d) features."""
        return features(self.net, images, self.device).numpy().astype(np.float32)

    @property
    def pca_xy(self) -> np.ndarray:
        return self.pca(self.feats)

    def pca(self, feats: np.ndarray) -> np.ndarray:
        return (feats - self.pca_mean) @ self.pca_axes  # (m, 2)

    def umap(self, feats: np.ndarray, *, stop=None) -> np.ndarray:
        """Place new points on the fitted UMAP of the real features (fits it first if needed);
        `stop` set meanwhile ends the worker and raises Stopped."""
        if self.umap_xy is None:
            fit_umap(self, stop=stop)
        try:
            return WORKER.transform(self.key, feats, stop=stop)
        except MissingMap:  # the worker was restarted and lost its maps: fit again, once
            WORKER.fit(self.key, self.feats, self.umap_seed, stop=stop)
            return WORKER.transform(self.key, feats, stop=stop)

    def nearest(self, feats: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Distance to, and training-set index of, the closest real image of each row of `feats`."""
        f = torch.from_numpy(np.ascontiguousarray(feats))
        dists, where = [], []
        for i in range(0, len(f), chunk):
            d = torch.cdist(f[i:i + chunk], self.pool_feats)  # (chunk, p)
            best = d.min(dim=1)
            dists.append(best.values)
            where.append(self.pool_idx[best.indices])
        return torch.cat(dists).numpy(), torch.cat(where).numpy()


def _data_key(dataset: Dataset) -> str:
    sample = dataset.x_train[:: max(1, len(dataset.x_train) // 512)]
    return hashlib.sha1(sample.numpy().tobytes()).hexdigest()[:10]


def real_map(dataset: Dataset, kind: str = "trained", *, device=None, seed: int = 0, stop=None) -> RealMap:
    """The cached real map of a dataset (features and PCA; UMAP is fitted separately). `stop` (a
    threading.Event) ends a first training of the feature network: TrainingStopped."""
    key = (dataset.name, _data_key(dataset), kind, seed)
    with _lock:
        if key in _maps:
            return _maps[key]
    net, note = feature_net(dataset, kind, device, stop=stop)
    device = device or next(net.parameters()).device
    idx = balanced_sample(dataset.y_train, MAX_MAP_POINTS, seed)
    pool_idx = idx if len(dataset.y_train) <= MAX_MAP_POINTS else balanced_sample(dataset.y_train, MAX_NEAREST_POOL, seed + 1)
    pool_feats = features(net, dataset.x_train[pool_idx], device).float()  # (p, d)
    feats = pool_feats.numpy() if pool_idx is idx else features(net, dataset.x_train[idx], device).numpy()
    feats = feats.astype(np.float32)
    mean = feats.mean(axis=0)
    # The two leading principal axes: right singular vectors of the centred features.
    _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
    m = RealMap(key, note, net, device, idx, dataset.y_train[idx].numpy(), feats, mean, vt[:2].T.copy(),
                pool_idx, pool_feats)
    with _lock:
        return _maps.setdefault(key, m)


def fit_umap(m: RealMap, *, seed: int = 0, stop=None) -> RealMap:
    """Fit UMAP on the map's real features in the worker (once per map; later calls return at once).
    `stop` (a threading.Event) set during the fit ends the worker process and raises Stopped."""
    if m.umap_xy is None:
        m.umap_xy, m.umap_seed = WORKER.fit(m.key, m.feats, seed, stop=stop), seed
    return m


def umap_ready(m: RealMap) -> bool:
    return m.umap_xy is not None


def warm_up(digits_map: bool = True) -> None:
    """Have the worker compile UMAP's code and (optionally) fit the digits map ahead of any request."""
    WORKER.call("warm", None, digits_map)
