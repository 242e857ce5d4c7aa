"""Labels & storage tab: for one synthetic set, every way of storing its labels, what it costs in
bytes (images + labels, with the formula behind each count) and what test accuracy it buys, beside
a random real subset of the same size and the whole training set."""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Iterator

import gradio as gr
import plotly.graph_objects as go

from dd_core import defaults
from dd_core.evaluate import PROTOCOLS
from dd_core.label_stores.base import LABEL_STORES
from dd_core.labels import LabelSpec, parse_spec
from dd_core.models import MODELS
from dd_core.synthetic import SyntheticSet
from dd_core.tradeoff import LABEL_PROTOCOLS, DEFAULT_STORES, IMAGE_FORMATS, Tradeoff, human_bytes, markdown, run_tradeoff, summary

from . import evaluate_run, inputs, jobs
from .runtime import CUDA, LIMITS
from .sessions import session_for

SOURCES = ("this session's set", "an uploaded file")
# On a CPU the default is quick: the cheap stores, few epochs and networks (the protocol says so).
QUICK_STORES = ["hard", "soft", "soft:dtype=int8", "soft:topk=1", "dynamic", "dynamic-pruned:keep=0.02",
                "distance", "teacher"]
DEFAULT_EPOCHS = 0 if CUDA else 50  # 0: the protocol's own (300 fast, 1000 paper)
SAME_ARCH = evaluate_run.SAME_ARCH
DEFAULT_NETWORKS = 3 if CUDA else 2
POLL_SECONDS = 0.5
INTRO = ("Distilled images are only half of what a student trains on: the other half is its **labels**. "
         "Soft, per-view (dynamic) labels from a teacher often buy accuracy, at a storage cost that can dwarf "
         "the images. Here every label store is evaluated with the same recipe on the same images; each "
         "point's bytes are the images (as stored) plus everything needed to reproduce its training targets.")


def label_positions(points) -> list[str]:
    """Where each point's name goes: of two stores next to each other in bytes ("hard" and
    "soft:topk=1" often cost about the same), the more accurate is named above and the other below,
    so their names never print over each other."""
    where = []
    for i, p in enumerate(points):
        others = [j for j in range(len(points)) if j != i]
        if not others:
            return ["top center"]
        j = min(others, key=lambda j: abs(math.log10(points[j].total_bytes / p.total_bytes)))
        above = (p.accuracy_mean, -i) > (points[j].accuracy_mean, -j)
        where.append("top center" if above else "bottom center")
    return where


def figure(result: Tradeoff | None) -> go.Figure:
    """Total bytes (log axis) against accuracy, std bars, the Pareto frontier and the references."""
    fig = go.Figure()
    if result is not None:
        for kind, name, symbol in (("synthetic", "synthetic set", "circle"),
                                   ("random", "random real subset (same size), same labels", "circle-open"),
                                   ("pruned", "label-first baseline: easiest real images (pca), same labels",
                                    "diamond-open")):
            pts = result.of(kind)
            if pts:
                fig.add_trace(go.Scatter(
                    x=[p.total_bytes for p in pts], y=[p.accuracy_mean for p in pts], name=name,
                    mode="markers+text" if kind == "synthetic" else "markers", text=[p.labels for p in pts],
                    textposition=label_positions(pts), textfont=dict(size=10), marker=dict(symbol=symbol, size=9),
                    cliponaxis=False,
                    error_y=dict(type="data", array=[p.accuracy_std for p in pts], visible=True),
                    customdata=[[human_bytes(p.total_bytes), p.labels] for p in pts],
                    hovertemplate="%{customdata[1]}: %{customdata[0]}, accuracy %{y:.4f}<extra>" + kind + "</extra>"))
        front = result.frontier("synthetic")
        if front:
            fig.add_trace(go.Scatter(x=[p.total_bytes for p in front], y=[p.accuracy_mean for p in front],
                                     mode="lines", line=dict(shape="hv", dash="dot", color="#444"),
                                     name="Pareto frontier (synthetic)", hoverinfo="skip"))
        if result.whole_bytes and result.whole_accuracy is not None:  # traces, not shapes: autorange sees them
            low = min((p.total_bytes for p in result.points), default=result.whole_bytes)
            bottom = min((p.accuracy_mean - p.accuracy_std for p in result.points), default=0.0)
            w, acc = result.whole_bytes, result.whole_accuracy
            fig.add_trace(go.Scatter(x=[low, w, w], y=[acc, acc, bottom], mode="lines", hoverinfo="skip",
                                     line=dict(dash="dash", color="#999"), name="whole training set (reference)"))
            fig.add_trace(go.Scatter(x=[w], y=[acc], mode="markers+text", marker=dict(symbol="star", size=13),
                                     text=[f"whole set: {human_bytes(w)}, {acc:.3f} (teacher)"],
                                     textposition="bottom left", showlegend=False,
                                     hovertemplate=f"whole training set: {human_bytes(w)}, teacher accuracy "
                                                   f"{acc:.4f}<extra></extra>"))
    fig.update_xaxes(type="log", title="total bytes (images + labels), log scale")
    fig.update_yaxes(title="test accuracy (fraction, mean ± std)")
    if result is not None and result.points:
        # Plotly labels a log axis's minor ticks with bare digits ("2", "5"): 1-2-5 steps, written as bytes.
        xs = [p.total_bytes for p in result.points] + ([result.whole_bytes] if result.whole_bytes else [])
        lo, hi = math.floor(math.log10(max(min(xs), 1))), math.ceil(math.log10(max(max(xs), 10)))
        ticks = [m * 10 ** k for k in range(lo, hi + 1) for m in (1, 2, 5)]
        fig.update_xaxes(tickvals=ticks, ticktext=[human_bytes(t) for t in ticks])
    fig.update_yaxes(automargin=True)  # the top tick label is drawn inside the figure, not cut at its edge
    if result is None or not result.points:  # an empty plot: a sensible frame and what to do, not plotly's -1..3
        fig.update_xaxes(range=[2, 7])  # 100 B to 10 MB
        fig.update_yaxes(range=[0, 1])
        fig.add_annotation(text="Press <b>Measure bytes and accuracy</b> to place each label store here",
                           x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=14, color="#777"))
    fig.update_layout(height=520, uirevision="labels", template="plotly_white", margin=dict(l=60, r=10, t=50, b=110),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0))
    return fig


def report(result: Tradeoff) -> str:
    """The table with the formula behind each byte count, then what it means and where numbers come from."""
    first = next(iter(result.points), None)
    lines = [markdown(result), ""]
    if first is not None:
        lines.append(f"**Image bytes** ({first.image_format}): {first.image_formula}.")
    notes = sorted({p.uncounted for p in result.points if p.uncounted})
    lines += [f"**Not counted:** {n}." for n in notes]
    teachers = sorted({p.teacher for p in result.points if p.teacher})
    lines += [f"**Teacher** behind the soft labels: {t}." for t in teachers]
    if summary(result):
        lines.append("**Share of the dynamic labels' gain kept** (aim: ≥ 90% at ≤ 2% of their label bytes):\n\n"
                     + "\n".join(f"- {s}" for s in summary(result).splitlines()))
    lines.append(f"**Protocol** of every accuracy: {result.protocol}.")
    lines += [f"⚠ {e}" for e in result.errors]
    if result.stopped:
        lines.append(f"■ Stopped early (Stop pressed or the {LIMITS.max_seconds / 60:.0f}-minute limit): only "
                     f"finished stores are shown.")
    return "\n\n".join(lines)


def chosen_stores(ticked: list[str] | None, extra: str | None) -> list[LabelSpec]:
    """The ticked stores plus any typed specs ("soft:topk=2, dynamic:dtype=int8"), parsed and checked
    once; the engine takes them as they are."""
    specs = list(ticked or []) + [s.strip() for s in (extra or "").replace(";", " ").replace(", ", " ").split() if s.strip()]
    if not specs:
        raise inputs.UserError("Tick at least one label store (hard labels are the cheapest).")
    parsed = {}
    for spec in specs:
        try:
            one = parse_spec(spec)
        except (ValueError, KeyError) as err:
            raise inputs.UserError(f"Label store {spec!r}: {inputs.user_message(err)}") from None
        parsed.setdefault(str(one), one)  # the same store and options typed twice run once
    return list(parsed.values())


def pick_set(session, source: str, upload, current_path) -> SyntheticSet:
    if source == SOURCES[1]:
        if not upload:
            raise inputs.UserError("Upload a synthetic set (.safetensors) first, or use this session's set.")
        return inputs.load_set(upload)
    if current_path:
        return inputs.load_set(current_path)
    syn = session.current()
    if syn is None:
        raise inputs.UserError("This session has no synthetic set yet: distill one in the Distill tab, "
                               "or upload a .safetensors file.")
    return syn


def config_for(protocol: str, epochs, networks, arch: str | None = None):
    config = evaluate_run.config_for(protocol, networks, None if arch in (None, SAME_ARCH) else arch)
    e = inputs.as_int(epochs, "Epochs")
    if e < 0 or e > 2000:
        raise inputs.UserError(f"Epochs must be between 1 and 2000, or 0 for the protocol's own (got {e}).")
    return dataclasses.replace(config, epochs=e, epochs_augmented=0) if e else config


def run_labels(source, upload, current_path, ticked, extra, protocol, epochs, networks, arch, image_format,
               random_set, request: gr.Request = None) -> Iterator[tuple]:
    """Yield (status, figure, report) while every store is built and evaluated, as one job of the
    session (its own Stop and time cap, a compute slot shared fairly); a plain generator."""
    try:
        session = session_for(request)
        syn = pick_set(session, source, upload, current_path)
        specs, config = chosen_stores(ticked, extra), config_for(protocol, epochs, networks, arch)
        if image_format not in IMAGE_FORMATS:
            raise inputs.UserError(f"Unknown image format {image_format!r}; choose one of: {', '.join(IMAGE_FORMATS.names())}.")
        dataset = evaluate_run.dataset_of(session, syn)
    except Exception as err:  # noqa: BLE001  shown in the page, never as a traceback
        yield f"⚠ {inputs.user_message(err)}", gr.skip(), gr.skip()
        return
    icons = {"error": "⚠", "waiting": "⏳", "stopped": "■"}
    # A set that is itself random real images gets no second random subset: it would be the same
    # kind of point twice, at a third of the run's time.
    random_set = bool(random_set) and syn.method != "random"
    yield from jobs.guarded(session, "labels", jobs.owner_of(request),
                            lambda job: _measure(syn, dataset, config, specs, image_format, random_set, job),
                            say=lambda phase, text: (f"{icons[phase]} {text}", gr.skip(), gr.skip()),
                            seconds=LIMITS.max_seconds)


def _measure(syn, dataset, config, specs, image_format, random_set, job) -> Iterator[tuple]:
    state: dict = {"frac": 0.0, "text": "starting", "result": None, "error": None}

    def work():
        try:
            state["result"] = run_tradeoff(syn, dataset, config, specs, image_format=image_format,
                                           random_set=bool(random_set), stop=job.stop,
                                           progress=lambda f, t: state.update(frac=f, text=t))
        except Exception as err:  # noqa: BLE001
            state["error"] = err

    thread = threading.Thread(target=work, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            yield (f"… {state['frac']:.0%} · {time.perf_counter() - t0:.0f} s · {state['text']}  \n"
                   f"<small>{config.describe()}</small>", gr.skip(), gr.skip())
    finally:  # the page closed or Stop: end the worker at its next batch, and hold the slot until it has
        if thread.is_alive():
            job.stop.set()
            thread.join()
    if state["error"] is not None:
        yield f"⚠ {inputs.user_message(state['error'])}", gr.skip(), gr.skip()
        return
    result = state["result"]
    done = "■ Stopped" if result.stopped else "✓ Done"
    same = ("  \nThe set is itself a random real subset, so no second one was drawn." if syn.method == "random"
            else "")
    yield (f"{done} in {time.perf_counter() - t0:.0f} s: {len(result.points)} points on {dataset.name}, "
           f"{len(syn.images)} images.{same}", figure(result), report(result))


def stop_labels(request: gr.Request = None) -> str:
    jobs.stop(session_for(request), "labels", jobs.owner_of(request))
    return "■ Stopping after the current batch…"


def render(current_set: gr.State) -> None:
    """The tab's widgets, built inside the caller's gr.Tab("Labels & storage")."""
    gr.Markdown(INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Synthetic set", elem_id="labels-source")
            upload = gr.File(label="Synthetic set (.safetensors)", file_types=[".safetensors"], visible=False,
                             elem_id="labels-upload")
            stores = gr.CheckboxGroup(DEFAULT_STORES, value=DEFAULT_STORES if CUDA else QUICK_STORES,
                                      label="Label stores", elem_id="labels-stores",
                                      info="name:option=value; the projector fits a small network once per dataset")
            extra = gr.Textbox("", label="More stores (optional)", placeholder="soft:topk=2 dynamic:dtype=int8",
                               info="options: " + "; ".join(f"{n}: {', '.join(LABEL_STORES.get(n).OPTIONS) or '-'}"
                                                            for n in LABEL_STORES.names()))
            protocol = gr.Radio(list(LABEL_PROTOCOLS), value=defaults.PROTOCOL, label="Protocol",
                                info="; ".join(f"{p}: {PROTOCOLS[p].note}" for p in LABEL_PROTOCOLS))
            epochs = gr.Number(DEFAULT_EPOCHS, precision=0, label="Epochs (0 = the protocol's own)", elem_id="labels-epochs",
                               info="fewer epochs for a quick look on a CPU; every number says which recipe made it")
            networks = gr.Slider(1, evaluate_run.MAX_MODELS, value=DEFAULT_NETWORKS, step=1, label="Networks per point",
                                 elem_id="labels-networks")
            arch = gr.Dropdown([SAME_ARCH] + MODELS.names(), value=SAME_ARCH, label="Evaluation network",
                               info="convnet_w32 is about 4x quicker on a CPU for 28-32 px images")
            image_format = gr.Radio(IMAGE_FORMATS.names(), value="uint8", label="Images stored as")
            random_set = gr.Checkbox(True, label="Also a random real subset of the same size, with each label store")
            with gr.Row():
                go_btn = gr.Button("Measure bytes and accuracy", variant="primary", elem_id="labels-btn")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="labels-stop")
        with gr.Column(scale=3, min_width=360):
            status = gr.Markdown("", elem_id="labels-status")
            plot = gr.Plot(figure(None), label="Bytes against accuracy", elem_id="labels-plot")
    table = gr.Markdown("", elem_id="labels-table")
    source.change(lambda s: gr.update(visible=s == SOURCES[1]), inputs=source, outputs=upload, queue=False,
                  api_visibility="private")
    go_btn.click(run_labels, inputs=[source, upload, current_set, stores, extra, protocol, epochs, networks, arch,
                                     image_format, random_set],
                 outputs=[status, plot, table], show_progress_on=[status], api_visibility="private", **jobs.COMPUTE)
    stop_btn.click(stop_labels, outputs=status, queue=False, api_visibility="private")

