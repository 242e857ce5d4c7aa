"""Feature-space tab handlers as plain functions (random-network features and PCA: no training)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from components import distill_run, distill_tab, feature_tab, feature_view
from components.sessions import drop_session, session_for

WHO = SimpleNamespace(session_hash="features")


@pytest.fixture(scope="module")
def session():
    s = session_for(WHO)
    list(distill_tab.ui_updates(s, distill_run.check_request("digits", "", "dm", 2, 6, 0)))
    yield s
    drop_session(WHO)


def test_view_places_every_synthetic_image_and_its_path(session):
    view = feature_view.compute_view(session, "random", "PCA")
    n = len(session.current().labels)
    assert view.syn_xy.shape == (n, 2) and np.isfinite(view.syn_xy).all()
    assert view.path_xy.shape[1:] == (n, 2) and view.path_steps[-1] == view.step == 6
    assert np.allclose(view.path_xy[-1], view.syn_xy)  # a path ends where the image is now
    assert view.real_xy.shape[0] == len(view.real_labels) == 1437  # all digits training images
    assert (view.nearest_dist >= 0).all() and len(view.nearest_idx) == n


def test_nearest_rows_and_pair_image(session):
    view = feature_view.compute_view(session, "random", "PCA", paths=False)
    rows = feature_view.nearest_rows(view)
    assert [r[0] for r in rows] == list(range(len(rows))) and all(r[3] >= 0 for r in rows)
    pair = feature_view.pair_image(session, view, 5)
    assert isinstance(pair, Image.Image) and pair.width > 2 * pair.height - 100
    with pytest.raises(ValueError, match="no synthetic image #999"):
        feature_view.pair_image(session, view, 999)


def test_draw_yields_a_figure_with_outlined_synthetic_markers(session):
    *_, (status, fig, caption, rows) = feature_tab.draw("random", "PCA", True, WHO)
    assert "Map drawn" in status and "PCA" in caption and len(rows) == 20
    synthetic = [t for t in fig.data if t.marker is not None and t.marker.size == 13]
    assert sum(len(t.x) for t in synthetic) == 20 and all(t.marker.line.width == 2 for t in synthetic)
    assert fig.layout.uirevision


def test_draw_without_a_set_is_a_message():
    who = SimpleNamespace(session_hash="nobody-yet")
    try:
        *_, (status, *_rest) = feature_tab.draw("random", "PCA", True, who)
        assert "No synthetic set" in status
    finally:
        drop_session(who)


def test_live_tick_redraws_only_when_the_run_moved_on(session):
    import gradio as gr

    list(feature_tab.draw("random", "PCA", True, WHO))
    assert feature_tab.live_tick("random", True, WHO) == (gr.skip(), gr.skip())  # the map is current
    list(distill_tab.ui_updates(session, distill_run.check_request("digits", "", "dm", 2, 3, 1)))
    plot, rows = feature_tab.live_tick("random", True, WHO)
    assert plot != gr.skip() and len(rows) == 20


def test_the_grid_margin_fits_the_class_names():
    import torch

    from components.exports import labelled_grid
    from dd_core.synthetic import SyntheticSet

    names = ("T-shirt/top", "Trouser", "Sneaker", "Ankle boot", "a class name far too long for any margin")
    syn = SyntheticSet(torch.zeros(10, 1, 28, 28), torch.arange(5).repeat_interleave(2), "test", names, (0.0,), (1.0,))
    image = np.asarray(labelled_grid(syn).convert("L"))
    grid = syn.grid_image(upscale=1)
    margin = image.shape[1] - grid.size[0] * (480 // max(grid.size))  # the grid is scaled to about 480 px
    ink = np.nonzero((image[:, :margin] < 128).any(axis=0))[0]
    assert len(ink) and ink.min() >= 2, "a class name is cut at the image's left edge"
    assert 60 < margin <= 160, "the margin follows the longest name and stops at the cap"
