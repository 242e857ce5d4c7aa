"""Feature space tab: real and synthetic images on a 2-D map of a network's features.

PCA appears at once; UMAP (fitted once per dataset on at most ~4000 real points, then shared
read-only) replaces it when ready. While a run is going, the map follows it live with PCA.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from dd_core.embed import Stopped, TrainingStopped

from . import feature_view, inputs, jobs, selection, waiting
from .figures import map_figure
from .runtime import LIMITS
from .sessions import session_for

KINDS = [("trained on the real data", "trained"), ("random, as DM sees it", "random")]
LIVE_SECONDS = 2.0  # the live map is redrawn this often during a run
TABLE_HEADERS = ["#", "class", "nearest real class", "distance"]


def map_figure_for(view: feature_view.MapView, paths: bool, session=None):
    """The map as the tab draws it, with the session's selected image marked."""
    title = f"{view.projection} of {view.note.split(' (')[0]} · step {view.step}"
    fig = map_figure(view, title=title, revision=f"map-{view.dataset_spec}-{view.projection}", show_paths=paths)
    picked = selection.selected(session) if session is not None else None
    if picked is not None and picked < len(view.syn_labels):  # an image clicked in the Distill grid
        selection.highlight(fig, view, picked)
    return fig


def caption_for(view: feature_view.MapView) -> str:
    return (f"{view.projection} fitted on {len(view.real_labels):,} real images (faint) — {view.note}. Large outlined "
            f"markers: the synthetic images; lines: their path over {len(view.path_steps)} snapshots. UMAP places "
            f"new points near their nearest real neighbours, so check the distances in the table.")


def draw(kind: str, projection: str, paths: bool, request: gr.Request = None):
    """Yield (status, figure, caption, nearest rows): PCA first, then UMAP if asked for; one job of
    the session (a compute slot shared fairly, the time cap)."""
    session = session_for(request)
    if session.current() is None:
        yield ("⚠ No synthetic set in this session yet: distill one in the Distill tab first.",
               gr.skip(), gr.skip(), gr.skip())
        return
    icons = {"error": "⚠", "waiting": "⏳", "stopped": "■"}
    yield from jobs.guarded(session, "map", jobs.owner_of(request), lambda job: _draw(session, job, kind, projection, paths),
                            say=lambda phase, text: (f"{icons[phase]} {text}", gr.skip(), gr.skip(), gr.skip()),
                            seconds=LIMITS.max_seconds)


def stopped_text(job: jobs.Job, err: Stopped | None = None) -> str:
    """What the page says when a map job's stop (its cap, Stop, a closed page) ended the feature
    network's first training or UMAP."""
    cap = LIMITS.max_seconds
    cap_words = f"{cap / 60:.0f} min" if cap >= 120 else f"{cap:.0f} s"
    why = f"at the time cap ({cap_words})" if job.cap_reached.is_set() else "(Stop was pressed)"
    if isinstance(err, TrainingStopped):
        ended = (f"{err} (the random network needs no training; or ask again when the machine is less busy, "
                 f"since the training must finish within one job)")
    elif err is not None and err.pid:
        ended = f"the UMAP worker process (pid {err.pid}) was ended, and a fresh one starts with the next map"
    else:
        ended = "UMAP was not started"
    return f"■ Stopped {why}: {ended}. The map shown is the last one drawn."


def _draw(session, job: jobs.Job, kind: str, projection: str, paths: bool):
    try:
        yield ("… Computing features (the trained network is trained once per dataset, then cached)…",
               gr.skip(), gr.skip(), gr.skip())
        run = session.run
        pixels = int(run.final.images[0].numel()) if run is not None and run.final is not None else 64
        size = len(inputs.open_dataset(run.dataset).y_train) if run is not None and kind == "trained" else 0
        estimate = waiting.features_estimate(size, pixels) if kind == "trained" else None
        for tick in waiting.with_clock(lambda: feature_view.compute_view(session, kind, "PCA", paths=paths,
                                                                         stop=job.stop)):
            if isinstance(tick, tuple):
                view = tick[1]
            elif tick >= 2:  # a cached network answers at once; only a real wait gets a clock
                yield (waiting.progress_text("Preparing the feature network", tick, estimate), gr.skip(), gr.skip(),
                       gr.skip())
        session.feature_view = view
        rows = feature_view.nearest_rows(view)
        if projection == "UMAP":
            yield ("… PCA shown; fitting UMAP on the real features (the first time takes a while)…",
                   map_figure_for(view, paths, session), caption_for(view), rows)
            if job.stop.is_set():
                raise Stopped(None)
            for tick in waiting.with_clock(lambda: feature_view.compute_view(session, kind, "UMAP", paths=paths,
                                                                             stop=job.stop)):
                if isinstance(tick, tuple):
                    view = tick[1]
                elif tick >= 2:
                    yield (waiting.progress_text("PCA shown; fitting UMAP on the real features", tick,
                                                 waiting.UMAP_FIRST_SECONDS), gr.skip(), gr.skip(), gr.skip())
            session.feature_view = view
        yield "✓ Map drawn. Hover a point for its class and step; pick a row to see its nearest real image.", \
            map_figure_for(view, paths, session), caption_for(view), rows
    except Stopped as err:  # the PCA map drawn before (session.feature_view) stays, as the last good one
        yield stopped_text(job, err), gr.skip(), gr.skip(), gr.skip()
    except Exception as err:  # noqa: BLE001 - a message in the page, never a traceback
        yield f"⚠ {inputs.user_message(err)}", gr.skip(), gr.skip(), gr.skip()


def stop_map(request: gr.Request = None) -> str:
    """The map's Stop: sets the stop of this visitor's map jobs (a UMAP fit ends with its worker)."""
    busy = jobs.stop(session_for(request), "map", jobs.owner_of(request), settle=jobs.STOP_SETTLE)
    return "■ Stopping the map…" if busy else gr.skip()


def live_tick(kind: str, paths: bool, request: gr.Request = None):
    """During a run (once the map has been drawn), redraw it with PCA; after it, draw the final step once."""
    session = session_for(request)
    view, run = session.feature_view, session.run
    if view is None or run is None or run.final is None or view.step == run.final.steps:
        return gr.skip(), gr.skip()
    try:
        view = feature_view.compute_view(session, kind, "PCA", paths=paths)
    except Exception:  # noqa: BLE001 - a live redraw that fails just waits for the next tick
        return gr.skip(), gr.skip()
    session.feature_view = view
    return map_figure_for(view, paths, session), feature_view.nearest_rows(view)


def show_pair(evt: gr.SelectData, request: gr.Request = None):
    session = session_for(request)
    view = session.feature_view
    if view is None:
        return gr.skip()
    try:
        index = int(evt.row_value[0]) if evt.row_value else int(evt.index[0])
        return feature_view.pair_image(session, view, index)
    except Exception as err:  # noqa: BLE001
        gr.Warning(inputs.user_message(err))
        return gr.skip()


@dataclass
class FeatureTab:
    """The widgets other views link to (linked_views.py) and the live timer other tabs pause."""

    timer: gr.Timer
    kind: gr.Radio
    projection: gr.Radio
    paths: gr.Checkbox
    status: gr.Markdown
    plot: gr.Plot
    caption: gr.Markdown
    table: gr.Dataframe
    pair: gr.Image


def build(tab: gr.Tab, compute: dict) -> FeatureTab:
    """The tab's widgets inside `tab`; returns them, with the live timer so other tabs can pause it."""
    with gr.Row():
        kind = gr.Radio(KINDS, value="trained", label="Feature network", elem_id="feature-kind")
        projection = gr.Radio(["UMAP", "PCA"], value="UMAP", label="Projection",
                              info="PCA is instant; UMAP shows neighbourhoods better")
        paths = gr.Checkbox(True, label="Show each image's path across snapshots")
        follow = gr.Checkbox(True, label="Follow a running distillation live (PCA)")
        go = gr.Button("Draw map", variant="primary", elem_id="map-btn", scale=0)
        stop = gr.Button("Stop", variant="stop", elem_id="map-stop", scale=0)
    status = gr.Markdown("Distill a set, then open this tab or press **Draw map**.", elem_id="map-status")
    plot = gr.Plot(label="Feature space", elem_id="feature-map")
    caption = gr.Markdown("", elem_classes=["note"], elem_id="map-caption")
    with gr.Row(equal_height=False):
        table = gr.Dataframe(headers=TABLE_HEADERS, value=[], label="Distance of each synthetic image to its nearest "
                             "real image (in these features); pick a row", interactive=False, elem_id="nearest",
                             max_height=320)
        pair = gr.Image(label="Synthetic image and its nearest real image", type="pil", format="png",
                        interactive=False, elem_id="nearest-pair", height=320, show_label=False)  # captions are in the image
    timer = gr.Timer(LIVE_SECONDS, active=False)

    outs = [status, plot, caption, table]
    go.click(draw, inputs=[kind, projection, paths], outputs=outs, show_progress_on=[status],
             api_visibility="private", **compute)
    tab.select(draw, inputs=[kind, projection, paths], outputs=outs, show_progress_on=[status],
               api_visibility="private", **compute).then(
        lambda f: gr.Timer(active=bool(f)), inputs=follow, outputs=timer, queue=False, api_visibility="private")
    stop.click(stop_map, outputs=status, queue=False, api_visibility="private")
    follow.change(lambda f: gr.Timer(active=bool(f)), inputs=follow, outputs=timer, queue=False,
                  api_visibility="private")
    timer.tick(live_tick, inputs=[kind, paths], outputs=[plot, table], show_progress="hidden",
               api_visibility="private", concurrency_id="live", concurrency_limit=2)
    table.select(show_pair, outputs=pair, api_visibility="private", queue=False)
    return FeatureTab(timer, kind, projection, paths, status, plot, caption, table, pair)
