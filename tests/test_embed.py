"""Feature maps: class-balanced samples, PCA, nearest real images, and the UMAP worker process."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dd_core import embed, load_dataset
from dd_core.umap_worker import MissingMap, UmapWorker


def test_balanced_sample_takes_the_same_number_per_class():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    idx = embed.balanced_sample(labels, 30, seed=0)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [10, 10, 5]  # 30 // 3 per class, all of a smaller class
    assert torch.equal(idx, embed.balanced_sample(labels, 30, seed=0))  # seeded
    assert len(set(idx.tolist())) == len(idx)


@pytest.fixture(scope="module")
def digits_map():
    return embed.real_map(load_dataset("digits"), "random")


def test_real_map_projects_and_finds_itself(digits_map):
    m = digits_map
    n = len(m.idx)
    assert m.feats.shape[0] == n == len(m.labels) and m.pca_xy.shape == (n, 2)
    assert np.allclose(m.pca(m.feats), m.pca_xy)
    # PCA axes are orthonormal and the first carries at least as much variance as the second.
    assert np.allclose(m.pca_axes.T @ m.pca_axes, np.eye(2), atol=1e-4)
    assert m.pca_xy[:, 0].var() >= m.pca_xy[:, 1].var()
    dist, where = m.nearest(m.feats[:25])
    typical = np.median(m.nearest(m.feats[:25] + 0.05)[0])  # cdist's matrix-product form errs ~1e-3
    assert np.all(dist < 0.05 * typical + 5e-3) and np.array_equal(where, m.idx[:25].numpy())


def test_nearest_of_a_shifted_point_is_its_source(digits_map):
    m = digits_map
    shifted = m.feats[:5] + 1e-3
    dist, where = m.nearest(shifted)
    assert np.array_equal(where, m.idx[:5].numpy()) and np.all(dist > 0)


def test_real_map_is_cached(digits_map):
    assert embed.real_map(load_dataset("digits"), "random") is digits_map


def test_unknown_feature_network_lists_the_valid_ones():
    with pytest.raises(ValueError, match="trained, random"):
        embed.feature_net(load_dataset("digits"), "pretrained-imagenet")


def test_worker_answers_and_reports_errors():
    worker = UmapWorker(nice=0)
    try:
        assert worker.call("ping") == "pong"
        with pytest.raises(MissingMap):
            worker.transform(("never", "fitted"), np.zeros((2, 3), dtype=np.float32))
        with pytest.raises(RuntimeError, match="unknown command"):
            worker.call("dance")
    finally:
        worker.close()


def test_worker_leaves_when_its_parent_dies():
    """A parent killed outright (no close, no pipe teardown in order) leaves no worker behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("from dd_core.umap_worker import UmapWorker; w = UmapWorker(nice=0); w.call('ping'); "
            "print(w._proc.pid, flush=True); import time; time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    child = int(parent.stdout.readline())
    # hold the worker's stdin open from here, so only the parent-death watch can end it
    holder = os.open(f"/proc/{child}/fd/0", os.O_WRONLY) if os.path.exists(f"/proc/{child}/fd/0") else None
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{child}/stat") as f:
                    if f.read().split()[2] == "Z":  # exited, waiting for init to reap it
                        break
            except FileNotFoundError:  # exited and reaped
                break
            time.sleep(0.2)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the UMAP worker outlived its parent by 20 s")
    finally:
        if holder is not None:
            os.close(holder)


@pytest.mark.slow
def test_worker_fits_transforms_and_survives_a_restart():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (150, 8)), rng.normal(8, 1, (150, 8))]).astype(np.float32)
    worker = UmapWorker(nice=0)
    try:
        xy = worker.fit("blobs", feats)
        assert xy.shape == (300, 2) and np.isfinite(xy).all()
        placed = worker.transform("blobs", feats[:3] + 0.01)  # near cluster one's points
        centre_one, centre_two = xy[:150].mean(0), xy[150:].mean(0)
        assert all(np.linalg.norm(p - centre_one) < np.linalg.norm(p - centre_two) for p in placed)
        worker.close()  # a new process has no maps
        with pytest.raises(MissingMap):
            worker.transform("blobs", feats[:3])
    finally:
        worker.close()
