"""Links and lessons in the page: opening a link restores its settings, "Copy link" writes them.

`wire(...)` attaches two things to the app: a page-load handler that reads the URL's query
(url_state.parse), sets the Distill tab's controls, hides what `hide=` names, opens the asked tab
and, with `autorun=1`, presses Distill (or Compare); and the Copy link button, which writes the
current settings as a query and copies the full link. Handlers are plain functions of values.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from dd_core.methods import METHODS

from . import lessons, run_control, url_state

HIDE_CHOICES = [("dataset", "dataset"), ("method", "method"), ("IPC", "ipc"), ("steps", "steps"), ("seed", "seed"),
                ("preset", "preset"), ("start from", "from"), ("hyperparameters", "params"),
                ("about the method", "about"), ("the other tabs", "tabs")]
CONTROLS = ("dataset", "method", "ipc", "steps", "seed", "preset", "from", "params", "about")
# After the page has its values, do what a person would: press the run button and, for a lesson
# about another tab, wait for the run, open that tab (its own select event draws it) and press its
# button. `plan` is a list of [action, argument]: click a selector, wait ms, "done" (the run has
# ended, up to 3 minutes), or open a tab by its label.
AUTORUN_JS = """async (plan) => {
  if (!plan) return plan;
  const steps = JSON.parse(plan), pause = ms => new Promise(r => setTimeout(r, ms));
  await pause(400);
  for (const [what, arg] of steps) {
    if (what === 'click') document.querySelector(arg)?.click();
    else if (what === 'wait') await pause(arg);
    else if (what === 'tab') [...document.querySelectorAll('#main-tabs button[role=tab]')]
        .find(b => b.innerText.trim() === arg)?.click();
    else if (what === 'done') for (let t = 0; t < 360; t++) {
      if ((document.querySelector('#status')?.innerText || '').match(/Done|Stopped|⚠/)) break;
      await pause(500);
    }
  }
  return plan;
}"""
# What autorun does for each tab a link opens (the tab's label is what a person clicks).
AUTORUN_PLANS = {
    "distill": [["click", "#distill-btn"]],
    "compare": [["click", "#compare-btn"]],
    "features": [["click", "#distill-btn"], ["wait", 4000], ["tab", "Feature space"]],
    "evaluate": [["click", "#distill-btn"], ["done", 0], ["tab", "Evaluate"], ["wait", 500], ["click", "#eval-btn"]],
    "labels": [["click", "#distill-btn"], ["done", 0], ["tab", "Labels & storage"], ["wait", 500],
               ["click", "#labels-btn"]],
}
# The full link: this page's address with the query; shown, put in the address bar and copied.
COPY_JS = """(query) => { const url = location.origin + location.pathname + (query ? '?' + query : '');
                          try { history.replaceState(null, '', url); } catch (e) {}
                          try { navigator.clipboard?.writeText(url); } catch (e) {}
                          return url; }"""


@dataclass
class LinkWidgets:
    hide: gr.CheckboxGroup
    autorun: gr.Checkbox
    copy: gr.Button
    link: gr.Textbox
    query: gr.Textbox  # the query alone, hidden; COPY_JS makes the link from it


def build_link_widgets() -> LinkWidgets:
    """Copy link and what the link should hide; inside the caller's layout."""
    hide = gr.CheckboxGroup(HIDE_CHOICES, value=[], label="Hide in the link", elem_id="link-hide",
                            info="a lesson can show a novice only what matters, e.g. IPC and method")
    autorun = gr.Checkbox(False, label="Start the run when the link is opened", elem_id="link-autorun")
    copy = gr.Button("🔗 Copy link", size="sm", elem_id="copy-link")
    link = gr.Textbox(label="Link", elem_id="link", buttons=["copy"], interactive=False, max_lines=3,
                      placeholder="press Copy link")
    query = gr.Textbox(visible="hidden", elem_id="link-query")
    return LinkWidgets(hide, autorun, copy, link, query)


def link_query(values: dict, hp: dict, tab: str | None, hide: list | None, autorun: bool,
               compare: tuple | None = None) -> str:
    """The query for the Distill tab's current values (`hp`: the chosen method's widget values)."""
    values = dict(values)
    if str(values.get("dataset", "")).startswith("folder") or values.get("dataset") == "folder":
        values.pop("dataset")  # a path on this machine means nothing elsewhere, and stays private
    method = values.get("method")
    params = {}
    if method in METHODS:
        try:
            ipc = int(values.get("ipc") or 1)
        except (TypeError, ValueError):
            ipc = 1
        params = url_state.changed_params(method, values.get("preset") or "fast", values.get("dataset") or "digits",
                                          ipc, hp)
    for k in ("ipc", "steps", "seed"):
        if isinstance(values.get(k), float) and values[k] == int(values[k]):
            values[k] = int(values[k])
    return url_state.to_query(values, params, tab=tab, hide=hide or (), autorun=autorun,
                              compare=compare if tab == "compare" else None)


def load_updates(query, tab, default_method: str, n_tabs: dict, compare=None) -> tuple[dict, url_state.UrlState]:
    """Component -> update for a page opened with `query` (a mapping). `tab` is the DistillTab,
    `n_tabs` maps tab ids to their gr.Tab; `compare` the compare tab's two method dropdowns."""
    from .distill_tab import DEFAULT_DATASET, DEFAULT_IPC, preset_key, settings_changed

    state = url_state.parse(query, lessons.settings_by_name())
    out: dict = {}
    if not dict(query):
        return out, state
    v = state.values
    method = v.get("method", default_method)
    dataset, ipc, preset = v.get("dataset", DEFAULT_DATASET), v.get("ipc", DEFAULT_IPC), v.get("preset", "fast")
    changed = settings_changed(method, preset, dataset, "", ipc, tab.widgets, update_steps=True)
    groups = list(tab.groups.values())
    for group, update in zip(groups, changed):
        out[group] = update
    hp_updates = changed[len(groups):len(groups) + len(tab.widgets)]
    for w, update in zip(tab.widgets, hp_updates):
        if w.method == method and w.name in state.params:
            update = gr.update(value=state.params[w.name])
        out[w.component] = update
    steps, about = changed[-2:]
    if tab.shown is not None:  # the link's own values count as the user's: an IPC change keeps them
        out[tab.shown] = preset_key(method, preset, dataset, "", ipc)
    out[tab.steps] = gr.update(value=v["steps"]) if "steps" in v else gr.update(value=steps)
    from .learn_tab import method_markdown

    out[tab.note] = state.note_markdown()
    controls = {"dataset": tab.dataset, "method": tab.method, "ipc": tab.ipc, "seed": tab.seed, "preset": tab.preset,
                "from": tab.init}
    for key, comp in controls.items():
        out[comp] = gr.update(value=v[key]) if key in v else gr.update()
    about_md = method_markdown(method)
    if tab.about_md is not None:
        out[tab.about_md] = about_md
    hidden = set(state.hide)
    boxes = {**controls, "steps": tab.steps, "params": tab.params, "about": tab.about}
    for key in CONTROLS:
        if key in hidden:
            out[boxes[key]] = _merge(out.get(boxes[key]), visible=False)
    open_tab = state.tab or "distill"
    for tid, item in n_tabs.items():
        if tid in hidden or ("tabs" in hidden and tid not in (open_tab, "distill")):  # Distill runs everything
            out[item] = gr.update(visible=False)
    if compare is not None and state.compare:
        out[compare[0]], out[compare[1]] = gr.update(value=state.compare[0]), gr.update(value=state.compare[1])
    out[tab.link_widgets.hide] = gr.update(value=[k for k in state.hide if k in dict(HIDE_CHOICES).values()])
    out[tab.link_widgets.autorun] = gr.update(value=state.autorun)
    return out, state


def _merge(update, **more):
    base = dict(update) if isinstance(update, dict) else {"__type__": "update"}
    base.update(more)
    return base


def wire(demo: gr.Blocks, tab, tabs: gr.Tabs, tab_items: dict, current_tab: gr.State, compare=None,
         page_js: str = "") -> None:
    """The page-load handler and Copy link. `compare`: the compare tab (methods and its run button);
    `page_js`: a JavaScript function to run once when the page has loaded (after its settings)."""
    default_method = tab.method.value
    compare_methods = (compare.method_a, compare.method_b) if compare is not None else None
    outputs = [tab.dataset, tab.method, tab.ipc, tab.steps, tab.seed, tab.preset, tab.init, tab.params, tab.about,
               tab.note, tab.link_widgets.hide, tab.link_widgets.autorun]
    outputs += [g for g in tab.groups.values()] + [w.component for w in tab.widgets] + list(tab_items.values())
    if tab.about_md is not None:
        outputs.append(tab.about_md)
    if tab.shown is not None:
        outputs.append(tab.shown)
    if compare_methods:
        outputs += list(compare_methods)
    target = gr.Textbox(visible="hidden", elem_id="autorun-target")

    def on_load(request: gr.Request):
        query = dict(getattr(request, "query_params", {}) or {})
        updates, state = load_updates(query, tab, default_method, tab_items, compare_methods)
        run_control.start_paused_next(getattr(request, "session_hash", None) or "local", state.paused)
        result = [updates.get(c, gr.skip()) for c in outputs]
        open_tab = state.tab or "distill"
        plan = AUTORUN_PLANS.get(open_tab, AUTORUN_PLANS["distill"]) if state.autorun else None
        if plan is not None and len(plan) > 1:
            open_tab = "distill"  # the plan opens the lesson's tab itself, once the run has something to show
        return [*result, gr.Tabs(selected=open_tab) if state.tab else gr.skip(), open_tab,
                json.dumps(plan) if plan else ""]

    # A js-only load event and launch(js=...) did not run here (gradio 6.31); a .then after a Python
    # load handler does, so page-wide scripts ride on it.
    after_load = f"async (plan) => {{ ({page_js or '() => null'})(); return ({AUTORUN_JS})(plan); }}"
    demo.load(on_load, outputs=[*outputs, tabs, current_tab, target], queue=False,
              api_visibility="private").then(None, inputs=target, outputs=target, js=after_load, queue=False)

    fields = [tab.dataset, tab.method, tab.ipc, tab.steps, tab.seed, tab.preset, tab.init]
    lw = tab.link_widgets
    extra = list(compare_methods) if compare_methods else []

    def on_copy(*args):
        values = dict(zip(url_state.CORE, args[:len(fields)]))
        open_tab, hide, autorun = args[len(fields):len(fields) + 3]
        rest = args[len(fields) + 3:]
        pair = tuple(rest[:2]) if extra else None
        hp_values = rest[len(extra):]
        hp = {w.name: value for w, value in zip(tab.widgets, hp_values) if w.method == values.get("method")}
        return link_query(values, hp, open_tab, hide, autorun, pair)

    lw.copy.click(on_copy, inputs=[*fields, current_tab, lw.hide, lw.autorun, *extra,
                                   *[w.component for w in tab.widgets]],
                  outputs=lw.query, queue=False, api_visibility="private").then(
        None, inputs=lw.query, outputs=lw.link, js=COPY_JS, queue=False)
    for tid, item in tab_items.items():
        item.select(lambda t=tid: t, outputs=current_tab, queue=False, api_visibility="private")

