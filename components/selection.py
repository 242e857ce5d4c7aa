"""The synthetic image a session picked (by clicking it in the Distill grid or on the map), and how
the feature map marks it: its path bold and a star where it is now."""
from __future__ import annotations

import threading

import plotly.graph_objects as go

from .figures import class_colour
from .sessions import forget_with_session

_selected: dict[str, int] = {}  # session key -> index of the synthetic image picked last
_lock = threading.Lock()


def select(session, index: int) -> None:
    with _lock:
        _selected[session.key] = int(index)


def selected(session) -> int | None:
    with _lock:
        return _selected.get(session.key)


@forget_with_session
def forget_key(key: str) -> None:
    """When the session is dropped (its page closed, or idle)."""
    with _lock:
        _selected.pop(key, None)


def highlight(fig: go.Figure, view, index: int) -> go.Figure:
    """Draw synthetic image `index`'s path bold and mark where it is now (`view`: a MapView)."""
    c = int(view.syn_labels[index])
    name = view.classes[c]
    if view.path_xy is not None:
        fig.add_trace(go.Scatter(x=view.path_xy[:, index, 0], y=view.path_xy[:, index, 1], mode="lines+markers",
                                 line=dict(width=4, color=class_colour(c)), marker=dict(size=7),
                                 name=f"path of #{index}", hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=[view.syn_xy[index, 0]], y=[view.syn_xy[index, 1]], mode="markers+text",
                             text=[f"#{index}"], textposition="top center", name=f"selected #{index}",
                             marker=dict(symbol="star", size=24, color=class_colour(c), line=dict(width=2, color="#000")),
                             hovertemplate=f"selected: synthetic #{index} · class {name}<extra></extra>",
                             showlegend=False))
    return fig
