"""Compare tab: two methods on the same dataset, IPC, steps, seed and start, one after the other.

It shows their grids side by side, their loss curves on one plot and, once both are evaluated, their
test accuracies beside random real images at the same IPC. A side running the Distill tab's method
uses the hyperparameters set there (a lesson link's, for instance); the other side its preset's. The two runs form
one job in the compute pool: a second visitor waits for both, never for half.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

import gradio as gr
import plotly.graph_objects as go

from dd_core.distill import distill
from dd_core.evaluate import EvalResult, evaluate
from dd_core.methods import METHODS, make_method
from dd_core.synthetic import SyntheticSet

from . import distill_run, evaluate_run, inputs, jobs, method_params
from .exports import labelled_grid
from .figures import loss_figure
from .runtime import CUDA, LIMITS
from .sessions import Session, session_for

SIDES = ("A", "B")
SNAPSHOT_SECONDS = 0.5
PLOT_SECONDS = 2.0
EVAL_NETWORKS = 3 if CUDA else 1  # networks per evaluation: one keeps a CPU comparison under a minute
OUTPUTS = ("status", "grid_a", "grid_b", "loss", "accuracy", "table")


@dataclass
class Side:
    """One configuration's outcome."""

    method: str
    final: SyntheticSet | None = None
    history: list | None = None
    result: EvalResult | None = None
    message: str = ""


_results: dict[str, list[Side]] = {}  # session key -> the last comparison's two sides
_lock = threading.Lock()


def pack(**values) -> tuple:
    return tuple(values.get(k, gr.skip()) for k in OUTPUTS)


def loss_pair_figure(a: Side | None, b: Side | None) -> go.Figure:
    """Both runs' loss on one plot: A solid, B dashed; each named by its side and method."""
    fig = loss_figure([], revision="compare-loss")
    fig.layout.annotations = ()
    fig.update_xaxes(visible=True, title_text="step")
    fig.update_yaxes(visible=True)
    positive, drawn = True, 0
    for side, run, dash in (("A", a, "solid"), ("B", b, "dash")):
        if run is None or not run.history:
            continue
        part = loss_figure(run.history)
        for trace in part.data:
            if not trace.name.startswith("loss"):  # other statistics would crowd a two-run plot
                continue
            trace.name = f"{side} · {run.method} · {trace.name}"
            trace.line.dash = dash
            positive &= all(y is not None and y > 0 for y in trace.y)
            fig.add_trace(trace)
            drawn += 1
    fig.update_yaxes(type="log" if positive and drawn else "linear")
    if not drawn:
        fig.add_annotation(text="both runs' loss appears here (a coreset has none)", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5, font=dict(color="#888"))
    return fig


def accuracy_figure(sides: list[Side], base: EvalResult | None, ipc: int) -> go.Figure:
    """Bars: each side's test accuracy and the random real subset's, with their spread."""
    names, means, stds, colours = [], [], [], []
    for label, side in zip(SIDES, sides):
        if side.result is not None and side.result.accuracies:
            names.append(f"{label}: {side.method}")
            means.append(side.result.mean)
            stds.append(side.result.std)
            colours.append("#1f77b4" if label == "A" else "#ff7f0e")
    if base is not None and base.accuracies:
        names.append(f"random real images, IPC {ipc}")
        means.append(base.mean)
        stds.append(base.std)
        colours.append("#9a9aa8")
    fig = go.Figure(go.Bar(x=names, y=means, marker_color=colours, text=[f"{m:.1%}" for m in means],
                           textposition="outside", error_y=dict(type="data", array=stds, visible=len(stds) > 0)))
    fig.update_layout(template="none", height=300, margin=dict(l=50, r=10, t=30, b=40), uirevision="compare-acc",
                      yaxis=dict(range=[0, 1.1], title="test accuracy", tickformat=".0%"),
                      title=dict(text="after evaluation: test accuracy of a fresh network", x=0.01, font=dict(size=14)))
    return fig


def _table(sides: list[Side], base: EvalResult | None, ipc: int) -> str:
    rows = ["| | method | steps | test accuracy |", "| --- | --- | --- | --- |"]
    for label, side in zip(SIDES, sides):
        acc = f"{side.result.mean:.3f}" if side.result is not None and side.result.accuracies else "—"
        steps = side.final.steps if side.final is not None else "—"
        rows.append(f"| {label} | {side.method} | {steps} | {acc} |")
    if base is not None and base.accuracies:
        rows.append(f"| baseline | random real images, IPC {ipc} | — | {base.mean:.3f} |")
    return "\n".join(rows)


def compare(session: Session, req_a: distill_run.Request, method_b: str, evaluate_after: bool,
            owner: str | None = None, tuned: tuple[str, dict] | None = None) -> Iterator[tuple]:
    """Run both configurations (same everything but the method), then evaluate them if asked.
    `tuned`: (method, hyperparameters) that a side running that method uses over its preset."""
    yield from jobs.guarded(session, "distill", owner, lambda job: _compare(session, req_a, method_b, evaluate_after,
                                                                              job, tuned),
                            say=lambda phase, text: pack(status=f"{'⏳' if phase == 'waiting' else '⚠'} {text}"))


def _compare(session, req_a, method_b, evaluate_after, job, tuned=None) -> Iterator[tuple]:
    try:
        dataset = inputs.open_dataset(req_a.dataset)
        inputs.check_ipc_value(req_a.ipc, dataset)
        methods = [make_method(m, preset=req_a.preset, dataset=dataset.name, ipc=req_a.ipc,
                               **(tuned[1] if tuned and tuned[0] == m else {}))
                   for m in (req_a.method, method_b)]
    except Exception as err:  # noqa: BLE001 - a message in the page
        yield pack(status=f"⚠ {inputs.user_message(err)}")
        return
    sides = [Side(req_a.method), Side(method_b)]
    with _lock:
        _results[session.key] = sides
    yield pack(grid_a=None, grid_b=None, loss=loss_pair_figure(None, None), accuracy=accuracy_figure([], None, 1),
               table="", status="… Starting A…")
    last_plot = 0.0
    with job.capped(LIMITS.max_seconds):
        for k, (side, method) in enumerate(zip(sides, methods)):
            label = SIDES[k]
            for snap in distill(dataset, method, method_name=side.method, ipc=req_a.ipc, steps=req_a.steps,
                                seed=req_a.seed, init=req_a.init, snapshot_every=10**9,
                                snapshot_seconds=SNAPSHOT_SECONDS, stop=job.stop):
                side.final, side.history = snap.synthetic, snap.history
                out = {f"grid_{label.lower()}": labelled_grid(snap.synthetic, target=360),
                       "status": f"⚗ {label}: **{side.method}**, step {snap.step} / {snap.total_steps}"}
                if snap.finished or time.perf_counter() - last_plot >= PLOT_SECONDS:
                    out["loss"], last_plot = loss_pair_figure(*sides), time.perf_counter()
                if session.closed:
                    return
                yield pack(**out)
            side.message = snap.message
            if snap.status == "stopped":
                yield pack(status=f"■ Stopped during {label} ({side.method}) at step {snap.step}.",
                           table=_table(sides, None, req_a.ipc))
                return
    if not evaluate_after:
        yield pack(status="✓ Both runs done. Press **Evaluate both** for their accuracies.",
                   table=_table(sides, None, req_a.ipc), loss=loss_pair_figure(*sides))
        return
    yield from _evaluate(session, sides, req_a.ipc, job)


def _evaluate(session, sides: list[Side], ipc: int, job) -> Iterator[tuple]:
    config = evaluate_run.config_for("fast", EVAL_NETWORKS, None)
    base = None
    with job.capped(LIMITS.max_seconds):
        for label, side in zip(SIDES, sides):
            yield pack(status=f"… Evaluating {label} ({side.method}): training a fresh network on its "
                              f"{len(side.final.labels)} images…", loss=loss_pair_figure(*sides))
            dataset = evaluate_run.dataset_of(session, side.final)
            side.result = evaluate(side.final.images, side.final.labels, dataset, config, stop=job.stop)
            yield pack(accuracy=accuracy_figure(sides, None, ipc), table=_table(sides, None, ipc))
        yield pack(status="… Evaluating the random baseline (random real images at the same IPC)…")
        base = evaluate_run.baseline(session, sides[0].final, config, stop=job.stop)
    stopped = any(s.result is not None and s.result.stopped for s in sides) or base.stopped
    note = " (stopped early: only finished networks count)" if stopped else ""
    yield pack(status=f"✓ Done{note}. Protocol: {config.describe()}; {config.num_models} network(s) each.",
               accuracy=accuracy_figure(sides, base, ipc), table=_table(sides, base, ipc))


def evaluate_both(request: gr.Request = None):
    """Evaluate the session's last comparison again (or for the first time)."""
    session = session_for(request)
    with _lock:
        sides = _results.get(session.key)
    if not sides or any(s.final is None for s in sides):
        yield pack(status="⚠ Run a comparison first.")
        return
    ipc = len(sides[0].final.labels) // max(1, sides[0].final.num_classes)
    yield from jobs.guarded(session, "evaluate", jobs.owner_of(request), lambda job: _evaluate(session, sides, ipc, job),
                            say=lambda phase, text: pack(status=f"{'⏳' if phase == 'waiting' else '⚠'} {text}"))


@dataclass
class CompareTab:
    method_a: gr.Dropdown
    method_b: gr.Dropdown
    button: gr.Button


def build(distill_tab, compute: dict) -> CompareTab:
    """The tab's widgets, inside the caller's gr.Tab; dataset, IPC, steps, seed and start come from
    the Distill tab's controls."""
    names = METHODS.names()
    gr.Markdown("Two methods on the **same** dataset, IPC, steps, seed and starting images (set them on the "
                "Distill tab); a side running the Distill tab's method uses its hyperparameters there, the other its "
                "preset's. The runs go one after the other, then a fresh "
                "network is trained on each set and on random real images at the same IPC.", elem_classes=["note"])
    with gr.Row():
        method_a = gr.Dropdown(names, value="random" if "random" in names else names[0], label="A", elem_id="cmp-a")
        method_b = gr.Dropdown(names, value="dm" if "dm" in names else names[-1], label="B", elem_id="cmp-b")
        then_eval = gr.Checkbox(True, label="Evaluate both when done", elem_id="cmp-eval")
        go_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn", scale=0)
        eval_btn = gr.Button("Evaluate both", elem_id="cmp-eval-btn", scale=0)
    status = gr.Markdown("Pick two methods and press **Compare**.", elem_id="cmp-status")
    with gr.Row():
        grid_a = gr.Image(label="A", type="pil", format="png", interactive=False, elem_id="cmp-grid-a", height=360)
        grid_b = gr.Image(label="B", type="pil", format="png", interactive=False, elem_id="cmp-grid-b", height=360)
    with gr.Row():
        loss = gr.Plot(loss_pair_figure(None, None), label="Loss of both runs", elem_id="cmp-loss")
        accuracy = gr.Plot(accuracy_figure([], None, 1), label="Accuracy", elem_id="cmp-acc")
    table = gr.Markdown("", elem_id="cmp-table")
    outputs = [status, grid_a, grid_b, loss, accuracy, table]
    t = distill_tab
    fields = [t.dataset, t.folder, method_a, t.ipc, t.steps, t.seed, t.preset, t.init]

    widgets = t.widgets or []

    def on_compare(values: dict, request: gr.Request):
        try:
            *head, init_v = (values[c] for c in fields)
            req = distill_run.check_request(*head, {}, init_v)
            method_b_v = inputs.check_method(values[method_b])
            tuned_method = values.get(t.method)
            tuned = None
            if tuned_method in METHODS and tuned_method in (req.method, method_b_v):
                tuned = (tuned_method, method_params.overrides(tuned_method, widgets,
                                                               [values[w.component] for w in widgets]))
        except inputs.UserError as err:
            yield pack(status=f"⚠ {err}")
            return
        yield from compare(session_for(request), req, method_b_v, bool(values[then_eval]), jobs.owner_of(request),
                           tuned)

    go_btn.click(on_compare, inputs=set(fields + [method_b, then_eval, t.method] + [w.component for w in widgets]),
                 outputs=outputs,
                 show_progress_on=[status], api_visibility="private", **compute)
    eval_btn.click(evaluate_both, outputs=outputs, show_progress_on=[status], api_visibility="private", **compute)
    return CompareTab(method_a, method_b, go_btn)
