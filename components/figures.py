"""Plotly figures of the app: the loss curve and the feature-space map.

Every figure sets `layout.uirevision`, so a person's zoom survives the next update.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

MAX_CURVE_POINTS = 600  # a longer history is strided; redrawing thousands of points delays clicks
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]  # one colour per class, cycled past ten classes


def class_colour(c: int) -> str:
    return PALETTE[c % len(PALETTE)]


def _figure(*, title: str, revision: str, height: int) -> go.Figure:
    """An empty figure in the house style. The style is written out instead of using a plotly
    template: applying a template costs 30-100 ms per figure, the whole budget of a live update."""
    axis = dict(gridcolor="#e8e8ee", zerolinecolor="#d0d0da", linecolor="#c0c0cc", ticks="", automargin=True)
    return go.Figure(layout=dict(
        template="none", title=dict(text=title, x=0.01, font=dict(size=14)), height=height, uirevision=revision,
        margin=dict(l=50, r=10, t=36, b=36), paper_bgcolor="white", plot_bgcolor="white",
        font=dict(family="system-ui, sans-serif", size=12, color="#2a2a33"), xaxis=axis, yaxis=dict(axis),
        hovermode="closest", legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1)))


def _smooth(ys: list[float]) -> list[float]:
    """Exponential moving average over about a fifteenth of the curve (3 to 50 points), so that it
    follows a fast early drop instead of lagging behind it."""
    span = min(50, max(3, len(ys) // 15))
    alpha, out, avg = 2 / (span + 1), [], ys[0]
    for y in ys:
        avg = alpha * y + (1 - alpha) * avg
        out.append(avg)
    return out


def log_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Readable ticks for a log axis from `lo` to `hi`: 1-2-5 in each decade, or just the powers of
    ten when that would be more than `most`, always at least the two ends' neighbours."""
    if not (lo > 0 and hi >= lo):
        return []
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1, 2, 5), (1,)):
        ticks = [m * 10.0 ** k for k in range(first, last + 1) for m in mantissas]
        inside = [t for t in ticks if lo / 1.05 <= t <= hi * 1.05]
        if len(inside) <= most:
            break
    if len(inside) < 2:  # a narrow range: the nearest 1-2-5 values on either side
        below = [t for t in ticks if t < lo] or [ticks[0]]
        above = [t for t in ticks if t > hi] or [ticks[-1]]
        inside = [below[-1]] + inside + [above[0]]
    return [float(f"{t:.6g}") for t in inside]


def loss_figure(history: list[dict], *, revision: str = "loss") -> go.Figure:
    """Every statistic a method reports, against the step; log scale when all values are positive."""
    fig = _figure(title="", revision=revision, height=280)
    stride = max(1, len(history) // MAX_CURVE_POINTS)
    rows = history[::stride]
    if rows and rows[-1] is not history[-1]:
        rows = rows + [history[-1]]
    keys = [k for k in (rows[0] if rows else {}) if k != "step"]
    steps = [r["step"] for r in rows]
    positive = True
    for i, k in enumerate(keys):
        ys = [r.get(k) for r in rows]
        positive &= all(y is not None and y > 0 for y in ys)
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=steps, y=ys, mode="lines", name=k, line=dict(width=1, color=colour), opacity=0.35))
        if len(ys) >= 30 and all(y is not None for y in ys):  # per-step losses are noisy: show the trend
            fig.add_trace(go.Scatter(x=steps, y=_smooth(ys), mode="lines", name=f"{k} (smoothed)",
                                     line=dict(width=2.5, color=colour)))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(type="log" if positive and keys else "linear")
    if positive and keys:  # plotly labels a short log axis's minor ticks with bare digits ("9" for 0.9)
        values = [y for t in fig.data for y in t.y if y is not None]
        ticks = log_ticks(min(values), max(values)) if values else []
        if ticks:
            fig.update_yaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    if not rows:
        fig.add_annotation(text="the loss appears here once the run starts", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5, font=dict(color="#888"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def matching_figure(history: list[dict], *, revision: str = "matching") -> go.Figure:
    """Trajectory matching, per step: how far the student (trained on the synthetic images) ends from
    the expert's target checkpoint, against how far the expert itself travelled from start to target.
    Below the expert's line, the synthetic steps brought the student closer to the target than it
    started; 0 would be a perfect match."""
    fig = _figure(title="student's distance to the expert's target vs the expert's own step", revision=revision,
                  height=260)
    rows = [r for r in history if "student_distance" in r and "start_distance" in r]
    stride = max(1, len(rows) // MAX_CURVE_POINTS)
    rows = rows[::stride] + ([rows[-1]] if rows and rows[::stride][-1] is not rows[-1] else [])
    steps = [r["step"] for r in rows]
    for key, name, colour in (("start_distance", "expert: start -> target (real data, M epochs)", "#7f7f7f"),
                              ("student_distance", "student -> target (after N steps on the synthetic set)", "#d62728")):
        ys = [r[key] for r in rows]
        fig.add_trace(go.Scatter(x=steps, y=ys, mode="lines", name=name, line=dict(width=1, color=colour), opacity=0.4))
        if len(ys) >= 30:
            fig.add_trace(go.Scatter(x=steps, y=_smooth(ys), mode="lines", name=f"{name.split(':')[0]} (smoothed)",
                                     line=dict(width=2.5, color=colour), showlegend=False))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="parameter distance", rangemode="tozero")
    return fig


def map_figure(view, *, title: str, revision: str, show_paths: bool = True) -> go.Figure:
    """Real points faint, synthetic points large and outlined in their class colour, and the path
    each synthetic image took across the kept snapshots. `view` is a feature_view.MapView."""
    fig = _figure(title=title, revision=revision, height=560)
    classes = view.classes
    for c, name in enumerate(classes):
        mask = view.real_labels == c
        if mask.any():
            fig.add_trace(go.Scatter(  # SVG, not WebGL: draws everywhere, fine for a few thousand points
                x=view.real_xy[mask, 0], y=view.real_xy[mask, 1], mode="markers", name=f"real {name}",
                legendgroup=str(c), showlegend=False, hovertemplate=f"real · class {name}<extra></extra>",
                marker=dict(size=4, color=class_colour(c), opacity=0.3)))
    if show_paths and view.path_xy is not None and view.path_xy.shape[0] > 1:
        for c, name in enumerate(classes):
            members = [i for i in range(len(view.syn_labels)) if view.syn_labels[i] == c]
            xs, ys, text = [], [], []
            for i in members:
                xs += list(view.path_xy[:, i, 0]) + [None]
                ys += list(view.path_xy[:, i, 1]) + [None]
                text += [f"#{i} · class {name} · step {s}" for s in view.path_steps] + [None]
            if members:
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", legendgroup=str(c), showlegend=False,
                                         name=f"path {name}", text=text, hovertemplate="%{text}<extra>path</extra>",
                                         line=dict(width=1, color=class_colour(c)), marker=dict(size=3),
                                         opacity=0.6))
    for c, name in enumerate(classes):
        members = np.flatnonzero(view.syn_labels == c)
        if len(members):
            hover = [f"synthetic #{i} · class {name} · step {view.step}<br>nearest real: class "
                     f"{classes[view.nearest_label[i]]}, distance {view.nearest_dist[i]:.2f}" for i in members]
            fig.add_trace(go.Scatter(
                x=view.syn_xy[members, 0], y=view.syn_xy[members, 1], mode="markers", name=str(name),
                legendgroup=str(c), text=hover, hovertemplate="%{text}<extra></extra>",
                marker=dict(size=13, color=class_colour(c), line=dict(width=2, color="#222"), symbol="circle")))
    fig.update_xaxes(showticklabels=False, title_text="")
    fig.update_yaxes(showticklabels=False, title_text="")
    fig.update_layout(legend=dict(title_text="class (synthetic)", orientation="v", x=1.02, xanchor="left", y=1,
                                  yanchor="top"))
    return fig
