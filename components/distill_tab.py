"""Distill tab: choose a dataset and a method, press Distill, watch the synthetic images learn.

Handlers are plain functions of values; `build()` lays out the widgets and wires them.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Iterator

import gradio as gr

from dd_core import defaults
from dd_core.methods import METHODS
from dd_core.methods.base import PRESETS

from . import distill_run, inputs, jobs, links, method_params, run_control
from .exports import labelled_grid
from .figures import loss_figure, matching_figure
from .learn_tab import method_markdown
from .selection_view import selection_image
from .runtime import LIMITS
from .sessions import Session, session_for

PLOT_SECONDS = 2.0  # the loss curve is redrawn at most this often; the grid every snapshot
DEFAULT_DATASET, DEFAULT_METHOD, DEFAULT_IPC = defaults.DATASET, defaults.METHOD, defaults.IPC
OUTPUTS = ("status", "grid", "stats", "loss", "current_set", "scrub", "dl_set", "dl_png", "dl_zip", "dl_gif",
           "distill_btn", "stop_btn", "matching", "selection")
DOWNLOADS = {"dl_set": "safetensors", "dl_png": "png", "dl_zip": "zip", "dl_gif": "gif"}


def pack(**values) -> tuple:
    """Outputs in OUTPUTS order; anything not given is left as it is on the page."""
    unknown = set(values) - set(OUTPUTS)
    assert not unknown, unknown
    return tuple(values.get(k, gr.skip()) for k in OUTPUTS)


def status_line(phase: str, text: str) -> str:
    icon = {"waiting": "⏳", "loading": "…", "warming": "…", "distilling": "⚗", "paused": "‖", "done": "✓",
            "stopped": "■", "failed": "⚠", "error": "⚠"}.get(phase, "")
    if phase == "waiting":  # a class of 30 shares a few slots: the place in line must be seen from the back
        return f"<div class='queue-banner'>{icon} {text}</div>"
    return f"{icon} {text}"


def stats_line(snap, req: distill_run.Request) -> str:
    sps = snap.steps_per_second
    left = (snap.total_steps - snap.step) / sps if sps > 0 else float("nan")
    left = min(left, max(0.0, LIMITS.max_seconds - snap.elapsed))
    eta = f"about {left:.0f} s left" if snap.step and not snap.finished else f"{snap.elapsed:.1f} s elapsed"
    return f"step **{snap.step}** / {snap.total_steps} · {sps:.1f} steps/s · {eta}"


def scrub_update(run) -> dict:
    n = len(run.kept) if run is not None else 0
    return gr.update(minimum=0, maximum=max(1, n - 1), value=max(0, n - 1), visible=n > 1,
                     label=f"Scrub through the {n} kept snapshots")


def _finished_updates(run) -> dict:
    files = run.files if run is not None else {}
    out = {k: gr.update(value=str(files[kind]), visible=True) if kind in files else gr.update(visible=False)
           for k, kind in DOWNLOADS.items()}
    out["scrub"] = scrub_update(run)
    out["distill_btn"], out["stop_btn"] = gr.update(interactive=True), gr.update(interactive=False)
    return out


def ui_updates(session: Session, req: distill_run.Request, owner: str | None = None) -> Iterator[tuple]:
    """Run `req` for `session` and yield page updates (a plain generator; no server needed)."""
    last_plot, cleared = 0.0, False
    for tick in distill_run.run(session, req, owner):
        out = {"status": status_line(tick.phase, tick.text)}
        if tick.phase in ("waiting", "loading"):
            out.update(distill_btn=gr.update(interactive=False), stop_btn=gr.update(interactive=True))
        if tick.phase == "warming" and not cleared:  # the new run exists: from now on the page shows only it
            cleared = True
            out.update(grid=None, stats="", scrub=gr.update(visible=False), loss=loss_figure([]),
                       matching=gr.update(value=None, visible=False), selection=gr.update(value=None, visible=False),
                       **{k: gr.update(visible=False) for k in DOWNLOADS})
        if tick.phase == "error" and not cleared:
            out["status"] = status_line("error", tick.text + " The grid and files below are still those of "
                                                             "your previous run, if any.")
        snap = tick.snapshot
        if snap is not None:
            out["grid"] = labelled_grid(snap.synthetic)
            out["stats"] = stats_line(snap, req)
            if tick.finished or tick.phase == "paused" or time.perf_counter() - last_plot >= PLOT_SECONDS:
                out["loss"], last_plot = loss_figure(snap.history), time.perf_counter()
                if snap.history and "student_distance" in snap.history[-1]:  # trajectory matching: what it matches
                    out["matching"] = gr.update(value=matching_figure(snap.history), visible=True)
        if tick.selection is not None and snap is not None:  # RDED: the crops it scored and the ones it kept
            names = snap.synthetic.classes
            out["selection"] = gr.update(value=selection_image(tick.selection, snap.synthetic.mean, snap.synthetic.std,
                                                               names[tick.selection["class"]]), visible=True)
        if tick.phase == "paused" and session.run is not None:  # look back through the run while it is held
            out["scrub"] = scrub_update(session.run)
        if tick.saved is not None:
            out["current_set"] = str(tick.saved)
        if tick.finished:
            out.update(_finished_updates(tick.record))
            if tick.phase == "error":
                gr.Warning(tick.text)
        yield pack(**out)


def error_updates(message: str) -> tuple:
    gr.Warning(message)
    return pack(status=status_line("error", message), distill_btn=gr.update(interactive=True),
                stop_btn=gr.update(interactive=False))


def request_stop(request: gr.Request = None) -> str:
    """Stop this caller's distillation (running or waiting); a plain-HTTP caller without a session
    stops the runs it started from the same address."""
    busy = jobs.stop(session_for(request), "distill", jobs.owner_of(request), settle=jobs.STOP_SETTLE)
    return status_line("stopped", "Stopping at the end of the current step…") if busy else gr.skip()


def scrub(index, request: gr.Request = None):
    """The grid as it was at kept snapshot `index`, and which step that was."""
    run = session_for(request).run
    syn = run.set_at(int(index or 0)) if run is not None else None
    if syn is None:
        return gr.skip(), gr.skip()
    return labelled_grid(syn), f"showing step **{syn.steps}** of this run"


def settings_changed(method, preset, dataset, folder, ipc, widgets, *, update_steps: bool, shown=None, current=None):
    """Show the chosen method's widgets with the preset's values, its explanation and default steps.
    With `shown` (the preset key the widgets were last set from, `preset_key`) and `current` (their
    values now), a field the user changed keeps its value when only the IPC moved."""
    if method not in METHODS:
        return [gr.skip()] * (len(METHODS.names()) + len(widgets) + 2)
    name, ipc = _name_and_ipc(dataset, folder, ipc)
    visible = [gr.update(visible=m == method) for m in METHODS.names()]
    shown_ipc = shown[3] if shown and tuple(shown[:3]) == (method, preset or "fast", name) else None
    values = method_params.preset_values(method, preset or "fast", name, ipc, widgets,
                                         current=current if shown_ipc is not None else None, shown_ipc=shown_ipc)
    steps = gr.skip()
    if update_steps:
        steps = min(METHODS.get(method).default_steps(preset or "fast", dataset=name, ipc=ipc), LIMITS.max_steps)
    return visible + values + [steps, method_markdown(method)]


def _name_and_ipc(dataset, folder, ipc) -> tuple[str, int]:
    try:
        name = inputs.dataset_name(dataset, folder)
    except inputs.UserError:
        name = str(dataset)
    try:
        ipc = max(1, inputs.as_int(ipc, "IPC"))
    except inputs.UserError:
        ipc = DEFAULT_IPC
    return name, ipc


def preset_key(method, preset, dataset, folder, ipc) -> list:
    """Which preset the hyperparameter widgets now show: [method, preset, dataset, ipc]."""
    return [method, preset or "fast", *_name_and_ipc(dataset, folder, ipc)]


@dataclass
class DistillTab:
    """The widgets other tabs and the API attach to."""

    dataset: gr.Dropdown
    folder: gr.Textbox
    method: gr.Dropdown
    ipc: gr.Number
    steps: gr.Number
    seed: gr.Number
    status: gr.Markdown
    grid: gr.Image
    distill_event: object
    # For links and lessons (components/url_state.py): every control a link sets or hides.
    preset: gr.Radio = None
    init: gr.Radio = None
    params: gr.Accordion = None
    about: gr.Accordion = None
    groups: dict = None  # method -> its group of hyperparameter widgets
    widgets: list = None  # method_params.ParamWidget of every method
    link_row: gr.Accordion = None  # Copy link and what the link hides
    link_widgets: object = None  # links.LinkWidgets
    about_md: gr.Markdown = None  # the chosen method's explanation
    note: gr.Markdown = None  # what a link had to ignore
    shown: gr.State = None  # preset_key of the preset the hyperparameter widgets were last set from


def build(current_set: gr.State, compute: dict) -> DistillTab:
    """The Distill tab's widgets, inside the caller's gr.Tab. `compute` holds the pool settings."""
    methods = METHODS.names()
    default_method = DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320, elem_id="distill-controls"):
            dataset = gr.Dropdown(inputs.dataset_choices(), value=DEFAULT_DATASET, label="Dataset",
                                  info="digits is built in (8x8); the others download on first use",
                                  allow_custom_value=True, elem_id="dataset")
            folder = gr.Textbox(label="Image folder", visible=False, elem_id="folder",
                                placeholder="a folder with one sub-folder of images per class")
            method = gr.Dropdown(methods, value=default_method, label="Method", allow_custom_value=True,
                                 elem_id="method")
            with gr.Row():
                ipc = gr.Number(DEFAULT_IPC, label="IPC", info="images per class", precision=0, elem_id="ipc",
                                min_width=80)
                steps = gr.Number(min(METHODS.get(default_method).default_steps("fast", dataset=DEFAULT_DATASET,
                                                                               ipc=DEFAULT_IPC), LIMITS.max_steps),
                                  label="Steps", precision=0, elem_id="steps", min_width=80)
                seed = gr.Number(defaults.SEED, label="Seed", precision=0, elem_id="seed", min_width=80)
            preset = gr.Radio(list(PRESETS), value=defaults.PRESET, label="Preset",
                              info="fast: settings that run on a CPU; paper: the published settings", elem_id="preset")
            init = gr.Radio(run_control.INIT_CHOICES, value=defaults.INIT, label="Start from", elem_id="init",
                            info="noise makes the images emerge from nothing; real images change more quietly")
            with gr.Accordion("Method hyperparameters", open=False, elem_id="params") as params:
                groups, widgets = method_params.build_all(default_method)
            with gr.Row():
                go = gr.Button("Distill", variant="primary", elem_id="distill-btn")
                stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop-btn")
            with gr.Row():
                pause_btn = gr.Button("Pause", size="sm", elem_id="pause-btn")
                step_btn = gr.Button("Step", size="sm", elem_id="step-btn")
                resume_btn = gr.Button("Resume", size="sm", elem_id="resume-btn")
            with gr.Accordion("Link to these settings", open=False, elem_id="link-box") as link_row:
                link_widgets = links.build_link_widgets()
            gr.Markdown(LIMITS.describe(), elem_classes=["note"])
            with gr.Accordion("About this method", open=True, elem_id="about") as about_box:
                about = gr.Markdown(method_markdown(default_method), elem_id="about-method")
        with gr.Column(scale=3, min_width=360):
            note = gr.Markdown("", elem_id="url-note")
            status = gr.Markdown("Press **Distill** to start.", elem_id="status")
            stats = gr.Markdown("", elem_id="stats")
            grid = gr.Image(label="Synthetic images (a row per class)", show_label=False, type="pil", format="png",
                            interactive=False, elem_id="grid", height=420, buttons=["fullscreen"])
            scrub_slider = gr.Slider(0, 1, value=0, step=1, visible=False, label="Scrub through the kept snapshots",
                                     elem_id="scrub")
            scrub_note = gr.Markdown("")
            with gr.Row():
                dl = {k: gr.DownloadButton(label, visible=False, elem_id=k, size="sm")
                      for k, label in (("dl_set", "Synthetic set (.safetensors)"), ("dl_png", "PNG grid"),
                                       ("dl_zip", "ImageFolder (.zip)"), ("dl_gif", "Evolution (GIF)"))}
            loss = gr.Plot(loss_figure([]), label="Loss", elem_id="loss")
            matching = gr.Plot(None, label="What trajectory matching matches", elem_id="matching", visible=False)
            selection = gr.Image(None, label="What RDED is choosing: candidate crops (green: kept) and the class's pool",
                                 type="pil", format="png", interactive=False, visible=False, elem_id="selection")

    components = dict(status=status, grid=grid, stats=stats, loss=loss, current_set=current_set, scrub=scrub_slider,
                      distill_btn=go, stop_btn=stop, matching=matching, selection=selection, **dl)
    outputs = [components[k] for k in OUTPUTS]

    fields = [dataset, folder, method, ipc, steps, seed, preset, init]

    def on_distill(values: dict, request: gr.Request):
        # A set of inputs arrives as one dict {component: value}, so gr.Request is injected reliably.
        method_v = values[method]
        try:
            hp = [values[w.component] for w in widgets]
            overrides = method_params.overrides(method_v, widgets, hp) if method_v in METHODS else {}
            *head, init_v = (values[c] for c in fields)
            req = distill_run.check_request(*head, overrides, init_v, run_control.take_start_paused(request))
        except inputs.UserError as err:
            yield error_updates(str(err))
            return
        yield from ui_updates(session_for(request), req, jobs.owner_of(request))

    event = go.click(on_distill, inputs=set(fields + [w.component for w in widgets]), outputs=outputs,
                     show_progress_on=[status], api_visibility="private", **compute)
    stop.click(request_stop, outputs=status, queue=False, api_name="stop")
    for button, handler in ((pause_btn, run_control.pause), (step_btn, run_control.step),
                            (resume_btn, run_control.resume)):
        button.click(handler, outputs=status, queue=False, api_visibility="private")
    scrub_slider.input(scrub, inputs=scrub_slider, outputs=[grid, scrub_note], queue=False, api_visibility="private",
                       trigger_mode="always_last")

    settings = [method, preset, dataset, folder, ipc]
    shown = gr.State(preset_key(default_method, defaults.PRESET, DEFAULT_DATASET, "", DEFAULT_IPC))
    changed_outputs = list(groups.values()) + [w.component for w in widgets] + [steps, about, shown]

    def on_settings(*values, update_steps: bool):
        """A method, preset or dataset change shows that preset; an IPC change keeps the fields the user changed."""
        chosen, (last, *current) = values[:5], values[5:]
        keep = {} if update_steps else {"shown": last, "current": current}
        return settings_changed(*chosen, widgets, update_steps=update_steps, **keep) + [preset_key(*chosen)]

    # .input, not .change: a link sets these programmatically with its own steps and hyperparameters.
    for trigger, update_steps in ((method, True), (preset, True), (dataset, True), (ipc, False)):
        trigger.input(functools.partial(on_settings, update_steps=update_steps),
                      inputs=settings + [shown] + [w.component for w in widgets],
                      outputs=changed_outputs, queue=False, api_visibility="private")
    dataset.change(lambda d: gr.update(visible=d == inputs.FOLDER_CHOICE), inputs=dataset, outputs=folder,
                   queue=False, api_visibility="private")
    return DistillTab(dataset, folder, method, ipc, steps, seed, status, grid, event, preset=preset, init=init,
                      params=params, about=about_box, groups=groups, widgets=widgets, link_row=link_row,
                      link_widgets=link_widgets, about_md=about, note=note, shown=shown)
