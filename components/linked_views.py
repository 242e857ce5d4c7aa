"""Views that point at each other: a click on a synthetic image in the Distill grid selects it in
the feature map (its path drawn bold, its nearest real images shown); a click on a point of the map
shows that image large, with its nearest real images when it is synthetic.

The grid is one composed image, so a click arrives as pixel coordinates (`grid_index` turns them
back into the image's index). gr.Plot has no click event in gradio 6.31: a few lines of JavaScript
forward plotly's `plotly_click` into a hidden textbox, whose change event reaches `map_clicked`.
"""
from __future__ import annotations

import json

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dd_core.embed import Stopped

from . import feature_tab, feature_view, inputs, jobs, selection, waiting
from .exports import labelled_grid
from .runtime import LIMITS
from .sessions import Session, session_for

NEIGHBOURS = 4  # nearest real images shown beside a selected synthetic image

# Forward plotly clicks on the feature map to the hidden #map-click box (polls for new plots,
# because gradio replaces the plot's element when a new figure arrives). Run once per page, from
# links.wire's page-load script.
ATTACH_JS = """() => {
  const hook = () => {
    document.querySelectorAll('#feature-map .js-plotly-plot').forEach(plot => {
      const mark = plot._ev || true;  // plotly's listeners: a new figure may replace them
      if (!plot.on || plot.ddHooked === mark) return;
      plot.ddHooked = mark;
      plot.on('plotly_click', ev => {
        const p = ev.points && ev.points[0];
        const box = document.querySelector('#map-click textarea, #map-click input');
        if (!p || !box) return;
        box.value = JSON.stringify({trace: p.data.name || '', group: p.data.legendgroup || '',
                                    point: p.pointIndex ?? p.pointNumber, nonce: Date.now()});
        box.dispatchEvent(new Event('input', {bubbles: true}));
      });
    });
  };
  if (!window.ddHookTimer) window.ddHookTimer = setInterval(hook, 700);
  return '';
}"""


def grid_index(syn, x: int, y: int) -> int | None:
    """The synthetic image under pixel (x, y) of the Distill tab's grid (labelled_grid), or None
    for a click on the margin or the padding between images."""
    shown = labelled_grid(syn)
    plain = syn.grid_image(upscale=1)
    scale = max(1, shown.size[1] // plain.size[1])
    margin = shown.size[0] - plain.size[0] * scale
    gx, gy = (int(x) - margin) // scale, int(y) // scale
    h, w = syn.images.shape[-2:]
    pad = 1
    row, col = (gy - pad) // (h + pad), (gx - pad) // (w + pad)
    if gx < pad or gy < pad or (gy - pad) % (h + pad) >= h or (gx - pad) % (w + pad) >= w:
        return None
    order = torch.argsort(syn.labels, stable=True)
    members = [order[syn.labels[order] == k] for k in range(syn.num_classes)]
    if not 0 <= row < len(members) or not 0 <= col < len(members[row]):
        return None
    return int(members[row][col])


def _tile(img: torch.Tensor, side: int) -> Image.Image:
    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")
    return pil.resize((side, side), Image.NEAREST)


def detail_image(main: torch.Tensor, title: str, neighbours: list[tuple[torch.Tensor, str]], *,
                 side: int = 260, small: int = 110) -> Image.Image:
    """One image large (c, h, w in [0, 1]) with a caption above it, and beside it a column of its
    nearest real images, each captioned; captions sit above the images, never under a badge."""
    font, gap, top = ImageFont.load_default(size=15), 14, 30
    rows = max(1, len(neighbours))
    height = max(side + top + gap, rows * (small + top) + gap)
    width = side + 2 * gap + (small + 170 + gap if neighbours else 0)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    draw.text((gap, 8), title, fill=(20, 20, 20), font=font)
    out.paste(_tile(main, side), (gap, top))
    x = side + 2 * gap
    for k, (img, caption) in enumerate(neighbours):
        y = gap // 2 + k * (small + top)
        draw.text((x, y + 4), caption, fill=(60, 60, 60), font=ImageFont.load_default(size=13))
        out.paste(_tile(img, small), (x, y + top - 6))
    return out


def nearest_real(session: Session, view: feature_view.MapView, kind: str, index: int, k: int = NEIGHBOURS):
    """The `k` real images closest to synthetic image `index` in the map's features: (image, caption)."""
    dataset, m = feature_view.real_map_for(session, kind)
    syn = session.current()
    feats = torch.from_numpy(np.ascontiguousarray(m.embed(syn.images[index:index + 1])))  # (1, d)
    dist = torch.cdist(feats, m.pool_feats)[0]  # (p,)
    best = torch.topk(dist, min(k, len(dist)), largest=False)
    out = []
    for d, i in zip(best.values.tolist(), m.pool_idx[best.indices].tolist()):
        img = dataset.denormalize(dataset.x_train[i][None])[0]
        out.append((img, f"real #{i} · {dataset.classes[int(dataset.y_train[i])]} · distance {d:.2f}"))
    return out


def grid_clicked(evt: gr.SelectData, kind: str, projection: str, paths: bool, request: gr.Request = None):
    """Distill grid click -> the Feature space tab with that image selected. The map is prepared
    first (with a clock on the Distill tab's status line: the first time trains a network and fits
    UMAP), then the tab opens on it. Yields (tabs, distill status, map status, figure, caption,
    rows, detail)."""
    session = session_for(request)
    syn = session.current()
    index = grid_index(syn, *evt.index[:2]) if syn is not None and evt.index else None
    if index is None:
        yield (gr.skip(),) * 7
        return
    selection.select(session, index)
    icons = {"error": "⚠", "waiting": "⏳", "stopped": "■"}
    yield from jobs.guarded(session, "map", jobs.owner_of(request),
                            lambda job: _draw_selected(session, job, kind, projection, paths, index),
                            say=lambda phase, text: (gr.skip(), f"{icons[phase]} {text}") + (gr.skip(),) * 5,
                            seconds=LIMITS.max_seconds)


def _draw_selected(session: Session, job: jobs.Job, kind: str, projection: str, paths: bool, index: int):
    skip5 = (gr.skip(),) * 5
    try:
        current = session.current()
        view = None
        for proj, doing in (("PCA", "preparing the feature map"), ("UMAP", "fitting UMAP")):
            if proj == "UMAP" and projection != "UMAP":
                break
            for tick in waiting.with_clock(lambda p=proj: feature_view.compute_view(session, kind, p, paths=paths,
                                                                                     stop=job.stop)):
                if isinstance(tick, tuple):
                    view = tick[1]
                else:
                    yield (gr.skip(), waiting.progress_text(f"Selecting synthetic image #{index}: {doing}", tick,
                                                            None)) + skip5
        session.feature_view = view
        fig = feature_tab.map_figure_for(view, paths, session)
        detail = detail_image(current.denormalized()[index],
                              f"synthetic #{index} · class {view.classes[int(view.syn_labels[index])]}",
                              nearest_real(session, view, kind, index))
        yield (gr.Tabs(selected="features"), f"✓ Synthetic image #{index} is selected in **Feature space**.",
               f"✓ Synthetic image #{index} selected: its path is drawn bold and the star marks it; its nearest "
               f"real images are below. Click any point of the map to see it large.",
               fig, feature_tab.caption_for(view), feature_view.nearest_rows(view), detail)
    except Stopped as err:  # the cap ended a UMAP fit (its worker process) before the map was ready
        yield (gr.skip(), feature_tab.stopped_text(job, err)) + skip5
    except Exception as err:  # noqa: BLE001 - a message in the page
        yield (gr.skip(), f"⚠ {inputs.user_message(err)}") + skip5


def map_clicked(payload: str, kind: str, request: gr.Request = None):
    """A click on the map (JSON from ATTACH_JS) -> (status, detail image): the image large."""
    session = session_for(request)
    view = session.feature_view
    try:
        click = json.loads(payload or "{}")
        group, point = int(click["group"]), int(click["point"])
    except (ValueError, KeyError, TypeError):
        return gr.skip(), gr.skip()
    if view is None or session.current() is None:
        return gr.skip(), gr.skip()
    try:
        name = str(click.get("trace", ""))
        if name.startswith("real "):
            dataset, m = feature_view.real_map_for(session, kind)
            where = np.flatnonzero(view.real_labels == group)[point]
            i = int(m.idx[where])
            img = dataset.denormalize(dataset.x_train[i][None])[0]
            return (f"Real training image #{i}, class {dataset.classes[int(dataset.y_train[i])]}.",
                    detail_image(img, f"real #{i} · class {dataset.classes[int(dataset.y_train[i])]}", []))
        if name.startswith("selected"):
            return gr.skip(), gr.skip()
        members = np.flatnonzero(view.syn_labels == group)
        # A path trace strings its members' paths together, each followed by a gap (None).
        member = point // (len(view.path_steps) + 1) if name.startswith("path") else point
        index = int(members[member])
        selection.select(session, index)
        syn_img = session.current().denormalized()[index]
        return (f"Synthetic image #{index} (class {view.classes[group]}) and its nearest real images.",
                detail_image(syn_img, f"synthetic #{index} · class {view.classes[group]}",
                             nearest_real(session, view, kind, index)))
    except Exception as err:  # noqa: BLE001
        return f"⚠ {inputs.user_message(err)}", gr.skip()


def wire(tabs: gr.Tabs, grid: gr.Image, status: gr.Markdown, feature) -> None:
    """Connect the Distill grid (and its status line) and the feature map (feature_tab's FeatureTab)."""
    click_box = gr.Textbox(visible="hidden", elem_id="map-click")
    grid.select(grid_clicked, inputs=[feature.kind, feature.projection, feature.paths],
                outputs=[tabs, status, feature.status, feature.plot, feature.caption, feature.table, feature.pair],
                show_progress_on=[status], api_visibility="private", **jobs.COMPUTE)
    click_box.change(map_clicked, inputs=[click_box, feature.kind], outputs=[feature.status, feature.pair],
                    queue=False, api_visibility="private")
