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
from dd_core.label_stores.base import LABEL_STORES, HardLabels
from dd_core.labels import LabelSpec, parse_spec
from dd_core.methods.krr_st import TARGETS
from dd_core.models import MODELS
from dd_core.synthetic import SyntheticSet
from dd_core.tradeoff import LABEL_PROTOCOLS, DEFAULT_STORES, IMAGE_FORMATS, Tradeoff, human_bytes, markdown, run_tradeoff, summary
from dd_core.transfer import target_bytes

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


# One colour per label store (plotly's qualitative palette), the same on each of its points.
STORE_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
                 "#ff97ff", "#fecb52")
KINDS = (("synthetic", "synthetic set", "circle"),
         ("random", "random real subset (same size), same labels", "circle-open"),
         ("pruned", "label-first baseline: easiest real images (pca), same labels", "diamond-open"))


def figure(result: Tradeoff | None, empty: str = "Press <b>Measure bytes and accuracy</b> to place each label "
                                                 "store here") -> go.Figure:
    """Total bytes (log axis) against accuracy, std bars, the Pareto frontier and the references.
    Each label store has its colour and its legend entry (the cheap stores sit within a few
    hundred bytes of each other, so names printed beside the points would overlap); the marker's
    shape says which set it was measured on."""
    fig = go.Figure()
    if result is not None:
        names = list(dict.fromkeys(p.labels for p in result.points))
        colour = {n: STORE_COLOURS[i % len(STORE_COLOURS)] for i, n in enumerate(names)}
        present = [(kind, name, symbol) for kind, name, symbol in KINDS if result.of(kind)]
        for kind, name, symbol in present:  # the shapes' key, in grey
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup="kinds",
                                     marker=dict(symbol=symbol, size=9, color="#666"), hoverinfo="skip"))
        for store in names:
            for kind, _, symbol in present:
                pts = [p for p in result.of(kind) if p.labels == store]
                if not pts:
                    continue
                fig.add_trace(go.Scatter(
                    x=[p.total_bytes for p in pts], y=[p.accuracy_mean for p in pts], mode="markers",
                    name=store, legendgroup=store, showlegend=kind == "synthetic",
                    marker=dict(symbol=symbol, size=10 if kind == "synthetic" else 9, color=colour[store],
                                line=dict(width=1.5, color=colour[store])), cliponaxis=False,
                    error_y=dict(type="data", array=[p.accuracy_std for p in pts], visible=True, color=colour[store]),
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
            fig.add_trace(go.Scatter(x=[w], y=[acc], mode="markers+text", marker=dict(symbol="star", size=13,
                                                                                     color="#444"),
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
        fig.add_annotation(text=empty, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                           font=dict(size=14, color="#777"))
    fig.update_layout(height=560, uirevision="labels", template="plotly_white", margin=dict(l=60, r=10, t=50, b=60),
                      legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0, font=dict(size=11)))
    return fig


def report(result: Tradeoff) -> str:
    """The table with the formula behind each byte count, then what it means and where numbers come from."""
    first = next(iter(result.points), None)
    table, formulas = split_formulas(markdown(result), resolved(result))
    lines = [table, ""]
    if formulas:
        lines.append("**Label bytes**, how each is counted:\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in formulas))
    if first is not None:
        lines.append(f"**Image bytes** ({first.image_format}): {first.image_formula}.")
    if result.whole_accuracy is not None and result.whole_note:
        lines.append(f"**Whole training set**: {result.whole_note}.")
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


def resolved(result: Tradeoff) -> bool:
    """Whether dynamic labels' gain over hard labels on the synthetic set is larger than the
    networks' spread; below it, each store's share of that gain is noise."""
    rows = result.gain_shares("synthetic")
    return bool(rows) and rows[0]["gain"] > rows[0]["noise"]


def split_formulas(table: str, shares_resolved: bool) -> tuple[str, list[tuple[str, str]]]:
    """The engine's markdown table without its long formula column (it wrapped every row to
    several lines), and the formulas as (store, formula) pairs to list under it. Gain shares that
    are not resolved (percentages of noise) are left out too; the summary below says why."""
    lines = table.splitlines()
    if len(lines) < 2:
        return table, []
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header = cells[0]
    formula = header.index("label-byte formula") if "label-byte formula" in header else None
    share = header.index("share of dynamic's gain") if "share of dynamic's gain" in header else None
    formulas, out = [], []
    for i, row in enumerate(cells):
        if len(row) != len(header):  # not a table row as written: leave the table as it is
            return table, []
        if i >= 2 and formula is not None and not row[0].startswith("whole"):
            formulas.append((row[0], row[formula]))
        drop = {formula, share if not shares_resolved else None}
        out.append([c for j, c in enumerate(row) if j not in drop])
    return "\n".join("| " + " | ".join(r) + " |" for r in out), formulas


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
    if evaluate_run.targets_of(syn) is not None:
        yield ("ℹ This KRR-ST set has no class labels, so there are no label stores to compare: its images carry "
               "target representations. What it stores is below; the **Evaluate** tab measures what it buys, "
               "by transfer."), figure(None, "No label stores to place: this set has no class labels"), \
            unlabelled_storage(syn)
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
    state: dict = {"frac": 0.0, "text": "starting", "result": None, "error": None, "partial": None}

    def work():
        try:
            state["result"] = run_tradeoff(syn, dataset, config, specs, image_format=image_format,
                                           random_set=bool(random_set), stop=job.stop,
                                           progress=lambda f, t: state.update(frac=f, text=t),
                                           on_point=lambda partial: state.update(partial=partial))
        except Exception as err:  # noqa: BLE001
            state["error"] = err

    thread = threading.Thread(target=work, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    drawn = 0  # points on the plot so far: it fills in as each store is measured
    try:
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            partial = state["partial"]
            fresh = partial is not None and len(partial.points) > drawn
            if fresh:
                drawn = len(partial.points)
            yield (f"… {state['frac']:.0%} · {time.perf_counter() - t0:.0f} s · {state['text']}  \n"
                   f"<small>{config.describe()}</small>", figure(partial) if fresh else gr.skip(), gr.skip())
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


def unlabelled_storage(syn: SyntheticSet) -> str:
    """What a KRR-ST set stores in place of labels, and what a class index per image would cost."""
    targets = syn.extra[TARGETS]
    n, dims = targets.shape
    images, kept = evaluate_run.image_bytes(syn), target_bytes(syn)
    index = HardLabels(syn.labels, syn.num_classes)
    return "\n".join([
        "| stored | formula | bytes |", "| --- | --- | --- |",
        f"| images | {' x '.join(str(d) for d in syn.images.shape)} x {syn.images.element_size()} B "
        f"| {images:,} ({human_bytes(images)}) |",
        f"| target representations (`{TARGETS}`) | N x {dims} x {targets.element_size()} B "
        f"| {kept:,} ({human_bytes(kept)}) |",
        f"| for comparison: one class index per image (what hard labels cost; KRR-ST never uses them) "
        f"| {index.formula()} | {index.nbytes():,} |", "",
        f"The targets are {kept / max(1, images):.1f}x the images' bytes: {dims} numbers an image, where a class "
        f"label is one. The file keeps a class index per image only because the format needs one: it is the "
        f"class of the real image each synthetic one started from. Evaluate the set in the **Evaluate** tab: "
        f"it pre-trains fresh networks on the images and targets, then fits a linear probe on labelled images, "
        f"beside random real images carrying the same encoder's targets."])


def stop_labels(request: gr.Request = None) -> str:
    busy = jobs.stop(session_for(request), "labels", jobs.owner_of(request), settle=jobs.STOP_SETTLE)
    return "■ Stopping after the current batch…" if busy else gr.skip()


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

