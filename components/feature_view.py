"""The feature-space view of a session's run: where its synthetic images sit among the real ones,
the path each took across the kept snapshots, and each one's nearest real image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from dd_core import embed

from . import evaluate_run, inputs
from .sessions import Session

MAX_PATH_POINTS = 12  # snapshots per path: enough to see the drift
MAX_UMAP_POINTS = 600  # synthetic points placed by UMAP per map (transform: seconds per 1000 on a busy CPU)


@dataclass
class MapView:
    """Everything a map figure and the nearest-real table need (arrays are numpy)."""

    classes: tuple[str, ...]
    projection: str  # "PCA" or "UMAP"
    note: str  # what the features are
    step: int
    real_xy: np.ndarray  # (n_real, 2)
    real_labels: np.ndarray  # (n_real,)
    syn_xy: np.ndarray  # (n_syn, 2)
    syn_labels: np.ndarray  # (n_syn,)
    path_xy: np.ndarray | None  # (snapshots, n_syn, 2)
    path_steps: list[int]
    nearest_dist: np.ndarray  # (n_syn,)
    nearest_idx: np.ndarray  # (n_syn,) training-set index of the nearest real image
    nearest_label: np.ndarray  # (n_syn,)
    dataset_spec: str  # what load_dataset needs to show the nearest real image


def _path_snapshots(session: Session, limit: int) -> list[tuple[int, torch.Tensor]]:
    """Up to `limit` kept snapshots, evenly spread, ending at the current images."""
    run = session.run
    kept = list(run.kept)
    final = run.final
    if not kept or kept[-1][0] != final.steps:
        kept.append((final.steps, final.images))
    if len(kept) > limit:
        picks = np.linspace(0, len(kept) - 1, max(1, limit)).round().astype(int)
        kept = [kept[i] for i in sorted(set(picks.tolist()))]
    return kept


def real_map_for(session: Session, kind: str, stop=None):
    syn = session.current()
    if syn is None:
        raise inputs.UserError("No synthetic set in this session yet: distill one in the Distill tab first.")
    dataset = evaluate_run.dataset_of(session, syn)
    return dataset, embed.real_map(dataset, kind, stop=stop)


def compute_view(session: Session, kind: str, projection: str, *, paths: bool = True, stop=None) -> MapView:
    """Project the session's current set (and its path) with the real map's PCA or UMAP. `stop` (the
    job's threading.Event: its Stop, its time cap, its page closed) ends the feature network's first
    training (embed.TrainingStopped) or a UMAP fit or transform in progress, by ending the worker
    process (embed.Stopped)."""
    dataset, m = real_map_for(session, kind, stop=stop)
    syn = session.current()
    n = len(syn.labels)
    limit = MAX_PATH_POINTS if projection == "PCA" else max(2, min(MAX_PATH_POINTS, MAX_UMAP_POINTS // n))
    snaps = _path_snapshots(session, limit) if paths else [(syn.steps, syn.images)]
    feats = m.embed(torch.cat([images for _, images in snaps]))  # (snapshots * n, d)
    if projection == "UMAP":
        embed.fit_umap(m, stop=stop)
        real_xy, xy = m.umap_xy, m.umap(feats, stop=stop)
    else:
        real_xy, xy = m.pca_xy, m.pca(feats)
    xy = xy.reshape(len(snaps), n, 2)
    dist, idx = m.nearest(feats[-n:])
    return MapView(dataset.classes, projection, m.note, syn.steps, real_xy, m.labels, xy[-1], syn.labels.numpy(),
                   xy if len(snaps) > 1 else None, [s for s, _ in snaps], dist, idx,
                   dataset.y_train[torch.from_numpy(idx)].numpy(), session.run.dataset)


def nearest_rows(view: MapView) -> list[list]:
    """One row per synthetic image: its class, its nearest real image's class, their distance."""
    order = range(len(view.syn_labels))
    return [[int(i), view.classes[view.syn_labels[i]], view.classes[view.nearest_label[i]],
             round(float(view.nearest_dist[i]), 3)] for i in order]


def _show(img: torch.Tensor, side: int) -> Image.Image:
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")
    return pil.resize((side, side), Image.NEAREST)


def pair_image(session: Session, view: MapView, index: int, side: int = 200) -> Image.Image:
    """Synthetic image `index` beside its nearest real image, captioned."""
    from PIL import ImageFont

    syn = session.current()
    index = int(index)
    if not 0 <= index < len(syn.labels):
        raise inputs.UserError(f"There is no synthetic image #{index}; choose 0 to {len(syn.labels) - 1}.")
    dataset = inputs.open_dataset(view.dataset_spec)
    real = dataset.denormalize(dataset.x_train[int(view.nearest_idx[index])][None])[0]
    top, gap = 48, 20
    out = Image.new("RGB", (2 * side + 3 * gap, side + top + gap), "white")
    out.paste(_show(syn.denormalized()[index], side), (gap, top))
    out.paste(_show(real, side), (side + 2 * gap, top))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(size=14)
    captions = ((f"synthetic #{index}", f"class {view.classes[view.syn_labels[index]]}"),
                ("nearest real image", f"class {view.classes[view.nearest_label[index]]}, "
                                       f"distance {view.nearest_dist[index]:.2f}"))
    for k, (first, second) in enumerate(captions):
        x = gap + k * (side + gap)
        draw.text((x, 6), first, fill=(20, 20, 20), font=font)
        draw.text((x, 24), second, fill=(90, 90, 90), font=font)
    return out
